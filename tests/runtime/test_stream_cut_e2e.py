"""A streamed body cut short (the handler raises mid-stream, or its isolate dies) reaches the
client as a truncated response it can tell from a complete one, never as a clean end."""

import httpx
import pytest

from tests.support import Server, wait_until, write_app

MANIFEST = """
[[scripts]]
name = "app"
main = "app.py"
routes = ["/s/*"]

[[scripts]]
name = "caller"
main = "caller.py"
routes = ["/via/*"]
[[scripts.services]]
binding = "APP"
service = "app"
"""

CALLER = '''
from workers import Response

async def fetch(request, env, ctx):
    try:
        r = await env.APP.fetch("/s/" + request.path.rsplit("/", 1)[1])
    except Exception as e:
        return Response.json({"code": getattr(e, "code", None), "status": getattr(e, "status", None)})
    return Response.json({"body": await r.text()})
'''

APP = '''
import asyncio
import os
from workers import Response

async def fetch(request, env, ctx):
    async def gen():
        yield "first;"
        await asyncio.sleep(0.05)
        if request.path == "/s/raise":
            raise RuntimeError("broke mid-stream")
        if request.path == "/s/die":
            os._exit(1)
        yield "last;"
    return Response(gen(), headers={"content-type": "text/plain"})
'''


@pytest.mark.parametrize("path", ["/s/raise", "/s/die"])
def test_a_stream_cut_short_is_a_truncated_response_not_a_complete_one(tmp_path, path):
    app = write_app(tmp_path / "app", MANIFEST, {"app.py": APP, "caller.py": CALLER})
    with Server(app) as server, server.client() as c:
        assert c.get("/s/ok").text == "first;last;"
        received = b""
        with pytest.raises(httpx.RemoteProtocolError), c.stream("GET", path) as r:
            assert r.status_code == 200
            for chunk in r.iter_raw():
                received += chunk
        assert received == b"first;"
        # the runtime keeps serving (a new isolate, when the old one died)
        wait_until(lambda: c.get("/s/ok").text == "first;last;", timeout=20)
        cut = [rec for rec in server.logs("request") if rec["path"] == path]
        assert cut and cut[0]["error"] == "stream_cut"


def test_a_streamed_response_reaches_a_service_binding_whole_and_a_cut_one_as_an_error(tmp_path):
    app = write_app(tmp_path / "app", MANIFEST, {"app.py": APP, "caller.py": CALLER})
    with Server(app) as server, server.client() as c:
        assert c.get("/via/ok").json() == {"body": "first;last;"}  # all chunks, not just the head
        assert c.get("/via/raise").json() == {"code": "stream_cut", "status": 502}
