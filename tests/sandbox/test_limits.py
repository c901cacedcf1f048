"""Hostile guests: each limit ends the call with its own error code, and the sandbox keeps
serving normal calls afterwards."""

import pytest

from sandbox import LimitOverrides, ToolError, ToolSpec

from .conftest import ALLOC, ECHO_WAT, edge_call_wat, pack

LOOP = f"""(module {ALLOC}
  (func (export "run") (param i32 i32) (result i64) (loop $l (br $l)) (i64.const 0)))"""
MEMORY_BOMB = f"""(module {ALLOC}
  (func (export "run") (param i32 i32) (result i64)
    (loop $l (drop (memory.grow (i32.const 1))) (br $l)) (i64.const 0)))"""
RECURSE = f"""(module {ALLOC}
  (func $f (export "run") (param i32 i32) (result i64)
    (call $f (i32.add (local.get 0) (i32.const 1)) (local.get 1))))"""
HUGE_OUTPUT = f"""(module {ALLOC}
  (func (export "run") (param i32 i32) (result i64)
    (drop (memory.grow (i32.const 32)))
    {pack("(i32.const 0)", "(i32.const 2097152)")}))"""
UNREACHABLE = f"""(module {ALLOC} (func (export "run") (param i32 i32) (result i64) unreachable))"""
DIVIDE_BY_ZERO = f"""(module {ALLOC} (func (export "run") (param i32 i32) (result i64)
    (i64.extend_i32_u (i32.div_u (i32.const 1) (i32.sub (local.get 1) (local.get 1))))))"""
OUT_OF_BOUNDS_LOAD = f"""(module {ALLOC} (func (export "run") (param i32 i32) (result i64)
    (i64.load (i32.const -8))))"""
# Tables grown until table.grow fails, which (like memory.grow) only returns -1: one private
# table, one exported table.
TABLE_BOMB = f"""(module {ALLOC} (table $t 1 funcref)
  (func (export "run") (param i32 i32) (result i64)
    (loop $l (drop (table.grow $t (ref.null func) (i32.const 100))) (br $l)) (i64.const 0)))"""
EXPORTED_TABLE_BOMB = TABLE_BOMB.replace("(table $t 1 funcref)", '(table $t (export "t") 1 funcref)')
BIG_INITIAL_TABLE = f"""(module {ALLOC} (table 100000 funcref)
  (func (export "run") (param i32 i32) (result i64) (i64.const 0)))"""
BIG_INITIAL_MEMORY = """(module (memory (export "memory") 100)
  (func (export "alloc") (param i32) (result i32) (i32.const 8))
  (func (export "run") (param i32 i32) (result i64) (i64.const 0)))"""
GARBAGE_OUTPUT = f"""(module {ALLOC}
  (data (i32.const 0) "not json")
  (func (export "run") (param i32 i32) (result i64) {pack("(i32.const 0)", "(i32.const 8)")}))"""
OUT_OF_BOUNDS_OUTPUT = f"""(module {ALLOC}
  (func (export "run") (param i32 i32) (result i64) {pack("(i32.const 65000)", "(i32.const 1000)")}))"""


def tool(name, wat, **limits):
    return ToolSpec(
        name=name, kind="wasm", source=wat, limits=LimitOverrides(**limits) if limits else None,
        capabilities=["log"],
    )


@pytest.fixture
def hostile(make_sandbox):
    return make_sandbox(
        [
            tool("echo", ECHO_WAT),
            tool("loop", LOOP, fuel=2_000_000),
            tool("slow_loop", LOOP, fuel=10**15, wall_ms=50),
            tool("memory_bomb", MEMORY_BOMB, memory_bytes=4 * 1024 * 1024, fuel=5_000_000),
            tool("recurse", RECURSE, fuel=10**12),
            tool("huge_output", HUGE_OUTPUT, output_bytes=1024 * 1024),
            tool("flood", edge_call_wat("log", '{"message":"x"}', repeat=1000), host_calls=10),
            tool("unreachable", UNREACHABLE),
            tool("divide_by_zero", DIVIDE_BY_ZERO),
            tool("oob_load", OUT_OF_BOUNDS_LOAD),
            tool("table_bomb", TABLE_BOMB, fuel=50_000_000),
            tool("exported_table_bomb", EXPORTED_TABLE_BOMB, fuel=50_000_000),
            tool("big_table", BIG_INITIAL_TABLE),
            tool("big_memory", BIG_INITIAL_MEMORY, memory_bytes=1024 * 1024),
            tool("garbage", GARBAGE_OUTPUT),
            tool("out_of_bounds", OUT_OF_BOUNDS_OUTPUT),
        ]
    )


@pytest.fixture
def token(authority):
    return authority.mint("script:app", ["log"], tenant="t1")


def code_of(sandbox, name, token, value=None):
    with pytest.raises(ToolError) as info:
        sandbox.run_sync(name, value if value is not None else {}, token=token)
    return info.value


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("loop", "out_of_fuel"),
        ("slow_loop", "timeout"),
        ("memory_bomb", "memory_limit"),
        ("recurse", "stack_overflow"),
        ("huge_output", "output_limit"),
        ("flood", "host_call_limit"),
        ("unreachable", "trap"),
        ("big_memory", "memory_limit"),
        ("table_bomb", "table_limit"),
        ("exported_table_bomb", "table_limit"),
        ("big_table", "table_limit"),
        ("garbage", "bad_output"),
        ("out_of_bounds", "bad_output"),
    ],
)
def test_each_limit_has_its_own_code_and_the_sandbox_keeps_serving(hostile, token, name, code):
    err = code_of(hostile, name, token)
    assert err.code == code, err
    assert hostile.run_sync("echo", {"still": "serving"}, token=token) == {"still": "serving"}


def test_trap_reports_trap_code(hostile, token):
    err = code_of(hostile, "unreachable", token)
    assert err.details["trap_code"] == "UNREACHABLE"


@pytest.mark.parametrize(
    ("name", "kind", "trap_code"),
    [
        ("unreachable", "wasm `unreachable` instruction executed", "UNREACHABLE"),
        ("divide_by_zero", "integer divide by zero", "INTEGER_DIVISION_BY_ZERO"),
        ("oob_load", "out of bounds memory access", "MEMORY_OUT_OF_BOUNDS"),
        ("recurse", "call stack exhausted", "STACK_OVERFLOW"),
    ],
)
def test_a_trap_names_its_kind_not_the_backtrace_header(hostile, token, name, kind, trap_code):
    err = code_of(hostile, name, token)
    assert err.message == f"wasm trap: {kind}"
    assert err.details["trap_code"] == trap_code


def test_a_table_bomb_is_not_reported_as_an_infinite_loop(hostile, token, audit_log):
    err = code_of(hostile, "table_bomb", token)
    assert err.code == "table_limit" and err.details["table_elements"] == 20_000
    assert "20000-element limit" in err.message
    assert code_of(hostile, "loop", token).code == "out_of_fuel"  # a plain loop still is one


def test_host_call_flood_is_cut_at_the_limit(hostile, token, audit_log):
    code_of(hostile, "flood", token)
    call = [f for k, f in audit_log if k == "sandbox.call"][-1]
    assert call["outcome"] == "host_call_limit"
    assert call["host_calls"] == 11  # the eleventh call is refused and stops the guest
    assert len([k for k, f in audit_log if k == "sandbox.log"]) == 10


def test_all_hostile_calls_in_a_row_then_a_normal_call(hostile, token, audit_log):
    for name in ["loop", "slow_loop", "memory_bomb", "recurse", "huge_output", "flood"]:
        code_of(hostile, name, token)
    assert hostile.run_sync("echo", [1, 2, 3], token=token) == [1, 2, 3]
    outcomes = [f["outcome"] for k, f in audit_log if k == "sandbox.call"]
    assert outcomes == [
        "out_of_fuel", "timeout", "memory_limit", "stack_overflow", "output_limit",
        "host_call_limit", "ok",
    ]


def test_fuel_consumed_is_audited(hostile, token, audit_log):
    code_of(hostile, "loop", token)
    call = [f for k, f in audit_log if k == "sandbox.call"][-1]
    assert call["fuel"] == 2_000_000


def test_bad_input_is_refused_before_the_guest_runs(hostile, token, audit_log):
    assert code_of(hostile, "echo", token, value={"x": float("nan")}).code == "bad_input"
    assert code_of(hostile, "echo", token, value={"x": object()}).code == "bad_input"
    assert code_of(hostile, "echo", token, value="\ud800").code == "bad_input"


WRONG_SIGNATURE = f"""(module {ALLOC} (func (export "run") (param i32) (result i32) (i32.const 0)))"""
NO_ALLOC = """(module (memory (export "memory") 1)
  (func (export "run") (param i32 i32) (result i64) (i64.const 0)))"""


@pytest.mark.parametrize("wat", [WRONG_SIGNATURE, NO_ALLOC])
def test_abi_violations_in_exports_are_bad_output(make_sandbox, token, wat):
    sb = make_sandbox([tool("t", wat)])
    assert code_of(sb, "t", token).code == "bad_output"


def test_public_api_fallback_behaves_the_same(hostile, token, monkeypatch):
    from sandbox import _fastcall

    monkeypatch.setattr(_fastcall, "AVAILABLE", False)
    assert hostile.run_sync("echo", {"x": 1}, token=token) == {"x": 1}
    assert code_of(hostile, "loop", token).code == "out_of_fuel"
    assert code_of(hostile, "unreachable", token).details["trap_code"] == "UNREACHABLE"
