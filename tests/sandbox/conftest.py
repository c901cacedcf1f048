from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sandbox import CapabilityAuthority, Sandbox, SandboxConfig, SandboxEngine, ToolSpec

# A bump allocator shared by the core-wasm fixtures: alloc(n) returns fresh memory, growing
# linear memory as needed (and trapping with `unreachable` when it cannot grow).
ALLOC = """
  (memory (export "memory") 1)
  (global $bump (mut i32) (i32.const 1024))
  (func $alloc (export "alloc") (param $n i32) (result i32)
    (local $p i32)
    global.get $bump local.set $p
    global.get $bump local.get $n i32.add global.set $bump
    (block $ok
      (loop $grow
        (br_if $ok (i32.le_u (global.get $bump) (i32.mul (memory.size) (i32.const 65536))))
        (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then unreachable))
        (br $grow)))
    local.get $p)
"""


def pack(ptr: str, length: str) -> str:
    return (
        f"(i64.or (i64.shl (i64.extend_i32_u {ptr}) (i64.const 32)) (i64.extend_i32_u {length}))"
    )


ECHO_WAT = f"""
(module {ALLOC}
  (func (export "run") (param $p i32) (param $n i32) (result i64)
    {pack("(local.get $p)", "(local.get $n)")}))
"""


def edge_call_wat(name: str, payload: str, repeat: int = 1) -> str:
    """A tool that calls edge.call(name, payload) `repeat` times and returns the last answer."""
    data = wat_escape(name + payload)
    name_len, payload_len = len(name.encode()), len(payload.encode())
    return f"""
(module
  (import "edge" "call" (func $call (param i32 i32 i32 i32) (result i64)))
  {ALLOC}
  (data (i32.const 16) "{data}")
  (func (export "run") (param $p i32) (param $n i32) (result i64)
    (local $r i64) (local $i i32)
    (loop $again
      (local.set $r (call $call (i32.const 16) (i32.const {name_len})
                                (i32.const {16 + name_len}) (i32.const {payload_len})))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $again (i32.lt_u (local.get $i) (i32.const {repeat}))))
    local.get $r))
"""


def wat_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


@pytest.fixture
def audit_log() -> list[tuple[str, dict[str, Any]]]:
    return []


@pytest.fixture
def authority(tmp_path: Path) -> CapabilityAuthority:
    return CapabilityAuthority(tmp_path / "state")


@pytest.fixture(scope="session")
def engine() -> SandboxEngine:
    eng = SandboxEngine(workers=4)
    yield eng
    eng.close()


@pytest.fixture
def make_sandbox(
    tmp_path: Path,
    authority: CapabilityAuthority,
    audit_log: list[tuple[str, dict[str, Any]]],
    engine: SandboxEngine,
) -> Callable[..., Sandbox]:
    app = tmp_path / "app"
    app.mkdir(exist_ok=True)

    def make(tools: list[ToolSpec], config: SandboxConfig | None = None, **kw: Any) -> Sandbox:
        kw.setdefault("engine", engine)
        return Sandbox(
            tmp_path / "state",
            app,
            tools,
            authority,
            config=config,
            audit=lambda kind, fields: audit_log.append((kind, fields)),
            **kw,
        )

    return make
