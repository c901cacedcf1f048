"""The front's side of traces (`runtime.tracing` has the shared part and the isolates').

The front makes the SERVER span of each routed request (`request_span`, `end_request_span`: the
fast path, plain fields and bytes, no SDK span object), queues it with every isolate's finished
spans (`receive`: OTLP protobuf bytes, joined as they are) and an export thread hands the queue
to its sinks in batches, every `_EXPORT_S` or per `_EXPORT_BATCH` spans: OTLP/HTTP when
`[observability] otlp_endpoint` is set, and JSON lines appended to the file named by
EDGEWORKS_TRACE_FILE (what the end-to-end tests read). Queueing is a deque append: no lock and
no syscall on the request path; a full queue drops (counted), an export that fails is logged
and dropped, and neither ever slows a request.
"""

from __future__ import annotations

import collections
import json
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import httpx
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.trace import SpanKind, StatusCode

from runtime import otlp, tracing
from runtime.logs import log
from runtime.tracing import REQUEST_ID

if TYPE_CHECKING:
    from runtime.observability_config import ObservabilityConfig

__all__ = ["TRACE_FILE_ENV", "FrontTracing", "RequestSpan", "Sink", "end_request_span", "isolate_settings",
           "json_lines_sink", "otlp_sink", "receive", "request_span", "start", "stop"]

#: Names a file the front appends every finished span to, as JSON lines (tests read it).
TRACE_FILE_ENV = "EDGEWORKS_TRACE_FILE"

#: A sink of the export thread: batches of (resource attributes, encoded OTLP spans).
Sink = Callable[[list[tuple[dict[str, Any], list[bytes]]]], None]

_SERVER = SpanKind.SERVER.value
_EXPORT_S = 0.5  # the export thread sends what is queued at least this often
_EXPORT_BATCH = 512  # ... or as soon as this many spans are queued
_QUEUE_MAX = 16384  # spans queued past this are dropped (counted), never block a request
_front: FrontTracing | None = None


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
            self._front.queue.append((0, tracing.encode_span(span)))


class FrontTracing:
    """The front's tracing: its provider, the queue of finished spans (its own and isolates',
    each with the index of its resource) and the thread exporting them in batches to `sinks`.
    Queueing is a deque append (no lock, no syscall on the request path); a full queue drops."""

    def __init__(self, config: ObservabilityConfig, trace_file: str | None = None) -> None:
        self.ratio = config.tracing_sample_ratio
        self.bound = tracing.ratio_bound(self.ratio)
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
        self.provider = TracerProvider(sampler=tracing.sampler(self.ratio), resource=Resource(self.resources[0]))
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


def start(config: ObservabilityConfig) -> FrontTracing | None:
    """Set up the front's tracing from `[observability]` (None, and `tracing.TRACER` None, when
    off)."""
    global _front
    stop()
    if config.tracing_sample_ratio <= 0.0:
        return None
    _front = FrontTracing(config, os.environ.get(TRACE_FILE_ENV) or None)
    tracing.use_tracer(_front.tracer)
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
    """Send what is queued and drop the front's tracing (at its stop; idempotent)."""
    global _front
    tracing.stop()
    if _front is not None:
        _front.shutdown()
        _front = None


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
        return tracing.traceparent_of(self.trace_id, self.span_id, self.flags, self.state)


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
    parent = tracing.parse_carrier(incoming)
    if parent is None:
        trace_id, parent_id, state = random.getrandbits(128) or 1, None, ""
        flags = 1 if (trace_id & tracing.MASK64) < front.bound else 0
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
    front.add(tracing.wire_span(span.name, span.trace_id, span.span_id, span.flags, span.state, span.parent_id,
                    span.parent_id is not None, _SERVER, span.start, time.time_ns(), attributes, code))
