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
- isolates export nothing themselves: a finished span is encoded once, as the OTLP protobuf of
  a `Span` (`runtime.otlp`, bytes the garbage collector never walks), and sent to the front in batches (`protocol.Spans`, at least every `_FORWARD_S`); the front queues
  it with its own and an export thread hands batches to its sinks (`FrontTracing`). So one
  exporter sees every process's spans, and no isolate opens a connection of its own (its egress
  rules never have to allow a collector).

The two spans every request has (the front's request span, the isolate's handler span) take a
fast path: no SDK span object, ids and the sampling decision made here, the wire form built
directly; every other span is an SDK span. Sinks (front only): OTLP/HTTP when `otlp_endpoint` is
set (`runtime.otlp` writes the protobuf), and JSON lines appended to the file named by
EDGEWORKS_TRACE_FILE (what the end-to-end tests read). Every span carries the request id as
`edgeworks.request_id`.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import httpx
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    TraceState,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from runtime import otlp
from runtime.logs import log

if TYPE_CHECKING:
    from runtime.observability_config import ObservabilityConfig

__all__ = ["REQUEST_ID", "TRACER", "TRACE_FILE_ENV", "FrontTracing", "IsolateTracing",
           "RequestSpan", "Sink", "carrier", "context_of", "encode_span", "end_request_span", "flush",
           "isolate_settings", "json_lines_sink", "otlp_sink", "receive", "request_span", "span", "start_front", "start_isolate", "step_span", "stop",
           "trace_record", "traced"]

#: The span attribute every span carries: the request id of the work it is part of.
REQUEST_ID = "edgeworks.request_id"
#: Names a file the front appends every finished span to, as JSON lines (tests read it).
TRACE_FILE_ENV = "EDGEWORKS_TRACE_FILE"

#: This process's tracer; None while tracing is off (the one check on every path).
TRACER: trace.Tracer | None = None

#: A sink of the front's export thread: batches of (resource attributes, encoded OTLP spans).
Sink = Callable[[list[tuple[dict[str, Any], list[bytes]]]], None]

_PROPAGATOR = TraceContextTextMapPropagator()
_OFF: AbstractContextManager[None] = nullcontext()
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})\Z")
_TRACESTATE_MAX = 512
_MASK64 = (1 << 64) - 1
_SERVER, _INTERNAL = SpanKind.SERVER.value, SpanKind.INTERNAL.value
_FORWARD_S = 0.05  # an isolate sends its finished spans to the front at least this often
_FORWARD_MAX = 256  # ... or as soon as this many are waiting
_EXPORT_S = 0.5  # the front's export thread sends what is queued at least this often
_EXPORT_BATCH = 512  # ... or as soon as this many spans are queued
_QUEUE_MAX = 16384  # spans queued past this are dropped (counted), never block a request
_front: FrontTracing | None = None
_isolate: IsolateTracing | None = None


def _sampler(ratio: float) -> ParentBased:
    return ParentBased(TraceIdRatioBased(ratio))


def _bound(ratio: float) -> int:
    """TraceIdRatioBased's rule: a new trace is sampled when its id's low 64 bits are below this."""
    return round(ratio * (1 << 64))


def _parse(carrier: Mapping[str, str] | None) -> tuple[int, int, int, str] | None:
    """(trace id, parent span id, flags, tracestate) of a W3C carrier; None for none or a
    malformed one (then a new trace starts). Version 00 is parsed here; others by the SDK."""
    if not carrier:
        return None
    header = carrier.get("traceparent")
    if not header:
        return None
    found = _TRACEPARENT.match(header)
    if found is None:
        ctx = trace.get_current_span(_PROPAGATOR.extract(carrier)).get_span_context()
        if not ctx.is_valid:
            return None
        state = ctx.trace_state.to_header() if ctx.trace_state else ""
        return ctx.trace_id, ctx.span_id, int(ctx.trace_flags), state
    trace_id, parent_id = int(found.group(1), 16), int(found.group(2), 16)
    if not trace_id or not parent_id:
        return None
    state = carrier.get("tracestate") or ""
    return trace_id, parent_id, int(found.group(3), 16), state if len(state) <= _TRACESTATE_MAX else ""


def _traceparent(trace_id: int, span_id: int, flags: int, state: str) -> dict[str, str]:
    out = {"traceparent": f"00-{trace_id:032x}-{span_id:016x}-{flags & 0xFF:02x}"}
    if state:
        out["tracestate"] = state
    return out


def _wire(name: str, trace_id: int, span_id: int, flags: int, state: str, parent_id: int | None, parent_remote: bool,
          kind: int, start: int, end: int, attributes: dict[str, Any], code: int = 0,
          description: str | None = None) -> bytes:
    """A span without events or links, encoded (`runtime.otlp.span`)."""
    return otlp.span([name, trace_id.to_bytes(16, "big"), span_id, flags, state, parent_id, parent_remote, kind, start,
                      end, attributes, code, description, (), ()])


# -- the front --------------------------------------------------------------------------------


def json_lines_sink(path: str) -> Sink:
    """A sink appending every span to `path` as one JSON line (name, ids, parent, kind,
    attributes, status, links, resource), read back from its protobuf; a batch is written whole."""
    from google.protobuf.json_format import MessageToDict
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    def value(v: Any) -> Any:
        field = v.WhichOneof("value")
        if field == "array_value":
            return [value(x) for x in v.array_value.values]
        return getattr(v, field) if field else None

    def attributes(kvs: Any) -> dict[str, Any]:
        return {kv.key: value(kv.value) for kv in kvs}

    def line(resource: dict[str, Any], raw: bytes) -> str:
        s = Span()
        s.ParseFromString(raw)
        return json.dumps({
            "name": s.name, "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
            "parent_id": s.parent_span_id.hex() or None, "kind": Span.SpanKind.Name(s.kind)[len("SPAN_KIND_"):],
            "start": s.start_time_unix_nano, "end": s.end_time_unix_nano, "attributes": attributes(s.attributes),
            "status": ("UNSET", "OK", "ERROR")[s.status.code], "status_message": s.status.message,
            "events": [MessageToDict(e) for e in s.events],
            "links": [{"trace_id": lk.trace_id.hex(), "span_id": lk.span_id.hex(), "attributes": attributes(lk.attributes)}
                      for lk in s.links],
            "resource": resource}) + "\n"

    def sink(groups: list[tuple[dict[str, Any], list[bytes]]]) -> None:
        text = "".join(line(resource, raw) for resource, spans in groups for raw in spans)
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)

    return sink


def otlp_sink(endpoint: str) -> Sink:
    """A sink POSTing each batch to an OTLP/HTTP collector as protobuf (`runtime.otlp`); a batch
    the collector refuses or cannot take is dropped and logged, never retried forever."""
    client = httpx.Client(timeout=10.0)

    def sink(groups: list[tuple[dict[str, Any], list[bytes]]]) -> None:
        body = otlp.encode_request(groups)
        try:
            answer = client.post(endpoint, content=body, headers={"content-type": "application/x-protobuf"})
        except httpx.HTTPError as e:
            log("traces_export_failed", endpoint=endpoint, error=f"{type(e).__name__}: {e}")
            return
        if answer.status_code >= 300:
            log("traces_export_failed", endpoint=endpoint, status=answer.status_code)

    return sink


class _Collect(SpanProcessor):
    """The front provider's processor: its SDK spans join the export queue."""

    def __init__(self, front: FrontTracing) -> None:
        self._front = front

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is not None and span.context.trace_flags.sampled:
            self._front.queue.append((0, encode_span(span)))


class FrontTracing:
    """The front's tracing: its provider, the queue of finished spans (its own and isolates',
    each with the index of its resource) and the thread exporting them in batches to `sinks`.
    Queueing is a deque append (no lock, no syscall on the request path); a full queue drops."""

    def __init__(self, config: ObservabilityConfig, trace_file: str | None = None) -> None:
        self.ratio = config.tracing_sample_ratio
        self.bound = _bound(self.ratio)
        self.service_name = config.service_name
        self.sinks: list[Sink] = []
        if config.otlp_endpoint:
            self.sinks.append(otlp_sink(config.otlp_endpoint))
        if trace_file:
            self.sinks.append(json_lines_sink(trace_file))
        self.resources: list[dict[str, Any]] = [self._resource("front", os.getpid())]
        self._resource_of: dict[tuple[str, int], int] = {}
        self.queue: collections.deque[tuple[int, bytes]] = collections.deque()
        self.dropped = 0
        self.provider = TracerProvider(sampler=_sampler(self.ratio), resource=Resource(self.resources[0]))
        self.provider.add_span_processor(_Collect(self))
        self.tracer = self.provider.get_tracer("edgeworks")
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="edgeworks-traces", daemon=True)
        self._thread.start()

    def _resource(self, process: str, pid: int) -> dict[str, Any]:
        return {"service.name": self.service_name, "process.pid": pid, "edgeworks.process": process}

    def add(self, span: bytes, resource: int = 0) -> None:
        queue = self.queue
        if len(queue) >= _QUEUE_MAX:
            self.dropped += 1
            return
        queue.append((resource, span))
        if len(queue) == _EXPORT_BATCH:
            self._wake.set()

    def receive(self, script: str, pid: int, spans: list[Any]) -> None:
        """Finished spans an isolate sent (encoded), queued under a resource naming that isolate
        (its script and pid); what is not bytes is dropped, never raised into the front."""
        index = self._resource_of.get((script, pid))
        if index is None:
            index = self._resource_of[(script, pid)] = len(self.resources)
            self.resources.append(self._resource(f"isolate:{script}", pid))
        for raw in spans:
            if isinstance(raw, bytes):
                self.add(raw, index)

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(_EXPORT_S)
            self._wake.clear()
            self.export()

    def export(self) -> None:
        """Hand what is queued to every sink (the export thread does, and `shutdown`)."""
        queue = self.queue
        taken = [queue.popleft() for _ in range(len(queue))]
        if not taken or not self.sinks:
            return
        groups: dict[int, list[bytes]] = {}
        for index, raw in taken:
            groups.setdefault(index, []).append(raw)
        batch = [(self.resources[i], spans) for i, spans in groups.items()]
        for sink in self.sinks:
            try:
                sink(batch)
            except Exception as e:  # a failing sink loses this batch, not the thread
                log("traces_export_failed", error=f"{type(e).__name__}: {e}")

    def shutdown(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(5)
        self.export()


def start_front(config: ObservabilityConfig) -> FrontTracing | None:
    """Set up the front's tracing from `[observability]` (None, and `TRACER` None, when off)."""
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


class RequestSpan:
    """The front's span of one request, kept as plain fields until it ends (the fast path)."""

    __slots__ = ("attributes", "flags", "name", "parent_id", "sampled", "span_id", "start", "state", "trace_id")

    def __init__(self, name: str, trace_id: int, span_id: int, flags: int, state: str, parent_id: int | None,
                 attributes: dict[str, Any]) -> None:
        self.name, self.trace_id, self.span_id, self.flags, self.state = name, trace_id, span_id, flags, state
        self.parent_id, self.attributes = parent_id, attributes
        self.sampled = bool(flags & 1)
        self.start = time.time_ns()

    def carrier(self) -> dict[str, str]:
        """The context the request's isolate continues (the `trace` field of its message)."""
        return _traceparent(self.trace_id, self.span_id, self.flags, self.state)


def request_span(scope: Mapping[str, Any], host: str, route: str, rid: str, script: str,
                 version: str | None) -> RequestSpan:
    """The SERVER span of a routed request at the front (HTTP server semantic conventions), in
    the trace an incoming `traceparent` names (a new one, sampled at the ratio, when it names
    none or a malformed one)."""
    front = _front
    assert front is not None
    incoming: dict[str, str] | None = None
    for k, v in scope["headers"]:
        if k == b"traceparent" or k == b"tracestate":
            incoming = incoming or {}
            incoming[k.decode()] = v.decode("latin-1")
    parent = _parse(incoming)
    if parent is None:
        trace_id, parent_id, state = random.getrandbits(128) or 1, None, ""
        flags = 1 if (trace_id & _MASK64) < front.bound else 0
    else:
        trace_id, parent_id, flags, state = parent
    method = scope["method"]
    span = RequestSpan(f"{method} {route}", trace_id, random.getrandbits(64) or 1, flags, state, parent_id, {})
    if span.sampled:
        attributes = span.attributes
        attributes.update({"http.request.method": method, "url.path": scope["path"],
                           "url.scheme": scope.get("scheme", "http"), "http.route": route, REQUEST_ID: rid,
                           "edgeworks.script": script})
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
    return span


def end_request_span(span: RequestSpan, status: int, error: str | None) -> None:
    """End a request's span with its outcome: a 5xx answer is an error (4xx is the client's)."""
    front = _front
    if not span.sampled or front is None:
        return
    attributes = span.attributes
    attributes["http.response.status_code"] = status
    code = 0
    if status >= 500:
        attributes["error.type"] = error or str(status)
        code = StatusCode.ERROR.value
    elif error:
        attributes["edgeworks.error"] = error
    front.add(_wire(span.name, span.trace_id, span.span_id, span.flags, span.state, span.parent_id,
                    span.parent_id is not None, _SERVER, span.start, time.time_ns(), attributes, code))


# -- isolates ---------------------------------------------------------------------------------


class IsolateTracing(SpanProcessor):
    """An isolate's span processor: stamps the request id on each SDK span when it starts, and
    forwards finished sampled spans (SDK ones and the fast handler spans) to the front in
    batches, on the event loop's thread."""

    def __init__(self, send: Callable[[list[bytes]], None], request_id: Callable[[], str], ratio: float) -> None:
        self._send = send
        self._request_id = request_id
        self.bound = _bound(ratio)
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._pending: list[bytes] = []
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
            self.add(raw)
        else:
            self._loop.call_soon_threadsafe(self.add, raw)

    def add(self, raw: bytes) -> None:
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


def start_isolate(settings: dict[str, Any] | None, send: Callable[[list[bytes]], None],
                  request_id: Callable[[], str]) -> None:
    """Set up an isolate's tracing from its init message (`isolate_settings`); call it on the
    event loop. `send(spans)` carries a batch to the front; `request_id()` is the running
    request's id ("" outside one)."""
    global TRACER, _isolate
    if not settings:
        TRACER = None
        return
    ratio = float(settings["ratio"])
    provider = TracerProvider(sampler=_sampler(ratio),
                              resource=Resource.create({"service.name": str(settings["service_name"])}))
    _isolate = IsolateTracing(send, request_id, ratio)
    provider.add_span_processor(_isolate)
    TRACER = provider.get_tracer("edgeworks")


def flush() -> None:
    """Send an isolate's waiting spans now (before it exits)."""
    if _isolate is not None:
        _isolate.flush()


async def traced(work: Awaitable[Any], name: str | None, parent: Mapping[str, str] | None,
                 attributes: dict[str, Any]) -> Any:
    """Run `work` (a handler a message started) in the trace context `parent` names: under a
    span `name` (the fast path: a handler span is built here, not by the SDK; the spans its
    code makes are SDK spans under it), or, with no name, directly in that context."""
    isolate = _isolate
    found = _parse(parent)
    if isolate is None or (name is None and found is None):
        return await work
    if found is None:
        trace_id, parent_id, state = random.getrandbits(128) or 1, None, ""
        flags = 1 if (trace_id & _MASK64) < isolate.bound else 0
    else:
        trace_id, parent_id, flags, state = found
    span_id = random.getrandbits(64) or 1 if name is not None else parent_id or 0
    context = SpanContext(trace_id, span_id, name is None, TraceFlags(flags & 0xFF),
                          TraceState.from_header([state]) if state else None)
    token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(context)))
    start = time.time_ns()
    code, description = 0, None
    try:
        return await work
    except BaseException as e:
        code, description = StatusCode.ERROR.value, type(e).__name__
        raise
    finally:
        otel_context.detach(token)
        if name is not None and flags & 1:
            isolate.add(_wire(name, trace_id, span_id, flags, state, parent_id, True, _INTERNAL, start, time.time_ns(),
                              attributes, code, description))


# -- spans on the wire between an isolate and the front ---------------------------------------


def encode_span(s: ReadableSpan) -> bytes:
    """A finished SDK span as the OTLP protobuf of a `Span` (`runtime.otlp.span`)."""
    ctx = s.context
    assert ctx is not None
    parent = s.parent
    return otlp.span([
        s.name, ctx.trace_id.to_bytes(16, "big"), ctx.span_id, int(ctx.trace_flags),
        ctx.trace_state.to_header() if ctx.trace_state else "",
        parent.span_id if parent is not None else None, bool(parent is not None and parent.is_remote),
        s.kind.value, s.start_time, s.end_time, dict(s.attributes or {}),
        s.status.status_code.value, s.status.description,
        [[e.name, e.timestamp, dict(e.attributes or {})] for e in s.events],
        [[lk.context.trace_id.to_bytes(16, "big"), lk.context.span_id, int(lk.context.trace_flags),
          dict(lk.attributes or {})] for lk in s.links],
    ])


# -- context and spans at the call sites ------------------------------------------------------


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
