"""The metrics a front keeps, fed through its observation hub as the front feeds it, read back
through prometheus_client's own parser; the [observability] metrics keys."""

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families

from runtime.config import ConfigError, load_app
from runtime.front.observe import Observers, RequestOutcome
from runtime.metrics import LATENCY_BUCKETS, Metrics, serve_metrics
from runtime.observability_config import parse_listen
from tests.support import free_port, write_app


def scrape(metrics: Metrics) -> dict:
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(body.decode()) for s in f.samples}


def get(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def outcome(status=200, latency_s=0.02, error=None, route="/a", script="app", cpu_ms=3.0):
    return RequestOutcome(ts=0.0, request_id="r", script=script, version="v1", route=route, method="GET",
                          status=status, error=error, latency_s=latency_s, cpu_ms=cpu_ms, task_class=script,
                          tenant=None, level="internal")


@pytest.fixture
def fed():
    hub = Observers()
    metrics = Metrics(lambda: 1234, process=False)
    metrics.attach(hub)
    return hub, metrics


def test_requests_latency_and_limits(fed):
    hub, metrics = fed
    for latency in (0.001, 0.02, 0.02, 3.0, 120.0):
        hub.request(outcome(latency_s=latency))
    hub.request(outcome(status=503, error="cpu_limit"))
    hub.request(outcome(status=404, error="not_found", route=None, script=None, cpu_ms=0.0))
    s = scrape(metrics)
    assert get(s, "edgeworks_requests_total", script="app", route="/a", status="200") == 5
    assert get(s, "edgeworks_requests_total", script="app", route="/a", status="503") == 1
    assert get(s, "edgeworks_requests_total", script="", route="", status="404") == 1
    hist = {le: get(s, "edgeworks_request_duration_seconds_bucket", script="app", route="/a", le=le)
            for le in ("0.005", "0.025", "2.5", "5.0", "60.0", "+Inf")}
    assert hist == {"0.005": 1, "0.025": 4, "2.5": 4, "5.0": 5, "60.0": 5, "+Inf": 6}  # the 503 took 0.02 s
    assert get(s, "edgeworks_request_duration_seconds_count", script="app", route="/a") == 6
    assert get(s, "edgeworks_request_duration_seconds_sum", script="app", route="/a") == pytest.approx(123.061)
    assert get(s, "edgeworks_request_cpu_seconds_total", script="app") == pytest.approx(0.018)
    assert get(s, "edgeworks_limit_exceeded_total", script="app", kind="cpu_limit") == 1
    assert get(s, "edgeworks_audit_backlog_bytes") == 1234
    assert len(LATENCY_BUCKETS) + 1 == len([k for k in s if k[0] == "edgeworks_request_duration_seconds_bucket"
                                            and ("route", "/a") in k[1]])


def test_isolate_stats_accumulate_in_the_front(fed):
    hub, metrics = fed
    hub.stats("app", {"object.call": 3.0, "object.commit": 2.0, "workflow.step_commit": 1.0})
    hub.stats("app", {"object.call": 2.0})  # a replacement isolate starts from zero: the front adds up
    hub.stats("app", {"object.call": -5.0, "bad": "x"})  # never taken: a counter only grows
    s = scrape(metrics)
    assert get(s, "edgeworks_object_calls_total", script="app") == 5
    assert get(s, "edgeworks_object_commits_total", script="app") == 2
    assert get(s, "edgeworks_isolate_counts_total", script="app", stat="workflow.step_commit") == 1


def test_audit_entries_feed_their_metrics(fed):
    hub, metrics = fed
    hub.audit("isolate.isolate_died", {"script": "app", "reason": "memory_limit", "pid": 1})
    hub.audit("isolate.isolate_died", {"script": "app", "reason": "crashed", "pid": 2})
    hub.audit("workflow.state", {"script": "app", "workflow": "Job", "status": "queued", "previous": None})
    hub.audit("workflow.state", {"script": "app", "workflow": "Job", "status": "running", "previous": "queued"})
    hub.audit("workflow.step.outcome", {"script": "app", "workflow": "Job", "outcome": "complete", "duration_s": 0.3})
    hub.audit("sandbox.call", {"script": "app", "tool": "wc", "outcome": "ok"})
    hub.audit("sandbox.call", {"script": "app", "tool": "wc", "outcome": "capability_denied"})
    hub.audit("tool.denied", {"script": "app", "tool": "wc", "reason": "killed"})
    hub.audit("sandbox.denied", {"script": "app", "tool": None, "reason": "wrong_tenant"})
    for cache, tokens_in, cost in (("miss", 10, 0.002), ("hit", 0, 0.0)):
        hub.audit("ai.call", {"script": "app", "model": "m", "provider": "p", "cache": cache,
                              "tokens_in": tokens_in, "tokens_out": 5 if tokens_in else 0, "cost_usd": cost})
    metrics.set_slo("checkout", 0.995, {"1h": 2.5, "5m": 0.0})
    s = scrape(metrics)
    assert get(s, "edgeworks_isolate_restarts_total", script="app", reason="memory_limit") == 1
    assert get(s, "edgeworks_isolate_restarts_total", script="app", reason="crashed") == 1
    assert get(s, "edgeworks_limit_kills_total", script="app", kind="memory_limit") == 1
    assert get(s, "edgeworks_limit_kills_total", script="app", kind="crashed") is None
    assert get(s, "edgeworks_workflow_transitions_total", script="app", workflow="Job", status="running") == 1
    assert get(s, "edgeworks_workflow_step_duration_seconds_count", script="app", workflow="Job",
               outcome="complete") == 1
    assert get(s, "edgeworks_workflow_step_duration_seconds_bucket", script="app", workflow="Job",
               outcome="complete", le="0.5") == 1
    assert get(s, "edgeworks_tool_calls_total", script="app", tool="wc", outcome="capability_denied") == 1
    assert get(s, "edgeworks_tool_denials_total", script="app", tool="wc", entry="tool.denied") == 1
    assert get(s, "edgeworks_tool_denials_total", script="app", tool="", entry="sandbox.denied") == 1
    assert get(s, "edgeworks_ai_calls_total", script="app", model="m", provider="p", cache="hit") == 1
    assert get(s, "edgeworks_ai_tokens_total", script="app", model="m", direction="input") == 10
    assert get(s, "edgeworks_ai_tokens_total", script="app", model="m", direction="output") == 5
    assert get(s, "edgeworks_ai_cost_usd_total", script="app", model="m") == pytest.approx(0.002)
    assert get(s, "edgeworks_audit_entries_total", kind="ai.call") == 2
    assert get(s, "edgeworks_slo_value", slo="checkout") == 0.995
    assert get(s, "edgeworks_slo_burn_rate", slo="checkout", window="1h") == 2.5


def test_openmetrics_when_asked():
    metrics = Metrics(process=False)
    body, content_type = metrics.exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


def test_each_front_has_its_own_registry():
    a, b = Metrics(process=False), Metrics(process=False)
    a.on_request(outcome())
    assert get(scrape(a), "edgeworks_requests_total", script="app", route="/a", status="200") == 1
    assert get(scrape(b), "edgeworks_requests_total", script="app", route="/a", status="200") is None


async def test_the_separate_listener_serves_metrics_only():
    metrics = Metrics(process=False)
    metrics.on_request(outcome())
    port = free_port()
    server = await serve_metrics(metrics, "127.0.0.1", port)
    try:
        async def get_raw(request: bytes) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            data = await reader.read()
            writer.close()
            return data

        ok = await get_raw(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and b'edgeworks_requests_total{route="/a"' in ok
        assert (await get_raw(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 200")
        assert (await get_raw(b"GET / HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
        assert (await get_raw(b"POST /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
        head = await get_raw(b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")
        assert await get_raw(b"GET /metrics HTTP/1.1\r\n" + b"x: " + b"y" * 10000 + b"\r\n\r\n") == b""
    finally:
        server.close()


@pytest.mark.parametrize(("value", "parsed"), [("127.0.0.1:9464", ("127.0.0.1", 9464)), ("[::1]:80", ("::1", 80)),
                                               ("0.0.0.0:1", ("0.0.0.0", 1))])
def test_listen_addresses(value, parsed):
    assert parse_listen(value) == parsed


@pytest.mark.parametrize(("listen", "extra", "problem"), [
    ('"127.0.0.1"', "", "observability.metrics_listen: Value error, '127.0.0.1' is not HOST:PORT"),
    ('"127.0.0.1:0"', "", "observability.metrics_listen: Value error, '127.0.0.1:0' is not HOST:PORT"),
    ('"::1:9464"', "", "observability.metrics_listen: Value error, '::1:9464': write an IPv6 host in brackets"),
    ('"127.0.0.1:9464"', "metrics = false\n", "observability: Value error, metrics_listen is set but metrics = false"),
])
def test_bad_metrics_keys_name_their_key_path(tmp_path, listen, extra, problem):
    manifest = f'[observability]\n{extra}metrics_listen = {listen}\n[[scripts]]\nname = "a"\nmain = "a.py"\nroutes = ["/"]\n'
    with pytest.raises(ConfigError) as e:
        load_app(write_app(tmp_path / "app", manifest, {"a.py": "async def fetch(r, e, c): pass\n"}))
    assert any(problem in p for p in e.value.problems), e.value.problems
