"""runtime.tracing in one process: off costs no spans, spans an isolate encodes reach the front's
sinks intact (read back into the SDK's in-memory exporter here), carriers, and the
[observability] keys."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from runtime import otlp, tracing
from runtime.config import ConfigError, load_app
from runtime.front import traces
from runtime.observability_config import ObservabilityConfig
from tests.support import write_app


@pytest.fixture(autouse=True)
def _no_tracing_left() -> Iterator[None]:
    yield
    traces.stop()


def _front_with_memory(ratio: float = 1.0) -> tuple[traces.FrontTracing, InMemorySpanExporter]:
    front = traces.start(ObservabilityConfig(tracing_sample_ratio=ratio, service_name="svc"))
    assert front is not None
    memory = InMemorySpanExporter()

    def sink(groups: list[tuple[dict[str, Any], list[bytes]]]) -> None:
        for resource, spans in groups:
            memory.export([_readable(raw, Resource(resource)) for raw in spans])

    front.sinks.append(sink)
    return front, memory


def _value(v: AnyValue) -> Any:
    field = v.WhichOneof("value")
    return tuple(_value(x) for x in v.array_value.values) if field == "array_value" else getattr(v, str(field))


def _attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs if isinstance(kv, KeyValue)}


def _readable(raw: bytes, resource: Resource) -> ReadableSpan:
    """An SDK span read back from the OTLP protobuf the runtime wrote."""
    s = Span()
    s.ParseFromString(raw)
    trace_id = int.from_bytes(s.trace_id, "big")
    state = TraceState.from_header([s.trace_state]) if s.trace_state else None
    parent = (SpanContext(trace_id, int.from_bytes(s.parent_span_id, "big"), bool(s.flags & 0x200),
                          TraceFlags(s.flags & 0xFF)) if s.parent_span_id else None)
    return ReadableSpan(
        name=s.name, context=SpanContext(trace_id, int.from_bytes(s.span_id, "big"), False, TraceFlags(s.flags & 0xFF),
                                         state),
        parent=parent, resource=resource, attributes=_attributes(s.attributes),
        events=[Event(e.name, _attributes(e.attributes), e.time_unix_nano) for e in s.events],
        links=[Link(SpanContext(int.from_bytes(lk.trace_id, "big"), int.from_bytes(lk.span_id, "big"), False,
                                TraceFlags(lk.flags & 0xFF)), _attributes(lk.attributes)) for lk in s.links],
        kind=SpanKind(s.kind - 1), status=Status(StatusCode(s.status.code), s.status.message or None),
        start_time=s.start_time_unix_nano, end_time=s.end_time_unix_nano)


def finished(front: traces.FrontTracing, memory: InMemorySpanExporter) -> tuple[Any, ...]:
    front.export()
    return memory.get_finished_spans()


def test_off_by_default_makes_no_tracer_and_no_spans() -> None:
    assert traces.start(ObservabilityConfig()) is None
    assert tracing.TRACER is None
    assert traces.isolate_settings() is None
    assert tracing.carrier() is None
    with tracing.span("x", {}) as span:
        assert span is None
    assert tracing.step_span({"workflow": "W", "instance": "i", "step": "s", "attempt": 1}).__enter__() is None


def test_isolate_spans_reach_the_front_exporter_intact() -> None:
    front, memory = _front_with_memory()
    sent: list[list[bytes]] = []

    async def in_isolate() -> None:
        tracing.start_isolate(traces.isolate_settings(), sent.append, lambda: "rid-1")
        assert tracing.TRACER is not None
        parent = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tracestate": "v=1"}
        link_to = tracing.context_of({"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
        assert link_to is not None
        from opentelemetry import trace

        with tracing.TRACER.start_as_current_span(
                "fetch app", context=tracing.context_of(parent), kind=SpanKind.SERVER, attributes={"a": [1, 2]},
                links=[Link(trace.get_current_span(link_to).get_span_context(), {"why": "x"})]) as span:
            span.add_event("tick", {"n": 1})
            try:
                with tracing.span("inner", {"b": "c"}):
                    raise ValueError("boom")
            except ValueError:
                pass
        assert not sent  # batched: sent within the forwarding interval, not per span
        await asyncio.sleep(tracing._FORWARD_S * 3)

    asyncio.run(in_isolate())
    assert len(sent) == 1 and len(sent[0]) == 2
    front.receive("app", 4242, sent[0])
    spans = {s.name: s for s in finished(front, memory)}
    outer, inner = spans["fetch app"], spans["inner"]
    assert f"{outer.context.trace_id:032x}" == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert outer.parent is not None and f"{outer.parent.span_id:016x}" == "00f067aa0ba902b7" and outer.parent.is_remote
    assert outer.context.trace_state.to_header() == "v=1"
    outer_attrs, inner_attrs = dict(outer.attributes or {}), dict(inner.attributes or {})
    assert outer.kind is SpanKind.SERVER and outer_attrs["a"] == (1, 2)
    assert outer_attrs[tracing.REQUEST_ID] == "rid-1" and inner_attrs[tracing.REQUEST_ID] == "rid-1"
    assert [e.name for e in outer.events] == ["tick"]
    assert f"{outer.links[0].context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert inner.parent is not None and inner.parent.span_id == outer.context.span_id
    assert inner.status.status_code is StatusCode.ERROR
    assert outer.resource.attributes["edgeworks.process"] == "isolate:app"
    assert outer.resource.attributes["process.pid"] == 4242 and outer.resource.attributes["service.name"] == "svc"


def test_a_malformed_span_from_an_isolate_is_dropped() -> None:
    front, memory = _front_with_memory()
    front.receive("app", 1, [["only a name"], "not bytes"])
    assert finished(front, memory) == ()


def test_a_handler_span_continues_its_message_context_and_parents_the_spans_of_its_code() -> None:
    front, memory = _front_with_memory()
    sent: list[list[bytes]] = []
    parent = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}

    async def handler() -> str:
        with tracing.span("object Desk.open", {}, SpanKind.CLIENT):
            found = tracing.carrier()
        assert found is not None
        return found["traceparent"]

    async def in_isolate() -> str:
        tracing.start_isolate(traces.isolate_settings(), sent.append, lambda: "rid-2")
        out: str = await tracing.traced(handler(), "fetch app", parent, {tracing.REQUEST_ID: "rid-2"})
        with pytest.raises(ValueError):
            await tracing.traced(_raises(), "fetch app", None, {})
        tracing.flush()
        return out

    inner_parent = asyncio.run(in_isolate())
    front.receive("app", 7, [w for batch in sent for w in batch])
    spans = finished(front, memory)
    call = next(s for s in spans if s.name == "object Desk.open")
    handler_span, failed = [s for s in spans if s.name == "fetch app"]
    assert f"{handler_span.context.trace_id:032x}" == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert handler_span.parent is not None and f"{handler_span.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert call.parent is not None and call.parent.span_id == handler_span.context.span_id
    assert inner_parent.split("-")[2] == f"{call.context.span_id:016x}"
    assert dict(handler_span.attributes or {})[tracing.REQUEST_ID] == "rid-2"
    assert failed.parent is None and failed.status.status_code is StatusCode.ERROR


async def _raises() -> None:
    raise ValueError("boom")


def test_carrier_and_context_round_trip() -> None:
    _front_with_memory()
    assert tracing.TRACER is not None
    with tracing.TRACER.start_as_current_span("s") as span:
        found = tracing.carrier()
    ctx = span.get_span_context()
    assert found == {"traceparent": f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"}
    assert tracing.context_of({"traceparent": "garbage"}) is None
    assert tracing.context_of(None) is None


def test_ratio_zero_point_something_samples_parent_based() -> None:
    _front_with_memory(ratio=0.000001)
    assert tracing.TRACER is not None
    sampled = tracing.context_of({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
    unsampled = tracing.context_of({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"})
    assert tracing.TRACER.start_span("a", context=sampled).is_recording()
    assert not tracing.TRACER.start_span("b", context=unsampled).is_recording()


def test_a_resumed_step_starts_its_own_trace_linked_to_the_creating_one() -> None:
    front, memory = _front_with_memory()
    recorded = {"carrier": {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
                "request_id": "creator"}
    info = {"workflow": "W", "instance": "i", "step": "s", "attempt": 2, "trace": recorded}
    with tracing.step_span({**info, "resumed": False}):
        pass
    with tracing.step_span({**info, "resumed": True}):
        pass
    first, resumed = finished(front, memory)
    assert f"{first.context.trace_id:032x}" == "4bf92f3577b34da6a3ce929d0e0e4736" and first.parent is not None
    assert resumed.parent is None and resumed.context.trace_id != first.context.trace_id
    assert [f"{lk.context.trace_id:032x}" for lk in resumed.links] == ["4bf92f3577b34da6a3ce929d0e0e4736"]
    attributes = dict(resumed.attributes or {})
    assert attributes[tracing.REQUEST_ID] == "creator" and attributes["edgeworks.workflow.attempt"] == 2


def test_the_json_lines_sink_writes_one_line_per_span(tmp_path: Path) -> None:
    sink = traces.json_lines_sink(str(tmp_path / "s.jsonl"))
    wire = ["a", b"\x01" * 16, 2, 1, "", 3, True, 1, 10, 20, {"k": "v", "l": [1, 2]}, 2, "bad", [], [[b"\x02" * 16, 4, 1, {}]]]
    sink([({"service.name": "x"}, [otlp.span(wire), otlp.span(["b", *wire[1:]])])])
    lines = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [line["name"] for line in lines] == ["a", "b"]
    assert lines[0] == {**lines[0], "trace_id": "01" * 16, "span_id": "0000000000000002", "parent_id": "0000000000000003",
                        "kind": "SERVER", "attributes": {"k": "v", "l": [1, 2]}, "status": "ERROR",
                        "resource": {"service.name": "x"}}
    assert lines[0]["links"] == [{"trace_id": "02" * 16, "span_id": "0000000000000004", "attributes": {}}]


# -- [observability] keys ----------------------------------------------------------------------

GOOD_MAIN = "async def fetch(request, env, ctx):\n    pass\n"


def problems(tmp_path: Path, section: str) -> list[str]:
    write_app(tmp_path, f"[observability]\n{section}\n[[scripts]]\nname = \"app\"\nmain = \"app.py\"\n",
              {"app.py": GOOD_MAIN})
    with pytest.raises(ConfigError) as e:
        load_app(tmp_path)
    return e.value.problems


@pytest.mark.parametrize(("section", "key"), [
    ("tracing_sample_ratio = 1.5", "observability.tracing_sample_ratio"),
    ("tracing_sample_ratio = -0.1", "observability.tracing_sample_ratio"),
    ('tracing_sample_ratio = "all"', "observability.tracing_sample_ratio"),
    ('otlp_endpoint = "127.0.0.1:4318"', "observability.otlp_endpoint"),
    ('service_name = ""', "observability.service_name"),
    ("tracing = true", "observability.tracing"),
])
def test_bad_observability_keys_name_their_path(tmp_path: Path, section: str, key: str) -> None:
    found = problems(tmp_path, section)
    assert any(key in p for p in found), found


def test_good_observability_keys_load(tmp_path: Path) -> None:
    write_app(tmp_path, '[observability]\ntracing_sample_ratio = 0.25\notlp_endpoint = "http://127.0.0.1:4318/v1/traces"\n'
              'service_name = "shop"\n[[scripts]]\nname = "app"\nmain = "app.py"\n', {"app.py": GOOD_MAIN})
    cfg = load_app(tmp_path).observability
    assert (cfg.tracing_sample_ratio, cfg.otlp_endpoint, cfg.service_name) == (0.25, "http://127.0.0.1:4318/v1/traces",
                                                                                "shop")
