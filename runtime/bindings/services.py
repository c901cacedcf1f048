"""Service bindings: `env.OTHER.fetch(...)` and RPC to another script's entrypoint methods.

Calls travel to the front, which hands them to the target script's pool; each counts as a
subrequest of the calling request and carries its request id. The front answers every call (an
error keeps its code and status, see `RemoteError`); `relay` still bounds the wait, so a caller
(a workflow run, say) never waits forever on an answer that cannot come.
"""

from __future__ import annotations

import asyncio
from typing import Any

from objects import CodedError
from runtime.ipc import CALL_READY_WAIT_S
from runtime.isolate.context import current
from runtime.isolate.http import Request, Response

__all__ = ["RemoteError", "ServiceStub", "build", "call_deadline", "coerce_request", "relay"]


class RemoteError(CodedError):
    """An exception raised by the callee of an RPC or service call, re-raised in the caller
    with the reply's code and status (see `objects.CodedError`)."""

    @property
    def type_name(self) -> str:
        return self.type


def coerce_request(target: Request | str, init: dict[str, Any]) -> Request:
    if isinstance(target, Request):
        return target
    url = target if "://" in target else f"http://internal{target if target.startswith('/') else '/' + target}"
    return Request(url, method=init.get("method", "GET"), headers=init.get("headers"), body=init.get("body"))


def call_deadline(host: Any) -> float:
    """How long this script's calls through the front may wait for their answer: the front may
    wait for the target to be ready, then the callee runs under its wall limit (a callee of the
    same script has this one)."""
    return CALL_READY_WAIT_S + host.script.limits.wall_ms / 1000 + 5.0


async def relay(channel: Any, msg: dict[str, Any], deadline_s: float) -> dict[str, Any]:
    """Send a call to the front and wait for its answer, at most `deadline_s`."""
    try:
        return await asyncio.wait_for(channel.request(msg), deadline_s)
    except TimeoutError:
        return {"error": {"type": "CallTimeout", "code": "call_timeout", "status": 504,
                          "message": f"no answer to the {msg.get('kind')} call within {deadline_s:.0f} s"}}


def raise_remote(reply: dict[str, Any]) -> None:
    err = reply.get("error")
    if err is not None:
        raise RemoteError(str(err.get("type", "Error")), str(err.get("message", "")), err.get("code"), err.get("status"))


class ServiceStub:
    def __init__(self, channel: Any, service: str, entrypoint: str | None, deadline_s: float = 3600.0):
        self._channel = channel
        self._service = service
        self._entrypoint = entrypoint
        self._deadline_s = deadline_s

    async def fetch(self, target: Request | str, **init: Any) -> Response:
        scope = current()
        scope.count_subrequest()
        req = coerce_request(target, init)
        reply = await relay(self._channel, {"op": "call", "kind": "service_fetch", "script": self._service,
                                            "rid": scope.request_id, "req": req.to_wire()}, self._deadline_s)
        raise_remote(reply)
        return Response(reply["body"], reply["status"], reply["headers"])

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)

        async def call(*args: Any, **kwargs: Any) -> Any:
            scope = current()
            scope.count_subrequest()
            reply = await relay(self._channel, {
                "op": "call", "kind": "service_rpc", "script": self._service,
                "entrypoint": self._entrypoint, "method": method, "args": list(args),
                "kwargs": kwargs, "rid": scope.request_id}, self._deadline_s)
            raise_remote(reply)
            return reply.get("result")

        return call


def build(host: Any) -> dict[str, Any]:
    return {
        s.binding: ServiceStub(host.channel, s.service, s.entrypoint, call_deadline(host))
        for s in host.script.services
    }
