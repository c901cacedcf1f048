"""Direct calls of i32-argument wasm functions and single-export lookup.

wasmtime-py's `Func.__call__` queries the function's type and converts every value through
`Val` on each call (~20 us per call here), and `Instance.exports` wraps every export. The core
ABI calls two functions whose types are checked once when the tool is prepared
(`alloc: (i32) -> i32`, `<export>: (i32, i32) -> i64`), so this module calls
`wasmtime_func_call` with prebuilt ctypes values and looks exports up by name.

It uses wasmtime-py internals (`_ffi`, `_func.enter_wasm`, checked against wasmtime-py 50).
`AVAILABLE` is False when they are missing, and then both helpers use the public API.
Traps and errors surface exactly as from `Func.__call__` (through `enter_wasm`).
"""

from __future__ import annotations

import ctypes
from typing import Any

import wasmtime

__all__ = ["AVAILABLE", "call_i32", "export"]

try:
    from wasmtime import _ffi as _ffi
    from wasmtime._extern import wrap_extern as _wrap_extern
    from wasmtime._func import enter_wasm as _enter_wasm

    _I32 = _ffi.WASMTIME_I32.value
    _I64 = _ffi.WASMTIME_I64.value
    _VAL = _ffi.wasmtime_val_t
    _EXTERN = _ffi.wasmtime_extern_t
    AVAILABLE = all(
        hasattr(_ffi, name) for name in ("wasmtime_func_call", "wasmtime_instance_export_get")
    )
except (ImportError, AttributeError):  # pragma: no cover - other wasmtime-py layouts
    AVAILABLE = False


def call_i32(store: wasmtime.Store, func: wasmtime.Func, *args: int) -> int:
    """Call `func` (i32 params, one i32/i64 result) and return the result as an int."""
    if not AVAILABLE:
        return func(store, *args)
    n = len(args)
    params = (_VAL * n)()
    for i, arg in enumerate(args):
        # wasmtime-py annotates its ctypes fields with their ctypes types (c_ubyte), but ctypes
        # stores a plain int into a simple-typed field (and reads it back as an int)
        params[i].kind = _I32  # type: ignore[assignment]
        params[i].of.i32 = arg
    results = (_VAL * 1)()
    with _enter_wasm(store) as trap:
        error = _ffi.wasmtime_func_call(
            store._context(), ctypes.byref(func._func), params, n, results, 1, trap
        )
        if error:
            raise wasmtime.WasmtimeError._from_ptr(error)
    value = results[0]
    return int(value.of.i64 if value.kind == _I64 else value.of.i32)


def export(store: wasmtime.Store, instance: wasmtime.Instance, name: str) -> Any:
    """The export `name` of `instance`, or None."""
    if not AVAILABLE:
        return instance.exports(store).get(name)
    raw = name.encode()
    item = _EXTERN()
    found = _ffi.wasmtime_instance_export_get(
        store._context(), ctypes.byref(instance._instance), raw, len(raw), ctypes.byref(item)
    )
    return _wrap_extern(item) if found else None
