"""Errors keep their code across every hop: when the isolate serving a durable object or a
service-binding call is killed (-9) while calls are in flight from a handler in another
isolate, the handler's client gets 503 `isolate_restarted` (as it would from a direct request),
never a 500 "the handler raised an exception"."""

import concurrent.futures
import os
import signal

from tests.support import Server, wait_until, write_app

MANIFEST = """
[[scripts]]
name = "app"
main = "app.py"
pool_size = 2
durable_objects = [{ binding = "COUNTER", class_name = "Counter" }]

[[scripts]]
name = "gw"
main = "gw.py"
routes = ["/obj/{name}", "/svc", "/pid/{name}", "/inflight/{name}"]
durable_objects = [{ binding = "COUNTER", class_name = "Counter", script = "app" }]
services = [{ binding = "APP", service = "app" }]
"""

APP = '''
import asyncio, os
from workers import DurableObject, WorkerEntrypoint

MARKS = os.path.join(os.path.dirname(__file__), "svc.log")

class Counter(DurableObject):
    inflight = 0

    async def hang(self):
        Counter.inflight += 1
        await asyncio.sleep(30)
        return "late"

    async def count(self):
        return Counter.inflight

    async def pid(self):
        return os.getpid()

class Default(WorkerEntrypoint):
    async def hang(self):
        fd = os.open(MARKS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, b"x")
        os.close(fd)
        await asyncio.sleep(30)
        return "late"
'''

GW = '''
from workers import Response

async def fetch(request, env, ctx):
    p = request.path
    if p == "/svc":
        return Response(await env.APP.hang())
    stub = env.COUNTER.get_by_name(request.params["name"])
    if p.startswith("/obj/"):
        return Response(await stub.hang())
    if p.startswith("/pid/"):
        return Response.json(await stub.pid())
    return Response.json(await stub.count())
'''


def test_calls_in_flight_to_a_killed_isolate_answer_503_isolate_restarted(tmp_path):
    app = write_app(tmp_path / "app", MANIFEST, {"app.py": APP, "gw.py": GW})
    objects, services = 6, 4
    with Server(app, args=("--quiet",)) as server, server.client(timeout=60) as c, \
            concurrent.futures.ThreadPoolExecutor(objects + services) as pool:
        owner = c.get("/pid/k").json()
        app_pids = server.pids("app")
        assert owner in app_pids
        calls = [pool.submit(c.get, "/obj/k") for _ in range(objects)]
        calls += [pool.submit(c.get, "/svc") for _ in range(services)]
        # every call is in flight inside the app's isolates before they are killed
        wait_until(lambda: c.get("/inflight/k").json() == objects, timeout=20)
        marks = app / "svc.log"
        wait_until(lambda: marks.exists() and len(marks.read_bytes()) == services, timeout=20)
        for pid in app_pids:
            os.kill(pid, signal.SIGKILL)
        answers = [f.result() for f in calls]
        wait_until(lambda: len(server.pids("app")) == 2, timeout=20)  # respawned; still serving
        assert c.get("/pid/k").status_code == 200
    got = [(r.status_code, r.json().get("error")) for r in answers]
    assert got == [(503, "isolate_restarted")] * (objects + services), [r.text for r in answers]
    assert all(isinstance(r.json().get("request_id"), str) for r in answers)
    assert "cf_code" not in answers[0].json()  # a restart is not a Cloudflare 1101/1102 error
