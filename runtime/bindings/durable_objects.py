"""Durable-object namespaces (`env.COUNTER`) and the host serving this process's objects.

Placement: an object lives in isolate `owner_index(id, pool_size)` of its script's pool. A call to
an object this process owns goes straight to the local `ObjectHost`; any other call (another slot,
another script) travels to the front, which forwards it to the owner. So does a call made while
this process's version does not serve (under its deploy probe, in a split, draining): the owner
is then an isolate of the serving version, one owner per object. Every call counts as a
subrequest of the calling request and carries its request id and identity.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from objects import DurableObject, DurableObjectNamespace, ObjectAddress, ObjectHost, owner_index
from runtime.bindings.services import call_deadline, coerce_request, relay
from runtime.isolate.context import current
from runtime.isolate.http import Request, Response

__all__ = ["build", "namespace_secret", "object_transport"]


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
    def __init__(self, host: Any, local: ObjectHost | None):
        self.host, self.local = host, local

    async def __call__(self, address: ObjectAddress, op: dict[str, Any]) -> dict[str, Any]:
        scope = current()
        scope.count_subrequest()
        h = self.host
        if (self.local is not None and self.local.active and address.script == h.script.name
                and owner_index(address.id_hex, h.pool_size) == h.pool_index):
            return await self.local.handle(address, op)
        ident = scope.identity
        reply = await relay(h.channel, {
            "op": "call", "kind": "object", "address": list(address), "payload": op,
            "rid": scope.request_id,
            "identity": {"subject": ident.subject, "tenant": ident.tenant, "scopes": list(ident.scopes)} if ident else None,
        }, call_deadline(h))
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


def object_transport(host: Any) -> ObjectTransport:
    """The one transport of this process for object calls (shared by every binding kind that
    is built on objects); its local host is attached by `build` once all classes are known."""
    transport = host.hosts.get("object_transport")
    if transport is None:
        transport = host.hosts["object_transport"] = ObjectTransport(host, None)
    return transport


def build(host: Any) -> dict[str, Any]:
    """Runs after the plugins that add internal object classes (workflows) to `host.object_classes`."""
    bindings = host.script.durable_objects
    if not bindings and not host.object_classes:
        return {}
    from runtime.isolate.main import LoadError

    classes: dict[str, type[DurableObject]] = dict(host.object_classes)
    for b in bindings:
        if b.script not in (None, host.script.name):
            continue
        cls = getattr(host.module, b.class_name, None)
        if not (isinstance(cls, type) and issubclass(cls, DurableObject)):
            raise LoadError(f"{host.script.main}: durable object class {b.class_name!r} (binding "
                            f"{b.binding}) is not defined or does not subclass DurableObject")
        classes[b.class_name] = cls
    local = None
    if classes:
        local = ObjectHost(
            host.script.name, classes, host.env, host.state_dir,
            idle_timeout_s=host.script.object_idle_s, durability=host.script.object_durability,
            max_queue=host.script.object_max_queue, codec=_HostCodec(), audit=host.audit,
            owns=lambda _cls, id_hex: owner_index(id_hex, host.pool_size) == host.pool_index,
            id_secret=namespace_secret(host.state_dir),
        )
        host.hosts["durable_objects"] = local
    transport = object_transport(host)
    transport.local = local
    secret = namespace_secret(host.state_dir)
    return {
        b.binding: DurableObjectNamespace(
            b.script or host.script.name, b.class_name, transport,
            tenant_provider=lambda: current().tenant, tenant_scoped=b.tenant_scoped,
            secret=secret, codec=_StubCodec(),
        )
        for b in bindings
    }
