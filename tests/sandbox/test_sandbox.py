"""Sandbox calls end to end: tokens, audit, revocation, concurrency, declarations."""

import asyncio

import pytest

from sandbox import CapabilityAuthority, LimitOverrides, Sandbox, ToolError, ToolSpec

from .conftest import ECHO_WAT

KV_SNIPPET = "result = edge.call('kv.get', {'key': input})"


@pytest.fixture
def sb(make_sandbox):
    return make_sandbox([
        ToolSpec(name="echo", kind="wasm", source=ECHO_WAT),
        ToolSpec(name="sum", kind="python", source="result = sum(range(input))"),
        ToolSpec(name="kv", kind="python", source=KV_SNIPPET, capabilities=["kv.read:notes/"]),
        ToolSpec(name="slow", kind="python", source="while True:\n    pass",
                 limits=LimitOverrides(fuel=10**15, wall_ms=300)),
    ])


def calls(audit_log):
    return [f for k, f in audit_log if k == "sandbox.call"]


def test_audit_entry_has_every_field(sb, authority, audit_log):
    token = authority.mint("workflow:Refund", ["kv.read:notes/"], tenant="acme", request_id="rid-1")
    assert sb.run_sync("kv", "notes/a", token=token) is None
    entry = calls(audit_log)[-1]
    assert entry["request_id"] == "rid-1"  # from the token when the call names none
    assert entry["tool"] == "kv"
    assert entry["jti"] == authority.verify(token).jti
    assert entry["issuer"] == "workflow:Refund"
    assert entry["tenant"] == "acme"
    assert entry["caps_used"] == ["kv.read:notes/a"]
    assert entry["caps_denied"] == []
    assert entry["fuel"] > 0
    assert entry["wall_ms"] > 0
    assert entry["outcome"] == "ok"


def test_explicit_request_id_wins(sb, authority, audit_log):
    sb.run_sync("echo", 1, token=authority.mint("a", [], request_id="from-token"), request_id="given")
    assert calls(audit_log)[-1]["request_id"] == "given"


def test_unknown_tool(sb, authority, audit_log):
    with pytest.raises(ToolError) as info:
        sb.run_sync("nope", {}, token=authority.mint("a", []))
    assert info.value.code == "unknown_tool"
    assert calls(audit_log)[-1]["outcome"] == "unknown_tool"


def test_invalid_token_is_refused_and_audited(sb, audit_log):
    with pytest.raises(ToolError) as info:
        sb.run_sync("echo", {}, token="not-a-token")
    assert info.value.code == "invalid_token"
    assert info.value.details["reason"] == "malformed"
    assert calls(audit_log)[-1]["outcome"] == "invalid_token"
    assert [f["reason"] for k, f in audit_log if k == "sandbox.denied"] == ["malformed"]


@pytest.mark.parametrize("token", [["a", "b"], {"jwt": "x"}, 42, None, b"x.y.z"])
def test_a_token_that_is_not_a_string_is_an_invalid_token(sb, audit_log, token):
    with pytest.raises(ToolError) as info:
        sb.run_sync("echo", {}, token=token)
    assert info.value.code == "invalid_token" and info.value.details["reason"] == "malformed"
    assert calls(audit_log)[-1]["outcome"] == "invalid_token"


def test_a_token_is_honoured_only_in_calls_of_its_own_tenant(sb, authority, audit_log):
    token = authority.mint("script:app", ["kv.read:notes/"], tenant="acme")
    assert sb.run_sync("kv", "notes/a", token=token, tenant="acme") is None
    for caller in ("globex", None):
        with pytest.raises(ToolError) as info:
            sb.run_sync("kv", "notes/a", token=token, tenant=caller)
        assert info.value.code == "invalid_token" and info.value.details["reason"] == "wrong_tenant"
        assert calls(audit_log)[-1] | {"tenant": caller, "token_tenant": "acme"} == calls(audit_log)[-1]
    untenanted = authority.mint("script:app", [])
    with pytest.raises(ToolError, match="another tenant"):
        sb.run_sync("echo", {}, token=untenanted, tenant="acme")
    assert sb.run_sync("echo", {}, token=untenanted, tenant=None) == {}
    attenuated = authority.attenuate(token, ["kv.read:notes/a"])
    assert authority.verify(attenuated).tenant == "acme"  # attenuation keeps the tenant
    with pytest.raises(ToolError, match="another tenant"):
        sb.run_sync("kv", "notes/a", token=attenuated, tenant="globex")
    denied = [f for k, f in audit_log if k == "sandbox.denied"]
    assert [f["reason"] for f in denied] == ["wrong_tenant"] * 4
    assert denied[0]["tenant"] == "globex" and denied[0]["token_tenant"] == "acme"


def test_revocation_between_two_calls(sb, authority):
    token = authority.mint("a", [])
    assert sb.run_sync("echo", 1, token=token) == 1
    authority.revoke(authority.verify(token).jti)
    with pytest.raises(ToolError) as info:
        sb.run_sync("echo", 1, token=token)
    assert info.value.details["reason"] == "revoked"


def test_revocation_reaches_another_sandbox_sharing_the_state_dir(tmp_path, sb, authority, engine):
    other_authority = CapabilityAuthority(tmp_path / "state")
    other = Sandbox(tmp_path / "state", tmp_path / "app", [ToolSpec(name="echo", kind="wasm", source=ECHO_WAT)],
                    other_authority, engine=engine)
    token = authority.mint("a", [])
    assert other.run_sync("echo", 2, token=token) == 2
    assert sb.run_sync("echo", 2, token=token) == 2
    other_authority.revoke(other_authority.verify(token).jti)
    for sandbox in (sb, other):
        with pytest.raises(ToolError) as info:
            sandbox.run_sync("echo", 2, token=token)
        assert info.value.details["reason"] == "revoked"


def test_attenuated_token_narrows_what_a_call_may_do(sb, authority, audit_log):
    parent = authority.mint("a", ["kv.read:notes/"], tenant="t")
    child = authority.attenuate(parent, caps=["kv.read:notes/public/"])
    assert sb.run_sync("kv", "notes/public/x", token=child) is None
    with pytest.raises(ToolError) as info:
        sb.run_sync("kv", "notes/private/x", token=child)
    assert info.value.code == "capability_denied"
    assert sb.run_sync("kv", "notes/private/x", token=parent) is None


async def test_many_concurrent_calls(sb, authority):
    token = authority.mint("a", [])
    tasks = [sb.run("sum", n, token=token) if n % 2 else sb.run("echo", {"n": n}, token=token)
             for n in range(40)]
    results = await asyncio.gather(*tasks)
    assert results == [sum(range(n)) if n % 2 else {"n": n} for n in range(40)]


async def test_a_long_call_does_not_block_the_event_loop(sb, authority):
    token = authority.mint("a", [])
    slow = asyncio.create_task(sb.run("slow", None, token=token))
    turns = 0
    while not slow.done():
        await asyncio.sleep(0.005)
        turns += 1
    with pytest.raises(ToolError) as info:
        await slow
    assert info.value.code == "timeout"
    assert turns > 1  # the loop kept running other coroutines while the guest spun
    assert await sb.run("echo", "after", token=token) == "after"


def test_tools_from_files_in_the_app_dir(make_sandbox, authority, tmp_path):
    app = tmp_path / "app"
    app.mkdir(exist_ok=True)
    (app / "echo.wat").write_text(ECHO_WAT)
    (app / "double.py").write_text("result = input * 2\n")
    sb = make_sandbox([
        ToolSpec(name="echo", kind="wasm", path="echo.wat"),
        ToolSpec(name="double", kind="python", path="double.py"),
    ])
    token = authority.mint("a", [])
    assert sb.run_sync("echo", [1], token=token) == [1]
    assert sb.run_sync("double", 21, token=token) == 42


def test_declaration_errors_are_reported_together(make_sandbox):
    with pytest.raises(ValueError) as info:
        make_sandbox([
            ToolSpec(name="a", kind="wasm", path="missing.wasm"),
            ToolSpec(name="a", kind="wasm", source=ECHO_WAT),
        ])
    text = str(info.value)
    assert "missing.wasm" in text and "duplicate tool name" in text


def test_tool_spec_validation():
    with pytest.raises(ValueError):
        ToolSpec(name="x", kind="wasm")  # neither path nor source
    with pytest.raises(ValueError):
        ToolSpec(name="x", kind="wasm", source="(module)", capabilities=["root"])


def test_invalid_wat_is_bad_input(make_sandbox, authority):
    sb = make_sandbox([ToolSpec(name="bad", kind="wasm", source="(module (func")])
    with pytest.raises(ToolError) as info:
        sb.run_sync("bad", {}, token=authority.mint("a", []))
    assert info.value.code == "bad_input"


def test_a_failing_audit_sink_does_not_fail_the_call(tmp_path, authority, engine):
    def broken(kind, fields):
        raise RuntimeError("sink down")

    sb = Sandbox(tmp_path / "state", tmp_path, [
        ToolSpec(name="kv", kind="python", source=KV_SNIPPET, capabilities=["kv.read:notes/"]),
    ], authority, audit=broken, engine=engine)
    token = authority.mint("a", ["kv.read:notes/"])
    assert sb.run_sync("kv", "notes/x", token=token) is None
    with pytest.raises(ToolError) as info:  # the denial path audits too
        sb.run_sync("kv", "other/x", token=token)
    assert info.value.code == "capability_denied"
