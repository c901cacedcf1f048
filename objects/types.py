"""Shared vocabulary of the durable-object layer: addresses, ops, replies, transport, hooks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, Protocol

__all__ = [
    "AuditHook",
    "CountHook",
    "ObjectAddress",
    "Op",
    "OwnsPredicate",
    "Reply",
    "RequestCodec",
    "ScanningTransport",
    "Transport",
]


class ObjectAddress(NamedTuple):
    """Where an object lives: its script, class, id (64 hex chars) and tenant (or None)."""

    script: str
    class_name: str
    id_hex: str
    tenant: str | None = None


# {"kind": "rpc", "method": str, "args": list, "kwargs": dict, "idempotency_key": str | None}
# {"kind": "fetch", "request": <encoded request>, "idempotency_key": str | None}
Op = dict[str, Any]
# {"ok": value} or {"error": {"type": str, "message": str}}
Reply = dict[str, Any]

Transport = Callable[[ObjectAddress, Op], Awaitable[Reply]]
"""Delivers an op to the process that owns the address and returns its reply.

A transport must start deliveries to one address in the order its coroutines are started: that
is what gives stubs their E-order.
"""

class ScanningTransport(Protocol):
    """A ``Transport`` that can also read one committed key of every object of a class (how
    workflows list their instances without waking them)."""

    def __call__(self, address: ObjectAddress, op: Op) -> Awaitable[Reply]: ...

    async def scan(self, class_name: str, key: str) -> list[tuple[str, Any]]:
        """``(id_hex, value)`` of the committed ``key`` of every object of ``class_name``."""
        ...


AuditHook = Callable[[str, dict[str, Any]], None]
"""``audit(event, fields)``: called for alarm failures and drops, resets and evictions."""

CountHook = Callable[[str, float], None]
"""``count(name, n)``: adds to a counter of the runtime (``object.call``, ``object.commit``)."""

OwnsPredicate = Callable[[str, str], bool]
"""``owns(class_name, id_hex)``: whether this host should fire that object's alarm."""


class RequestCodec(Protocol):
    """How ``fetch`` requests and responses cross the transport (the runtime supplies one)."""

    def decode_request(self, encoded: Any) -> Any: ...

    def encode_response(self, response: Any) -> Any: ...
