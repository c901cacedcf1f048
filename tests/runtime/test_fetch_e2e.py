"""Outbound `fetch` from handlers (`from workers import fetch`) against an upstream server on
127.0.0.1: status, headers, bodies, forwarding a Request, redirects, the subrequest limit, and
clear errors for bad URLs and unreachable hosts."""

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support import Server, free_port, write_app

MANIFEST = """
[[scripts]]
name = "app"
main = "app.py"
routes = ["/*"]
vars = {{ UPSTREAM = "http://127.0.0.1:{port}", DEAD = "http://127.0.0.1:{dead}" }}
[scripts.limits]
subrequests = 3
"""

APP = '''
from workers import FetchError, Request, Response, WorkerEntrypoint, fetch

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        up = self.env.UPSTREAM
        if request.path == "/json":
            r = await fetch(up + "/data")
            return Response.json({"status": r.status, "ok": r.ok, "data": await r.json(),
                                  "type": r.headers.get("content-type")})
        if request.path == "/proxy":  # forward the client's request, return the answer as is
            return await fetch(Request(up + "/echo", method=request.method,
                                       headers=request.headers, body=await request.bytes()))
        if request.path == "/post":
            r = await fetch(up + "/echo", method="POST", body="hello", headers={"x-k": "v"})
            return Response.json(await r.json())
        if request.path == "/gzip":
            return await fetch(up + "/gzip")
        if request.path == "/redirect":
            followed = await fetch(up + "/moved")
            manual = await fetch(up + "/moved", redirect="manual")
            return Response.json({"followed": await followed.text(), "manual": manual.status,
                                  "location": manual.headers.get("location")})
        if request.path == "/many":
            return Response.json([(await fetch(up + "/data")).status for _ in range(5)])
        if request.path == "/bad":
            try:
                await fetch("file:///etc/passwd")
            except FetchError as e:
                scheme = str(e)
            try:
                await fetch(self.env.DEAD + "/x")
            except FetchError as e:
                return Response.json({"scheme": scheme, "dead": str(e)})
        return Response("not found", status=404)
'''


class Upstream(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, status, body, headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        if self.path == "/data":
            self._send(200, b'{"n": 1}', [("content-type", "application/json")])
        elif self.path == "/gzip":
            self._send(200, gzip.compress(b"unzipped"), [("content-encoding", "gzip")])
        elif self.path == "/moved":
            self._send(302, b"", [("location", "/data")])
        else:
            self.do_POST()

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        echo = {"method": self.command, "body": body.decode(), "x-k": self.headers.get("x-k")}
        self._send(201, json.dumps(echo).encode(), [("content-type", "application/json")])

    do_PUT = do_POST  # noqa: N815


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    manifest = MANIFEST.format(port=upstream.server_address[1], dead=free_port())
    app = write_app(tmp_path_factory.mktemp("fetch") / "app", manifest, {"app.py": APP})
    try:
        with Server(app) as server, server.client() as c:
            yield c
    finally:
        upstream.shutdown()
        upstream.server_close()
        thread.join()


def test_fetch_json_and_headers(served):
    assert served.get("/json").json() == {"status": 200, "ok": True, "data": {"n": 1},
                                          "type": "application/json"}


def test_fetch_post_with_body_and_headers(served):
    assert served.get("/post").json() == {"method": "POST", "body": "hello", "x-k": "v"}


def test_a_request_can_be_forwarded_and_the_answer_returned_as_is(served):
    r = served.put("/proxy", content=b"payload", headers={"x-k": "client"})
    assert r.status_code == 201
    assert r.json() == {"method": "PUT", "body": "payload", "x-k": "client"}


def test_a_compressed_answer_is_returned_decoded(served):
    r = served.get("/gzip")
    assert r.status_code == 200 and r.content == b"unzipped"
    assert "content-encoding" not in r.headers


def test_redirects_are_followed_unless_manual(served):
    assert served.get("/redirect").json() == {"followed": '{"n": 1}', "manual": 302, "location": "/data"}


def test_each_fetch_is_a_subrequest(served):
    r = served.get("/many")
    assert r.status_code == 503 and r.json()["error"] == "subrequest_limit"
    assert "3" in r.json()["message"]


def test_bad_urls_and_unreachable_hosts_are_clear_errors(served):
    got = served.get("/bad").json()
    assert "needs an http or https URL" in got["scheme"] and "file:///etc/passwd" in got["scheme"]
    assert got["dead"].startswith("fetch http://127.0.0.1:") and "ConnectError" in got["dead"]
