"""OTLP trace protobuf written by hand: each span encoded once where it ends (`span`, bytes that
cross from an isolate to the front as they are), and the front's batches joined into an
`ExportTraceServiceRequest` (`encode_request`) for an OTLP/HTTP collector.

Why not the SDK's OTLP exporter: it builds a protobuf object per span and per attribute from
Python, which cost more CPU than serving a hello request twice over (measured with
loadtests/bench_front.py), and spans kept as Python objects until a batch is sent load the
garbage collector; at 100 % sampling that kept tracing far below the 0.8x target. Writing the
few message types by hand (field numbers from opentelemetry-proto's
trace/v1/trace.proto, common/v1/common.proto, resource/v1/resource.proto) and caching the encoded
attributes that repeat (method, route, script...) makes it several times cheaper. The tests
decode what this writes with opentelemetry-proto's own classes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["encode_request", "span"]

_Q = struct.Struct("<Q")
_D = struct.Struct("<d")
_I = struct.Struct("<I")
_MASK64 = (1 << 64) - 1
_attribute_cache: dict[tuple[int, str, Any], bytes] = {}
_ATTRIBUTE_CACHE_MAX = 4096


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = tuple(_encode_varint(n) for n in range(1 << 14))  # every length and key a span has


def _varint(n: int) -> bytes:
    return _SMALL[n] if n < 16384 else _encode_varint(n)


def _len(field: int, payload: bytes) -> bytes:
    """A length-delimited field (strings, bytes, messages)."""
    return _SMALL[field << 3 | 2] + _varint(len(payload)) + payload


def _any(value: Any) -> bytes:
    """An `AnyValue`."""
    if isinstance(value, str):
        return _len(1, value.encode())
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + _varint(value & _MASK64)
    if isinstance(value, float):
        return b"\x21" + _D.pack(value)
    if isinstance(value, bytes):
        return _len(7, value)
    if isinstance(value, list | tuple):
        return _len(5, b"".join(_len(1, _any(v)) for v in value))
    return _len(1, str(value).encode())


def _attribute(field: int, key: str, value: Any) -> bytes:
    """A `KeyValue` as field `field`, remembered for values that repeat across spans."""
    try:
        cached = _attribute_cache.get((field, key, value))
    except TypeError:  # a list value: not hashable, not cached
        return _len(field, _len(1, key.encode()) + _len(2, _any(value)))
    if cached is None:
        cached = _len(field, _len(1, key.encode()) + _len(2, _any(value)))
        if len(_attribute_cache) >= _ATTRIBUTE_CACHE_MAX:
            _attribute_cache.clear()
        _attribute_cache[(field, key, value)] = cached
    return cached


def _attributes(field: int, attributes: Mapping[str, Any]) -> bytes:
    return b"".join([_attribute(field, k, v) for k, v in attributes.items()])


def span(w: Sequence[Any]) -> bytes:
    """A `Span` message from its fields: [name, trace id (16 bytes), span id, flags,
    tracestate, parent span id or None, parent is remote, kind (the SDK's SpanKind value), start
    ns, end ns, attributes, status code, status description, events [[name, ns, attributes]],
    links [[trace id, span id, flags, attributes]]]."""
    (name, trace_id, span_id, flags, state, parent_id, parent_remote, kind, start, end, attributes, code,
     description, events, links) = w
    parts = [b"\x0a\x10", trace_id, b"\x12\x08", span_id.to_bytes(8, "big")]
    if state:
        parts.append(_len(3, state.encode()))
    if parent_id is not None:
        parts += (b"\x22\x08", parent_id.to_bytes(8, "big"))
    parts += (_len(5, name.encode()), b"\x30", _varint(kind + 1), b"\x39", _Q.pack(start), b"\x41", _Q.pack(end),
              _attributes(9, attributes))
    for event_name, ts, event_attributes in events:
        parts.append(_len(11, b"\x09" + _Q.pack(ts) + _len(2, event_name.encode()) + _attributes(3, event_attributes)))
    for link_trace, link_span, link_flags, link_attributes in links:
        parts.append(_len(13, b"\x0a\x10" + link_trace + b"\x12\x08" + link_span.to_bytes(8, "big")
                          + _attributes(4, link_attributes) + b"\x35" + _I.pack(link_flags & 0xFF)))
    if code or description:
        parts.append(_len(15, (_len(2, description.encode()) if description else b"") + b"\x18" + _varint(code)))
    # flags: the trace flags, and whether the parent is remote (bits 8 and 9, "has is_remote")
    has_remote = 0x100 | (0x200 if parent_remote else 0) if parent_id is not None else 0
    parts += (b"\x85\x01", _I.pack((flags & 0xFF) | has_remote))
    return b"".join(parts)


def encode_request(groups: Iterable[tuple[Mapping[str, Any], Iterable[bytes]]], scope: str = "edgeworks") -> bytes:
    """An `ExportTraceServiceRequest`: one `ResourceSpans` per (resource attributes, encoded
    `Span` messages): protobuf messages concatenate, so the spans are joined as they are."""
    scope_bytes = _len(1, _len(1, scope.encode()))
    out = []
    for resource, spans in groups:
        body = b"".join([_len(2, s) for s in spans])
        out.append(_len(1, _len(1, _attributes(1, resource)) + _len(2, scope_bytes + body)))
    return b"".join(out)
