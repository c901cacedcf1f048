"""Core wasm guests and their JSON-in/JSON-out ABI.

A core tool module must export:

- `memory`: its linear memory;
- `alloc(len: i32) -> i32`: returns a pointer to `len` writable bytes (never 0 on success);
- `<export>(ptr: i32, len: i32) -> i64`: the tool function (`ToolSpec.export`, default `run`).

A call: the host encodes the input as UTF-8 JSON, calls `alloc(len)`, writes the bytes at the
returned pointer and calls `<export>(ptr, len)`. The result packs the output location as
`(out_ptr << 32) | out_len`; the host reads `out_len` bytes at `out_ptr` and parses them as
UTF-8 JSON, which is the tool's result. `out_len` above the call's `output_bytes` limit is an
`output_limit` error; bytes outside memory or not JSON are `bad_output`.

Each call instantiates the module afresh in its own Store (no state survives between calls).
Host functions come from the `edge` import module (`sandbox.hostlink`); no other imports.
"""

from __future__ import annotations

import json
from typing import Any

import wasmtime

from . import _fastcall
from .errors import ErrorCode, ToolError
from .guest_call import GuestCall
from .runner import MemoryProbe

__all__ = ["call_core", "check_exports", "read_json_output"]

_MASK32 = 0xFFFFFFFF


def check_exports(module: wasmtime.Module, export: str) -> ToolError | None:
    """The ABI violation in `module`'s exports, if any (checked once, when preparing)."""
    i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
    types = {e.name: e.type for e in module.exports}
    expected = {"alloc": ([i32], [i32]), export: ([i32, i32], [i64])}
    if not isinstance(types.get("memory"), wasmtime.MemoryType):
        return ToolError(ErrorCode.BAD_OUTPUT, "module does not export `memory`")
    for name, (params, results) in expected.items():
        ty = types.get(name)
        if not isinstance(ty, wasmtime.FuncType) or ty.params != params or ty.results != results:
            sig = "(i32) -> i32" if name == "alloc" else "(i32, i32) -> i64"
            return ToolError(ErrorCode.BAD_OUTPUT, f"module must export `{name}: {sig}`")
    return None


def call_core(
    store: wasmtime.Store, probe: MemoryProbe, call: GuestCall, export: str, input_bytes: bytes
) -> Any:
    # export types were checked by `check_exports` when the tool was prepared
    limits = call.limits
    instance = call.pre.instantiate(store)
    memory = _fastcall.export(store, instance, "memory")
    alloc = _fastcall.export(store, instance, "alloc")
    fn = _fastcall.export(store, instance, export)
    probe.memory = memory
    probe.instance = instance
    ptr = _fastcall.call_i32(store, alloc, len(input_bytes)) & _MASK32
    if ptr + len(input_bytes) > memory.data_len(store):
        raise ToolError(ErrorCode.BAD_OUTPUT, "alloc returned an unusable pointer")
    memory.write(store, input_bytes, ptr)
    packed = _fastcall.call_i32(store, fn, ptr, len(input_bytes))
    out_ptr = (packed >> 32) & _MASK32
    out_len = packed & _MASK32
    if out_len > limits.output_bytes:
        raise ToolError(
            ErrorCode.OUTPUT_LIMIT,
            f"output of {out_len} bytes exceeds the {limits.output_bytes}-byte limit",
            {"output_bytes": limits.output_bytes, "size": out_len},
        )
    if out_ptr + out_len > memory.data_len(store):
        raise ToolError(ErrorCode.BAD_OUTPUT, "output lies outside guest memory")
    return read_json_output(bytes(memory.read(store, out_ptr, out_ptr + out_len)))


def read_json_output(data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ToolError(ErrorCode.BAD_OUTPUT, f"output is not JSON: {e}", {"size": len(data)}) from None
    except RecursionError:  # json recurses per nesting level: a hostile guest nests 100k deep
        raise ToolError(ErrorCode.BAD_OUTPUT, "output is not JSON: nested too deeply", {"size": len(data)}) from None
