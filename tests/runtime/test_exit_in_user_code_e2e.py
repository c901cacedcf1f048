"""`sys.exit()` anywhere in user code (a wait_until task, a durable object's method, constructor or
alarm, a workflow's run or step) fails that piece of work, never the isolate: asyncio re-raises
SystemExit out of its event loop, which would end the process and every request on it."""

import pytest

from tests.support import Server, wait_until, write_app

MANIFEST = """
[[scripts]]
name = "app"
main = "app.py"
routes = ["/do/{what}", "/pid", "/flag"]
durable_objects = [{ binding = "OBJ", class_name = "Obj" }]
workflows = [{ binding = "JOB", class_name = "Job" }]
"""

APP = '''
import os
import sys
from workers import DurableObject, Response, WorkflowEntrypoint

FLAG = os.path.join(os.path.dirname(__file__), "flag")

class Obj(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        if ctx.id.name == "exit-in-constructor":
            sys.exit(4)

    async def exit(self):
        sys.exit(5)

    async def hello(self):
        return "hi"

    async def arm(self):
        await self.ctx.storage.set_alarm(0)

    async def alarm(self, info=None):
        open(FLAG, "w").write("alarm ran")
        sys.exit(6)

class Job(WorkflowEntrypoint):
    async def run(self, event, step):
        if event.payload.get("where") == "run":
            sys.exit(7)
        return await step.do("boom", lambda: sys.exit(8), retries={"limit": 0})

async def fetch(request, env, ctx):
    what = request.params.get("what")
    if request.path == "/pid":
        return Response(str(os.getpid()))
    if request.path == "/flag":
        return Response(open(FLAG).read() if os.path.exists(FLAG) else "")
    if what == "wait_until":
        async def later():
            sys.exit(2)
        ctx.wait_until(later())
        return Response("ok")
    if what in ("method", "constructor"):
        stub = env.OBJ.get_by_name("exit-in-constructor" if what == "constructor" else "x")
        try:
            await (stub.hello() if what == "constructor" else stub.exit())
        except Exception as e:
            return Response(type(e).__name__ + ": " + str(e))
        return Response("no error")
    if what == "alarm":
        await env.OBJ.get_by_name("alarmed").arm()
        return Response("armed")
    if what in ("run", "step"):
        instance = await env.JOB.create(params={"where": what})
        return Response(instance.id)
    if what.startswith("status-"):
        return Response.json(await (await env.JOB.get(what[7:])).status())
    return Response("?", status=404)
'''


@pytest.fixture
def server(tmp_path):
    with Server(write_app(tmp_path / "app", MANIFEST, {"app.py": APP})) as s:
        yield s


def test_sys_exit_in_user_code_fails_the_work_not_the_isolate(server):
    with server.client() as c:
        pid = c.get("/pid").text
        assert c.get("/do/wait_until").text == "ok"
        for what in ("method", "constructor"):
            r = c.get(f"/do/{what}")
            assert r.status_code == 200 and "SystemExit" in r.text, r.text
        assert c.get("/do/alarm").text == "armed"
        wait_until(lambda: c.get("/flag").text == "alarm ran")
        for what in ("run", "step"):
            wid = c.get(f"/do/{what}").text
            wait_until(lambda wid=wid: c.get(f"/do/status-{wid}").json().get("status") == "errored", timeout=30)
            error = c.get(f"/do/status-{wid}").json()["error"]
            assert "exit" in str(error).lower(), error
        assert c.get("/pid").text == pid  # the same isolate served it all
    assert not server.logs("isolate_died")
