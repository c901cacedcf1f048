"""`GuestCall`: what one call carries to the guest — its limits, preopens, stderr cap — gets
there, whether the call is built by `Sandbox.run_sync` or by hand and run with `execute`."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import sandbox.sandbox as sandbox_module
from sandbox import (
    CapabilityAuthority,
    LimitOverrides,
    Limits,
    Preopen,
    Sandbox,
    SandboxEngine,
    ToolError,
    ToolSpec,
)
from sandbox.capabilities import CapabilitySet
from sandbox.guest_call import GuestCall
from sandbox.guest_core import call_core
from sandbox.guest_wasi import call_wasi
from sandbox.host import HostContext
from sandbox.runner import CallStats, GuestBody, execute
from sandbox.types import noop_audit

from .conftest import ALLOC, ECHO_WAT
from .test_wasi_guest import FAIL, WRITER

LOOP = f"""(module {ALLOC}
  (func (export "run") (param i32 i32) (result i64) (loop $l (br $l)) (i64.const 0)))"""
DATA = Preopen(host_path="data", guest_path="/data", writable=True)


@pytest.fixture
def sb(make_sandbox: Callable[..., Sandbox], tmp_path: Path) -> Sandbox:
    (tmp_path / "app" / "data").mkdir(parents=True)
    return make_sandbox([
        ToolSpec(name="echo", kind="wasm", source=ECHO_WAT),
        ToolSpec(name="loop", kind="wasm", source=LOOP),
        ToolSpec(name="fail", kind="wasi", source=FAIL),
        ToolSpec(name="writer", kind="wasi", source=WRITER, preopens=[DATA],
                 limits=LimitOverrides(fuel=7_000_000, output_bytes=4096)),
    ])


def guest_call(sb: Sandbox, tool: str, limits: Limits, **fields: Any) -> GuestCall:
    """A call of `tool` built by hand, with `limits`; `fields` override the GuestCall's own."""
    prepared = sb._prepare(tool)
    assert prepared.pre is not None
    ctx = HostContext(
        tool=tool, request_id="r-1", tenant=None, jti="j-1", issuer="test",
        token_caps=CapabilitySet([]), tool_caps=prepared.caps, limits=limits, config=sb.config,
        kv=sb.kv, audit=noop_audit, clock=time.time,
        deadline=time.monotonic() + limits.wall_ms / 1000,
    )
    built: dict[str, Any] = {
        "pre": prepared.pre, "ctx": ctx, "preopens": (), "app_dir": sb.app_dir,
        "tmp_dir": sb.tmp_dir, "stderr_bytes": sb.config.stderr_bytes,
    }
    return GuestCall(**{**built, **fields})


def core(call: GuestCall, value: Any) -> GuestBody[Any]:
    data = json.dumps(value).encode()
    return lambda store, probe: call_core(store, probe, call, "run", data)


def wasi(call: GuestCall, data: bytes = b"") -> GuestBody[Any]:
    return lambda store, probe: call_wasi(store, probe, call, ["tool"], data)


def test_a_guest_call_is_frozen_and_its_limits_are_its_contexts(sb: Sandbox) -> None:
    limits = Limits(fuel=1_234_567)
    call = guest_call(sb, "echo", limits)
    assert call.limits is call.ctx.limits is limits
    field = "stderr_bytes"
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(call, field, 1)
    assert not hasattr(call, "__dict__")  # slots


def test_the_calls_fuel_limit_stops_the_guest(sb: Sandbox, engine: SandboxEngine) -> None:
    call = guest_call(sb, "loop", Limits(fuel=1_000_000))
    stats = CallStats()
    with pytest.raises(ToolError) as raised:
        execute(engine, call, core(call, {}), stats)
    assert (raised.value.code, raised.value.details) == ("out_of_fuel", {"fuel": 1_000_000})
    assert stats.fuel_used == 1_000_000


def test_the_calls_output_limit_reaches_the_guest_abi(sb: Sandbox, engine: SandboxEngine) -> None:
    value = {"text": "x" * 100}
    stats = CallStats()
    roomy = guest_call(sb, "echo", Limits(output_bytes=1000))
    assert execute(engine, roomy, core(roomy, value), stats) == value
    assert 0 < stats.fuel_used < roomy.limits.fuel

    tight = guest_call(sb, "echo", Limits(output_bytes=50))
    with pytest.raises(ToolError) as raised:
        execute(engine, tight, core(tight, value), CallStats())
    assert raised.value.code == "output_limit"
    assert raised.value.details["output_bytes"] == 50


def test_the_calls_preopens_are_what_the_guest_sees(
    sb: Sandbox, engine: SandboxEngine, tmp_path: Path
) -> None:
    mounted = guest_call(sb, "writer", Limits(), preopens=(DATA,))
    assert execute(engine, mounted, wasi(mounted), CallStats()) == {"ok": True}
    assert (tmp_path / "app" / "data" / "out.txt").read_text() == "hi"

    bare = guest_call(sb, "writer", Limits())
    assert execute(engine, bare, wasi(bare), CallStats()) == {"ok": False}


def test_the_calls_stderr_cap_keeps_the_tail(sb: Sandbox, engine: SandboxEngine) -> None:
    call = guest_call(sb, "fail", Limits(), stderr_bytes=2)
    with pytest.raises(ToolError) as raised:
        execute(engine, call, wasi(call), CallStats())
    assert raised.value.code == "guest_error"
    assert raised.value.details == {"status": 3, "stderr": "om"}  # the last 2 bytes of "boom"


def test_run_builds_the_call_from_the_tool_and_the_token(
    sb: Sandbox, authority: CapabilityAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[GuestCall] = []
    real_execute = sandbox_module.execute

    def spy(engine: SandboxEngine, call: GuestCall, body: GuestBody[Any], stats: CallStats) -> Any:
        seen.append(call)
        return real_execute(engine, call, body, stats)

    monkeypatch.setattr(sandbox_module, "execute", spy)
    token = authority.mint("test", ["fs.read:/data"], tenant="t1")
    assert sb.run_sync("writer", {}, token=token, request_id="r-9") == {"ok": False}  # read-only

    (call,) = seen
    assert call.limits == sb.config.limits.merged(LimitOverrides(fuel=7_000_000, output_bytes=4096))
    assert (call.limits.fuel, call.limits.output_bytes) == (7_000_000, 4096)
    assert call.preopens == (DATA.model_copy(update={"writable": False}),)
    assert (call.ctx.tool, call.ctx.request_id, call.ctx.tenant) == ("writer", "r-9", "t1")
    assert (call.app_dir, call.tmp_dir, call.stderr_bytes) == \
        (sb.app_dir, sb.tmp_dir, sb.config.stderr_bytes)
