"""The egress client against a server on 127.0.0.1: the assertion header from an identity
callable, redirects followed hop by hop, the size cap, the sync twin, kills by host pattern, the
hosts-file resolver; and bad [egress] sections refused with their key paths."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest

from runtime.config import ConfigError, load_app
from runtime.egress import (
    ASSERTION_HEADER,
    EgressClient,
    EgressConfig,
    EgressDenied,
    EgressPolicy,
    ResolveError,
    ResponseTooLarge,
    StaticResolver,
    SystemResolver,
)
from tests.support import write_app


class Echo(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        port = cast(tuple[str, int], self.server.server_address)[1]
        if self.path == "/hop":
            self.send_response(302)
            self.send_header("location", f"http://other.test:{port}/echo")
            self.send_header("content-length", "0")
            self.end_headers()
            return
        body = b"x" * 5000 if self.path == "/big" else json.dumps(dict(self.headers.items())).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield cast(tuple[str, int], server.server_address)[1]
    server.shutdown()
    server.server_close()


class Kills:
    def __init__(self, names: Mapping[str, str]) -> None:
        self._names = dict(names)

    def names(self, kind: str) -> dict[str, str]:
        return self._names if kind == "egress" else {}


RESOLVER = StaticResolver({"api.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})


def client(rules: list[dict[str, Any]], audit: list[tuple[str, dict[str, Any]]] | None = None,
           **kw: Any) -> EgressClient:
    policy = EgressPolicy.build(EgressConfig.model_validate({"rules": rules}), dev=False)
    hook = (lambda kind, fields: audit.append((kind, fields))) if audit is not None else None
    return EgressClient(policy, audit=hook, kills=kw.pop("kills", None), resolver=RESOLVER, **kw)


def test_a_rule_with_assert_identity_sends_the_principals_assertion_for_the_target_origin(port: int):
    asked: list[tuple[str, str]] = []

    def identity(principal: str, audience: str) -> str:
        asked.append((principal, audience))
        return "signed.jwt.value"

    c = client([{"hosts": ["api.test", "127.0.0.1"], "assert_identity": True}], identity=identity)
    r = asyncio.run(c.request("GET", f"http://api.test:{port}/echo", principal="workflow:app/Agent", level="internal",
                              headers={ASSERTION_HEADER: "forged"}))
    assert r.json()[ASSERTION_HEADER] == "signed.jwt.value"
    assert asked == [("workflow:app/Agent", f"http://api.test:{port}")]
    plain = client([{"hosts": ["api.test", "127.0.0.1"]}], identity=identity)
    assert ASSERTION_HEADER not in plain.request_sync("GET", f"http://api.test:{port}/echo", principal="script:app",
                                                      level="internal").json()


def test_each_redirect_hop_is_checked_and_audited(port: int):
    audit: list[tuple[str, dict[str, Any]]] = []
    c = client([{"hosts": ["api.test", "other.test", "127.0.0.1"]}], audit)
    r = c.request_sync("GET", f"http://api.test:{port}/hop", principal="script:app", level="internal",
                       request_id="rid-1", follow_redirects=True)
    assert r.status_code == 200
    assert [(k, f["host"], f["hop"], f["status"]) for k, f in audit] == [
        ("egress.request", "api.test", 0, 302), ("egress.request", "other.test", 1, 200)]
    assert all(f["request_id"] == "rid-1" and f["address"] == "127.0.0.1" for _, f in audit)
    manual = c.request_sync("GET", f"http://api.test:{port}/hop", principal="script:app", level="internal")
    assert manual.status_code == 302


def test_a_redirect_to_a_host_the_rules_refuse_raises_reason_redirect(port: int):
    c = client([{"hosts": ["api.test", "127.0.0.1"]}])
    with pytest.raises(EgressDenied) as e:
        asyncio.run(c.request("GET", f"http://api.test:{port}/hop", principal="script:app", level="internal",
                              follow_redirects=True))
    assert e.value.reason == "redirect" and "other.test" in e.value.message


def test_an_answer_past_max_bytes_is_refused(port: int):
    c = client([{"hosts": ["api.test", "127.0.0.1"]}])
    with pytest.raises(ResponseTooLarge):
        c.request_sync("GET", f"http://api.test:{port}/big", principal="script:app", level="internal", max_bytes=100)


def test_a_kill_by_host_pattern_refuses_before_the_rules(port: int):
    audit: list[tuple[str, dict[str, Any]]] = []
    c = client([{"hosts": ["*"]}], audit, kills=Kills({"*.test": "incident 42"}))
    with pytest.raises(EgressDenied) as e:
        c.request_sync("GET", f"http://api.test:{port}/echo", principal="script:app", level="internal")
    assert e.value.reason == "killed" and "incident 42" in e.value.message
    assert audit[0][0] == "egress.denied" and audit[0][1]["reason"] == "killed"


def test_only_http_and_https_urls_go_out():
    c = client([{"hosts": ["*"]}])
    with pytest.raises(EgressDenied) as e:
        c.request_sync("GET", "ftp://api.test/x", principal="script:app", level="internal")
    assert e.value.reason == "scheme"


def test_the_hosts_file_is_consulted_before_dns(tmp_path: Path):
    path = tmp_path / "hosts.json"
    path.write_text(json.dumps({"Api.Test": ["127.0.0.2", "::1"]}))
    resolver = SystemResolver(str(path))
    assert resolver.resolve_sync("api.test.", 80) == ["127.0.0.2", "::1"]
    assert asyncio.run(resolver.resolve("10.1.2.3", 80)) == ["10.1.2.3"]
    path.write_text(json.dumps({"api.test": ["not an address"]}))
    os.utime(path, (1, 1))
    with pytest.raises(ResolveError, match="EDGEWORKS_EGRESS_HOSTS"):
        resolver.resolve_sync("api.test", 80)


BAD = """
[[scripts]]
name = "app"
main = "app.py"

[[egress.rules]]
principals = ["script:app", "nobody"]
schemes = ["ftp"]
hosts = ["ok.example", "bad host"]
ports = [0]
max_level = "secret"

[[egress.rules]]
hosts = []
colour = "red"
"""


def test_bad_egress_sections_are_refused_with_their_key_paths(tmp_path: Path):
    app = write_app(tmp_path / "app", BAD, {"app.py": "async def fetch(request, env, ctx): pass\n"})
    with pytest.raises(ConfigError) as e:
        load_app(app)
    text = str(e.value)
    for path in ("egress.rules[0].principals[1]", "egress.rules[0].schemes[0]", "egress.rules[0].hosts[1]",
                 "egress.rules[0].ports[0]", "egress.rules[1].hosts", "egress.rules[1].colour: unknown key"):
        assert path in text, text
    fixed = BAD.replace(', "nobody"', "").replace('"ftp"', '"https"').replace(', "bad host"', "").replace("[0]", "[443]")
    fixed = fixed[:fixed.index("[[egress.rules]]\nhosts = []")]
    write_app(app, fixed, {})
    with pytest.raises(ConfigError, match=r"egress\.rules\[0\]\.max_level: 'secret' is not one of"):
        load_app(app)
