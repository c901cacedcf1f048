"""Sandbox: runs named tools for callers holding capability tokens.

`await sandbox.run(name, input, token=..., request_id=..., tenant=...)` verifies the token
(and, when the caller names the tenant it acts for, that the token was minted for that tenant:
a token is a bearer credential, and its tenant decides whose KV the guest reaches), prepares the
tool (compiled module from the engine cache, import check, pre-linked instance), and runs the
guest on the engine's thread pool in a fresh Store, so the event loop is never blocked by guest
code. `run_sync` is the same call on the current thread. Both return the tool's JSON result or
raise `ToolError`; after any error the Sandbox keeps serving.

Cancellation: cancelling the awaiting task does not stop the guest; it runs on until it ends or
hits its limits (fuel, `wall_ms`), which bound how long a pool thread stays busy.

Audit: every call emits `audit("sandbox.call", fields)` exactly once, on success and on every
error (including invalid tokens and unknown tools), with `request_id`, `tool`, `principal`
(who runs the tool: the caller's `principal=`), `jti`, `issuer` (the token's), `tenant`, `caps_used`, `caps_denied`, `fuel`, `wall_ms`, `host_calls`,
`outcome` (`ok` or the error code) and `error` (message, on failure). Each denial also emits
its own `sandbox.denied` entry when it happens (a refused token, an import or host call
outside the grants); every entry of a call carries its `principal`.
"""

from __future__ import annotations

import contextvars
import functools
import json
import os
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import wasmtime

from ._wasmbin import export_tables
from .capabilities import CapabilitySet
from .engine import SandboxEngine
from .errors import ErrorCode, ToolError
from .guest_call import GuestCall
from .guest_core import call_core, check_exports
from .guest_python import call_python
from .guest_wasi import call_wasi
from .host import HostContext
from .hostlink import check_imports, edge_linker, micropython_linker
from .kv import SandboxKV
from .limits import Limits
from .runner import CallStats, GuestBody, MemoryProbe, execute
from .spec import Preopen, SandboxConfig, ToolSpec, default_micropython_wasm
from .tokens import ANY_TENANT, CapabilityAuthority, TokenError
from .types import AuditHook, Clock, HttpFetch, noop_audit

__all__ = ["ANY_TENANT", "Sandbox"]


@dataclass
class _Prepared:
    spec: ToolSpec
    limits: Limits
    caps: CapabilitySet
    pre: wasmtime.InstancePre | None
    needs: list[tuple[str, str | None]]
    refusal: ToolError | None
    python_source: str = ""


class Sandbox:
    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        app_dir: str | os.PathLike[str],
        tools: Sequence[ToolSpec],
        authority: CapabilityAuthority,
        config: SandboxConfig | None = None,
        audit: AuditHook | None = None,
        script: str = "app",
        *,
        engine: SandboxEngine | None = None,
        clock: Clock | None = None,
        http: HttpFetch | None = None,
    ):
        self.state_dir = Path(state_dir)
        self.app_dir = Path(app_dir)
        self.config = config or SandboxConfig()
        self.authority = authority
        self.audit = _guarded(audit) if audit is not None else noop_audit
        self.script = script
        self.engine = engine or SandboxEngine.shared()
        self.clock = clock or authority.clock
        self.http = http  # sends the http.fetch calls the capabilities allow (see host.py)
        self.tools: dict[str, ToolSpec] = {}
        problems: list[str] = []
        for i, spec in enumerate(tools):
            if spec.name in self.tools:
                problems.append(f"tools[{i}].name: duplicate tool name {spec.name!r}")
            self.tools[spec.name] = spec
            if spec.path is not None and not (self.app_dir / spec.path).is_file():
                problems.append(f"tools[{i}].path: {spec.path!r} not found in {self.app_dir}")
            for j, p in enumerate(spec.preopens):
                if not (self.app_dir / p.host_path).is_dir():
                    problems.append(f"tools[{i}].preopens[{j}].host_path: {p.host_path!r} is not a directory")
        if problems:
            raise ValueError("invalid tool declarations:\n" + "\n".join(problems))
        self.cache_dir = self.state_dir / "sandbox" / "cache"
        self.tmp_dir = self.state_dir / "sandbox" / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.kv = SandboxKV(self.state_dir, script)
        self._prepared: dict[str, _Prepared] = {}
        self._linkers: dict[str, wasmtime.Linker] = {}
        self._lock = threading.Lock()

    # -- public API --------------------------------------------------------------------------

    async def run(
        self, name: str, input: Any, *, token: str, request_id: str | None = None,
        tenant: str | None = ANY_TENANT, principal: str | None = None,
    ) -> Any:
        import asyncio  # deferred: callers of run() have it loaded; the CLI path does not

        loop = asyncio.get_running_loop()
        call = functools.partial(self.run_sync, name, input, token=token, request_id=request_id,
                                 tenant=tenant, principal=principal)
        # in the caller's context: the injected `http` reads who calls and at which data level
        return await loop.run_in_executor(self.engine.executor, contextvars.copy_context().run, call)

    def run_sync(
        self, name: str, input: Any, *, token: str, request_id: str | None = None,
        tenant: str | None = ANY_TENANT, principal: str | None = None,
    ) -> Any:
        started = time.perf_counter()
        audit = _as_principal(self.audit, principal)
        fields: dict[str, Any] = {
            "request_id": request_id,
            "tool": name,
            "jti": None,
            "issuer": None,
            "tenant": None,
            "caps_used": [],
            "caps_denied": [],
            "fuel": 0,
            "wall_ms": 0.0,
            "host_calls": 0,
            "outcome": "ok",
        }
        ctx: HostContext | None = None
        stats = CallStats()
        try:
            try:
                tok = self.authority.verify(token)
            except TokenError as e:
                audit("sandbox.denied", {"request_id": request_id, "tool": name,
                                              "reason": e.reason, "capability": None})
                raise ToolError(ErrorCode.INVALID_TOKEN, e.message, {"reason": e.reason}) from None
            request_id = request_id or tok.request_id or uuid.uuid4().hex
            fields.update(
                request_id=request_id, jti=tok.jti, issuer=tok.issuer, tenant=tok.tenant
            )
            if tenant is not ANY_TENANT and tok.tenant != tenant:
                fields.update(tenant=tenant, token_tenant=tok.tenant)
                audit("sandbox.denied", {"request_id": request_id, "tool": name,
                                              "reason": "wrong_tenant", "capability": None,
                                              "tenant": tenant, "token_tenant": tok.tenant})
                raise ToolError(
                    ErrorCode.INVALID_TOKEN,
                    "the capability token was minted for another tenant than this call's",
                    {"reason": "wrong_tenant"},
                )
            prepared = self._prepare(name)
            try:
                input_json = json.dumps(input, separators=(",", ":"), allow_nan=False)
                if "\\ud" in input_json:  # escaped surrogates: refuse unpaired ones
                    json.dumps(input, ensure_ascii=False).encode("utf-8")
            except (TypeError, ValueError, RecursionError) as e:  # RecursionError: nested too deeply
                raise ToolError(ErrorCode.BAD_INPUT, f"input is not JSON-serializable: {e}") from None
            if len(input_json) > self.config.max_input_bytes:
                raise ToolError(
                    ErrorCode.BAD_INPUT, f"input exceeds {self.config.max_input_bytes} bytes"
                )
            limits = prepared.limits
            ctx = HostContext(
                tool=name,
                request_id=request_id,
                tenant=tok.tenant,
                jti=tok.jti,
                issuer=tok.issuer,
                token_caps=tok.capabilities,
                tool_caps=prepared.caps,
                limits=limits,
                config=self.config,
                kv=self.kv,
                audit=audit,
                clock=self.clock,
                deadline=time.monotonic() + limits.wall_ms / 1000,
                http=self.http,
            )
            if prepared.refusal is not None:
                if prepared.refusal.code == ErrorCode.CAPABILITY_DENIED:
                    ctx.deny(str(prepared.refusal.details.get("import", "import")), "instantiate")
                raise prepared.refusal
            for imp, kind in prepared.needs:
                if kind is not None and not ctx.allows_kind(kind):
                    ctx.deny(f"{kind}" if kind in ("log", "clock", "random") else f"{kind}:*", imp)
                    raise ToolError(
                        ErrorCode.CAPABILITY_DENIED,
                        f"module imports {imp}, which needs a {kind} capability this call lacks",
                        {"import": imp, "capability": kind},
                    )
            assert prepared.pre is not None  # only a refused tool has none, and it raised above
            call = GuestCall(
                pre=prepared.pre,
                ctx=ctx,
                preopens=_granted_preopens(prepared.spec.preopens, tok.capabilities, ctx),
                app_dir=self.app_dir,
                tmp_dir=self.tmp_dir,
                stderr_bytes=self.config.stderr_bytes,
            )
            return execute(self.engine, call, self._body(prepared, input_json, call), stats)
        except ToolError as e:
            fields["outcome"] = e.code
            fields["error"] = e.message
            raise
        except Exception as e:
            fields["outcome"] = "internal_error"
            fields["error"] = f"{type(e).__name__}: {e}"
            raise
        finally:
            if ctx is not None:
                fields.update(
                    caps_used=list(ctx.used),
                    caps_denied=list(ctx.denied),
                    host_calls=ctx.host_calls,
                )
            fields["fuel"] = stats.fuel_used
            fields["wall_ms"] = round((time.perf_counter() - started) * 1000, 3)
            audit("sandbox.call", fields)

    def prepare_all(self) -> None:
        """Compile (or load from cache) every declared tool now instead of on first call."""
        for name in self.tools:
            self._prepare(name)

    # -- internals ---------------------------------------------------------------------------

    @staticmethod
    def _body(prepared: _Prepared, input_json: str, call: GuestCall) -> GuestBody[Any]:
        """The guest ABI of the tool's kind, bound to ``call`` and the input."""
        spec = prepared.spec
        if spec.kind == "wasm":
            data = input_json.encode()
            return lambda store, probe: call_core(store, probe, call, spec.export, data)
        if spec.kind == "wasi":
            data = input_json.encode()
            argv = [spec.name]
            return lambda store, probe: call_wasi(store, probe, call, argv, data)
        source = prepared.python_source
        input_value = json.loads(input_json)  # normalized: exactly what JSON can carry

        def run_python(store: wasmtime.Store, probe: MemoryProbe) -> Any:
            return call_python(store, probe, call, source, input_value)

        return run_python

    def _prepare(self, name: str) -> _Prepared:
        if not isinstance(name, str):
            raise ToolError(ErrorCode.UNKNOWN_TOOL, f"a tool name is a string, not {type(name).__name__}",
                            {"tool": None})
        prepared = self._prepared.get(name)
        if prepared is not None:
            return prepared
        spec = self.tools.get(name)
        if spec is None:
            raise ToolError(ErrorCode.UNKNOWN_TOOL, f"no tool named {name!r}", {"tool": name})
        with self._lock:
            prepared = self._prepared.get(name)
            if prepared is None:
                prepared = self._build(spec)
                self._prepared[name] = prepared
            return prepared

    def _build(self, spec: ToolSpec) -> _Prepared:
        limits = self.config.limits.merged(spec.limits)
        caps = CapabilitySet(spec.capabilities)
        python_source = ""
        if spec.kind == "python":
            if spec.source is not None:
                python_source = spec.source
            else:
                python_source = (self.app_dir / str(spec.path)).read_text(encoding="utf-8")
            wasm = _micropython_bytes(self.config.micropython_wasm)
        else:
            wasm = export_tables(self._wasm_bytes(spec))  # so a table at its limit can be seen
        try:
            module = self.engine.module(wasm, self.cache_dir)
        except wasmtime.WasmtimeError as e:
            raise ToolError(ErrorCode.BAD_INPUT, f"tool {spec.name!r} does not compile: {e}") from None
        wasi = spec.kind != "wasm"
        refusal: ToolError | None = None
        needs: list[tuple[str, str | None]] = []
        pre: wasmtime.InstancePre | None = None
        if spec.kind == "python":
            pre = self._linker("python").instantiate_pre(module)
        else:
            try:
                needs = check_imports(module, wasi=wasi)
            except ToolError as e:
                refusal = e
            if refusal is None and spec.kind == "wasm":
                refusal = check_exports(module, spec.export)
            if refusal is None:
                try:
                    pre = self._linker(spec.kind).instantiate_pre(module)
                except wasmtime.WasmtimeError as e:
                    refusal = ToolError(ErrorCode.CAPABILITY_DENIED, f"imports cannot be linked: {e}")
        return _Prepared(spec, limits, caps, pre, needs, refusal, python_source)

    def _linker(self, kind: str) -> wasmtime.Linker:
        linker = self._linkers.get(kind)
        if linker is None:
            if kind == "python":
                linker = micropython_linker(self.engine.engine)
            else:
                linker = edge_linker(self.engine.engine, wasi=kind == "wasi")
            self._linkers[kind] = linker
        return linker

    def _wasm_bytes(self, spec: ToolSpec) -> bytes:
        if spec.source is not None:
            text = spec.source
        else:
            path = self.app_dir / str(spec.path)
            if path.suffix != ".wat":
                return path.read_bytes()
            text = path.read_text(encoding="utf-8")
        try:
            return bytes(wasmtime.wat2wasm(text))
        except wasmtime.WasmtimeError as e:
            raise ToolError(ErrorCode.BAD_INPUT, f"tool {spec.name!r}: invalid WAT: {e}") from None


def _granted_preopens(
    declared: list[Preopen], caps: CapabilitySet, ctx: HostContext
) -> tuple[Preopen, ...]:
    """The declared preopens this call's token lets it mount, each with its granted mode."""
    mounted: list[Preopen] = []
    for p in declared:
        if p.writable and caps.allows_path("fs.write", p.guest_path):
            ctx.use(f"fs.write:{p.guest_path}")
            mounted.append(p)
        elif caps.allows_path("fs.read", p.guest_path) or caps.allows_path("fs.write", p.guest_path):
            ctx.use(f"fs.read:{p.guest_path}")
            mounted.append(p.model_copy(update={"writable": False}) if p.writable else p)
    return tuple(mounted)


def _as_principal(audit: AuditHook, principal: str | None) -> AuditHook:
    """`audit` with the calling principal named in every entry of one call."""

    def call(kind: str, fields: dict[str, Any]) -> None:
        audit(kind, {**fields, "principal": principal})

    return call


def _guarded(audit: AuditHook) -> AuditHook:
    """An audit sink failure must not turn into a tool failure (or escape into wasmtime)."""

    def call(kind: str, fields: dict[str, Any]) -> None:
        try:
            audit(kind, fields)
        except Exception:
            pass

    return call


_MICROPYTHON: dict[str, bytes] = {}


def _micropython_bytes(configured: str | None) -> bytes:
    path = str(configured or default_micropython_wasm())
    data = _MICROPYTHON.get(path)
    if data is None:
        data = Path(path).read_bytes()
        _MICROPYTHON[path] = data
    return data
