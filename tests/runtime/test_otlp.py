"""runtime.otlp writes what opentelemetry-proto's own classes read back, field by field."""

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from runtime import otlp
from runtime.otlp import encode_request


def _decode(body: bytes) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    return request


def test_every_span_field_reads_back() -> None:
    wire = ["GET /x", bytes(range(16)), 0x1122334455667788, 1, "a=b", 0x0102030405060708, True, 0, 10**18,
            10**18 + 5, {"s": "v", "i": -3, "f": 1.5, "b": True, "l": [1, "x"]}, 2, "boom",
            [["ev", 123, {"n": 1}]], [[bytes(16), 7, 1, {"k": "v"}]]]
    request = _decode(encode_request([({"service.name": "svc", "process.pid": 9}, [otlp.span(wire)])]))
    (rs,) = request.resource_spans
    assert {a.key: (a.value.string_value or a.value.int_value) for a in rs.resource.attributes} == {
        "service.name": "svc", "process.pid": 9}
    (ss,) = rs.scope_spans
    assert ss.scope.name == "edgeworks"
    (span,) = ss.spans
    assert span.trace_id == bytes(range(16)) and span.span_id == (0x1122334455667788).to_bytes(8, "big")
    assert span.parent_span_id == (0x0102030405060708).to_bytes(8, "big") and span.trace_state == "a=b"
    assert span.name == "GET /x" and span.kind == Span.SPAN_KIND_INTERNAL
    assert (span.start_time_unix_nano, span.end_time_unix_nano) == (10**18, 10**18 + 5)
    values = {a.key: a.value for a in span.attributes}
    assert values["s"].string_value == "v" and values["i"].int_value == -3 and values["f"].double_value == 1.5
    assert values["b"].bool_value is True
    assert [v.int_value or v.string_value for v in values["l"].array_value.values] == [1, "x"]
    assert span.events[0].name == "ev" and span.events[0].time_unix_nano == 123
    assert span.links[0].span_id == (7).to_bytes(8, "big") and span.links[0].attributes[0].key == "k"
    assert span.status.code == Status.STATUS_CODE_ERROR and span.status.message == "boom"
    assert span.flags == 0x301  # sampled, and the parent is remote


def test_spans_group_by_resource_and_repeat_cached_attributes_correctly() -> None:
    def wire(name: str, kind: int) -> list[object]:
        return [name, b"\x01" * 16, 5, 1, "", None, False, kind, 1, 2, {"http.route": "/a", "n": 1}, 0, None, [], []]

    request = _decode(encode_request([({"service.name": "a"}, [otlp.span(wire("x", 1)), otlp.span(wire("y", 2))]),
                                      ({"service.name": "b"}, [otlp.span(wire("z", 0))])]))
    names = [[s.name for ss in rs.scope_spans for s in ss.spans] for rs in request.resource_spans]
    assert names == [["x", "y"], ["z"]]
    kinds = [s.kind for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert kinds == [Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT, Span.SPAN_KIND_INTERNAL]
    for rs in request.resource_spans:
        for s in rs.scope_spans[0].spans:
            assert {a.key: a.value.string_value or a.value.int_value for a in s.attributes} == {"http.route": "/a", "n": 1}
            assert not s.parent_span_id and s.flags == 1 and not s.HasField("status")
