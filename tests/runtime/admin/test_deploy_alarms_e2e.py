"""Durable-object alarms move with the traffic, against a real `edgeworks serve`: a version under
its deploy probe, or refused by it, fires no alarm (the serving version is the only owner of its
objects); once promoted, it fires the alarms the old version left, exactly once."""

import contextlib
import os
import signal
import threading

from runtime.admin.versions import pack_dir
from tests.runtime.admin.test_admin import AUTH_SECTION, bearer, token
from tests.runtime.admin.test_deploy_e2e import deploy, make_app
from tests.support import Server, wait_until

MANIFEST = AUTH_SECTION + """
[deploy]
probe_seconds = PROBE
health_path = "/health"

[[scripts]]
name = "app"
main = "app.py"
pool_size = 2
routes = [{ pattern = "/v", auth = "none" }, { pattern = "/health", auth = "none" },
          { pattern = "/arm", auth = "none" }, { pattern = "/fired", auth = "none" }]
durable_objects = [{ binding = "MARKER", class_name = "Marker" }]
"""

# Every alarm run appends "<version> <pid>" to MARKS (before it can fail: version "one" always
# fails, so its alarm stays stored and keeps being retried); a successful run records its version.
APP = '''
import asyncio, os, time
from workers import DurableObject, Response

VERSION = "@VERSION@"
MARKS = @MARKS@


class Marker(DurableObject):
    async def arm(self):
        await self.ctx.storage.set_alarm(int(time.time() * 1000) + 50)

    async def fired(self):
        return await self.ctx.storage.get("fired") or []

    async def alarm(self, info):
        with open(MARKS, "a") as f:
            f.write(f"{VERSION} {os.getpid()}\\n")
        if VERSION == "one":
            raise RuntimeError("version one never completes an alarm")
        await self.ctx.storage.put("fired", [*(await self.ctx.storage.get("fired") or []), VERSION])


async def fetch(request, env, ctx):
    stub = env.MARKER.get_by_name("m")
    if request.path == "/health":
        if VERSION == "sick":
            await asyncio.sleep(1)  # time enough for an overdue alarm to fire, were it allowed to
            return Response("down", status=500)
        return Response("ok")
    if request.path == "/arm":
        await stub.arm()
        return Response("armed")
    if request.path == "/fired":
        return Response.json(await stub.fired())
    return Response(VERSION)
'''


def app_dir(root, version: str, marks, probe: float):
    text = APP.replace("@VERSION@", version).replace("@MARKS@", repr(str(marks)))
    return make_app(root / version, version, MANIFEST.replace("PROBE", str(probe)), **{"app.py": text})


def fired_by(marks) -> list[str]:
    return [line.split()[0] for line in marks.read_text().splitlines()] if marks.exists() else []


@contextlib.contextmanager
def served_with_a_pending_alarm(tmp_path):
    """A server on version "one" with one due alarm that "one" keeps failing (so it stays stored)."""
    marks = tmp_path / "marks.txt"
    with Server(app_dir(tmp_path, "one", marks, 0.2), "serve", admin_token=token()) as server, \
            server.client(headers=bearer(token())) as c:
        assert c.post("/arm").text == "armed"
        wait_until(lambda: "one" in fired_by(marks))
        yield server, c, marks


def test_a_version_refused_by_its_probe_fires_no_alarm(tmp_path):
    with served_with_a_pending_alarm(tmp_path) as (server, c, marks):
        # its isolates live through a failing health check (1 s), with an alarm overdue
        r = deploy(c, pack_dir(app_dir(tmp_path, "sick", marks, 3)))
        assert (r.status_code, r.json()["error"]) == (422, "deploy_unhealthy"), r.text
        assert "sick" not in fired_by(marks)
        assert c.get("/v").text == "one"


def test_a_version_fires_alarms_only_once_promoted_and_the_old_one_no_more(tmp_path):
    with served_with_a_pending_alarm(tmp_path) as (server, c, marks):
        result: dict = {}
        bundle = pack_dir(app_dir(tmp_path, "two", marks, 4))

        def deploy_two():
            with server.client(headers=bearer(token())) as admin:
                result["r"] = deploy(admin, bundle)

        worker = threading.Thread(target=deploy_two)
        worker.start()
        checked = 0
        while worker.is_alive():  # under its probe: while "one" still serves, "two" fires nothing
            seen = fired_by(marks)
            if c.get("/v").text == "one":  # so "two" was not promoted yet when `seen` was read
                assert "two" not in seen, seen
                checked += 1
        worker.join()
        assert result["r"].status_code == 201, result["r"].text
        assert checked > 0

        # promoted: the alarm "one" left fires in "two", once, and "one" fires no more
        assert wait_until(lambda: c.get("/fired").json() == ["two"], timeout=20)
        seen = fired_by(marks)
        assert seen.count("two") == 1 and "one" not in seen[seen.index("two"):], seen

        # an isolate of the serving version that dies is respawned active: it fires alarms
        old = set(server.pids("app"))
        for pid in old:
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: len(set(server.pids("app")) - old) == 2)
        assert c.post("/arm").text == "armed"
        assert wait_until(lambda: c.get("/fired").json() == ["two", "two"], timeout=20)
