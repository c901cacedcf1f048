"""Service bindings: `env.OTHER.fetch(...)` and RPC to another script's entrypoint methods.

Calls travel to the front, which hands them to the target script's pool; each counts as a
subrequest of the calling request and carries its request id. The front answers every call (an
error keeps its code and status, see `RemoteError`); `relay` still bounds the wait, so a caller
(a workflow run, say) never waits forever on an answer that cannot come.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, Any

from opentelemetry.trace import SpanKind
from pydantic import BaseModel, ConfigDict, Field

from objects import CodedError
from runtime import tracing
from runtime.bindings import BindingHost, BindingKind, RelayPort
from runtime.ipc import CALL_READY_WAIT_S, Channel
from runtime.isolate.context import current
from runtime.isolate.http import Request, Response
from runtime.names import BINDING_NAME, SCRIPT_NAME
from runtime.protocol import Fetch, Message, Rpc, ServiceFetch, ServiceRpc, error_reply

if TYPE_CHECKING:
    from runtime.config import AppConfig, ScriptConfig

__all__ = ["KIND", "RemoteError", "ServiceBinding", "ServiceStub", "call_deadline", "coerce_request", "relay"]


class ServiceBinding(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    binding: Annotated[str, Field(pattern=BINDING_NAME)]
    service: Annotated[str, Field(pattern=SCRIPT_NAME)]
    entrypoint: str | None = None


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


def call_deadline(host: BindingHost) -> float:
    """How long this script's calls through the front may wait for their answer: the front may
    wait for the target to be ready, then the callee runs under its wall limit (a callee of the
    same script has this one)."""
    return CALL_READY_WAIT_S + host.script.limits.wall_ms / 1000 + 5.0


async def relay(channel: Channel, msg: Message, deadline_s: float) -> dict[str, Any]:
    """Send a call to the front and wait for its answer, at most `deadline_s`."""
    try:
        async with asyncio.timeout(deadline_s):  # no extra task per call, unlike wait_for
            return await channel.request(msg.encode())
    except TimeoutError:
        return error_reply(f"no answer to the {msg.op} call within {deadline_s:.0f} s",
                           type="CallTimeout", code="call_timeout", status=504)


def raise_remote(reply: dict[str, Any]) -> None:
    err = reply.get("error")
    if err is not None:
        raise RemoteError(str(err.get("type", "Error")), str(err.get("message", "")), err.get("code"), err.get("status"))


def _identity() -> dict[str, Any] | None:
    ident = current().identity
    return ident.to_wire() if ident else None


class ServiceStub:
    def __init__(self, channel: Channel, service: str, entrypoint: str | None, deadline_s: float = 3600.0):
        self._channel = channel
        self._service = service
        self._entrypoint = entrypoint
        self._deadline_s = deadline_s

    async def fetch(self, target: Request | str, **init: Any) -> Response:
        scope = current()
        scope.count_subrequest()
        req = coerce_request(target, init)
        with tracing.span(f"service {self._service} fetch", {"edgeworks.service": self._service,
                                                             "http.request.method": req.method}, SpanKind.CLIENT):
            reply = await relay(self._channel, ServiceFetch(script=self._service, rid=scope.request_id,
                                                            req=req.to_wire(), identity=_identity(), level=scope.level,
                                                            trace=tracing.carrier()),
                                self._deadline_s)
            raise_remote(reply)
        return Response(reply["body"], reply["status"], reply["headers"])

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)

        async def call(*args: Any, **kwargs: Any) -> Any:
            scope = current()
            scope.count_subrequest()
            with tracing.span(f"service {self._service} {method}", {"edgeworks.service": self._service,
                                                                    "rpc.method": method}, SpanKind.CLIENT):
                reply = await relay(self._channel, ServiceRpc(
                    script=self._service, entrypoint=self._entrypoint, method=method, args=list(args),
                    kwargs=kwargs, rid=scope.request_id, identity=_identity(), level=scope.level,
                    trace=tracing.carrier()), self._deadline_s)
                raise_remote(reply)
            return reply.get("result")

        return call


# -- the front's side: relay a call to the target script -------------------------------------


async def _relay_fetch(port: RelayPort, msg: ServiceFetch) -> dict[str, Any]:
    return await port.forward(msg.script, Fetch(rid=msg.rid or "", req=msg.req, identity=msg.identity,
                                                    level=msg.level, trace=msg.trace))


async def _relay_rpc(port: RelayPort, msg: ServiceRpc) -> dict[str, Any]:
    return await port.forward(msg.script, Rpc(rid=msg.rid, method=msg.method, entrypoint=msg.entrypoint,
                                              args=msg.args, kwargs=msg.kwargs, identity=msg.identity,
                                              level=msg.level, trace=msg.trace))


# -- the kind --------------------------------------------------------------------------------


def _names(script: ScriptConfig) -> list[tuple[str, str]]:
    return [(f"services[{j}]", b.binding) for j, b in enumerate(script.services)]


def _check(script: ScriptConfig, app: AppConfig) -> list[tuple[str, str]]:
    names = [s.name for s in app.scripts]
    return [(f"services[{j}].service", f"no script named {b.service!r} (scripts: {', '.join(names)})")
            for j, b in enumerate(script.services) if b.service not in names]


def _build(host: BindingHost) -> dict[str, Any]:
    return {s.binding: ServiceStub(host.channel, s.service, s.entrypoint, call_deadline(host))
            for s in host.script.services}


KIND = BindingKind(
    name="services",
    fields={"services": (list[ServiceBinding], [])},
    env_names=_names,
    check=_check,
    build=_build,
    relays={ServiceFetch: _relay_fetch, ServiceRpc: _relay_rpc},
)
