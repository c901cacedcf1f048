"""Durable-object namespaces (`env.COUNTER`) and the host serving this process's objects.

Placement: an object lives in isolate `owner_index(id, pool_size)` of its script's pool. A call to
an object this process owns goes straight to the local `ObjectHost`; any other call (another slot,
another script) travels to the front, which forwards it to the owner. So does a call made while
this process's version does not serve (under its deploy probe, in a split, draining): the owner
is then an isolate of the serving version, one owner per object. Every call counts as a
subrequest of the calling request and carries its request id, identity and data classification
level: the object's code runs at the caller's level (`current().level`), wherever it is hosted.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from opentelemetry.trace import SpanKind
from pydantic import BaseModel, ConfigDict, Field

from objects import DurableObject, DurableObjectNamespace, ObjectAddress, ObjectHost, owner_index
from runtime import tracing
from runtime.bindings import BindingHost, BindingKind, IsolateAPI, RelayPort
from runtime.bindings.services import call_deadline, coerce_request, relay
from runtime.errors import LoadError
from runtime.isolate import stats
from runtime.isolate.context import RequestScope, current, use_scope
from runtime.isolate.http import Request, Response
from runtime.names import BINDING_NAME
from runtime.protocol import ObjectCall, ObjectRelay, ProtocolError, Result, error_reply, wire_error

if TYPE_CHECKING:
    from runtime.config import AppConfig, ScriptConfig

__all__ = ["KIND", "DurableObjectBinding", "namespace_secret", "object_transport"]


class DurableObjectBinding(BaseModel):
    """`[[scripts.durable_objects]]`: a namespace of durable objects, bound as `env.<binding>`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    binding: Annotated[str, Field(pattern=BINDING_NAME)]
    class_name: Annotated[str, Field(pattern=BINDING_NAME)]
    script: str | None = None  # another script's namespace; default: this script
    tenant_scoped: bool = False


class _HostCodec:
    """How the host turns wire requests into `Request`s and responses back into wire maps."""

    def decode_request(self, encoded: Any) -> Request:
        return Request.from_wire(encoded)

    def encode_response(self, response: Any) -> dict[str, Any]:
        if not isinstance(response, Response):
            raise TypeError(f"durable object fetch returned {type(response).__name__}, expected Response")
        if response.stream is not None:
            raise TypeError("streamed responses are not supported from durable object fetch")
        return {"status": response.status, "headers": response.headers.items(), "body": response.body}


class _StubCodec:
    def encode_request(self, request_or_url: Any, init: dict[str, Any]) -> dict[str, Any]:
        return coerce_request(request_or_url, init).to_wire()

    def decode_response(self, encoded: Any) -> Response:
        return Response(encoded["body"], encoded["status"], encoded["headers"])


class ObjectTransport:
    def __init__(self, host: BindingHost, local: ObjectHost | None):
        self.host, self.local = host, local

    async def __call__(self, address: ObjectAddress, op: dict[str, Any]) -> dict[str, Any]:
        scope = current()
        scope.count_subrequest()
        if tracing.TRACER is not None:
            return await self._traced(address, op, scope)
        return await self._call(address, op, scope)

    async def _traced(self, address: ObjectAddress, op: dict[str, Any], scope: RequestScope) -> dict[str, Any]:
        """The call under its span (the callee's code runs in its context, wherever it is hosted)."""
        what = str(op.get("method") or op.get("kind") or "call")
        with tracing.span(f"object {address.class_name}.{what}", {
                "edgeworks.object.class": address.class_name, "edgeworks.object.id": address.id_hex,
                "edgeworks.object.script": address.script, "rpc.method": what}, SpanKind.CLIENT):
            return await self._call(address, op, scope)

    async def _call(self, address: ObjectAddress, op: dict[str, Any], scope: RequestScope) -> dict[str, Any]:
        h = self.host
        if (self.local is not None and self.local.active and address.script == h.script.name
                and owner_index(address.id_hex, h.pool_size) == h.pool_index):
            return await self.local.handle(address, op)
        ident = scope.identity
        reply = await relay(h.channel, ObjectRelay(address=list(address), payload=op, trace=tracing.carrier(),
                                                   rid=scope.request_id,
                                                   identity=ident.to_wire() if ident else None, level=scope.level,
                                                   task_class=scope.task_class),
                            call_deadline(h))
        if "error" in reply:
            return {"error": reply["error"]}
        return reply["result"]

    async def scan(self, class_name: str, key: str) -> list[tuple[str, Any]]:
        """Committed `key` of every object of the class, whichever process owns it: every
        process of the script shares the state dir."""
        if self.local is None:
            raise RuntimeError(f"script {self.host.script.name!r} hosts no durable objects")
        return await self.local.scan(class_name, key)


def namespace_secret(state_dir: Path) -> bytes:
    """The key ids are derived with: one per state dir, created once, shared by every process.

    Published whole (written to a private file, then hard-linked into place), so an isolate
    starting beside the one creating it never reads a partial key, however slow the writer."""
    path = state_dir / "keys" / "objects.key"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_name(f".objects.key.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process published its key first: every process uses that one
        finally:
            tmp.unlink()
    data = path.read_bytes()
    if len(data) != 32:
        raise RuntimeError(f"{path} is not a 32-byte key ({len(data)} bytes)")
    return data


def object_transport(host: BindingHost) -> ObjectTransport:
    """The one transport of this process for object calls (shared by every binding kind that
    is built on objects); its local host is attached by `_finish` once all classes are known."""
    transport = host.hosts.get("object_transport")
    if transport is None:
        transport = host.hosts["object_transport"] = ObjectTransport(host, None)
    return transport


def _build(host: BindingHost) -> dict[str, Any]:
    """The namespaces, and this script's own classes registered for the object host."""
    bindings = host.script.durable_objects
    for b in bindings:
        if b.script not in (None, host.script.name):
            continue
        cls = getattr(host.module, b.class_name, None)
        if not (isinstance(cls, type) and issubclass(cls, DurableObject)):
            raise LoadError(f"{host.script.main}: durable object class {b.class_name!r} (binding "
                            f"{b.binding}) is not defined or does not subclass DurableObject")
        host.object_classes[b.class_name] = cls
    if not bindings:
        return {}
    transport = object_transport(host)
    secret = namespace_secret(host.state_dir)
    return {
        b.binding: DurableObjectNamespace(
            b.script or host.script.name, b.class_name, transport,
            tenant_provider=lambda: current().tenant, tenant_scoped=b.tenant_scoped,
            secret=secret, codec=_StubCodec(),
        )
        for b in bindings
    }


async def _finish(host: BindingHost) -> None:
    """The host of this process's objects, from every class any kind registered (workflow
    instances are durable objects too)."""
    if not host.object_classes:
        return
    local = ObjectHost(
        host.script.name, dict(host.object_classes), host.env, host.state_dir,
        idle_timeout_s=host.script.object_idle_s, durability=host.script.object_durability,
        max_queue=host.script.object_max_queue, codec=_HostCodec(), audit=host.audit, count=stats.bump,
        owns=lambda _cls, id_hex: owner_index(id_hex, host.pool_size) == host.pool_index,
        id_secret=namespace_secret(host.state_dir),
    )
    host.hosts["durable_objects"] = local
    object_transport(host).local = local


# -- the isolate's side: a call of an object this process owns -------------------------------


async def _serve_call(isolate: IsolateAPI, msg: ObjectCall) -> Any:
    host = isolate.hosts.get("durable_objects")
    if host is None:
        return error_reply("this script hosts no durable objects", type="RpcError", code="no_objects", status=404)
    use_scope(isolate.scope(msg.rid, msg.identity, level=msg.level, task_class=msg.task_class))
    reply, err, _ = await isolate.run_limited(msg.rid, host.handle(_address(msg.address), msg.payload))
    return Result(result={"error": wire_error(err)} if err is not None else reply)


# -- the front's side: forward a call to the object's owner ----------------------------------


def _address(raw: list[Any]) -> ObjectAddress:
    if not (3 <= len(raw) <= 4 and all(isinstance(p, str) for p in raw[:3]) and (len(raw) < 4 or raw[3] is None or isinstance(raw[3], str))):
        raise ProtocolError(f"an object address is [script, class, id, tenant], got {raw!r:.200}")
    return ObjectAddress(*raw)


async def _relay_call(port: RelayPort, msg: ObjectRelay) -> dict[str, Any]:
    address = _address(msg.address)
    return await port.forward(address.script, ObjectCall(address=msg.address, payload=msg.payload, trace=msg.trace,
                                                          rid=msg.rid,
                                                          identity=msg.identity, level=msg.level,
                                                          task_class=msg.task_class),
                              slot=lambda pool_size: owner_index(address.id_hex, pool_size))


# -- the kind --------------------------------------------------------------------------------


def _names(script: ScriptConfig) -> list[tuple[str, str]]:
    return [(f"durable_objects[{j}]", b.binding) for j, b in enumerate(script.durable_objects)]


def _check(script: ScriptConfig, app: AppConfig) -> list[tuple[str, str]]:
    names = [s.name for s in app.scripts]
    return [(f"durable_objects[{j}].script", f"no script named {b.script!r}")
            for j, b in enumerate(script.durable_objects) if b.script is not None and b.script not in names]


KIND = BindingKind(
    name="durable_objects",
    fields={"durable_objects": (list[DurableObjectBinding], [])},
    env_names=_names,
    check=_check,
    build=_build,
    finish=_finish,
    ops={ObjectCall: _serve_call},
    relays={ObjectRelay: _relay_call},
)
