"""`run_tool_cli`, the function behind `edgeworks tool run NAME --input JSON`."""

import io
import json
import subprocess
import sys

import pytest

from sandbox import run_tool_cli

MANIFEST = """
[app]
name = "demo"

[[scripts]]
name = "app"
main = "app.py"

[[scripts.tools]]
name = "double"
kind = "python"
source = "result = input * 2"

[[scripts.tools]]
name = "read_file"
kind = "python"
source = "result = open('/data/in.txt').read()"
preopens = [{ host_path = "data", guest_path = "/data" }]

[[scripts.tools]]
name = "peek"
kind = "python"
source = "result = edge.call('kv.get', {'key': 'secret/x'})"
capabilities = ["kv.read:notes/"]
"""


@pytest.fixture
def app(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    (app / "edgeworks.toml").write_text(MANIFEST)
    (app / "app.py").write_text("")
    (app / "data").mkdir()
    (app / "data" / "in.txt").write_text("from disk")
    return app


def run(app, state, name, value):
    out = io.StringIO()
    status = run_tool_cli(app, state, name, value, out=out)
    return status, json.loads(out.getvalue())


def test_prints_the_result(app, tmp_path):
    assert run(app, tmp_path / "state", "double", "21") == (0, 42)


def test_declared_preopens_are_granted_to_the_cli_token(app, tmp_path):
    assert run(app, tmp_path / "state", "read_file", "null") == (0, "from disk")


def test_tool_errors_are_json_with_status_1(app, tmp_path):
    status, body = run(app, tmp_path / "state", "peek", "null")
    assert status == 1
    assert body["error"]["code"] == "capability_denied"


def test_unknown_tool_and_bad_input_exit_2(app, tmp_path):
    assert run(app, tmp_path / "state", "nope", "1")[0] == 2
    status, body = run(app, tmp_path / "state", "double", "{not json")
    assert status == 2 and body["error"]["code"] == "bad_input"


def test_a_fresh_process_exits_cleanly_after_a_call(app, tmp_path):
    code = (
        "import sys; from sandbox import run_tool_cli;"
        "sys.exit(run_tool_cli(sys.argv[1], sys.argv[2], 'double', '5'))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(app), str(tmp_path / "state")],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == 10
    assert "panicked" not in proc.stderr
