"""Namespaces and stubs: how code reaches a durable object through the injected transport.

``DurableObjectNamespace(script, class_name, transport, ...)`` mints and checks ids
(``objects.ids``) and hands out stubs. A stub sends ops to its object:

- ``await stub.fetch(request_or_url, **init)`` -> the object's ``fetch`` response;
- ``await stub.some_method(*args, **kwargs)`` -> the method's result (RPC);
- ``stub.with_options(idempotency_key="k").some_method(...)``: the op is applied at most once
  per object for that key; a retry returns the recorded reply (see ``objects.actor``). Replies
  are kept ``idempotency_ttl_s`` (a day by default), then pruned.

E-order: each call starts its transport coroutine *when the call is made* (as a task), so calls
made through one stub reach the transport, and hence the object, in the order they were made,
even when the caller does not await between them. The returned task may be awaited later.

Output gate: a call made from inside a durable object is sent only once every write the object
made before the call is durable (``objects.gates.current_output_gate``); waiters are released
in call order, so E-order holds. If the commit fails, the call raises ``DurableObjectReset``.

Errors: an error reply raises ``DurableObjectError(type, message, code, status)`` (the runtime's
code and status, when the reply has them: see ``objects.errors``). Attribute names starting
with ``_`` are not RPC methods (``AttributeError`` at once); a method the object does not have
fails with type ``method_not_found``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from objects.errors import DurableObjectError
from objects.gates import current_output_gate
from objects.ids import DurableObjectId, IdFactory
from objects.types import ObjectAddress, Op, Reply, Transport

if TYPE_CHECKING:
    from objects.host import ObjectHost

__all__ = ["DurableObjectNamespace", "DurableObjectStub", "LocalTransport", "StubCodec"]

DEFAULT_SECRET = b"edgeworks-local-durable-object-ids"


class StubCodec(Protocol):
    def encode_request(self, request_or_url: Any, init: dict[str, Any]) -> Any: ...

    def decode_response(self, encoded: Any) -> Any: ...


class _PassThroughStubCodec:
    def encode_request(self, request_or_url: Any, init: dict[str, Any]) -> Any:
        return {"url": request_or_url, **init} if init else request_or_url

    def decode_response(self, encoded: Any) -> Any:
        return encoded


def _idempotency_header(request_or_url: Any, init: dict[str, Any]) -> str | None:
    headers = init.get("headers") if "headers" in init else getattr(request_or_url, "headers", None)
    if headers is None:
        return None
    items = headers.items() if hasattr(headers, "items") else headers
    for name, value in items:
        if str(name).lower() == "idempotency-key" and value:
            return str(value)
    return None


class LocalTransport:
    """Delivers ops to an ``ObjectHost`` in this process (no serialization)."""

    def __init__(self, host: ObjectHost) -> None:
        self.host = host

    async def __call__(self, address: ObjectAddress, op: Op) -> Reply:
        return await self.host.handle(address, op)

    async def scan(self, class_name: str, key: str) -> list[tuple[str, Any]]:
        return await self.host.scan(class_name, key)


class DurableObjectNamespace:
    def __init__(
        self,
        script: str,
        class_name: str,
        transport: Transport,
        tenant_provider: Callable[[], str | None] = lambda: None,
        tenant_scoped: bool = False,
        secret: bytes = DEFAULT_SECRET,
        codec: StubCodec | None = None,
    ) -> None:
        self.script = script
        self.class_name = class_name
        self.transport = transport
        self.tenant_provider = tenant_provider
        self.tenant_scoped = tenant_scoped
        self._secret = secret
        self._codec = codec or _PassThroughStubCodec()
        self._factories: dict[str | None, IdFactory] = {}

    def _tenant(self) -> str | None:
        if not self.tenant_scoped:
            return None
        tenant = self.tenant_provider()
        if not isinstance(tenant, str) or not tenant:
            raise PermissionError(
                f"durable object namespace {self.script}/{self.class_name} is tenant-scoped "
                "but the call has no tenant"
            )
        return tenant

    def _factory(self) -> IdFactory:
        tenant = self._tenant()
        factory = self._factories.get(tenant)
        if factory is None:
            factory = IdFactory(self.script, self.class_name, tenant, self._secret)
            self._factories[tenant] = factory
        return factory

    def id_from_name(self, name: str) -> DurableObjectId:
        return self._factory().from_name(name)

    def new_unique_id(self) -> DurableObjectId:
        return self._factory().new_unique()

    def id_from_string(self, s: str) -> DurableObjectId:
        return self._factory().from_string(s)

    def get(self, id: DurableObjectId | str) -> DurableObjectStub:
        factory = self._factory()
        checked = factory.check(id) if isinstance(id, DurableObjectId) else factory.from_string(id)
        address = ObjectAddress(self.script, self.class_name, checked.hex, factory.tenant)
        return DurableObjectStub(checked, address, self.transport, self._codec)

    def get_by_name(self, name: str) -> DurableObjectStub:
        return self.get(self.id_from_name(name))

    # Cloudflare's (JavaScript) names, which Python Workers code calls through its JS proxies.
    idFromName = id_from_name  # noqa: N815
    newUniqueId = new_unique_id  # noqa: N815
    idFromString = id_from_string  # noqa: N815
    getByName = get_by_name  # noqa: N815


class DurableObjectStub:
    def __init__(
        self,
        id: DurableObjectId,
        address: ObjectAddress,
        transport: Transport,
        codec: StubCodec,
        idempotency_key: str | None = None,
    ) -> None:
        self.id = id
        self.address = address
        self._transport = transport
        self._codec = codec
        self._idempotency_key = idempotency_key

    @property
    def name(self) -> str | None:
        return self.id.name

    def with_options(self, *, idempotency_key: str | None = None) -> DurableObjectStub:
        """A stub whose calls carry ``idempotency_key`` (applied at most once per object)."""
        if idempotency_key is not None and (not isinstance(idempotency_key, str) or not idempotency_key):
            raise ValueError("idempotency_key must be a non-empty str")
        return DurableObjectStub(self.id, self.address, self._transport, self._codec, idempotency_key)

    def _send(self, op: Op, decode: Callable[[Any], Any] | None = None) -> asyncio.Task[Any]:
        gate = current_output_gate.get()
        if self.id.name is not None:
            op["name"] = self.id.name  # the object learns its name (``ctx.id.name``)

        async def call() -> Any:
            if gate is not None and gate.pending:
                await gate.wait()  # called from an object: its earlier writes go first
            reply = await self._transport(self.address, op)
            if "error" in reply:
                err = reply["error"]
                raise DurableObjectError(str(err.get("type")), str(err.get("message")),
                                         err.get("code"), err.get("status"))
            value = reply.get("ok")
            return decode(value) if decode is not None else value

        return asyncio.get_running_loop().create_task(call())

    def fetch(self, request_or_url: Any, **init: Any) -> asyncio.Task[Any]:
        """Send a request to the object's ``fetch``. An ``Idempotency-Key`` header makes it
        apply at most once, like ``with_options(idempotency_key=...)`` (which wins if both)."""
        op = {
            "kind": "fetch",
            "request": self._codec.encode_request(request_or_url, init),
            "idempotency_key": self._idempotency_key or _idempotency_header(request_or_url, init),
        }
        return self._send(op, self._codec.decode_response)

    def __getattr__(self, name: str) -> Callable[..., asyncio.Task[Any]]:
        if name.startswith("_"):
            raise AttributeError(
                f"{name!r} is not callable on a durable object stub: "
                "names starting with '_' are private to the object"
            )

        def method(*args: Any, **kwargs: Any) -> asyncio.Task[Any]:
            op = {
                "kind": "rpc",
                "method": name,
                "args": list(args),
                "kwargs": kwargs,
                "idempotency_key": self._idempotency_key,
            }
            return self._send(op)

        method.__name__ = name
        return method

    def __repr__(self) -> str:
        return f"<DurableObjectStub {self.address.class_name} {self.id.hex}>"
