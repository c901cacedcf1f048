"""OpenTelemetry traces: one tracer provider per process, W3C trace context across every hop.

Off by default (`[observability] tracing_sample_ratio = 0`): no provider exists, `TRACER` is
None, and every place that could make a span checks only that (no context extraction, no span
objects, nothing sent). On, each process has its own provider, sampling parent-based at the ratio:

- the front makes a SERVER span per routed request (HTTP semantic conventions), honouring an
  incoming `traceparent`/`tracestate`, and hands the context to the isolate in the request
  message's `trace` field (a carrier: {"traceparent": ..., "tracestate": ...});
- an isolate makes a span per handler run, durable-object call, workflow step attempt, tool
  call, AI call (GenAI conventions) and outbound fetch (which carries `traceparent` out); calls
  the front relays (service bindings, object calls) carry the caller's context the same way;
- isolates export nothing themselves: a finished span is encoded (`encode_span`) and sent to the
  front in batches (`protocol.Spans`, at most every `_FORWARD_S`), and the front hands it to its
  own span processors (`FrontTracing.receive`). So one exporter sees every process's spans, and
  no isolate opens a connection of its own (its egress rules never have to allow a collector).

Exporters (front only): OTLP/HTTP behind a batch processor when `otlp_endpoint` is set (the
`otlp` extra), and JSON lines appended to the file named by EDGEWORKS_TRACE_FILE (what the
end-to-end tests read). Every span carries the request id as `edgeworks.request_id`.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from runtime.observability_config import ObservabilityConfig

__all__ = ["REQUEST_ID", "TRACER", "TRACE_FILE_ENV", "FrontTracing", "IsolateTracing", "JsonLinesExporter",
           "carrier", "context_of", "end_request_span", "decode_span", "encode_span", "flush", "isolate_settings", "receive", "request_span", "span",
           "start_front", "start_isolate", "step_span", "stop", "trace_record", "traced"]

#: The span attribute every span carries: the request id of the work it is part of.
REQUEST_ID = "edgeworks.request_id"
#: Names a file the front appends every finished span to, as JSON lines (tests read it).
TRACE_FILE_ENV = "EDGEWORKS_TRACE_FILE"

#: This process's tracer; None while tracing is off (the one check on every path).
TRACER: trace.Tracer | None = None

_SCOPE = InstrumentationScope("edgeworks")
_PROPAGATOR = TraceContextTextMapPropagator()
_OFF: AbstractContextManager[None] = nullcontext()
_FORWARD_S = 0.05  # an isolate sends its finished spans to the front at least this often
_FORWARD_MAX = 256  # ... or as soon as this many are waiting
_front: FrontTracing | None = None
_isolate: IsolateTracing | None = None


def _sampler(ratio: float) -> ParentBased:
    return ParentBased(TraceIdRatioBased(ratio))


# -- the front --------------------------------------------------------------------------------


class JsonLinesExporter(SpanExporter):
    """Appends each span as one JSON line (name, ids, parent, kind, attributes, links, status,
    resource); a line is written whole, so a reader never sees half a span."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(_as_json(s), default=str) + "\n" for s in spans)
        with self._lock, open(self._path, "a", encoding="utf-8") as f:
            f.write(lines)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def _as_json(s: ReadableSpan) -> dict[str, Any]:
    ctx = s.context
    assert ctx is not None
    return {
        "name": s.name, "trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}",
        "parent_id": f"{s.parent.span_id:016x}" if s.parent is not None else None,
        "kind": s.kind.name, "start": s.start_time, "end": s.end_time,
        "attributes": dict(s.attributes or {}), "status": s.status.status_code.name,
        "links": [{"trace_id": f"{lk.context.trace_id:032x}", "span_id": f"{lk.context.span_id:016x}",
                   "attributes": dict(lk.attributes or {})} for lk in s.links],
        "resource": dict(s.resource.attributes),
    }


def _otlp_exporter(endpoint: str) -> SpanExporter:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise RuntimeError("[observability] otlp_endpoint needs the OTLP exporter: install edgeworks with the "
                           "`otlp` extra (pip install 'edgeworks[otlp]')") from None
    return OTLPSpanExporter(endpoint=endpoint)


class FrontTracing:
    """The front's provider and processors; isolates' spans join them through `receive`."""

    def __init__(self, config: ObservabilityConfig, trace_file: str | None = None) -> None:
        self.ratio = config.tracing_sample_ratio
        self.service_name = config.service_name
        self.processors: list[SpanProcessor] = []
        if config.otlp_endpoint:
            self.processors.append(BatchSpanProcessor(_otlp_exporter(config.otlp_endpoint)))
        if trace_file:
            self.processors.append(SimpleSpanProcessor(JsonLinesExporter(trace_file)))
        self.provider = TracerProvider(sampler=_sampler(self.ratio),
                                       resource=self._resource("front", os.getpid()))
        for p in self.processors:
            self.provider.add_span_processor(p)
        self.tracer = self.provider.get_tracer("edgeworks")
        self._resources: dict[tuple[str, int], Resource] = {}

    def _resource(self, process: str, pid: int) -> Resource:
        return Resource.create({"service.name": self.service_name, "process.pid": pid, "edgeworks.process": process})

    def receive(self, script: str, pid: int, spans: list[Any]) -> None:
        """Finished spans an isolate sent (`encode_span`): to the front's processors, under a
        resource naming that isolate (its script and pid)."""
        resource = self._resources.get((script, pid))
        if resource is None:
            resource = self._resources[(script, pid)] = self._resource(f"isolate:{script}", pid)
        for raw in spans:
            try:
                readable = decode_span(raw, resource)
            except (TypeError, ValueError, IndexError):
                continue  # a malformed span from an isolate is dropped, never raised into the front
            for p in self.processors:
                p.on_end(readable)

    def shutdown(self) -> None:
        self.provider.shutdown()


def start_front(config: ObservabilityConfig) -> FrontTracing | None:
    """Set up the front's tracing from `[observability]` (None, and `TRACER` None, when off).
    A missing OTLP exporter is a RuntimeError naming the key."""
    global TRACER, _front
    stop()
    if config.tracing_sample_ratio <= 0.0:
        return None
    _front = FrontTracing(config, os.environ.get(TRACE_FILE_ENV) or None)
    TRACER = _front.tracer
    return _front


def isolate_settings() -> dict[str, Any] | None:
    """What an isolate's init message carries for its tracing (None: off)."""
    if _front is None:
        return None
    return {"ratio": _front.ratio, "service_name": _front.service_name}


def receive(script: str, pid: int, spans: list[Any]) -> None:
    """`FrontTracing.receive` of the front's tracing, if on."""
    if _front is not None:
        _front.receive(script, pid, spans)


def stop() -> None:
    """Flush and drop this process's tracing (the front's at its stop; idempotent)."""
    global TRACER, _front, _isolate
    TRACER = None
    if _front is not None:
        _front.shutdown()
        _front = None
    if _isolate is not None:
        _isolate.flush()
        _isolate = None


# -- isolates ---------------------------------------------------------------------------------


class IsolateTracing(SpanProcessor):
    """An isolate's span processor: stamps the request id on each span when it starts, and
    forwards finished sampled spans to the front in batches (on the event loop's thread)."""

    def __init__(self, send: Callable[[list[Any]], None], request_id: Callable[[], str]) -> None:
        self._send = send
        self._request_id = request_id
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._pending: list[Any] = []
        self._timer: asyncio.TimerHandle | None = None

    def on_start(self, span: Any, parent_context: Context | None = None) -> None:
        rid = self._request_id()
        if rid and REQUEST_ID not in (span.attributes or {}):
            span.set_attribute(REQUEST_ID, rid)

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is None or not span.context.trace_flags.sampled:
            return
        raw = encode_span(span)
        if threading.get_ident() == self._thread:
            self._add(raw)
        else:
            self._loop.call_soon_threadsafe(self._add, raw)

    def _add(self, raw: list[Any]) -> None:
        self._pending.append(raw)
        if len(self._pending) >= _FORWARD_MAX:
            self.flush()
        elif self._timer is None:
            self._timer = self._loop.call_later(_FORWARD_S, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if batch:
            self._send(batch)

    def shutdown(self) -> None:
        self.flush()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self.flush()
        return True


def start_isolate(settings: dict[str, Any] | None, send: Callable[[list[Any]], None],
                  request_id: Callable[[], str]) -> None:
    """Set up an isolate's tracing from its init message (`isolate_settings`); call it on the
    event loop. `send(spans)` carries a batch to the front; `request_id()` is the running
    request's id ("" outside one)."""
    global TRACER, _isolate
    if not settings:
        TRACER = None
        return
    provider = TracerProvider(sampler=_sampler(float(settings["ratio"])),
                              resource=Resource.create({"service.name": str(settings["service_name"])}))
    _isolate = IsolateTracing(send, request_id)
    provider.add_span_processor(_isolate)
    TRACER = provider.get_tracer("edgeworks")


def flush() -> None:
    """Send an isolate's waiting spans now (before it exits)."""
    if _isolate is not None:
        _isolate.flush()


# -- spans on the wire between an isolate and the front ---------------------------------------


def encode_span(s: ReadableSpan) -> list[Any]:
    """A finished span as plain data msgpack carries."""
    ctx = s.context
    assert ctx is not None
    parent = s.parent
    return [
        s.name, ctx.trace_id.to_bytes(16, "big"), ctx.span_id, int(ctx.trace_flags),
        ctx.trace_state.to_header() if ctx.trace_state else "",
        parent.span_id if parent is not None else None, bool(parent is not None and parent.is_remote),
        s.kind.value, s.start_time, s.end_time, dict(s.attributes or {}),
        s.status.status_code.value, s.status.description,
        [[e.name, e.timestamp, dict(e.attributes or {})] for e in s.events],
        [[lk.context.trace_id.to_bytes(16, "big"), lk.context.span_id, int(lk.context.trace_flags),
          dict(lk.attributes or {})] for lk in s.links],
    ]


def decode_span(raw: list[Any], resource: Resource) -> ReadableSpan:
    """The span `encode_span` encoded, under `resource`."""
    (name, tid, sid, flags, state, parent_id, parent_remote, kind, start, end, attributes, code, description,
     events, links) = raw
    trace_id = int.from_bytes(tid, "big")
    context = SpanContext(trace_id, sid, False, TraceFlags(flags), TraceState.from_header([state]) if state else None)
    parent = SpanContext(trace_id, parent_id, parent_remote, TraceFlags(flags)) if parent_id is not None else None
    return ReadableSpan(
        name=name, context=context, parent=parent, resource=resource, attributes=attributes,
        events=[Event(n, a, ts) for n, ts, a in events],
        links=[Link(SpanContext(int.from_bytes(t, "big"), s, False, TraceFlags(f)), a) for t, s, f, a in links],
        kind=SpanKind(kind), status=Status(StatusCode(code), description), start_time=start, end_time=end,
        instrumentation_scope=_SCOPE)


# -- context and spans at the call sites ------------------------------------------------------


def request_span(scope: Mapping[str, Any], host: str, route: str, rid: str, script: str, version: str | None) -> trace.Span:
    """The SERVER span of a routed request at the front (HTTP server semantic conventions), in
    the trace an incoming `traceparent` names (a new one when it names none or a malformed one)."""
    tracer = TRACER
    assert tracer is not None
    incoming: dict[str, str] | None = None
    for k, v in scope["headers"]:
        if k == b"traceparent" or k == b"tracestate":
            incoming = incoming or {}
            incoming[k.decode()] = v.decode("latin-1")
    method = scope["method"]
    attributes: dict[str, Any] = {
        "http.request.method": method, "url.path": scope["path"], "url.scheme": scope.get("scheme", "http"),
        "http.route": route, REQUEST_ID: rid, "edgeworks.script": script}
    if version:
        attributes["edgeworks.version"] = version
    name, sep, port = host.rpartition(":")
    if not sep or not port.isdigit() or host.endswith("]"):
        name, port = host, ""
    if name:
        attributes["server.address"] = name.strip("[]")
    if port:
        attributes["server.port"] = int(port)
    if scope.get("http_version"):
        attributes["network.protocol.version"] = scope["http_version"]
    if scope.get("client"):
        attributes["client.address"] = scope["client"][0]
    return tracer.start_span(f"{method} {route}", context=context_of(incoming), kind=SpanKind.SERVER,
                             attributes=attributes)


def end_request_span(span: trace.Span, status: int, error: str | None) -> None:
    """End a request's span with its outcome: a 5xx answer is an error (4xx is the client's)."""
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_attribute("error.type", error or str(status))
        span.set_status(Status(StatusCode.ERROR))
    elif error:
        span.set_attribute("edgeworks.error", error)
    span.end()


def context_of(headers: Mapping[str, str] | None) -> Context | None:
    """The trace context a carrier (`traceparent`, `tracestate`) names; None when it names none
    or a malformed one (then a new trace starts)."""
    if not headers:
        return None
    ctx = _PROPAGATOR.extract(headers)
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def carrier(span_context: SpanContext | None = None) -> dict[str, str] | None:
    """The W3C carrier of `span_context` (default: the running span's), for a message or an
    outgoing request; None when tracing is off or nothing is being traced."""
    if TRACER is None:
        return None
    ctx = span_context or trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    out = {"traceparent": f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"}
    if ctx.trace_state:
        out["tracestate"] = ctx.trace_state.to_header()
    return out


def span(name: str, attributes: Mapping[str, Any], kind: SpanKind = SpanKind.INTERNAL,
         *, child_only: bool = False) -> AbstractContextManager[trace.Span | None]:
    """A span around a block, made current in it (None while tracing is off). `child_only`:
    only under a running span (an outbound call made outside any traced work starts no trace)."""
    tracer = TRACER
    if tracer is None or (child_only and not trace.get_current_span().get_span_context().is_valid):
        return _OFF
    return tracer.start_as_current_span(name, kind=kind, attributes=attributes)


async def traced(work: Awaitable[Any], name: str | None, parent: Mapping[str, str] | None,
                 attributes: Mapping[str, Any], kind: SpanKind = SpanKind.SERVER) -> Any:
    """Run `work` (a handler a message started) in the trace context `parent` names: under a
    span `name`, or, with no name, directly in that context (its spans become its children)."""
    tracer = TRACER
    ctx = context_of(parent)
    if tracer is None:
        return await work
    if name is None:
        token = None if ctx is None else otel_context.attach(ctx)
        try:
            return await work
        finally:
            if token is not None:
                otel_context.detach(token)
    with tracer.start_as_current_span(name, context=ctx, kind=kind, attributes=attributes):
        return await work


@contextmanager
def _step(tracer: trace.Tracer, name: str, attributes: dict[str, Any], recorded: dict[str, Any] | None,
          resumed: bool) -> Iterator[None]:
    origin = context_of(recorded.get("carrier") if recorded else None)
    if recorded and recorded.get("request_id"):
        attributes.setdefault(REQUEST_ID, recorded["request_id"])
    links: list[Link] = []
    parent: Context | None = origin
    if resumed:
        parent = Context()  # a root: what runs this attempt is not the creating request
        if origin is not None:
            links.append(Link(trace.get_current_span(origin).get_span_context(), {"edgeworks.link": "created_by"}))
    with tracer.start_as_current_span(name, context=parent, kind=SpanKind.INTERNAL,
                                      attributes=attributes, links=links):
        yield


def step_span(info: dict[str, Any]) -> AbstractContextManager[Any]:
    """The span of a workflow step attempt (`WorkflowHooks.trace_step`). A run driven by the
    engine that created the instance continues the creating request's trace; a resumed run (the
    instance loaded back after an eviction, a restart, an alarm) starts a trace of its own that
    links to the creating one, since that request is long gone."""
    tracer = TRACER
    if tracer is None:
        return _OFF
    attributes = {"edgeworks.workflow.class": info["workflow"], "edgeworks.workflow.instance": info["instance"],
                  "edgeworks.workflow.step": info["step"], "edgeworks.workflow.attempt": info["attempt"]}
    return _step(tracer, f"step {info['step']}", attributes, info.get("trace"), bool(info.get("resumed")))


def trace_record(request_id: str) -> dict[str, Any] | None:
    """What a workflow instance records about the request creating it (`WorkflowHooks.trace_context`):
    its trace context and request id; None when tracing is off or nothing is being traced."""
    found = carrier()
    return None if found is None else {"carrier": found, "request_id": request_id or None}
