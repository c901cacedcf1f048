"""Prometheus metrics of a real server: `/__edgeworks/metrics` (global admin scope) and the
separate `--metrics-listen` address, parsed with prometheus_client's own parser. Counts add up
across the two isolates of a pool, and after one isolate is killed -9 and replaced no counter
went down while the restart (and a CPU-limit kill) are counted."""

import os
import signal
import socket

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.runtime.admin.test_admin import AUTH_SECTION, SECRET, bearer, token
from tests.support import Server, alive, copy_example, free_port, run_cli, wait_until, write_app

MANIFEST = AUTH_SECTION + """
[[scripts]]
name = "app"
main = "app.py"
pool_size = 2
routes = [{ pattern = "/hit", auth = "none" }, { pattern = "/obj/{name}", auth = "none" },
          { pattern = "/spin", auth = "none" }]
durable_objects = [{ binding = "COUNTER", class_name = "Counter" }]

[scripts.limits]
cpu_ms = 200
"""

APP = '''
import os
from workers import DurableObject, Response

class Counter(DurableObject):
    async def increment(self):
        v = (await self.ctx.storage.get("v") or 0) + 1
        await self.ctx.storage.put("v", v)
        return v

async def fetch(request, env, ctx):
    if request.path == "/hit":
        return Response(str(os.getpid()))
    if request.path == "/spin":  # swallows the CPU limit: the isolate is killed
        while True:
            try:
                while True:
                    pass
            except BaseException:
                pass
    return Response.json(await env.COUNTER.get_by_name(request.params["name"]).increment())
'''

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, keyed by (sample name, sorted labels)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def admin_scrape(server: Server) -> Samples:
    r = httpx.get(f"{server.url}/__edgeworks/metrics", headers=bearer(token()), timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


def no_counter_went_down(before: Samples, after: Samples) -> None:
    for (name, labels), v in before.items():
        if name.endswith(("_total", "_count", "_sum", "_bucket")) and not name.startswith("process_"):
            assert after.get((name, labels), 0.0) >= v, (name, labels, v, after.get((name, labels)))


def test_metrics_add_up_across_isolates_and_survive_a_killed_isolate(tmp_path):
    app = write_app(tmp_path / "app", MANIFEST, {"app.py": APP})
    (app / ".dev.vars").write_text(f"JWT_SECRET={SECRET}\n")
    mport = free_port()
    with Server(app, "serve", args=("--metrics-listen", f"127.0.0.1:{mport}"), admin_token=token()) as server, \
            server.client() as c:
        # only a global admin scrapes the admin plane
        assert httpx.get(f"{server.url}/__edgeworks/metrics", timeout=5).status_code == 401
        assert httpx.get(f"{server.url}/__edgeworks/metrics", headers=bearer(token(scope="")),
                         timeout=5).status_code == 403
        r = httpx.get(f"{server.url}/__edgeworks/metrics", headers=bearer(token(tenant="t1")), timeout=5)
        assert r.status_code == 403, r.text

        pids = {c.get("/hit").text for _ in range(30)}
        assert len(pids) == 2  # both isolates served
        for i in range(8):
            assert c.post(f"/obj/o{i}").json() == 1
        assert c.get("/nowhere").status_code == 404

        # isolates report object calls and commits within about a second
        first = wait_until(lambda: (s := admin_scrape(server))
                           and value(s, "edgeworks_object_calls_total", script="app") == 8 and s, timeout=10)
        assert value(first, "edgeworks_requests_total", script="app", route="/hit", status="200") == 30
        assert value(first, "edgeworks_requests_total", script="app", route="/obj/{name}", status="200") == 8
        assert value(first, "edgeworks_requests_total", script="", route="", status="404") == 1
        assert value(first, "edgeworks_request_duration_seconds_count", script="app", route="/hit") == 30
        assert value(first, "edgeworks_request_duration_seconds_bucket", script="app", route="/hit", le="+Inf") == 30
        assert value(first, "edgeworks_object_commits_total", script="app") == 8
        assert value(first, "edgeworks_isolate_restarts_total", script="app", reason="crashed") == 0

        # the separate listen address: no auth, the same metrics
        plain = httpx.get(f"http://127.0.0.1:{mport}/metrics", timeout=5)
        assert plain.status_code == 200
        assert value(parse(plain.text), "edgeworks_requests_total", script="app", route="/hit", status="200") == 30
        assert httpx.get(f"http://127.0.0.1:{mport}/other", timeout=5).status_code == 404

        victim = server.pids("app")[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: not alive(victim))
        wait_until(lambda: len(server.pids("app")) == 2 and victim not in server.pids("app"), timeout=15)
        assert c.get("/spin").json()["error"] == "cpu_limit"
        wait_until(lambda: len(server.pids("app")) == 2, timeout=15)
        for _ in range(10):
            assert c.get("/hit").status_code == 200
        for i in range(8, 12):
            assert c.post(f"/obj/o{i}").json() == 1

        second = wait_until(lambda: (s := admin_scrape(server))
                            and value(s, "edgeworks_object_calls_total", script="app") == 12 and s, timeout=10)
        no_counter_went_down(first, second)
        assert value(second, "edgeworks_requests_total", script="app", route="/hit", status="200") == 40
        assert value(second, "edgeworks_requests_total", script="app", route="/spin", status="503") == 1
        assert value(second, "edgeworks_object_commits_total", script="app") == 12
        assert value(second, "edgeworks_isolate_restarts_total", script="app", reason="crashed") == 1
        assert value(second, "edgeworks_isolate_restarts_total", script="app", reason="cpu_limit") == 1
        assert value(second, "edgeworks_limit_kills_total", script="app", kind="cpu_limit") == 1
        assert value(second, "edgeworks_limit_exceeded_total", script="app", kind="cpu_limit") == 1
        assert value(second, "edgeworks_audit_entries_total", kind="isolate.isolate_died") == 2
        assert ("edgeworks_audit_backlog_bytes", ()) in second


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name` over every series whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


def test_workflow_tool_and_ai_metrics_of_the_example_app(tmp_path):
    """The example app's agent workflow (AI calls in its steps) and its sandbox tools: what
    isolates audit reaches the metrics. dev without [auth]: a loopback client is an admin."""
    with Server(copy_example(tmp_path)) as server, server.client() as c:
        r = c.post("/agent", json={"substeps": [{"name": "a", "n": 5}]})
        assert r.status_code == 201, r.text
        wid = r.json()["id"]
        wait_until(lambda: c.get(f"/agent/{wid}").json()["status"] == "complete", timeout=30)
        assert c.get("/tools/demo").status_code == 200
        s = wait_until(lambda: (s := admin_scrape(server))
                       and total(s, "edgeworks_tool_calls_total") >= 1
                       and total(s, "edgeworks_workflow_transitions_total", status="complete") == 1 and s, timeout=10)
    assert total(s, "edgeworks_workflow_transitions_total", script="app", workflow="AgentTask", status="queued") == 1
    assert total(s, "edgeworks_workflow_step_duration_seconds_count", workflow="AgentTask", outcome="complete") >= 4
    assert total(s, "edgeworks_ai_calls_total", script="app") >= 1
    assert total(s, "edgeworks_ai_tokens_total", direction="input") > 0
    assert total(s, "edgeworks_requests_total", route="/agent", status="201") == 1


def test_metrics_off_and_a_listen_address_that_cannot_be_bound(tmp_path):
    off = write_app(tmp_path / "off", '[observability]\nmetrics = false\n[[scripts]]\nname = "app"\nmain = "app.py"\n'
                    'routes = ["/hit"]\n', {"app.py": APP})
    with Server(off) as server:
        r = httpx.get(f"{server.url}/__edgeworks/metrics", timeout=5)
        assert r.status_code == 404 and r.json()["error"] == "metrics_disabled"
    refused = run_cli("dev", str(off), "--port", str(free_port()), "--metrics-listen", "127.0.0.1:9464")
    assert refused.returncode == 2 and "[observability] metrics = false" in refused.stderr
    assert run_cli("dev", str(off), "--metrics-listen", "localhost").returncode == 2  # not HOST:PORT

    on = write_app(tmp_path / "on", '[[scripts]]\nname = "app"\nmain = "app.py"\nroutes = ["/hit"]\n', {"app.py": APP})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = Server(on, args=("--metrics-listen", f"127.0.0.1:{taken.getsockname()[1]}"))
        with pytest.raises(RuntimeError, match="cannot serve metrics on 127.0.0.1:"):
            server.start()
