"""The audit anchor webhook calls out through the egress path as principal `runtime`, allowed
exactly the origin of `[audit] anchor_url`, under the kill switch kind egress."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest

from runtime.audit.anchor import AnchorSink, Checkpoint
from runtime.egress import HOSTS_ENV
from runtime.killswitch import KillSwitch

CHECKPOINT = Checkpoint(origin="test", size=1, root="ab" * 32, ts=1.0, key_id="0" * 16, signature="c2ln")


class Receiver(BaseHTTPRequestHandler):
    bodies: list[bytes] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        self.bodies.append(self.rfile.read(int(self.headers.get("content-length") or 0)))
        self.send_response(204)
        self.end_headers()


@pytest.fixture
def port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Receiver.bodies.clear()
    yield cast(tuple[str, int], server.server_address)[1]
    server.shutdown()
    server.server_close()


def test_the_configured_origin_is_reached_and_nothing_else(tmp_path: Path, port: int,
                                                          monkeypatch: pytest.MonkeyPatch):
    hosts = tmp_path / "hosts.json"
    hosts.write_text(json.dumps({"anchors.test": ["127.0.0.1"]}))
    monkeypatch.setenv(HOSTS_ENV, str(hosts))
    state = tmp_path / "state"
    literal = AnchorSink(path=None, url=f"http://127.0.0.1:{port}/cp", state_dir=state)
    assert literal.write(CHECKPOINT) == []
    assert json.loads(Receiver.bodies[0]) == json.loads(CHECKPOINT.to_json())
    by_name = AnchorSink(path=None, url=f"http://anchors.test:{port}/cp", state_dir=state)
    [problem] = by_name.write(CHECKPOINT)
    assert "refused by the egress policy" in problem and "loopback" in problem
    assert len(Receiver.bodies) == 1


def test_the_kill_switch_stops_the_webhook(tmp_path: Path, port: int):
    state = tmp_path / "state"
    with KillSwitch(state) as ks:
        ks.kill("egress", "127.0.0.1", "anchor host compromised")
    sink = AnchorSink(path=None, url=f"http://127.0.0.1:{port}/cp", state_dir=state)
    [problem] = sink.write(CHECKPOINT)
    assert "anchor host compromised" in problem and not Receiver.bodies
