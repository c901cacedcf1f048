"""JSON nested 30,000 levels deep, from a guest or a caller, is a tool error, never a
RecursionError escaping the sandbox."""

import io
import json

import pytest

from sandbox import run_tool_cli
from sandbox.errors import ErrorCode, ToolError
from sandbox.guest_core import read_json_output

DEEP = "[" * 30_000 + "]" * 30_000


def test_deeply_nested_guest_output_is_bad_output():
    with pytest.raises(ToolError) as e:
        read_json_output(DEEP.encode())
    assert e.value.code == ErrorCode.BAD_OUTPUT


def test_deeply_nested_cli_input_is_bad_input(tmp_path):
    out = io.StringIO()
    assert run_tool_cli(tmp_path, tmp_path / "state", "any", DEEP, out=out) == 2
    assert json.loads(out.getvalue())["error"]["code"] == "bad_input"


def test_deeply_nested_run_input_is_bad_input(make_sandbox, authority):
    from sandbox import ToolSpec

    from .conftest import ECHO_WAT

    sb = make_sandbox([ToolSpec(name="echo", kind="wasm", source=ECHO_WAT)])
    deep: list = []
    for _ in range(30_000):
        deep = [deep]
    token = authority.mint("workflow:W", [], tenant="acme", request_id="rid-1")
    with pytest.raises(ToolError) as e:
        sb.run_sync("echo", deep, token=token)
    assert e.value.code == ErrorCode.BAD_INPUT
