"""The messages between the front and isolate processes: one typed message per op.

This module is all the two sides share about talking to each other (`runtime.ipc` carries the
bytes). A request is a `Message` subclass registered under its op with `@message("op")`; on the
wire it is a msgpack map `{"op": ..., <fields>}` plus the `id` the channel stamps on it. Replies
are `Reply` subclasses (a map without `op`, answering an `id`); every request may instead be
answered by an `ErrorReply`.

The receiving side turns a raw map into a message with `decode` (requests) or `Reply.decode`
(replies of a known type). Both check every field against its annotation and raise
`ProtocolError` naming the op and the field: a malformed or unknown message is a clear error
answer on the receiving side, never a crash of the front or of an isolate.

Binding kinds (runtime/bindings) add their own ops with the same decorator; the core ops are
below: front to isolate `init fetch scheduled activate ping shutdown cancel`, isolate to front
`audit stats log spans recycle`, and the ops of the built-in bindings (`rpc object workflow` to an
isolate, `service_fetch service_rpc object_call` relayed by the front).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, ClassVar, TypeVar, Union, get_args, get_origin

__all__ = [
    "OPS",
    "Activate",
    "Audit",
    "Cancel",
    "ErrorReply",
    "Fetch",
    "FetchReply",
    "Identity",
    "Init",
    "InitFailed",
    "Log",
    "Message",
    "ObjectCall",
    "ObjectRelay",
    "Ok",
    "Ping",
    "Pong",
    "ProtocolError",
    "Ready",
    "Recycle",
    "Reply",
    "Result",
    "Rpc",
    "Scheduled",
    "ScheduledReply",
    "ServiceFetch",
    "ServiceRpc",
    "Shutdown",
    "Spans",
    "Stats",
    "WorkflowAdmin",
    "decode",
    "error_reply",
    "message",
    "wire_error",
]


class ProtocolError(ValueError):
    """A message that is not a map, names no known op, or has a field of the wrong type."""


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """Who a request runs as (verified at the edge); crosses the boundary as `to_wire()`."""

    subject: str | None
    tenant: str | None
    scopes: tuple[str, ...]
    claims: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {"subject": self.subject, "tenant": self.tenant, "scopes": list(self.scopes),
                "claims": {k: v for k, v in self.claims.items() if isinstance(v, str | int | float | bool | list)}}

    @classmethod
    def from_wire(cls, wire: dict[str, Any] | None) -> Identity | None:
        if not wire:
            return None
        scopes = wire.get("scopes") or ()
        claims = wire.get("claims") or {}
        if not isinstance(scopes, list | tuple) or not isinstance(claims, dict):
            raise ProtocolError("identity: scopes is a list and claims a map")
        return cls(subject=_opt_str(wire.get("subject"), "identity.subject"),
                   tenant=_opt_str(wire.get("tenant"), "identity.tenant"),
                   scopes=tuple(str(s) for s in scopes), claims=claims)


def _opt_str(value: Any, where: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ProtocolError(f"{where} is {type(value).__name__}, expected a string")
    return value


# -- field checks, compiled once per class from its annotations ------------------------------

_Check = tuple[str, tuple[type, ...] | None, bool]  # name, accepted types (None: any), required
_T = TypeVar("_T", bound="_Wire")


def _accepted(hint: Any) -> tuple[type, ...] | None:
    """The runtime types a value of annotation `hint` may have; None accepts anything."""
    if hint is Any:
        return None
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        out: list[type] = []
        for arg in get_args(hint):
            acc = _accepted(arg)
            if acc is None:
                return None
            out += acc
        return tuple(out)
    if hint is type(None):
        return (type(None),)
    base = origin or hint
    if base in (list, tuple):
        return (list, tuple)
    if base is float:
        return (int, float)
    if isinstance(base, type):
        return (base,)
    return None


class _Wire:
    """Encoding and checked decoding shared by requests and replies."""

    __slots__ = ()
    _checks: ClassVar[tuple[_Check, ...] | None] = None
    _what: ClassVar[str] = ""

    @classmethod
    def _compile(cls) -> tuple[_Check, ...]:
        hints = typing.get_type_hints(cls)
        checks = []
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            checks.append((f.name, _accepted(hints[f.name]), required))
        cls._checks = tuple(checks)
        return cls._checks

    @classmethod
    def decode(cls: type[_T], raw: Any) -> _T:
        if not isinstance(raw, dict):
            raise ProtocolError(f"{cls._what or cls.__name__}: a message is a map, not {type(raw).__name__}")
        checks = cls._checks or cls._compile()
        kwargs = {}
        for name, accepted, required in checks:
            if name in raw:
                value = raw[name]
                if accepted is not None and not isinstance(value, accepted):
                    raise ProtocolError(f"{cls._what or cls.__name__}: field {name!r} is {type(value).__name__},"
                                        f" expected {' or '.join(t.__name__ for t in accepted)}")
                kwargs[name] = value
            elif required:
                raise ProtocolError(f"{cls._what or cls.__name__}: required field {name!r} is missing")
        return cls(**kwargs)

    def encode(self) -> dict[str, Any]:
        checks = self._checks or self._compile()
        return {name: getattr(self, name) for name, _, _ in checks}


class Message(_Wire):
    """A request or notification; `op` is set by `@message`."""

    __slots__ = ()
    op: ClassVar[str]

    def encode(self) -> dict[str, Any]:
        out = _Wire.encode(self)
        out["op"] = self.op
        return out


class Reply(_Wire):
    """An answer to a request (the channel adds `re`)."""

    __slots__ = ()


OPS: dict[str, type[Message]] = {}
_M = TypeVar("_M", bound=type[Message])


def message(op: str) -> typing.Callable[[_M], _M]:
    """Register a message class (a dataclass) under `op`, once per op."""

    def register(cls: _M) -> _M:
        if op in OPS and OPS[op].__qualname__ != cls.__qualname__:
            raise ValueError(f"op {op!r} is already defined by {OPS[op].__qualname__}")
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"message {cls.__qualname__} must be a dataclass")
        cls.op = op
        cls._what = f"{op!r} message"
        OPS[op] = cls
        return cls

    return register


def decode(raw: Any) -> Message:
    """The typed request a raw map stands for; ProtocolError when it is not one."""
    if not isinstance(raw, dict):
        raise ProtocolError(f"a message is a map, not {type(raw).__name__}")
    op = raw.get("op")
    cls = OPS.get(op) if isinstance(op, str) else None
    if cls is None:
        raise ProtocolError(f"unknown op {op!r}")
    return cls.decode(raw)


def error_reply(message: str, *, code: str = "protocol_error", status: int = 400,
                type: str = "ProtocolError", **extra: Any) -> dict[str, Any]:
    """An `ErrorReply` map (what every request may be answered with)."""
    return {"error": {"type": type, "message": message, "code": code, "status": status, **extra}}


def wire_error(err: dict[str, Any]) -> dict[str, Any]:
    """A failure of a handler run under the isolate's limits (code, status, message) as the error
    of an RPC or object reply: code and status go along, so the caller answers with them."""
    return {"type": err.get("type", err["code"]), "message": err["message"], "code": err["code"],
            "status": err.get("status", 500)}


# -- replies -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ErrorReply(Reply):
    """The request failed; `error` has type, message and, when known, code and HTTP status."""

    error: dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class Ok(Reply):
    ok: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class Pong(Reply):
    pong: int  # the isolate's pid


@dataclasses.dataclass(frozen=True, slots=True)
class Ready(Reply):
    ready: bool
    pid: int
    load_ms: float


@dataclasses.dataclass(frozen=True, slots=True)
class InitFailed(Reply):
    error: str
    cause: str = "load_error"


@dataclasses.dataclass(frozen=True, slots=True)
class FetchReply(Reply):
    """A response head and body; `more` opens a stream of further chunks (see runtime.ipc)."""

    status: int
    headers: list[Any]
    body: bytes
    cpu_ms: float = 0.0
    more: bool = False
    error_code: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Result(Reply):
    result: Any = None


@dataclasses.dataclass(frozen=True, slots=True)
class ScheduledReply(Reply):
    ok: bool
    error: dict[str, Any] | None = None
    cpu_ms: float = 0.0


# -- front to isolate --------------------------------------------------------------------------


@message("init")
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Init(Message):
    """Load a script version: answered by `Ready` or `InitFailed`."""

    script: dict[str, Any]  # ScriptConfig, as JSON
    root: str
    state_dir: str
    pool_index: int = 0
    pool_size: int = 1
    dev: bool = False
    secrets: dict[str, str] = dataclasses.field(default_factory=dict)
    version: str | None = None
    active: bool = True
    levels: list[str] | None = None  # the app's ordered classification levels ([ai] levels)
    data_key: bytes | None = None  # seals workflow records (runtime.datakey); kept in memory only
    redaction: dict[str, Any] | None = None  # {"modes": {level: mode}, "patterns": [...]} (runtime.redaction)
    principals: dict[str, list[str] | None] | None = None  # the app's principals and their ceilings (runtime.identity)
    egress: dict[str, Any] | None = None  # the app's egress policy (runtime.egress.EgressPolicy.to_wire)
    tracing: dict[str, Any] | None = None  # sample ratio and service name (runtime.tracing); None: off


@message("fetch")
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Fetch(Message):
    """An HTTP request for the script's fetch handler: answered by `FetchReply`."""

    rid: str
    req: dict[str, Any]  # runtime.isolate.http.Request.to_wire()
    route: int | None = None  # index of the matched route (for its schema models)
    identity: dict[str, Any] | None = None
    risk: str = "low"
    local: bool = True  # the client is on loopback (dev shows it exception details)
    level: str | None = None  # the request's data classification level (None: its route's)
    trace: dict[str, str] | None = None  # W3C trace context (traceparent, tracestate) of the caller's span


@message("scheduled")
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Scheduled(Message):
    rid: str
    cron: str
    time: float  # scheduled time, ms since the epoch


@message("activate")
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Activate(Message):
    """Whether the isolate's version serves (only then it fires alarms): answered by `Ok`."""

    active: bool


@message("ping")
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Ping(Message):
    pass


@message("shutdown")
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Shutdown(Message):
    grace_s: float = 30.0


@message("cancel")
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Cancel(Message):
    """Cancel the request with id `target` (past its wall time); not answered."""

    target: int


# -- isolate to front (notifications) ----------------------------------------------------------


@message("audit")
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Audit(Message):
    """An audit entry for the front's audit writer."""

    entry: str
    fields: dict[str, Any]


@message("stats")
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Stats(Message):
    """Counter increments the isolate made since its last report (`runtime.isolate.stats`), by
    dotted name; the front adds them up, so its totals survive the isolate."""

    counts: dict[str, Any]


@message("log")
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Log(Message):
    """A log record the isolate built and redacted (handler output, `runtime.isolate.console`), for
    the front to write to its stderr and its tail subscribers."""

    record: dict[str, Any]


@message("spans")
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Spans(Message):
    """Finished trace spans of the isolate (`runtime.tracing.encode_span`), for the front's
    exporters."""

    spans: list[Any]


@message("recycle")
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Recycle(Message):
    """The isolate asks to be replaced (e.g. it hit its memory limit and recovered)."""

    reason: str = ""


# -- the built-in bindings' ops ----------------------------------------------------------------


@message("rpc")
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Rpc(Message):
    """A service binding's RPC call of an entrypoint method: answered by `Result`."""

    rid: str | None
    method: str
    entrypoint: str | None = None
    args: list[Any] = dataclasses.field(default_factory=list)
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    identity: dict[str, Any] | None = None
    level: str | None = None  # the caller's data classification level
    trace: dict[str, str] | None = None


@message("object")
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ObjectCall(Message):
    """A call of a durable object this isolate owns: answered by `Result`."""

    address: list[Any]  # objects.ObjectAddress
    payload: dict[str, Any]
    rid: str | None = None
    identity: dict[str, Any] | None = None
    level: str | None = None  # the caller's data classification level: the object's code runs at it
    trace: dict[str, str] | None = None
    task_class: str | None = None  # the caller's task class: the object's code serves that task


@message("workflow")
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowAdmin(Message):
    """An admin action on a workflow instance, performed through the script's binding."""

    binding: str
    action: str
    rid: str
    instance: str | None = None
    args: list[Any] = dataclasses.field(default_factory=list)
    status: str | None = None
    every_tenant: bool = False
    identity: dict[str, Any] | None = None


@message("service_fetch")
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ServiceFetch(Message):
    """`env.OTHER.fetch(...)`: relayed by the front to the target script as a `Fetch`."""

    script: str
    req: dict[str, Any]
    rid: str | None = None
    identity: dict[str, Any] | None = None
    level: str | None = None
    trace: dict[str, str] | None = None


@message("service_rpc")
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ServiceRpc(Message):
    """`await env.OTHER.method(...)`: relayed by the front to the target script as an `Rpc`."""

    script: str
    method: str
    entrypoint: str | None = None
    args: list[Any] = dataclasses.field(default_factory=list)
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    rid: str | None = None
    identity: dict[str, Any] | None = None
    level: str | None = None
    trace: dict[str, str] | None = None


@message("object_call")
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ObjectRelay(Message):
    """A durable-object call for an object another isolate owns: relayed as an `ObjectCall`."""

    address: list[Any]
    payload: dict[str, Any]
    rid: str | None = None
    identity: dict[str, Any] | None = None
    level: str | None = None
    trace: dict[str, str] | None = None
    task_class: str | None = None
