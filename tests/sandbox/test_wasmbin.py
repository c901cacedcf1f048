"""`export_tables`: every table a module defines becomes readable by the host (to tell a table
at its limit from an infinite loop), and nothing else about the module changes."""

import wasmtime

from sandbox._wasmbin import export_tables
from sandbox.spec import default_micropython_wasm

from .conftest import ALLOC


def exports(wasm: bytes) -> dict[str, str]:
    cfg = wasmtime.Config()
    cfg.wasm_exceptions = True
    module = wasmtime.Module(wasmtime.Engine(cfg), wasm)
    return {e.name: type(e.type).__name__ for e in module.exports}


def test_tables_without_an_export_get_one_and_exported_tables_keep_theirs():
    wasm = wasmtime.wat2wasm(f"""(module {ALLOC} (table 1 funcref) (table (export "mine") 2 funcref)
      (func (export "run") (param i32 i32) (result i64) (i64.const 0)))""")
    assert exports(export_tables(wasm)) == {
        "memory": "MemoryType", "alloc": "FuncType", "mine": "TableType", "run": "FuncType",
        "__edgeworks_table_0": "TableType",
    }


def test_modules_without_tables_or_exports_and_garbage_are_left_alone():
    no_table = wasmtime.wat2wasm(f"""(module {ALLOC})""")
    no_exports = wasmtime.wat2wasm("(module (table 1 funcref))")
    for wasm in (bytes(no_table), bytes(no_exports), b"", b"\0asm\x01\0\0\0\x07\xff", b"not wasm"):
        assert export_tables(wasm) == wasm


def test_a_taken_export_name_is_not_reused():
    wasm = wasmtime.wat2wasm("""(module (table 1 funcref) (memory (export "__edgeworks_table_0") 1))""")
    assert exports(export_tables(wasm)) == {"__edgeworks_table_0": "MemoryType"}


def test_the_micropython_artifact_still_compiles_with_its_table_exported():
    wasm = default_micropython_wasm().read_bytes()
    assert "__edgeworks_table_0" in exports(export_tables(wasm))
