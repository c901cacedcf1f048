"""`edgeworks tool run`: a tool's http.fetch follows the manifest's [egress] rules too."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest

from runtime.egress import HOSTS_ENV
from tests.support import run_cli, write_app

MANIFEST = """
[[scripts]]
name = "app"
main = "app.py"

[[scripts.tools]]
name = "get"
kind = "python"
source = "result = edge.call('http.fetch', {'url': input['url']})['status']"
capabilities = ["http.fetch:*.test:*"]

[[egress.rules]]
principals = ["script:app"]
hosts = ["api.test", "meta.test", "127.0.0.1"]
"""


class Ok(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(204)
        self.end_headers()


@pytest.fixture
def port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield cast(tuple[str, int], server.server_address)[1]
    server.shutdown()
    server.server_close()


def test_tool_run_fetches_through_the_egress_rules(tmp_path: Path, port: int, monkeypatch: pytest.MonkeyPatch):
    hosts = tmp_path / "hosts.json"
    hosts.write_text(json.dumps({"api.test": ["127.0.0.1"], "meta.test": ["169.254.169.254"]}))
    monkeypatch.setenv(HOSTS_ENV, str(hosts))
    app = write_app(tmp_path / "app", MANIFEST, {"app.py": "async def fetch(request, env, ctx): pass\n"})
    ok = run_cli("tool", "run", "get", "--input", json.dumps({"url": f"http://api.test:{port}/"}), "--dir", str(app))
    assert ok.returncode == 0 and json.loads(ok.stdout) == 204, ok.stdout + ok.stderr
    refused = run_cli("tool", "run", "get", "--input", json.dumps({"url": "http://meta.test/"}), "--dir", str(app))
    error = json.loads(refused.stdout)["error"]
    assert refused.returncode == 1 and error["code"] == "egress_denied" and "metadata" in error["message"]


def test_tool_run_reports_a_bad_egress_section_with_its_key_path(tmp_path: Path):
    app = write_app(tmp_path / "app", MANIFEST.replace('"127.0.0.1"]', '"bad host"]'),
                    {"app.py": "async def fetch(request, env, ctx): pass\n"})
    bad = run_cli("tool", "run", "get", "--input", "{}", "--dir", str(app))
    assert bad.returncode == 2 and "egress.rules[0].hosts[2]" in bad.stderr
