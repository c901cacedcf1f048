"""One guest call on one fresh Store: limits, deadline, host context and error mapping.

`execute(engine, call, body, stats)` runs on a thread whose stack holds the engine's wasm
stack limit plus a host margin (the calling thread if it qualifies, else a thread of the
engine's pool, waited for: see `sandbox.engine`), builds a `wasmtime.Store`, applies the call's
limits (fuel, memory, tables, instances), binds the call's host context to this thread, opens an
epoch-ticker window, sets the wall-clock deadline, runs `body(store, probe)` and maps whatever
went wrong to a `ToolError`. The store is created, used and dropped on that one thread.

Mapping, first match wins:
1. a violation the host recorded (`ctx.abort`: host-call or output limit);
2. trap `INTERRUPT` -> `timeout`; trap `STACK_OVERFLOW` -> `stack_overflow`;
3. any other trap, or running out of fuel, while the guest's linear memory was within
   max(one 64 KiB page, 1/8 of `memory_bytes`) of `memory_bytes` -> `memory_limit` (a
   failed `memory.grow` only returns -1 and wasmtime-py exposes no hook to observe it, so a
   guest that hits the cap typically ends in a trap or spins until fuel runs out; the
   memory it holds at that point is the evidence);
   instantiation refused because initial memory exceeds the cap -> `memory_limit`;
4. the same for tables: one of the instance's tables within max(1, 1/8 of `table_elements`)
   of `table_elements` (a failed `table.grow` returns -1 too; `sandbox._wasmbin` exports every
   table so it can be read), or instantiation refused for a table's size -> `table_limit`;
5. trap `OUT_OF_FUEL` -> `out_of_fuel`; any other trap -> `trap`, its message naming the trap
   kind as wasmtime words it ("wasm trap: integer divide by zero"), `details.trap_code` the
   `wasmtime.TrapCode` name. A stack overflow says "wasm trap: call stack exhausted".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import wasmtime

from .engine import SandboxEngine
from .errors import ErrorCode, ToolError
from .guest_call import GuestCall
from .host import HostContext
from .hostlink import bind_context
from .limits import Limits

__all__ = ["CallStats", "GuestBody", "MemoryProbe", "execute"]

PAGE = 64 * 1024
T = TypeVar("T")


class CallStats:
    __slots__ = ("fuel_used", "wall_ms")

    def __init__(self) -> None:
        self.fuel_used = 0
        self.wall_ms = 0.0


class MemoryProbe:
    """Lets the body say which memory and which instance (its exported tables) to inspect when
    classifying a failure."""

    __slots__ = ("memory", "instance")

    def __init__(self) -> None:
        self.memory: wasmtime.Memory | None = None
        self.instance: wasmtime.Instance | None = None


# What runs the guest in its fresh Store: one of the guest ABIs, bound to its GuestCall.
GuestBody = Callable[[wasmtime.Store, MemoryProbe], T]


def execute(engine: SandboxEngine, call: GuestCall, body: GuestBody[T], stats: CallStats) -> T:
    if not engine.runs_guests_here():
        def run_on_pool_thread() -> T:
            return execute(engine, call, body, stats)

        return engine.executor.submit(run_on_pool_thread).result()
    limits, ctx = call.limits, call.ctx
    store = wasmtime.Store(engine.engine)  # closed in `finally`: see module docstring
    store.set_limits(
        memory_size=limits.memory_bytes,
        table_elements=limits.table_elements,
        instances=limits.instances,
        tables=limits.instances * 4,
        memories=limits.instances,
    )
    store.set_fuel(limits.fuel)
    probe = MemoryProbe()
    started = time.perf_counter()
    try:
        with bind_context(ctx), engine.ticker.running():
            store.set_epoch_deadline(engine.ticker.deadline_ticks(limits.wall_ms))
            result = body(store, probe)
        if ctx.abort is not None:
            raise ctx.abort
        return result
    except ToolError:
        raise
    except wasmtime.Trap as e:
        raise _classify_trap(e, ctx, limits, store, probe, engine.max_wasm_stack) from None
    except wasmtime.WasmtimeError as e:
        raise _classify_error(e, ctx, limits, store, probe) from None
    finally:
        stats.wall_ms = (time.perf_counter() - started) * 1000
        try:
            stats.fuel_used = limits.fuel - store.get_fuel()
        except wasmtime.WasmtimeError:
            stats.fuel_used = limits.fuel
        # Drop the store here, on its own thread: left to the garbage collector (or to
        # interpreter exit) its WASI output callbacks are finalized from a wasmtime runtime
        # thread that cannot enter Python, which aborts the process.
        store.close()


def _memory_at_cap(store: wasmtime.Store, probe: MemoryProbe, limits: Limits) -> bool:
    if probe.memory is None:
        return False
    try:
        headroom = max(PAGE, limits.memory_bytes // 8)
        return probe.memory.data_len(store) + headroom > limits.memory_bytes
    except wasmtime.WasmtimeError:
        return False


def _table_at_cap(store: wasmtime.Store, probe: MemoryProbe, limits: Limits) -> bool:
    """Whether one of the instance's tables is within 1/8 of `table_elements` (every table is
    exported, see `sandbox._wasmbin`): a refused `table.grow` leaves no other trace."""
    if probe.instance is None:
        return False
    try:
        headroom = max(1, limits.table_elements // 8)
        tables = [x for x in probe.instance.exports(store).by_index if isinstance(x, wasmtime.Table)]
        return any(t.size(store) + headroom > limits.table_elements for t in tables)
    except wasmtime.WasmtimeError:
        return False


def _classify_trap(
    e: wasmtime.Trap, ctx: HostContext, limits: Limits, store: wasmtime.Store, probe: MemoryProbe,
    max_wasm_stack: int,
) -> ToolError:
    if ctx.abort is not None:
        return ctx.abort
    code = e.trap_code
    name = code.name if code else None
    if code == wasmtime.TrapCode.INTERRUPT:
        return ToolError(ErrorCode.TIMEOUT, f"wall-clock limit of {limits.wall_ms} ms exceeded",
                         {"wall_ms": limits.wall_ms})
    if code == wasmtime.TrapCode.STACK_OVERFLOW:
        return ToolError(ErrorCode.STACK_OVERFLOW, f"wasm trap: {_trap_kind(e)}",
                         {"trap_code": name, "max_wasm_stack": max_wasm_stack})
    if _memory_at_cap(store, probe, limits):
        return ToolError(
            ErrorCode.MEMORY_LIMIT,
            f"guest ran out of memory at the {limits.memory_bytes}-byte limit",
            {"memory_bytes": limits.memory_bytes, "trap_code": name},
        )
    if _table_at_cap(store, probe, limits):
        return ToolError(
            ErrorCode.TABLE_LIMIT,
            f"guest ran out of table space at the {limits.table_elements}-element limit",
            {"table_elements": limits.table_elements, "trap_code": name},
        )
    if code == wasmtime.TrapCode.OUT_OF_FUEL:
        return ToolError(ErrorCode.OUT_OF_FUEL, f"fuel limit of {limits.fuel} exhausted",
                         {"fuel": limits.fuel})
    kind = _trap_kind(e)
    return ToolError(ErrorCode.TRAP, f"wasm trap: {kind}",
                     {"trap_code": name, "trap": kind, "message": e.message})


def _trap_kind(e: wasmtime.Trap) -> str:
    """What the trap was, as wasmtime words it ("integer divide by zero", "out of bounds memory
    access", "call stack exhausted"...): the `wasm trap:` line of its message, which otherwise
    starts with a backtrace header; the trap code's name if that line is missing."""
    for line in e.message.splitlines():
        _, found, kind = line.partition("wasm trap: ")
        if found and kind.strip():
            return kind.strip()
    code = e.trap_code
    return code.name.lower().replace("_", " ") if code else _first_line(e.message)


def _classify_error(
    e: wasmtime.WasmtimeError, ctx: HostContext, limits: Limits, store: wasmtime.Store,
    probe: MemoryProbe,
) -> ToolError:
    if ctx.abort is not None:
        return ctx.abort
    text = str(e)
    lowered = text.lower()
    if "memory" in lowered and ("limit" in lowered or "exceed" in lowered or "minimum" in lowered):
        return ToolError(ErrorCode.MEMORY_LIMIT, _first_line(text),
                         {"memory_bytes": limits.memory_bytes})
    if "table" in lowered and ("limit" in lowered or "exceed" in lowered or "minimum" in lowered):
        return ToolError(ErrorCode.TABLE_LIMIT, _first_line(text),
                         {"table_elements": limits.table_elements})
    return ToolError(ErrorCode.TRAP, _summary(text), {"message": text})


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "trap"


def _summary(text: str) -> str:
    """The cause of a wasmtime error, not its "error while executing at wasm backtrace:" header:
    the last line under "Caused by:" (numbered causes lose their "N: "), else the first line."""
    lines = [ln.strip() for ln in text.strip().splitlines()]
    if "Caused by:" not in lines:
        return _first_line(text)
    causes = [ln for ln in lines[lines.index("Caused by:") + 1 :] if ln]
    if not causes:
        return _first_line(text)
    number, sep, rest = causes[-1].partition(": ")
    return rest if sep and number.isdigit() else causes[-1]


