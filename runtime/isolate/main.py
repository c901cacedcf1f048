"""The isolate process: loads one script version and serves the front's messages.

Started by the supervisor as `python -m runtime.isolate.main FD NOTE_PATH` with one end of a socketpair.
The first message is `Init` (script config, app root, state dir, pool slot, secrets); the isolate
imports the script, builds `env`, and answers `Ready` or `InitFailed`. Then it serves, concurrently,
the messages of `runtime.protocol` in its dispatch table: the core ones (`fetch`, `scheduled`,
`activate`: whether its version serves, see `IsolatePool.set_active`; `ping`,
`shutdown`; `cancel` stops a running request) and the ops the binding kinds declare (`rpc` of service bindings, `object` of durable
objects, `workflow` admin actions...). Every request runs under its own `RequestScope` and CPU
`Meter`; see `meter.py` for what happens at a limit.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.util
import inspect
import json
import os
import re
import socket
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from objects import CodedError
from runtime import protocol, tracing
from runtime.bindings import BindingHost, Env, build_env, isolate_ops
from runtime.classification import Levels
from runtime.config import RouteConfig, ScriptConfig
from runtime.datakey import DataKey
from runtime.egress import EgressClient, EgressPolicy
from runtime.errors import LoadError, error_body
from runtime.identity import Assertions
from runtime.ipc import Channel, ChannelClosed, open_channel
from runtime.isolate import console, outbound, stats
from runtime.isolate.context import (
    BindingOpsLimitExceeded,
    ExecutionContext,
    RequestScope,
    SubrequestLimitExceeded,
    current,
    in_scope,
    use_scope,
)
from runtime.isolate.entrypoints import ScheduledController, WorkerEntrypoint
from runtime.isolate.http import Request, Response
from runtime.isolate.meter import CpuLimitExceeded, Meter, Watchdog, cap_memory, metered, rss_bytes
from runtime.killswitch import KillSwitch
from runtime.logs import emit, log, set_policy, use_stream
from runtime.redact import mask_secret_values, mask_secrets
from runtime.redaction import policy_from_wire
from runtime.safejson import JSONTooDeep, RequestJSONTooDeep, check_depth

__all__ = ["Isolate", "LoadError", "main", "run"]


def _import_main(root: Path, main: str) -> Any:
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    # `from workers import ...` is how Cloudflare's Python Workers import the API.
    sys.modules.setdefault("workers", importlib.import_module("runtime"))
    path = root / main
    name = main[:-3].replace("/", ".")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise LoadError(f"cannot import {main}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SystemExit as e:  # would end the isolate, leaving the front only a closed channel
        raise LoadError(f"the module exited with SystemExit({e.code!r}) during import of {main}", "exited") from None
    except BaseException as e:  # KeyboardInterrupt and friends raised by module code included
        tb = traceback.format_exc(limit=-3)
        raise LoadError(f"importing {main} failed: {type(e).__name__}: {e}\n{tb}", "import_error") from None
    return module


def _resolve_model(ref: str | None, module: Any) -> type[BaseModel] | None:
    if ref is None:
        return None
    mod_name, _, attr = ref.partition(":")
    try:
        mod = module if not attr else importlib.import_module(mod_name)
    except ImportError as e:
        raise LoadError(f"route model {ref!r}: cannot import {mod_name!r}: {e}") from None
    model = getattr(mod, attr or mod_name, None)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise LoadError(f"route model {ref!r} is not a pydantic model")
    return model


_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_BAD_VALUE = re.compile(r"[\r\n\x00]")
MAX_RESPONSE_BYTES = 100 * 1024 * 1024  # below the IPC message cap; stream anything larger


def _response_problem(resp: Response) -> str | None:
    """Why a handler's response cannot be sent as is (header injection, size), or None."""
    for name, value in resp.headers.items():
        if not _TOKEN.match(name):
            return f"invalid response header name {name!r}"
        if _BAD_VALUE.search(value):
            return f"response header {name!r} contains CR, LF or NUL"
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            return f"response header {name!r} is not latin-1 text"
    if len(resp.body) > MAX_RESPONSE_BYTES:
        return f"response body of {len(resp.body)} bytes exceeds {MAX_RESPONSE_BYTES}; stream it instead"
    return None


async def _binding_op(op: Any, isolate: Isolate, msg: protocol.Message, mid: int | None) -> Any:
    return await op(isolate, msg)


def _positional(fn: Any, *args: Any) -> Any:
    """Call a function-style handler with as many of (request, env, ctx) as it accepts."""
    try:
        n = len(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        n = len(args)
    return fn(*args[:n])


class Isolate:
    def __init__(self, channel: Channel, note_path: str):
        self.channel = channel
        self.note_path = note_path
        self.tasks: dict[int, asyncio.Task[Any]] = {}
        self.background: set[asyncio.Task[Any]] = set()
        self.recycle = False
        self.dev = False
        self.script: ScriptConfig | None = None
        self.routes: list[RouteConfig] = []
        self.models: list[tuple[type[BaseModel] | None, type[BaseModel] | None]] = []
        self.watchdog: Watchdog | None = None
        self.hosts: dict[str, Any] = {}
        self.env: Env = Env({})
        self.levels = Levels()
        self.stats_task: asyncio.Task[None] | None = None  # sends `stats` deltas to the front
        # One dispatch table: the core messages, then every binding kind's ops.
        self.handlers: dict[type[protocol.Message], Callable[[Any, int | None], Awaitable[Any]]] = {
            protocol.Fetch: self.handle_fetch,
            protocol.Rpc: self.handle_rpc,
            protocol.Scheduled: self.handle_scheduled,
            protocol.Activate: self.handle_activate,
            protocol.Ping: self.handle_ping,
            protocol.Shutdown: self.handle_shutdown,
        }
        for cls, op in isolate_ops().items():
            self.handlers[cls] = functools.partial(_binding_op, op, self)

    # -- loading ---------------------------------------------------------------------------
    async def load(self, init: protocol.Init) -> None:
        self.script = script = ScriptConfig.model_validate(init.script)
        self.dev = init.dev
        self.levels = Levels.of(init.levels)
        root = Path(init.root)
        kills = KillSwitch(Path(init.state_dir))
        policy = EgressPolicy.from_wire(init.egress) if init.egress is not None else EgressPolicy.build(None, dev=self.dev)
        egress = EgressClient(policy, audit=self.audit, kills=kills, identity=Assertions(init.state_dir))
        outbound.use_egress(egress, script.name)
        limit = script.limits.memory_mb * 1024 * 1024
        self.watchdog = Watchdog(self.note_path, limit)
        self.watchdog.start()
        mask_secret_values(init.secrets.values())  # this isolate's log lines and errors never show them
        data_key = DataKey(init.data_key, "the front's data key") if init.data_key else None
        set_policy(policy_from_wire(init.redaction, self.levels.names, data_key))  # its log lines, per level
        tracing.start_isolate(init.tracing, self.send_spans, lambda: current().request_id)
        # From here on what the app's code prints or logs is handler output (runtime/isolate/console.py).
        use_stream(console.install(self.send_log, script.name))
        console.loading(True)
        try:
            self.module = module = _import_main(root, script.main)
        finally:
            console.loading(False)
        self.default = getattr(module, "Default", None)
        if self.default is not None and not (
            isinstance(self.default, type) and issubclass(self.default, WorkerEntrypoint)
        ):
            self.default = None
        self.fetch_fn = getattr(module, "fetch", None) or getattr(module, "on_fetch", None)
        if script.routes and self.fetch_fn is None and not (
            self.default and hasattr(self.default, "fetch")
        ):
            raise LoadError(
                f"{script.main}: no fetch handler (expected `class Default(WorkerEntrypoint)` with"
                " `async def fetch(self, request)`, or `async def fetch(request, env, ctx)`)"
            )
        self.routes = script.route_configs()
        self.models = [
            (_resolve_model(r.body_model, module), _resolve_model(r.query_model, module))
            for r in self.routes
        ]
        host = BindingHost(
            script=script,
            app_root=root,
            state_dir=Path(init.state_dir),
            channel=self.channel,
            module=module,
            pool_index=init.pool_index,
            pool_size=init.pool_size,
            dev=self.dev,
            secrets=init.secrets,
            audit=self.audit,
            kills=kills,
            hosts=self.hosts,
            levels=self.levels,
            principals=init.principals,
            data_key=data_key,
            egress=egress,
        )
        try:
            self.env = await build_env(host)
        except LoadError:
            raise
        except Exception as e:
            raise LoadError(f"building env failed: {type(e).__name__}: {e}") from None
        cap_memory(limit)
        # The cap binds only from here on: a module that already holds more would be killed by
        # the watchdog right after "ready"; say so now, deterministically.
        if (rss := rss_bytes()) > limit:
            raise LoadError(f"the module exceeded the memory limit of {script.limits.memory_mb} MB while loading"
                            f" ({rss // (1024 * 1024)} MB in use; [scripts.limits] memory_mb)", "memory_limit")
        await self.set_active(init.active)
        for h in self.hosts.values():
            if hasattr(h, "start"):
                await h.start()
        self.stats_task = asyncio.ensure_future(stats.flush_every(self.send_stats))

    async def set_active(self, active: bool) -> None:
        """Whether this isolate's version is the one serving: only then do its hosts fire
        durable-object alarms (see `IsolatePool.set_active`, `ObjectHost.set_active`)."""
        for h in self.hosts.values():
            if hasattr(h, "set_active"):
                await h.set_active(active)

    def audit(self, kind: str, fields: dict[str, Any]) -> None:
        """The audit hook handed to bindings: entries travel to the front's audit writer."""
        entry = {"script": self.script.name if self.script else None, **fields}
        scope = current()
        entry.setdefault("request_id", scope.request_id or None)
        if in_scope():  # the level of the data the entry describes (else the kind's default)
            entry.setdefault("classification", scope.level)
        if scope.task_class is not None:  # the task it is part of, for the SLOs (runtime/slo)
            entry.setdefault("task_class", scope.task_class)
        try:
            self.channel.send(protocol.Audit(entry=kind, fields=entry).encode())
        except TypeError:  # a value msgpack cannot carry: keep the entry, as text
            text = {k: v if isinstance(v, str | int | float | bool | None) else repr(v) for k, v in entry.items()}
            self.channel.send(protocol.Audit(entry=kind, fields=text).encode())
        except ChannelClosed:
            log("audit_lost", kind=kind, **{k: repr(v) for k, v in entry.items()})

    def send_stats(self, counts: dict[str, float]) -> None:
        """Counter deltas (`runtime.isolate.stats`) to the front; lost if it is gone."""
        try:
            self.channel.send(protocol.Stats(counts=counts).encode())
        except ChannelClosed:
            pass

    def send_log(self, record: dict[str, Any]) -> None:
        """A handler log record to the front (its stderr and tail); written here if it is gone."""
        try:
            self.channel.send(protocol.Log(record=record).encode())
        except ChannelClosed:
            emit(record)

    # -- dispatch --------------------------------------------------------------------------
    def on_message(self, raw: dict[str, Any]) -> None:
        """Decode a message of the front and run its handler; a message that does not decode
        is answered with a `protocol_error` (when it has an id) and otherwise dropped."""
        mid = raw.get("id")
        try:
            msg = protocol.decode(raw)
        except protocol.ProtocolError as e:
            log("protocol_error", error=str(e))
            if isinstance(mid, int):
                self.channel.reply(mid, protocol.error_reply(str(e)))
            return
        if isinstance(msg, protocol.Cancel):
            task = self.tasks.get(msg.target)
            if task is not None:
                task.cancel()
            return
        handler = self.handlers.get(type(msg))
        if handler is None:  # a message for the front (or of a kind this script does not have)
            if isinstance(mid, int):
                self.channel.reply(mid, protocol.error_reply(f"an isolate does not serve {msg.op!r} messages"))
            return
        work = handler(msg, mid)
        if tracing.TRACER is not None:
            work = self._traced(msg, work)
        task = self.channel.serve(raw, self._answer(mid, work))  # answered even if the handler dies
        if isinstance(mid, int):
            self.tasks[mid] = task
            task.add_done_callback(lambda t: self.tasks.pop(mid, None))

    async def _answer(self, mid: Any, work: Awaitable[Any]) -> None:
        """Send what a handler returns (a `Reply`, a reply map, or None when it replied itself)."""
        reply = await work
        if reply is None or not isinstance(mid, int):
            return
        encoded = reply.encode() if isinstance(reply, protocol.Reply) else reply
        try:
            self.channel.reply(mid, encoded)
        except TypeError as e:  # a value msgpack cannot carry (an RPC result, say)
            self.channel.reply(mid, protocol.error_reply(f"the result is not serializable: {e}", type="TypeError",
                                                         code="unserializable", status=500))

    # -- the API binding ops use (runtime.bindings.IsolateAPI) -----------------------------
    def scope(self, rid: str | None, identity: dict[str, Any] | None, risk: str = "low",
              level: str | None = None, task_class: str | None = None) -> RequestScope:
        """A new request scope; `level` is the caller's data classification level (the request's,
        or the calling code's for an object or service call)."""
        assert self.script is not None
        return RequestScope(request_id=rid or "", script=self.script.name, identity=protocol.Identity.from_wire(identity),
                            risk=risk, subrequest_limit=self.script.limits.subrequests,
                            binding_op_limit=self.script.limits.binding_ops,
                            deadline=time.time() + self.script.limits.wall_ms / 1000,
                            level=level or RequestScope.level, task_class=task_class)

    async def run_limited(self, rid: str | None, coro: Any, local: bool = True) -> tuple[Any, dict[str, Any] | None, float]:
        """Run `coro` under the request's scope and CPU meter. Returns (result, error, cpu_ms);
        `local`: the caller may see exception details (dev, loopback client)."""
        assert self.script is not None
        rid = rid or ""
        meter = Meter(rid, self.script.limits.cpu_ms / 1000)
        scope = current()
        try:
            result = await metered(coro, meter)
            return result, None, meter.cpu * 1000
        except CpuLimitExceeded:
            err = {"code": "cpu_limit", "status": 503,
                   "message": f"exceeded the CPU limit of {self.script.limits.cpu_ms} ms",
                   "limit_ms": self.script.limits.cpu_ms}
        except MemoryError:
            self.recycle = True
            err = {"code": "memory_limit", "status": 503,
                   "message": f"exceeded the memory limit of {self.script.limits.memory_mb} MB",
                   "limit_mb": self.script.limits.memory_mb}
        except SubrequestLimitExceeded as e:
            err = {"code": "subrequest_limit", "status": 503, "message": str(e), "limit": e.limit}
        except BindingOpsLimitExceeded as e:
            err = {"code": "binding_ops_limit", "status": 503, "message": str(e), "limit": e.limit}
        except RequestJSONTooDeep as e:  # from request.json(): the client's fault, not the handler's
            err = {"code": "json_too_deep", "status": 400, "message": str(e), "limit": e.limit}
        except asyncio.CancelledError:
            err = {"code": "cancelled", "status": 503, "message": "request cancelled"}
        except (Exception, SystemExit) as e:  # sys.exit() in a handler must not end the isolate
            if isinstance(e, CodedError) and e.code and e.status:
                # A call the handler made failed in the runtime (its callee's isolate was killed,
                # a limit): the answer keeps that code and status, it is not a handler bug.
                log("error", request_id=rid, script=self.script.name, exception=f"{e.type}: {e.message}", code=e.code,
                    classification=current().level)
                return None, {"code": e.code, "status": e.status, "type": e.type, "message": e.message}, meter.cpu * 1000
            tb = traceback.format_exc()
            log("error", request_id=rid, script=self.script.name, exception=f"{type(e).__name__}: {e}", traceback=tb,
                classification=current().level)
            # dev shows details, but not to a remote client (a client fetch from a non-loopback address)
            detailed = self.dev and local
            err = {"code": "exception", "status": 500, "type": type(e).__name__,
                   "message": mask_secrets(f"{type(e).__name__}: {e}") if detailed else "the handler raised an exception"}
            if detailed:
                err["traceback"] = mask_secrets(tb)
        finally:
            console.flush(scope)  # its last partial lines
        return None, err, meter.cpu * 1000

    # -- fetch -----------------------------------------------------------------------------
    async def handle_fetch(self, msg: protocol.Fetch, mid: int | None) -> None:
        if mid is None:
            return
        scope = self.scope(msg.rid, msg.identity, msg.risk, msg.level)
        use_scope(scope)
        req = Request.from_wire(msg.req)
        route = msg.route
        if route is not None and 0 <= route < len(self.routes):
            scope.route = self.routes[route].pattern
            scope.task_class = self.routes[route].task_class or scope.script
            if msg.level is None:
                scope.level = self.routes[route].classification
        if route is not None and 0 <= route < len(self.models):
            try:  # the bound request.json() applies; pydantic's own (200 levels) answers less clearly
                if self.models[route][0] is not None:
                    check_depth(req.body_bytes().decode("utf-8", "replace"))
            except JSONTooDeep as e:
                return self._reply_error(mid, scope.request_id, {"code": "json_too_deep", "status": 400, "message": str(e), "limit": e.limit}, 0.0)
            problem = self._validate(req, *self.models[route])
            if problem is not None:
                body = json.dumps(error_body("validation_error", "request failed validation", scope.request_id, errors=problem)).encode()
                self.channel.reply(mid, protocol.FetchReply(422, [["content-type", "application/json"]], body).encode())
                return
        ctx = ExecutionContext(scope, self.background, levels=self.levels, audit=self.audit)
        resp, err, cpu_ms = await self.run_limited(msg.rid, self._call_fetch(req, ctx), msg.local)
        if err is None and not isinstance(resp, Response):
            err = {"code": "exception", "status": 500, "type": "TypeError",
                   "message": f"fetch handler returned {type(resp).__name__}, expected Response"}
        if err is not None:
            self._reply_error(mid, scope.request_id, err, cpu_ms)
        else:
            await self._reply_response(mid, msg, resp, cpu_ms)
        self._maybe_recycle()

    def _validate(self, req: Request, body_model: Any, query_model: Any) -> list[dict[str, Any]] | None:
        errors: list[dict[str, Any]] = []
        if body_model is not None:
            try:
                req.validated = body_model.model_validate_json(req.body_bytes() or b"null")
            except ValidationError as e:
                errors += [{"in": "body", "loc": list(x["loc"]), "msg": x["msg"], "type": x["type"]} for x in e.errors(include_url=False)]
        if query_model is not None:
            try:
                req.validated_query = query_model.model_validate(req.query)
            except ValidationError as e:
                errors += [{"in": "query", "loc": list(x["loc"]), "msg": x["msg"], "type": x["type"]} for x in e.errors(include_url=False)]
        return errors or None

    async def _call_fetch(self, req: Request, ctx: ExecutionContext) -> Any:
        if self.default is not None and hasattr(self.default, "fetch"):
            return await self.default(ctx, self.env).fetch(req)
        return await _positional(self.fetch_fn, req, self.env, ctx)

    def _reply_error(self, mid: int, rid: str, err: dict[str, Any], cpu_ms: float) -> None:
        status = err.pop("status", 500)
        code = err.pop("code")
        body = error_body(code, err.pop("message"), rid, **err)
        self.channel.reply(mid, protocol.FetchReply(status, [["content-type", "application/json"]], json.dumps(body).encode(),
                                                    cpu_ms=cpu_ms, error_code=code).encode())

    async def _reply_response(self, mid: int, msg: protocol.Fetch, resp: Response, cpu_ms: float) -> None:
        problem = _response_problem(resp)
        if problem is not None:
            log("error", request_id=msg.rid, script=self.script.name if self.script else None, exception=problem,
                classification=current().level)
            return self._reply_error(mid, msg.rid, {"code": "invalid_response", "status": 500, "message": problem}, cpu_ms)
        head = protocol.FetchReply(resp.status, resp.headers.items(), resp.body, cpu_ms=cpu_ms, more=resp.stream is not None)
        self.channel.reply(mid, head.encode())
        if resp.stream is None:
            return

        async def pump() -> None:
            assert resp.stream is not None
            async for chunk in resp.stream:
                self.channel.send_chunk(mid, chunk.encode() if isinstance(chunk, str) else bytes(chunk))
                await self.channel.drain()

        _, err, _ = await self.run_limited(msg.rid, pump(), msg.local)
        self.channel.end_stream(mid, err["message"] if err else None)

    # -- rpc / cron / lifecycle ------------------------------------------------------------
    async def handle_rpc(self, msg: protocol.Rpc, mid: int | None = None) -> Any:
        use_scope(scope := self.scope(msg.rid, msg.identity, level=msg.level))
        name = msg.entrypoint or "Default"
        cls = getattr(self.module, name, None)
        method = msg.method
        if not (isinstance(cls, type) and issubclass(cls, WorkerEntrypoint)):
            return protocol.error_reply(f"script has no entrypoint class {name!r}", type="RpcError", code="no_entrypoint", status=404)
        fn = getattr(cls, method, None)
        if method.startswith("_") or method in ("fetch", "scheduled") or not callable(fn):
            return protocol.error_reply(f"{name} has no RPC method {method!r}", type="RpcError", code="no_method", status=404)
        inst = cls(ExecutionContext(scope, self.background, levels=self.levels, audit=self.audit), self.env)

        async def call() -> Any:
            out = getattr(inst, method)(*msg.args, **msg.kwargs)
            return await out if inspect.isawaitable(out) else out

        result, err, _ = await self.run_limited(msg.rid, call())
        return {"error": protocol.wire_error(err)} if err is not None else protocol.Result(result)

    async def handle_scheduled(self, msg: protocol.Scheduled, mid: int | None = None) -> protocol.ScheduledReply:
        scope = self.scope(msg.rid, None)
        use_scope(scope)
        controller = ScheduledController(msg.cron, msg.time)
        ctx = ExecutionContext(scope, self.background, levels=self.levels, audit=self.audit)

        async def run() -> None:
            if self.default is not None and hasattr(self.default, "scheduled"):
                await self.default(ctx, self.env).scheduled(controller)
                return
            fn = getattr(self.module, "scheduled", None) or getattr(self.module, "on_scheduled", None)
            if fn is None:
                raise LookupError("script has no scheduled handler")
            await _positional(fn, controller, self.env, ctx)

        _, err, cpu_ms = await self.run_limited(msg.rid, run())
        return protocol.ScheduledReply(ok=err is None, error=err, cpu_ms=cpu_ms)

    async def handle_activate(self, msg: protocol.Activate, mid: int | None = None) -> protocol.Ok:
        await self.set_active(msg.active)
        return protocol.Ok()

    async def handle_ping(self, msg: protocol.Ping, mid: int | None = None) -> protocol.Pong:
        return protocol.Pong(os.getpid())

    async def handle_shutdown(self, msg: protocol.Shutdown, mid: int | None = None) -> None:
        """Stop taking work, let in-flight requests and wait_until tasks finish, then exit."""
        current = asyncio.current_task()
        pending = [t for t in self.tasks.values() if t is not current]
        if pending or self.background:
            await asyncio.wait([*pending, *self.background], timeout=msg.grace_s)
        for h in self.hosts.values():
            if hasattr(h, "close"):
                await h.close()
        if counts := stats.take():  # before the answer: the front counts them before it lets go
            self.send_stats(counts)
        tracing.flush()
        if mid is not None:
            self.channel.reply(mid, protocol.Ok().encode())
        await asyncio.sleep(0)
        os._exit(0)

    def _traced(self, msg: protocol.Message, work: Awaitable[Any]) -> Awaitable[Any]:
        """A handler run under its span, in the trace context its message carries: fetch, RPC
        and cron handlers get a span each; an object call runs in its caller's context (the
        caller's span is the call's)."""
        script = self.script.name if self.script else ""
        if isinstance(msg, protocol.Fetch):
            route = self.routes[msg.route].pattern if msg.route is not None and 0 <= msg.route < len(self.routes) else None
            return tracing.traced(work, f"fetch {script}", msg.trace, {
                tracing.REQUEST_ID: msg.rid, "edgeworks.script": script, "edgeworks.handler": "fetch",
                **({"http.route": route} if route else {})})
        if isinstance(msg, protocol.Rpc):
            return tracing.traced(work, f"rpc {script} {msg.entrypoint or 'Default'}.{msg.method}", msg.trace, {
                tracing.REQUEST_ID: msg.rid or "", "edgeworks.script": script, "edgeworks.handler": "rpc",
                "rpc.method": msg.method})
        if isinstance(msg, protocol.Scheduled):
            return tracing.traced(work, f"scheduled {script}", None, {
                tracing.REQUEST_ID: msg.rid, "edgeworks.script": script, "edgeworks.handler": "scheduled",
                "edgeworks.cron": msg.cron})
        if isinstance(msg, protocol.ObjectCall) and msg.trace is not None:
            return tracing.traced(work, None, msg.trace, {})
        return work

    def send_spans(self, spans: list[Any]) -> None:
        """Finished spans to the front's exporters (`runtime.tracing`); lost with the channel."""
        try:
            self.channel.send(protocol.Spans(spans=spans).encode())
        except ChannelClosed:
            pass

    def _maybe_recycle(self) -> None:
        if self.recycle and not self.channel.closed:
            self.recycle = False
            self.channel.send(protocol.Recycle(reason="memory_limit").encode())


async def _serve(fd: int, note_path: str) -> None:
    sock = socket.socket(fileno=fd)
    closed = asyncio.get_running_loop().create_future()
    isolate: Isolate | None = None

    def on_message(msg: dict[str, Any]) -> None:
        if isolate is not None and isolate.script is not None:
            isolate.on_message(msg)
        elif msg.get("op") == "init":
            asyncio.ensure_future(init(msg))
        elif msg.get("id") is not None:  # not loaded: still an answer, once the channel is set up
            asyncio.get_running_loop().call_soon(refuse, msg)

    def refuse(msg: dict[str, Any]) -> None:
        assert isolate is not None
        isolate.channel.reply(msg["id"], protocol.error_reply("the isolate has not loaded its script", type="NotReady",
                                                              code="not_ready", status=503))

    async def init(raw: dict[str, Any]) -> None:
        assert isolate is not None
        t0 = time.perf_counter()

        def failed(error: str, cause: str) -> None:
            assert isolate is not None
            isolate.script = None
            isolate.channel.reply(raw["id"], protocol.InitFailed(error, cause).encode())

        try:
            await isolate.load(protocol.Init.decode(raw))
        except LoadError as e:
            return failed(str(e), e.cause)
        except SystemExit as e:  # from code the bindings ran while building env
            return failed(f"the script exited with SystemExit({e.code!r}) while loading", "exited")
        except Exception as e:  # a config we sent that the isolate cannot use: still report it
            return failed(f"{type(e).__name__}: {e}", "load_error")
        isolate.channel.reply(raw["id"], protocol.Ready(True, os.getpid(), (time.perf_counter() - t0) * 1000).encode())

    def on_close(exc: BaseException | None) -> None:
        if not closed.done():
            closed.set_result(None)

    channel = await open_channel(sock, on_message, on_close)
    isolate = Isolate(channel, note_path)
    await closed
    os._exit(0)  # the front went away: nothing left to serve


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when the front dies, even if we are busy."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except OSError:
        pass  # not Linux: the closed channel still ends the process


def main() -> None:
    run(int(sys.argv[1]), sys.argv[2])


def run(fd: int, note_path: str) -> None:
    """Serve the front on socket `fd` until it goes away (in a spawned or a forked process)."""
    _die_with_parent()
    # Thread stacks are private writable memory, so they count against the memory limit
    # (RLIMIT_DATA); handler code and object I/O threads need far less than the 8 MiB default.
    # Guest code never runs on them: the sandbox engine's threads get stacks sized from its
    # wasm stack limit, and guests are only entered on such threads (sandbox/_stack.py).
    threading.stack_size(512 * 1024)
    try:
        import uvloop

        uvloop.run(_serve(fd, note_path))
    except ImportError:  # pragma: no cover - uvloop is a dependency, but keep the fallback
        asyncio.run(_serve(fd, note_path))


if __name__ == "__main__":
    main()
