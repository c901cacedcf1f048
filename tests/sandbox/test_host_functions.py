"""Capability-scoped host functions reached from core wasm guests through the `edge` imports."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sandbox import ToolError, ToolSpec

from .conftest import ALLOC, edge_call_wat, pack


def kv_import_wat(fn: str) -> str:
    return f"""(module
  (import "edge" "{fn}" (func $f (param i32 i32) (result i64)))
  {ALLOC}
  (func (export "run") (param $p i32) (param $n i32) (result i64)
    (call $f (local.get $p) (local.get $n))))"""


FOREIGN_IMPORT = f"""(module
  (import "env" "system" (func $f (param i32) (result i32)))
  {ALLOC}
  (func (export "run") (param i32 i32) (result i64) {pack("(i32.const 0)", "(i32.const 0)")}))"""
UNKNOWN_EDGE_IMPORT = f"""(module
  (import "edge" "spawn_process" (func $f (param i32 i32) (result i64)))
  {ALLOC}
  (func (export "run") (param i32 i32) (result i64) {pack("(i32.const 0)", "(i32.const 0)")}))"""


class Loopback:
    """A loopback HTTP server that counts the connections it accepts."""

    def __init__(self, body: bytes = b'{"hello":"world"}'):
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.requests.append(self.path)
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def loopback():
    server = Loopback()
    yield server
    server.close()


@pytest.fixture
def big_loopback():
    server = Loopback(body=b"x" * 300_000)
    yield server
    server.close()


def test_import_of_ungranted_host_function_fails_cleanly(make_sandbox, authority, audit_log):
    sb = make_sandbox([ToolSpec(name="put", kind="wasm", source=kv_import_wat("kv_put"),
                                capabilities=["kv.write:notes/", "kv.read:notes/"])])
    token = authority.mint("script:app", ["kv.read:notes/"], tenant="t1")
    with pytest.raises(ToolError) as info:
        sb.run_sync("put", {"key": "notes/a", "value": 1}, token=token)
    assert info.value.code == "capability_denied"
    assert "edge.kv_put" in info.value.message and "kv.write" in info.value.message
    denied = [f for k, f in audit_log if k == "sandbox.denied"]
    assert denied and denied[0]["function"] == "edge.kv_put"
    call = [f for k, f in audit_log if k == "sandbox.call"][-1]
    assert call["outcome"] == "capability_denied" and call["caps_denied"] == ["kv.write:*"]


def test_import_of_granted_host_function_links_and_answers(make_sandbox, authority):
    sb = make_sandbox([
        ToolSpec(name="put", kind="wasm", source=kv_import_wat("kv_put"), capabilities=["kv.write:notes/"]),
        ToolSpec(name="get", kind="wasm", source=kv_import_wat("kv_get"), capabilities=["kv.read:notes/"]),
    ])
    token = authority.mint("script:app", ["kv.write:notes/", "kv.read:notes/"], tenant="t1")
    assert sb.run_sync("put", {"key": "notes/a", "value": {"n": 1}}, token=token) == {"ok": True, "value": None}
    assert sb.run_sync("get", {"key": "notes/a"}, token=token) == {"ok": True, "value": {"n": 1}}
    # a key outside the granted prefix is refused at call time, naming the capability
    answer = sb.run_sync("get", {"key": "secret/a"}, token=token)
    assert answer["ok"] is False
    assert answer["error"]["code"] == "capability_denied"
    assert answer["error"]["capability"] == "kv.read:secret/a"


def test_kv_is_scoped_by_tenant(make_sandbox, authority):
    sb = make_sandbox([
        ToolSpec(name="put", kind="wasm", source=kv_import_wat("kv_put"), capabilities=["kv.write:*"]),
        ToolSpec(name="get", kind="wasm", source=kv_import_wat("kv_get"), capabilities=["kv.read:*"]),
    ])
    t1 = authority.mint("script:app", ["kv.write:*", "kv.read:*"], tenant="t1")
    t2 = authority.mint("script:app", ["kv.write:*", "kv.read:*"], tenant="t2")
    sb.run_sync("put", {"key": "k", "value": "one"}, token=t1)
    assert sb.run_sync("get", {"key": "k"}, token=t2)["value"] is None
    assert sb.run_sync("get", {"key": "k"}, token=t1)["value"] == "one"


def test_tool_declared_capabilities_bound_the_token(make_sandbox, authority):
    sb = make_sandbox([ToolSpec(name="get", kind="wasm", source=kv_import_wat("kv_get"),
                                capabilities=["kv.read:public/"])])
    token = authority.mint("script:app", ["kv.read:*"], tenant="t1")
    answer = sb.run_sync("get", {"key": "private/x"}, token=token)
    assert answer["error"]["code"] == "capability_denied"


@pytest.mark.parametrize("wat", [FOREIGN_IMPORT, UNKNOWN_EDGE_IMPORT])
def test_imports_the_sandbox_never_provides_are_capability_denied(make_sandbox, authority, wat, audit_log):
    sb = make_sandbox([ToolSpec(name="t", kind="wasm", source=wat)])
    for _ in range(2):  # refused the same way on every call, and audited each time
        with pytest.raises(ToolError) as info:
            sb.run_sync("t", {}, token=authority.mint("script:app", ["log"]))
        assert info.value.code == "capability_denied"
    assert len([1 for k, _ in audit_log if k == "sandbox.denied"]) == 2


def fetch_tool(url: str, caps: list[str]) -> ToolSpec:
    return ToolSpec(
        name="fetch", kind="wasm", source=edge_call_wat("http.fetch", json.dumps({"url": url})),
        capabilities=caps,
    )


def test_http_fetch_to_allowlisted_loopback_host(make_sandbox, authority, loopback):
    cap = f"http.fetch:127.0.0.1:{loopback.port}"
    sb = make_sandbox([fetch_tool(f"http://127.0.0.1:{loopback.port}/ping", [cap])])
    answer = sb.run_sync("fetch", {}, token=authority.mint("script:app", [cap]))
    assert answer["ok"] is True
    assert answer["value"]["status"] == 200
    assert json.loads(answer["value"]["body"]) == {"hello": "world"}
    assert loopback.requests == ["/ping"]


def test_http_fetch_to_other_host_is_denied_without_connecting(make_sandbox, authority, loopback, audit_log):
    granted = f"http.fetch:127.0.0.1:{loopback.port + 1 if loopback.port < 65535 else 1}"
    sb = make_sandbox([fetch_tool(f"http://127.0.0.1:{loopback.port}/ping", ["http.fetch:127.0.0.1:*"])])
    answer = sb.run_sync("fetch", {}, token=authority.mint("script:app", [granted]))
    assert answer["ok"] is False
    assert answer["error"]["code"] == "capability_denied"
    assert answer["error"]["capability"] == f"http.fetch:127.0.0.1:{loopback.port}"
    assert loopback.requests == []
    assert [f["capability"] for k, f in audit_log if k == "sandbox.denied"] == [
        f"http.fetch:127.0.0.1:{loopback.port}"
    ]


def test_http_fetch_response_size_is_capped(make_sandbox, authority, big_loopback):
    from sandbox import SandboxConfig

    cap = f"http.fetch:127.0.0.1:{big_loopback.port}"
    sb = make_sandbox(
        [fetch_tool(f"http://127.0.0.1:{big_loopback.port}/big", [cap])],
        config=SandboxConfig(http_max_response_bytes=100_000),
    )
    answer = sb.run_sync("fetch", {}, token=authority.mint("script:app", [cap]))
    assert answer["error"]["code"] == "output_limit"


def test_edge_call_of_unknown_function_is_an_error_answer(make_sandbox, authority):
    sb = make_sandbox([ToolSpec(name="t", kind="wasm", source=edge_call_wat("os.system", "{}"), capabilities=["log"])])
    answer = sb.run_sync("t", {}, token=authority.mint("script:app", ["log"]))
    assert answer["ok"] is False and answer["error"]["code"] == "bad_input"
