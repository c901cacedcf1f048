"""The isolate process: loads one script version and serves the front's messages.

Started by the supervisor as `python -m runtime.isolate.main FD NOTE_PATH` with one end of a socketpair.
The first message is `init` (script config, app root, state dir, pool slot, secrets); the isolate
imports the script, builds `env`, and answers `ready` or `init_error`. Then it serves, concurrently:
`fetch`, `rpc` (service-binding entrypoint methods), `object` (durable-object calls),
`scheduled`, `activate` (whether its version serves: see `IsolatePool.set_active`), `cancel` and
`shutdown`. Every request runs under its own `RequestScope` and CPU
`Meter`; see `meter.py` for what happens at a limit.
"""

from __future__ import annotations

import asyncio
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
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from objects import CodedError
from runtime.bindings import BindingHost, build_env
from runtime.config import RouteConfig, ScriptConfig
from runtime.errors import error_body
from runtime.ipc import Channel, ChannelClosed, open_channel
from runtime.isolate.context import (
    ExecutionContext,
    Identity,
    RequestScope,
    SubrequestLimitExceeded,
    current,
    use_scope,
)
from runtime.isolate.entrypoints import ScheduledController, WorkerEntrypoint
from runtime.isolate.http import Request, Response
from runtime.isolate.meter import CpuLimitExceeded, Meter, Watchdog, cap_memory, metered, rss_bytes
from runtime.killswitch import KillSwitch
from runtime.logs import log
from runtime.safejson import JSONTooDeep, RequestJSONTooDeep, check_depth

__all__ = ["Isolate", "LoadError", "main", "run"]


class LoadError(Exception):
    """The script cannot serve; `cause` is what the front reports (see `LoadFailed`)."""

    def __init__(self, message: str, cause: str = "load_error"):
        super().__init__(message)
        self.cause = cause


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


def _wire_error(err: dict[str, Any]) -> dict[str, Any]:
    """An error of `_run_limited` as an RPC/object error reply: code and status go along, so the
    caller answers with them (see `objects.CodedError`)."""
    return {"type": err.get("type", err["code"]), "message": err["message"], "code": err["code"],
            "status": err.get("status", 500)}


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

    # -- loading ---------------------------------------------------------------------------
    async def load(self, init: dict[str, Any]) -> None:
        self.script = script = ScriptConfig.model_validate(init["script"])
        self.dev = bool(init.get("dev"))
        root = Path(init["root"])
        limit = script.limits.memory_mb * 1024 * 1024
        self.watchdog = Watchdog(self.note_path, limit)
        self.watchdog.start()
        self.module = module = _import_main(root, script.main)
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
            state_dir=Path(init["state_dir"]),
            channel=self.channel,
            module=module,
            pool_index=init.get("pool_index", 0),
            pool_size=init.get("pool_size", 1),
            dev=self.dev,
            secrets=init.get("secrets", {}),
            audit=self.audit,
            kills=KillSwitch(Path(init["state_dir"])),
            hosts=self.hosts,
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
        await self.set_active(bool(init.get("active", True)))
        for h in self.hosts.values():
            if hasattr(h, "start"):
                await h.start()

    async def set_active(self, active: bool) -> None:
        """Whether this isolate's version is the one serving: only then do its hosts fire
        durable-object alarms (see `IsolatePool.set_active`, `ObjectHost.set_active`)."""
        for h in self.hosts.values():
            if hasattr(h, "set_active"):
                await h.set_active(active)

    def audit(self, kind: str, fields: dict[str, Any]) -> None:
        """The audit hook handed to bindings: entries travel to the front's audit writer."""
        entry = {"script": self.script.name if self.script else None, **fields}
        entry.setdefault("request_id", current().request_id or None)
        msg = {"op": "event", "kind": "audit", "entry": kind, "fields": entry}
        try:
            self.channel.send(msg)
        except TypeError:  # a value msgpack cannot carry: keep the entry, as text
            msg["fields"] = {k: v if isinstance(v, str | int | float | bool | None) else repr(v) for k, v in entry.items()}
            self.channel.send(msg)
        except ChannelClosed:
            log("audit_lost", kind=kind, **{k: repr(v) for k, v in entry.items()})

    # -- dispatch --------------------------------------------------------------------------
    def on_message(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "cancel":
            task = self.tasks.get(msg["target"])
            if task is not None:
                task.cancel()
            return
        handler = {
            "fetch": self.handle_fetch,
            "rpc": self.handle_rpc,
            "object": self.handle_object,
            "scheduled": self.handle_scheduled,
            "workflow": self.handle_workflow,
            "shutdown": self.handle_shutdown,
            "ping": self.handle_ping,
            "activate": self.handle_activate,
        }.get(op)
        if handler is None:
            if "id" in msg:
                self.channel.reply(msg["id"], {"error": {"type": "ProtocolError", "message": f"unknown op {op!r}"}})
            return
        mid = msg.get("id")
        task = self.channel.serve(msg, handler(msg))  # answered even if the handler dies
        if mid is not None:
            self.tasks[mid] = task
            task.add_done_callback(lambda t: self.tasks.pop(mid, None))

    def _scope(self, msg: dict[str, Any]) -> RequestScope:
        ident = msg.get("identity")
        assert self.script is not None
        return RequestScope(
            request_id=msg.get("rid", ""),
            script=self.script.name,
            identity=Identity(
                subject=ident.get("subject"),
                tenant=ident.get("tenant"),
                scopes=tuple(ident.get("scopes") or ()),
                claims=ident.get("claims") or {},
            )
            if ident
            else None,
            risk=msg.get("risk", "low"),
            subrequest_limit=self.script.limits.subrequests,
        )

    async def _run_limited(self, msg: dict[str, Any], coro: Any) -> tuple[Any, dict[str, Any] | None, float]:
        """Run `coro` under the request's scope and CPU meter. Returns (result, error, cpu_ms)."""
        assert self.script is not None
        rid = msg.get("rid", "")
        meter = Meter(rid, self.script.limits.cpu_ms / 1000)
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
        except RequestJSONTooDeep as e:  # from request.json(): the client's fault, not the handler's
            err = {"code": "json_too_deep", "status": 400, "message": str(e), "limit": e.limit}
        except asyncio.CancelledError:
            err = {"code": "cancelled", "status": 503, "message": "request cancelled"}
        except (Exception, SystemExit) as e:  # sys.exit() in a handler must not end the isolate
            if isinstance(e, CodedError) and e.code and e.status:
                # A call the handler made failed in the runtime (its callee's isolate was killed,
                # a limit): the answer keeps that code and status, it is not a handler bug.
                log("error", request_id=rid, script=self.script.name, exception=f"{e.type}: {e.message}", code=e.code)
                return None, {"code": e.code, "status": e.status, "type": e.type, "message": e.message}, meter.cpu * 1000
            tb = traceback.format_exc()
            log("error", request_id=rid, script=self.script.name, exception=f"{type(e).__name__}: {e}", traceback=tb)
            # dev shows details, but not to a remote client (a client fetch from a non-loopback address)
            detailed = self.dev and msg.get("local", True)
            err = {"code": "exception", "status": 500, "type": type(e).__name__,
                   "message": f"{type(e).__name__}: {e}" if detailed else "the handler raised an exception"}
            if detailed:
                err["traceback"] = tb
        return None, err, meter.cpu * 1000

    # -- fetch -----------------------------------------------------------------------------
    async def handle_fetch(self, msg: dict[str, Any]) -> None:
        mid = msg["id"]
        scope = self._scope(msg)
        use_scope(scope)
        req = Request.from_wire(msg["req"])
        route = msg.get("route")
        if route is not None and route < len(self.models):
            try:  # the bound request.json() applies; pydantic's own (200 levels) answers less clearly
                if self.models[route][0] is not None:
                    check_depth(req.body_bytes().decode("utf-8", "replace"))
            except JSONTooDeep as e:
                return self._reply_error(mid, scope.request_id, {"code": "json_too_deep", "status": 400, "message": str(e), "limit": e.limit}, 0.0)
            problem = self._validate(req, *self.models[route])
            if problem is not None:
                self.channel.reply(mid, {"status": 422, "headers": [["content-type", "application/json"]],
                                         "body": json.dumps(error_body("validation_error", "request failed validation", scope.request_id, errors=problem)).encode(),
                                         "cpu_ms": 0.0})
                return
        ctx = ExecutionContext(scope, self.background)
        resp, err, cpu_ms = await self._run_limited(msg, self._call_fetch(req, ctx))
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
        self.channel.reply(mid, {"status": status, "headers": [["content-type", "application/json"]],
                                 "body": json.dumps(body).encode(), "cpu_ms": cpu_ms, "error_code": code})

    async def _reply_response(self, mid: int, msg: dict[str, Any], resp: Response, cpu_ms: float) -> None:
        problem = _response_problem(resp)
        if problem is not None:
            rid = msg.get("rid", "")
            log("error", request_id=rid, script=self.script.name if self.script else None, exception=problem)
            return self._reply_error(mid, rid, {"code": "invalid_response", "status": 500, "message": problem}, cpu_ms)
        head = {"status": resp.status, "headers": resp.headers.items(), "body": resp.body, "cpu_ms": cpu_ms}
        if resp.stream is None:
            self.channel.reply(mid, head)
            return
        head["more"] = True
        self.channel.reply(mid, head)

        async def pump() -> None:
            assert resp.stream is not None
            async for chunk in resp.stream:
                self.channel.send_chunk(mid, chunk.encode() if isinstance(chunk, str) else bytes(chunk))
                await self.channel.drain()

        _, err, _ = await self._run_limited(msg, pump())
        self.channel.end_stream(mid, err["message"] if err else None)

    # -- rpc / objects / cron -------------------------------------------------------------
    async def handle_rpc(self, msg: dict[str, Any]) -> None:
        scope = self._scope(msg)
        use_scope(scope)
        name = msg.get("entrypoint") or "Default"
        cls = getattr(self.module, name, None)
        method = msg["method"]
        if not (isinstance(cls, type) and issubclass(cls, WorkerEntrypoint)):
            return self._reply_exc(msg["id"], "RpcError", f"script has no entrypoint class {name!r}")
        fn = getattr(cls, method, None)
        if method.startswith("_") or method in ("fetch", "scheduled") or not callable(fn):
            return self._reply_exc(msg["id"], "RpcError", f"{name} has no RPC method {method!r}")
        ctx = ExecutionContext(scope, self.background)
        inst = cls(ctx, self.env)

        async def call() -> Any:
            out = getattr(inst, method)(*msg.get("args", ()), **msg.get("kwargs", {}))
            return await out if inspect.isawaitable(out) else out

        result, err, _ = await self._run_limited(msg, call())
        if err is not None:
            self.channel.reply(msg["id"], {"error": _wire_error(err)})
        else:
            self._reply_value(msg["id"], result)

    def _reply_exc(self, mid: int, type_name: str, message: str) -> None:
        self.channel.reply(mid, {"error": {"type": type_name, "message": message}})

    def _reply_value(self, mid: int, result: Any) -> None:
        try:
            self.channel.reply(mid, {"result": result})
        except TypeError as e:
            self._reply_exc(mid, "TypeError", f"RPC result is not serializable: {e}")

    async def handle_object(self, msg: dict[str, Any]) -> None:
        host = self.hosts.get("durable_objects")
        if host is None:
            return self._reply_exc(msg["id"], "RpcError", "this script hosts no durable objects")
        scope = self._scope(msg)
        use_scope(scope)
        reply, err, _ = await self._run_limited(msg, host.handle(tuple(msg["address"]), msg["payload"]))
        if err is not None:
            reply = {"error": _wire_error(err)}
        self.channel.reply(msg["id"], {"result": reply})

    async def handle_scheduled(self, msg: dict[str, Any]) -> None:
        scope = self._scope(msg)
        use_scope(scope)
        controller = ScheduledController(msg["cron"], msg["time"])
        ctx = ExecutionContext(scope, self.background)

        async def run() -> None:
            if self.default is not None and hasattr(self.default, "scheduled"):
                await self.default(ctx, self.env).scheduled(controller)
                return
            fn = getattr(self.module, "scheduled", None) or getattr(self.module, "on_scheduled", None)
            if fn is None:
                raise LookupError("script has no scheduled handler")
            await _positional(fn, controller, self.env, ctx)

        _, err, cpu_ms = await self._run_limited(msg, run())
        self.channel.reply(msg["id"], {"ok": err is None, "error": err, "cpu_ms": cpu_ms})

    async def handle_workflow(self, msg: dict[str, Any]) -> None:
        """An admin action on a workflow instance, performed through the script's binding."""
        from objects.workflows import STATUSES, WorkflowBinding, WorkflowError

        use_scope(self._scope(msg))  # its identity's tenant is the one the admin acts in
        binding = self.env.get(msg["binding"])
        if not isinstance(binding, WorkflowBinding):
            return self.channel.reply(msg["id"], {"error": {"code": "no_such_binding", "message": f"no workflow binding {msg['binding']!r}"}})
        action, args = msg["action"], msg.get("args") or []
        try:
            if action == "list":  # every tenant's instances for a global admin, each with its tenant
                status, every = msg.get("status"), bool(msg.get("every_tenant"))
                tenant = (msg.get("identity") or {}).get("tenant")
                if status is not None and status not in STATUSES:
                    raise WorkflowError("invalid_status", f"status must be one of {STATUSES}, got {status!r}")
                result: Any = [{"id": m["id"], "status": m["status"], "created": m["created"], "tenant": m.get("tenant")}
                               for m in await binding.definition.list_instances(tenant, every_tenant=every)
                               if (status is None or m["status"] == status) and (every or m.get("tenant") == tenant)]
            elif action == "create":
                result = {"id": (await binding.create(id=msg.get("instance"), params=args[0] if args else None)).id}
            elif action in ("status", "pause", "resume", "terminate", "restart", "send_event", "approve", "reject"):
                instance = await binding.get(msg["instance"])
                result = await getattr(instance, action)(*args)
                if action != "status":
                    result = {"ok": True, "status": (await instance.status()).get("status")}
            else:
                return self._reply_exc(msg["id"], "bad_request", f"unknown workflow action {action!r}")
        except WorkflowError as e:
            return self.channel.reply(msg["id"], {"error": {"code": e.code, "message": str(e)}})
        except Exception as e:  # the admin caller gets the reason, the isolate keeps serving
            if isinstance(e, CodedError) and e.code and e.status:  # e.g. the instance's isolate was killed
                return self.channel.reply(msg["id"], {"error": {"code": e.code, "status": e.status, "message": e.message}})
            log("error", request_id=msg.get("rid"), exception=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
            return self.channel.reply(msg["id"], {"error": {"code": "workflow_error", "message": f"{type(e).__name__}: {e}"}})
        self._reply_value(msg["id"], result)

    async def handle_activate(self, msg: dict[str, Any]) -> None:
        await self.set_active(bool(msg.get("active", True)))
        self.channel.reply(msg["id"], {"ok": True})

    async def handle_ping(self, msg: dict[str, Any]) -> None:
        self.channel.reply(msg["id"], {"pong": os.getpid()})

    async def handle_shutdown(self, msg: dict[str, Any]) -> None:
        """Stop taking work, let in-flight requests and wait_until tasks finish, then exit."""
        current = asyncio.current_task()
        pending = [t for t in self.tasks.values() if t is not current]
        deadline = msg.get("grace_s", 30)
        if pending or self.background:
            await asyncio.wait([*pending, *self.background], timeout=deadline)
        for h in self.hosts.values():
            if hasattr(h, "close"):
                await h.close()
        self.channel.reply(msg["id"], {"ok": True})
        await asyncio.sleep(0)
        os._exit(0)

    def _maybe_recycle(self) -> None:
        if self.recycle and not self.channel.closed:
            self.recycle = False
            self.channel.send({"op": "recycle", "reason": "memory_limit"})


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
        isolate.channel.reply(msg["id"], {"error": {"type": "NotReady", "code": "not_ready", "status": 503,
                                                    "message": "the isolate has not loaded its script"}})

    async def init(msg: dict[str, Any]) -> None:
        assert isolate is not None
        t0 = time.perf_counter()
        try:
            await isolate.load(msg)
        except LoadError as e:
            isolate.script = None
            isolate.channel.reply(msg["id"], {"error": str(e), "cause": e.cause})
            return
        except SystemExit as e:  # from code the bindings ran while building env
            isolate.script = None
            isolate.channel.reply(msg["id"], {"error": f"the script exited with SystemExit({e.code!r}) while loading",
                                              "cause": "exited"})
            return
        except Exception as e:  # a config we sent that the isolate cannot use: still report it
            isolate.script = None
            isolate.channel.reply(msg["id"], {"error": f"{type(e).__name__}: {e}", "cause": "load_error"})
            return
        isolate.channel.reply(msg["id"], {"ready": True, "pid": os.getpid(), "load_ms": (time.perf_counter() - t0) * 1000})

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
