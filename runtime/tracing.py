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
  a `Span` (`runtime.otlp`: bytes the garbage collector never walks), and sent to the front in
  batches (`protocol.Spans`, at least every `_FORWARD_S`); the front (`runtime.front.traces`)
  queues them with its own and exports them. So one exporter sees every process's spans, and no
  isolate opens a connection of its own (its egress rules never have to allow a collector).

The two spans every request has (the front's request span, the isolate's handler span, `traced`)
take a fast path: no SDK span object, ids and the parent-based sampling decision made here, the
bytes written directly; every other span is an SDK span. Every span carries the request id as
`edgeworks.request_id`.
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    pass

__all__ = ["MASK64", "REQUEST_ID", "TRACER", "IsolateTracing", "carrier", "context_of", "encode_span", "flush",
           "parse_carrier", "ratio_bound", "sampler", "span", "start_isolate", "step_span", "stop", "trace_record",
           "traceparent_of", "traced", "use_tracer", "wire_span"]

#: The span attribute every span carries: the request id of the work it is part of.
REQUEST_ID = "edgeworks.request_id"

#: This process's tracer; None while tracing is off (the one check on every path).
TRACER: trace.Tracer | None = None

_PROPAGATOR = TraceContextTextMapPropagator()
_OFF: AbstractContextManager[None] = nullcontext()
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})\Z")
_TRACESTATE_MAX = 512
MASK64 = (1 << 64) - 1  # the low 64 bits of a trace id decide its sampling
_INTERNAL = SpanKind.INTERNAL.value
_FORWARD_S = 0.05  # an isolate sends its finished spans to the front at least this often
_FORWARD_MAX = 256  # ... or as soon as this many are waiting
_isolate: IsolateTracing | None = None


def sampler(ratio: float) -> ParentBased:
    return ParentBased(TraceIdRatioBased(ratio))


def ratio_bound(ratio: float) -> int:
    """TraceIdRatioBased's rule: a new trace is sampled when its id's low 64 bits are below this."""
    return round(ratio * (1 << 64))


def parse_carrier(carrier: Mapping[str, str] | None) -> tuple[int, int, int, str] | None:
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


def traceparent_of(trace_id: int, span_id: int, flags: int, state: str) -> dict[str, str]:
    out = {"traceparent": f"00-{trace_id:032x}-{span_id:016x}-{flags & 0xFF:02x}"}
    if state:
        out["tracestate"] = state
    return out


def wire_span(name: str, trace_id: int, span_id: int, flags: int, state: str, parent_id: int | None, parent_remote: bool,
          kind: int, start: int, end: int, attributes: dict[str, Any], code: int = 0,
          description: str | None = None) -> bytes:
    """A span without events or links, encoded (`runtime.otlp.span`)."""
    return otlp.span([name, trace_id.to_bytes(16, "big"), span_id, flags, state, parent_id, parent_remote, kind, start,
                      end, attributes, code, description, (), ()])


# -- isolates ---------------------------------------------------------------------------------


class IsolateTracing(SpanProcessor):
    """An isolate's span processor: stamps the request id on each SDK span when it starts, and
    forwards finished sampled spans (SDK ones and the fast handler spans) to the front in
    batches, on the event loop's thread."""

    def __init__(self, send: Callable[[list[bytes]], None], request_id: Callable[[], str], ratio: float) -> None:
        self._send = send
        self._request_id = request_id
        self.bound = ratio_bound(ratio)
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


def use_tracer(tracer: trace.Tracer | None) -> None:
    """Set this process's tracer (the front's setup does, `runtime.front.traces`; None: off)."""
    global TRACER
    TRACER = tracer


def stop() -> None:
    """Drop this process's tracer, sending an isolate's waiting spans first (idempotent)."""
    global TRACER, _isolate
    TRACER = None
    if _isolate is not None:
        _isolate.flush()
        _isolate = None


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
    provider = TracerProvider(sampler=sampler(ratio),
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
    found = parse_carrier(parent)
    if isolate is None or (name is None and found is None):
        return await work
    if found is None:
        trace_id, parent_id, state = random.getrandbits(128) or 1, None, ""
        flags = 1 if (trace_id & MASK64) < isolate.bound else 0
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
            isolate.add(wire_span(name, trace_id, span_id, flags, state, parent_id, True, _INTERNAL, start, time.time_ns(),
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
