"""Sandbox tools through the runtime: env.TOOLS in a handler, denial, the kill switch, audit
entries keyed by request id, hostile tools contained, and `edgeworks tool run`."""

import json

import pytest

from runtime.audit import query
from runtime.killswitch import KillSwitch
from tests.support import Server, copy_example, run_cli, wait_until, write_app

MANIFEST = """
[[scripts]]
name = "app"
main = "app.py"
routes = ["/run/{tool}"]

[[scripts.tools]]
name = "sum"
kind = "python"
source = "result = sum(range(input['n']))"

[[scripts.tools]]
name = "spin"
kind = "python"
source = "while True:\\n    pass"
limits = { fuel = 2000000 }

[[scripts.tools]]
name = "writer"
kind = "python"
source = "edge.call('kv.put', {'key': 'notes/a', 'value': input})\\nresult = edge.call('kv.get', {'key': 'notes/a'})"
capabilities = ["kv.write:notes/", "kv.read:notes/"]
"""

APP = '''
import json
from workers import Response

async def fetch(request, env, ctx):
    tool = request.params["tool"]
    caps = json.loads(request.query.get("caps", "[]"))
    token = env.TOOLS.mint(caps)
    try:
        result = await env.TOOLS.run(tool, await request.json(), capability=token)
    except Exception as e:
        return Response.json({"error": e.code, "message": e.message}, status=400)
    return Response.json({"result": result})
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app = write_app(tmp_path_factory.mktemp("tools") / "app", MANIFEST, {"app.py": APP})
    with Server(app) as s:
        yield s


def test_tool_runs_and_is_audited_with_the_request_id(server):
    with server.client() as c:
        r = c.post("/run/sum", json={"n": 100})
    assert r.json() == {"result": 4950}
    rid = r.headers["x-request-id"]

    def entries():
        return [e for e in query(server.state_dir / "audit.sqlite", request_id=rid) if e.kind.startswith(("tool", "sandbox"))]

    found = wait_until(entries, timeout=5)
    assert found[0].script == "app"


def test_capabilities_are_granted_only_by_the_token(server):
    with server.client() as c:
        denied = c.post("/run/writer", json={"x": 1})
        granted = c.post("/run/writer", json={"x": 1}, params={"caps": json.dumps(["kv.write:notes/", "kv.read:notes/"])})
    assert denied.status_code == 400 and denied.json()["error"] == "capability_denied"
    assert "kv.write:notes/" in denied.json()["message"]
    assert granted.json() == {"result": {"x": 1}}


def test_hostile_tool_is_contained_and_the_server_keeps_serving(server):
    with server.client() as c:
        r = c.post("/run/spin", json={})
        ok = c.post("/run/sum", json={"n": 3})
    assert r.json()["error"] == "out_of_fuel"
    assert ok.json() == {"result": 3}


def test_killed_tool_answers_capability_denied_within_a_second(server):
    ks = KillSwitch(server.state_dir)
    try:
        ks.kill("tool", "sum", "misbehaving", actor="test")
        with server.client() as c:
            r = wait_until(lambda: (x := c.post("/run/sum", json={"n": 3})).status_code == 400 and x, timeout=1.5)
            assert r.json()["error"] == "capability_denied" and "misbehaving" in r.json()["message"]
            ks.revive("tool", "sum", actor="test")
            wait_until(lambda: c.post("/run/sum", json={"n": 3}).status_code == 200, timeout=1.5)
    finally:
        ks.close()


def test_example_app_tools_demo(tmp_path):
    app = copy_example(tmp_path)
    with Server(app) as s, s.client() as c:
        body = c.get("/tools/demo").json()
    assert body["sum"] == {"sum": 499500}
    assert body["echo"] == {"hello": "wasm"}
    assert body["denied"]["code"] == "capability_denied"


def test_cli_tool_run(tmp_path):
    app = write_app(tmp_path / "app", MANIFEST, {"app.py": APP})
    ok = run_cli("tool", "run", "sum", "--input", '{"n": 10}', "--dir", str(app))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads(ok.stdout) == 45
    bad = run_cli("tool", "run", "nope", "--dir", str(app))
    assert bad.returncode == 2 and json.loads(bad.stdout)["error"]["code"] == "unknown_tool"


def test_script_sandbox_defaults_apply_to_every_tool(tmp_path):
    manifest = MANIFEST.replace('routes = ["/run/{tool}"]', 'routes = ["/run/{tool}"]\n[scripts.sandbox.limits]\nfuel = 1000')
    app = write_app(tmp_path / "app", manifest, {"app.py": APP})
    with Server(app) as s, s.client() as c:
        r = c.post("/run/sum", json={"n": 100000})
    assert r.json()["error"] == "out_of_fuel"
