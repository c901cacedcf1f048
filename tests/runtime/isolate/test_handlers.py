"""Handler API end to end: class and function styles, Request and Response, streaming,
service bindings (fetch and RPC), module isolation between scripts, load errors."""

import pytest

from tests.support import Server, run_cli, write_app

MANIFEST = """
[[scripts]]
name = "cls"
main = "cls_style.py"
routes = ["/cls/*"]
[scripts.vars]
NAME = "class-style"
[[scripts.services]]
binding = "FN"
service = "fn"
[[scripts.services]]
binding = "MATH"
service = "fn"
entrypoint = "Math"

[[scripts]]
name = "fn"
main = "fn_style.py"
routes = ["/fn/*", "/users/{user}/posts/{post}"]
"""

CLS = '''
import json
from workers import Response, WorkerEntrypoint
import shared

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        p = request.path
        if p == "/cls/info":
            return Response.json({
                "method": request.method, "query": request.query, "path": request.path,
                "header": request.headers.get("x-thing"), "text": await request.text(),
                "name": self.env.NAME, "rid": self.ctx.request_id,
            })
        if p == "/cls/stream":
            async def gen():
                for i in range(5):
                    yield f"chunk{i};"
            return Response(gen(), headers={"content-type": "text/plain"})
        if p == "/cls/redirect":
            return Response.redirect("/cls/info", 307)
        if p == "/cls/status":
            return Response(b"\\x00\\x01", status=418, headers={"x-a": "1"})
        if p == "/cls/bump":
            shared.COUNTER += 1
            return Response(str(shared.COUNTER))
        if p == "/cls/svc-fetch":
            r = await self.env.FN.fetch("/fn/hello", headers={"x-from": "cls"})
            return Response.json({"status": r.status, "body": await r.text()})
        if p == "/cls/svc-rpc":
            total = await self.env.MATH.add(2, 3)
            try:
                await self.env.MATH.fail()
            except Exception as e:
                err = str(e)
            try:
                await self.env.MATH._private()
            except AttributeError as e:
                priv = "blocked"
            return Response.json({"total": total, "err": err, "private": priv})
        if p == "/cls/bad-return":
            return "not a response"
        if p == "/cls/inject":
            return Response("x", headers={"x-a": "1\\r\\nset-cookie: pwned=1"})
        if p == "/cls/badname":
            return Response("x", headers={"bad name": "1"})
        if p == "/cls/raise":
            raise ValueError("boom")
        return Response("?", status=404)
'''

FN = '''
from workers import Response, WorkerEntrypoint
import shared

class Math(WorkerEntrypoint):
    async def add(self, a, b):
        return a + b
    async def fail(self):
        raise RuntimeError("rpc failure")

async def fetch(request, env, ctx):
    if request.path == "/fn/hello":
        return Response("fn says hi from " + (request.headers.get("x-from") or "outside"))
    if request.path == "/fn/counter":
        return Response(str(shared.COUNTER))
    if request.params:
        return Response.json(request.params)
    return Response("?", status=404)
'''

SHARED = "COUNTER = 0\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app = write_app(tmp_path_factory.mktemp("handlers") / "app", MANIFEST,
                    {"cls_style.py": CLS, "fn_style.py": FN, "shared.py": SHARED})
    with Server(app) as s:
        yield s


def test_class_style_request_api(server):
    with server.client() as c:
        r = c.post("/cls/info?a=1&b=two", content="payload", headers={"x-thing": "yes"})
    body = r.json()
    assert body == {"method": "POST", "query": {"a": "1", "b": "two"}, "path": "/cls/info",
                    "header": "yes", "text": "payload", "name": "class-style",
                    "rid": r.headers["x-request-id"]}


def test_function_style_and_path_params(server):
    with server.client() as c:
        assert c.get("/fn/hello").text == "fn says hi from outside"
        assert c.get("/users/ada/posts/7").json() == {"user": "ada", "post": "7"}


def test_streamed_response(server):
    with server.client() as c, c.stream("GET", "/cls/stream") as r:
        chunks = list(r.iter_text())
    assert "".join(chunks) == "chunk0;chunk1;chunk2;chunk3;chunk4;"


def test_redirect_status_and_binary_body(server):
    with server.client() as c:
        r = c.get("/cls/redirect")
        s = c.get("/cls/status")
    assert r.status_code == 307 and r.headers["location"] == "/cls/info"
    assert s.status_code == 418 and s.content == b"\x00\x01" and s.headers["x-a"] == "1"


def test_service_binding_fetch(server):
    with server.client() as c:
        r = c.get("/cls/svc-fetch")
    assert r.json() == {"status": 200, "body": "fn says hi from cls"}


def test_service_binding_rpc(server):
    with server.client() as c:
        r = c.get("/cls/svc-rpc")
    body = r.json()
    assert body["total"] == 5
    assert "rpc failure" in body["err"]
    assert body["private"] == "blocked"


def test_scripts_do_not_share_module_globals(server):
    with server.client() as c:
        assert c.get("/cls/bump").text == "1"
        assert c.get("/cls/bump").text == "2"
        # `fn` imports the same module file, in its own isolate: its global is untouched
        assert c.get("/fn/counter").text == "0"


def test_uncaught_exception_is_500_json_with_traceback_in_dev(server):
    with server.client() as c:
        r = c.get("/cls/raise")
        bad = c.get("/cls/bad-return")
    assert r.status_code == 500
    body = r.json()
    assert body["error"] == "exception" and body["cf_code"] == 1101
    assert "ValueError: boom" in body["message"]
    assert "Traceback" in body["traceback"]
    assert body["request_id"] == r.headers["x-request-id"]
    assert bad.status_code == 500 and "expected Response" in bad.json()["message"]


def test_serve_mode_hides_tracebacks_but_logs_them(tmp_path):
    app = write_app(tmp_path / "app", MANIFEST, {"cls_style.py": CLS, "fn_style.py": FN, "shared.py": SHARED})
    with Server(app, mode="serve") as s, s.client() as c:
        r = c.get("/cls/raise")
        body = r.json()
        assert r.status_code == 500
        assert "traceback" not in body and "boom" not in body["message"]
        from tests.support import wait_until

        wait_until(lambda: "ValueError: boom" in s.output())


def test_import_error_stops_startup_with_a_clear_message(tmp_path):
    app = write_app(tmp_path / "app", """
        [[scripts]]
        name = "app"
        main = "app.py"
        routes = ["/x"]
    """, {"app.py": "import does_not_exist_anywhere\n"})
    out = run_cli("serve", str(app), "--port", "0", "--state-dir", str(tmp_path / "state"))
    assert out.returncode == 3
    assert "importing app.py failed: ModuleNotFoundError" in out.stderr


def test_missing_fetch_handler_is_a_load_error(tmp_path):
    app = write_app(tmp_path / "app", """
        [[scripts]]
        name = "app"
        main = "app.py"
        routes = ["/x"]
    """, {"app.py": "X = 1\n"})
    out = run_cli("serve", str(app), "--port", "0", "--state-dir", str(tmp_path / "state"))
    assert out.returncode == 3
    assert "no fetch handler" in out.stderr


def test_responses_with_header_injection_are_refused(server):
    with server.client() as c:
        inj = c.get("/cls/inject")
        bad = c.get("/cls/badname")
    assert inj.status_code == 500 and inj.json()["error"] == "invalid_response"
    assert "set-cookie" not in inj.headers
    assert bad.status_code == 500 and "invalid response header name" in bad.json()["message"]


def test_sys_exit_in_a_handler_fails_that_request_and_the_isolate_keeps_serving(tmp_path):
    app = write_app(tmp_path / "app", '[[scripts]]\nname = "app"\nmain = "app.py"\nroutes = ["/*"]\n', {"app.py": """
        import os, sys
        from workers import Response

        async def fetch(request, env, ctx):
            if request.path == "/exit":
                sys.exit(3)
            return Response(str(os.getpid()))
    """})
    with Server(app) as server, server.client() as c:
        pid = c.get("/pid").text
        r = c.get("/exit")
        assert r.status_code == 500 and r.json()["error"] == "exception"
        assert "SystemExit" in r.json()["message"]
        assert c.get("/pid").text == pid
