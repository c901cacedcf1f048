"""`edgeworks dev` reloads a changed script without dropping requests; cron triggers fire."""

import threading
import time

import httpx

from tests.support import Server, wait_until, write_app

MANIFEST = """
[[scripts]]
name = "app"
main = "app.py"
routes = ["/v", "/slow"]
crons = ["* * * * * *"]   # every second (a sixth field is seconds)
"""

APP = '''
import asyncio, os
from workers import Response

VERSION = "{version}"

async def fetch(request, env, ctx):
    if request.path == "/slow":
        await asyncio.sleep(0.3)
    return Response(VERSION)

async def scheduled(controller, env, ctx):
    with open(os.path.join(os.path.dirname(__file__), "cron.log"), "a") as f:
        f.write(controller.cron + "\\n")
'''


def test_reload_under_concurrent_requests_drops_nothing(tmp_path):
    app = write_app(tmp_path / "app", MANIFEST, {"app.py": APP.format(version="one")})
    (tmp_path / "app" / ".edgeworks").mkdir()
    marker = tmp_path / "app" / ".edgeworks" / "keep-me"
    marker.write_text("state")
    with Server(app) as server:
        failures: list[str] = []
        seen: list[str] = []
        stop = threading.Event()

        def hammer(path: str) -> None:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                while not stop.is_set():
                    try:
                        r = c.get(path)
                        if r.status_code != 200:
                            failures.append(f"{r.status_code} {r.text}")
                        else:
                            seen.append(r.text)
                    except httpx.HTTPError as e:
                        failures.append(repr(e))

        threads = [threading.Thread(target=hammer, args=(p,)) for p in ("/v", "/v", "/slow", "/slow")]
        for t in threads:
            t.start()
        wait_until(lambda: len(seen) > 20)
        (app / "app.py").write_text(APP.format(version="two"))
        t_changed = time.monotonic()
        wait_until(lambda: seen[-1] == "two" and seen[-4:] == ["two"] * 4 if len(seen) > 4 else False, timeout=15)
        reload_s = time.monotonic() - t_changed
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join()
        assert failures == []
        assert "one" in seen and "two" in seen
        assert marker.read_text() == "state"
        assert server.logs("reloaded")
        print(f"reload visible after {reload_s:.2f}s")


def test_broken_reload_keeps_the_old_version_serving(tmp_path):
    app = write_app(tmp_path / "app", MANIFEST, {"app.py": APP.format(version="one")})
    with Server(app) as server, server.client() as c:
        (app / "app.py").write_text("raise RuntimeError('half-written edit')\n")
        wait_until(lambda: server.logs("reload_failed"), timeout=15)
        assert c.get("/v").text == "one"
        (app / "edgeworks.toml").write_text(MANIFEST + "bogus = 1\n")
        wait_until(lambda: len(server.logs("reload_failed")) >= 2, timeout=15)
        assert "bogus: unknown key" in str(server.logs("reload_failed")[-1])
        assert c.get("/v").text == "one"


def test_cron_trigger_fires_on_schedule(tmp_path):
    app = write_app(tmp_path / "app", MANIFEST, {"app.py": APP.format(version="one")})
    with Server(app, mode="serve"):
        wait_until(lambda: (app / "cron.log").exists() and len((app / "cron.log").read_text().split()) >= 2, timeout=10)
    assert (app / "cron.log").read_text().splitlines()[0] == "* * * * * *"
