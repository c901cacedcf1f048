"""The hub fed by a real front and real isolates: counters an isolate bumps reach `on_stats`
within about a second (and on a clean shutdown), an isolate's audit entry reaches `on_audit`, and
every request, refused or not, is one `on_request` outcome."""

import asyncio

import httpx

from runtime.config import load_app
from runtime.front.app import Front
from tests.support import write_app

MANIFEST = """
[[scripts]]
name = "app"
main = "app.py"
routes = ["/hits", "/audit"]
pool_size = 2
"""

APP = """
from runtime.isolate import stats
from workers import Response


async def fetch(request, env, ctx):
    if request.url.endswith("/audit"):
        ctx.declassify("public", reason="observed")
        return Response("audited")
    stats.bump("demo.hits")
    stats.bump("demo.weight", 2.5)
    return Response("hit")
"""


async def test_isolate_stats_audit_entries_and_request_outcomes_reach_subscribers(tmp_path):
    app = load_app(str(write_app(tmp_path / "app", MANIFEST, {"app.py": APP})))
    front = Front(app, dev=True, state_dir=tmp_path / "state")
    totals: dict[str, float] = {}
    scripts: set[str] = set()
    audits: list[tuple[str, dict]] = []
    outcomes = []

    def add(script, counts):
        scripts.add(script)
        for name, n in counts.items():
            totals[name] = totals.get(name, 0.0) + n

    front.observers.on_stats(add)
    front.observers.on_audit(lambda kind, fields: audits.append((kind, fields)))
    front.observers.on_request(outcomes.append)
    await front.start()
    stopped = False
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=front, client=("127.0.0.1", 4000)),
                                     base_url="http://edge.example", timeout=30) as c:
            for _ in range(10):
                assert (await c.get("/hits")).text == "hit"
            assert (await c.get("/audit")).text == "audited"
            assert (await c.get("/nowhere")).status_code == 404
            for _ in range(60):  # flushed every second by each isolate
                if totals.get("demo.hits") == 10:
                    break
                await asyncio.sleep(0.1)
            assert totals == {"demo.hits": 10.0, "demo.weight": 25.0}
            assert scripts == {"app"}
            assert (await c.get("/hits")).text == "hit"
        await front.stop()  # a clean shutdown sends what is left
        stopped = True
        assert totals["demo.hits"] == 11.0
    finally:
        if not stopped:
            await front.stop()
    demo = [fields for kind, fields in audits if kind == "classification.declassified"]
    assert len(demo) == 1 and demo[0]["reason"] == "observed" and demo[0]["script"] == "app"
    assert [(o.route, o.status, o.error) for o in outcomes] == \
        [("/hits", 200, None)] * 10 + [("/audit", 200, None), (None, 404, "not_found"), ("/hits", 200, None)]
    assert all(o.script == "app" and o.task_class == "app" and o.latency_s > 0 for o in outcomes if o.route)
    assert len({o.request_id for o in outcomes}) == len(outcomes)
