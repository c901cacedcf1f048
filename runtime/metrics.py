"""Prometheus metrics of a front and all its isolates, in one registry per front.

Everything is counted in the front, from what passes its observation hub
(`runtime.front.observe`): request outcomes, audit entries (its own and every isolate's) and
the counter deltas isolates send every second (`runtime.isolate.stats`). An isolate never keeps
a total of its own, so killing and replacing one loses at most its last second of deltas and no
counter ever goes backwards.

The request path only adds to a dict entry (no locks, no label children, no allocation beyond a
key tuple); values are turned into metric families when scraped. Scrapes run on the front's
event loop (the admin endpoint, or `serve_metrics` for a separate listen address), where every
update happens too.

Metrics (label values of routes, tools, models and workflow classes come from the manifest, so
their number is bounded):

- ``edgeworks_requests_total{script,route,status}``, ``edgeworks_request_duration_seconds{script,route}``
  (histogram, first byte in to last byte out), ``edgeworks_request_cpu_seconds_total{script}``;
  a request no route matched has empty script and route labels;
- ``edgeworks_limit_exceeded_total{script,kind}``: requests stopped at a limit (cpu_limit,
  wall_limit, memory_limit, subrequest_limit, binding_ops_limit, body_too_large);
  ``edgeworks_limit_kills_total{script,kind}``: isolates killed at a limit;
  ``edgeworks_isolate_restarts_total{script,reason}``: isolates that died and were replaced;
- ``edgeworks_object_calls_total{script}``, ``edgeworks_object_commits_total{script}`` (storage
  batches made durable); ``edgeworks_isolate_counts_total{script,stat}``: any other isolate stat;
- ``edgeworks_workflow_transitions_total{script,workflow,status}``: instances entering a status;
  ``edgeworks_workflow_step_duration_seconds{script,workflow,outcome}`` (histogram, per attempt);
- ``edgeworks_tool_calls_total{script,tool,outcome}``, ``edgeworks_tool_denials_total{script,tool,entry}``;
- ``edgeworks_ai_calls_total{script,model,provider,cache}`` (cache: hit, miss, bypass),
  ``edgeworks_ai_tokens_total{script,model,direction}``, ``edgeworks_ai_cost_usd_total{script,model}``;
- ``edgeworks_audit_entries_total{kind}``, ``edgeworks_audit_backlog_bytes``;
- ``edgeworks_slo_value{slo}``, ``edgeworks_slo_burn_rate{slo,window}`` (set with `Metrics.set_slo`);
- the front process's own ``process_*`` metrics.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from runtime.front.observe import Observers, RequestOutcome
from runtime.logs import log

__all__ = ["LATENCY_BUCKETS", "Metrics", "serve_metrics"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
STEP_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
_LIMIT_ERRORS = frozenset({"cpu_limit", "wall_limit", "memory_limit", "subrequest_limit", "binding_ops_limit",
                           "body_too_large"})
_LIMIT_DEATHS = frozenset({"cpu_limit", "wall_limit", "memory_limit"})
_TOOL_DENIALS = ("sandbox.denied", "tool.denied", "tool.policy_violation")

Key = tuple[Any, ...]


def _label(value: Any) -> str:
    return "" if value is None else str(value)


class _Counter:
    """Label values (raw, turned into text at scrape time) -> a total that only grows."""

    __slots__ = ("doc", "labels", "name", "values")

    def __init__(self, name: str, doc: str, labels: tuple[str, ...]):
        self.name, self.doc, self.labels = name, doc, labels
        self.values: dict[Key, float] = {}

    def inc(self, key: Key, n: float = 1.0) -> None:
        values = self.values
        values[key] = values.get(key, 0.0) + n

    def family(self) -> Metric:
        fam = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for key, value in list(self.values.items()):
            fam.add_metric([_label(v) for v in key], value)
        return fam


class _Gauge:
    __slots__ = ("doc", "labels", "name", "values")

    def __init__(self, name: str, doc: str, labels: tuple[str, ...]):
        self.name, self.doc, self.labels = name, doc, labels
        self.values: dict[Key, float] = {}

    def set(self, key: Key, value: float) -> None:
        self.values[key] = value

    def family(self) -> Metric:
        fam = GaugeMetricFamily(self.name, self.doc, labels=self.labels)
        for key, value in list(self.values.items()):
            fam.add_metric([_label(v) for v in key], value)
        return fam


class _Histogram:
    """Per label values: a count per bucket (not cumulative; the last one past every bound),
    then the sum of observed values."""

    __slots__ = ("bounds", "doc", "labels", "name", "series")

    def __init__(self, name: str, doc: str, labels: tuple[str, ...], bounds: tuple[float, ...]):
        self.name, self.doc, self.labels, self.bounds = name, doc, labels, bounds
        self.series: dict[Key, list[float]] = {}

    def observe(self, key: Key, value: float) -> None:
        counts = self.series.get(key)
        if counts is None:
            counts = self.series[key] = [0.0] * (len(self.bounds) + 2)
        counts[bisect_left(self.bounds, value)] += 1  # the first bound >= value: Prometheus's "le"
        counts[-1] += value

    def family(self) -> Metric:
        fam = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for key, counts in list(self.series.items()):
            total, buckets = 0.0, []
            for bound, n in zip((*self.bounds, float("inf")), counts, strict=False):
                total += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
            fam.add_metric([_label(v) for v in key], buckets, counts[-1])
        return fam


class Metrics:
    """A front's metrics (see the module doc). `backlog()` gives the audit journal's backlog in
    bytes, read when scraped."""

    def __init__(self, backlog: Callable[[], float] | None = None, *, process: bool = True):
        self._backlog = backlog
        c, h, g = _Counter, _Histogram, _Gauge
        self.requests = c("edgeworks_requests", "HTTP requests by script, route pattern and status",
                          ("script", "route", "status"))
        self.latency = h("edgeworks_request_duration_seconds", "HTTP request latency, first byte in to last byte out",
                         ("script", "route"), LATENCY_BUCKETS)
        self.cpu = c("edgeworks_request_cpu_seconds", "CPU time handlers spent on requests", ("script",))
        self.limit_exceeded = c("edgeworks_limit_exceeded", "requests stopped at a limit", ("script", "kind"))
        self.limit_kills = c("edgeworks_limit_kills", "isolates killed at a limit", ("script", "kind"))
        self.restarts = c("edgeworks_isolate_restarts", "isolates that died and were replaced", ("script", "reason"))
        self.object_calls = c("edgeworks_object_calls", "durable-object calls delivered", ("script",))
        self.object_commits = c("edgeworks_object_commits", "durable-object storage batches made durable", ("script",))
        self.isolate_counts = c("edgeworks_isolate_counts", "other counters isolates report, by name", ("script", "stat"))
        self.workflow_transitions = c("edgeworks_workflow_transitions", "workflow instances entering a status",
                                      ("script", "workflow", "status"))
        self.step_duration = h("edgeworks_workflow_step_duration_seconds", "workflow step attempts, by outcome",
                               ("script", "workflow", "outcome"), STEP_BUCKETS)
        self.tool_calls = c("edgeworks_tool_calls", "sandboxed tool calls by outcome", ("script", "tool", "outcome"))
        self.tool_denials = c("edgeworks_tool_denials", "tool calls and capabilities refused, by audit entry",
                              ("script", "tool", "entry"))
        self.ai_calls = c("edgeworks_ai_calls", "AI gateway calls (cache: hit, miss or bypass)",
                          ("script", "model", "provider", "cache"))
        self.ai_tokens = c("edgeworks_ai_tokens", "AI tokens (direction: input or output)", ("script", "model", "direction"))
        self.ai_cost = c("edgeworks_ai_cost_usd", "AI cost in US dollars", ("script", "model"))
        self.audit_entries = c("edgeworks_audit_entries", "audit entries journaled (the per-request one excepted), by kind",
                               ("kind",))
        self.slo_value = g("edgeworks_slo_value", "an SLO's current value over its window", ("slo",))
        self.slo_burn = g("edgeworks_slo_burn_rate", "an SLO's error-budget burn rate over a window", ("slo", "window"))
        self._families: tuple[_Counter | _Gauge | _Histogram, ...] = (
            self.requests, self.latency, self.cpu, self.limit_exceeded, self.limit_kills, self.restarts,
            self.object_calls, self.object_commits, self.isolate_counts, self.workflow_transitions,
            self.step_duration, self.tool_calls, self.tool_denials, self.ai_calls, self.ai_tokens, self.ai_cost,
            self.audit_entries, self.slo_value, self.slo_burn)
        self._by_kind: dict[str, Callable[[str, dict[str, Any]], None]] = {
            "isolate.isolate_died": self._isolate_died, "workflow.state": self._workflow_state,
            "workflow.step.outcome": self._step_outcome, "sandbox.call": self._tool_call, "ai.call": self._ai_call,
            **dict.fromkeys(_TOOL_DENIALS, self._tool_denied)}
        self.registry = CollectorRegistry()
        self.registry.register(self)  # a collector: `collect` builds the families when scraped
        if process:
            ProcessCollector(registry=self.registry)

    def attach(self, observers: Observers) -> None:
        observers.on_request(self.on_request)
        observers.on_audit(self.on_audit)
        observers.on_stats(self.on_stats)

    # -- feeds ---------------------------------------------------------------------------------
    def on_request(self, o: RequestOutcome) -> None:
        script, route = o.script, o.route
        self.requests.inc((script, route, o.status))
        self.latency.observe((script, route), o.latency_s)
        if o.cpu_ms:
            self.cpu.inc((script,), o.cpu_ms / 1000)
        if o.error is not None and o.error in _LIMIT_ERRORS:
            self.limit_exceeded.inc((script, o.error))

    def on_audit(self, kind: str, fields: dict[str, Any]) -> None:
        self.audit_entries.inc((kind,))
        fn = self._by_kind.get(kind)
        if fn is not None:
            fn(kind, fields)

    def on_stats(self, script: str, counts: dict[str, float]) -> None:
        for name, n in counts.items():
            if not isinstance(n, int | float) or n < 0:  # a counter only grows
                log("stats_ignored", script=script, name=str(name), value=repr(n))
            elif name == "object.call":
                self.object_calls.inc((script,), n)
            elif name == "object.commit":
                self.object_commits.inc((script,), n)
            else:
                self.isolate_counts.inc((script, name), n)

    def set_slo(self, name: str, value: float, burn_rates: dict[str, float]) -> None:
        """An SLO's current value (as its family states it, e.g. 0.993 completion) and its burn
        rate over each alert window (keyed by the window as written, e.g. "1h", "5m")."""
        self.slo_value.set((name,), value)
        for window, rate in burn_rates.items():
            self.slo_burn.set((name, window), rate)

    # -- audit entries -------------------------------------------------------------------------
    def _isolate_died(self, kind: str, f: dict[str, Any]) -> None:
        script, reason = f.get("script"), f.get("reason") or "crashed"
        self.restarts.inc((script, reason))
        if reason in _LIMIT_DEATHS:
            self.limit_kills.inc((script, reason))

    def _workflow_state(self, kind: str, f: dict[str, Any]) -> None:
        self.workflow_transitions.inc((f.get("script"), f.get("workflow"), f.get("status")))

    def _step_outcome(self, kind: str, f: dict[str, Any]) -> None:
        duration = f.get("duration_s")
        if isinstance(duration, int | float):
            self.step_duration.observe((f.get("script"), f.get("workflow"), f.get("outcome")), duration)

    def _tool_call(self, kind: str, f: dict[str, Any]) -> None:
        self.tool_calls.inc((f.get("script"), f.get("tool"), f.get("outcome") or "ok"))

    def _tool_denied(self, kind: str, f: dict[str, Any]) -> None:
        self.tool_denials.inc((f.get("script"), f.get("tool"), kind))

    def _ai_call(self, kind: str, f: dict[str, Any]) -> None:
        script, model = f.get("script"), f.get("model")
        self.ai_calls.inc((script, model, f.get("provider"), f.get("cache")))
        for direction, field in (("input", "tokens_in"), ("output", "tokens_out")):
            n = f.get(field)
            if isinstance(n, int | float) and n > 0:
                self.ai_tokens.inc((script, model, direction), n)
        cost = f.get("cost_usd")
        if isinstance(cost, int | float) and cost > 0:
            self.ai_cost.inc((script, model), cost)

    # -- exposition ----------------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            yield family.family()
        backlog = GaugeMetricFamily("edgeworks_audit_backlog_bytes",
                                    "audit journal bytes written and not yet committed by the writer")
        backlog.add_metric([], float(self._backlog()) if self._backlog is not None else 0.0)
        yield backlog

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The registry in the text format the client accepts (Prometheus text by default,
        OpenMetrics when asked for): (body, content type)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


_MAX_HEAD = 8192
_HEAD_TIMEOUT_S = 5.0


async def serve_metrics(metrics: Metrics, host: str, port: int) -> asyncio.Server:
    """An HTTP listener answering `GET /metrics` without authentication, for a scraper on a
    private network; anything else is a 404. One request per connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _HEAD_TIMEOUT_S)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        accept = next((line.split(":", 1)[1].strip() for line in lines[1:] if line.lower().startswith("accept:")), "")
        path = parts[1].split("?", 1)[0] if len(parts) == 3 else ""
        if len(parts) == 3 and parts[0] in ("GET", "HEAD") and path == "/metrics":
            body, content_type = metrics.exposition(accept)
            status = "200 OK"
        else:
            body, content_type, status = b"not found: GET /metrics\n", "text/plain; charset=utf-8", "404 Not Found"
        writer.write(f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n"
                     f"connection: close\r\n\r\n".encode("latin-1") + (b"" if parts[0] == "HEAD" else body))
        try:
            await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    return await asyncio.start_server(handle, host, port, limit=_MAX_HEAD)
