"""Service bindings: `env.OTHER.fetch(...)` and RPC to another script's entrypoint methods.

Calls travel to the front, which hands them to the target script's pool; each counts as a
subrequest of the calling request and carries its request id.
"""

from __future__ import annotations

from typing import Any

from ..context import current
from ..http import Request, Response

__all__ = ["RemoteError", "ServiceStub", "build", "coerce_request"]


class RemoteError(Exception):
    """An exception raised by the callee of an RPC or object call, re-raised in the caller."""

    def __init__(self, type_name: str, message: str, code: str | None = None):
        super().__init__(f"{type_name}: {message}")
        self.type_name, self.message, self.code = type_name, message, code


def coerce_request(target: Request | str, init: dict[str, Any]) -> Request:
    if isinstance(target, Request):
        return target
    url = target if "://" in target else f"http://internal{target if target.startswith('/') else '/' + target}"
    return Request(url, method=init.get("method", "GET"), headers=init.get("headers"), body=init.get("body"))


def raise_remote(reply: dict[str, Any]) -> None:
    err = reply.get("error")
    if err is not None:
        raise RemoteError(err.get("type", "Error"), err.get("message", ""), err.get("code"))


class ServiceStub:
    def __init__(self, channel: Any, service: str, entrypoint: str | None):
        self._channel = channel
        self._service = service
        self._entrypoint = entrypoint

    async def fetch(self, target: Request | str, **init: Any) -> Response:
        scope = current()
        scope.count_subrequest()
        req = coerce_request(target, init)
        reply = await self._channel.request(
            {"op": "call", "kind": "service_fetch", "script": self._service,
             "rid": scope.request_id, "req": req.to_wire()}
        )
        raise_remote(reply)
        return Response(reply["body"], reply["status"], reply["headers"])

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)

        async def call(*args: Any, **kwargs: Any) -> Any:
            scope = current()
            scope.count_subrequest()
            reply = await self._channel.request(
                {"op": "call", "kind": "service_rpc", "script": self._service,
                 "entrypoint": self._entrypoint, "method": method, "args": list(args),
                 "kwargs": kwargs, "rid": scope.request_id}
            )
            raise_remote(reply)
            return reply.get("result")

        return call


def build(host: Any) -> dict[str, Any]:
    return {
        s.binding: ServiceStub(host.channel, s.service, s.entrypoint) for s in host.script.services
    }
