"""Tenant isolation through the runtime: tenant A can never read, write or address tenant B's
workflow instances or sandbox KV, whatever names it sends (objects: test_durable_objects_e2e)."""

import time

import jwt
import pytest

from tests.support import Server, write_app

SECRET = "t" * 40

MANIFEST = """
[auth]
secret = "JWT_SECRET"
issuer = "https://issuer.test"
audience = "edgeworks"

[[scripts]]
name = "app"
main = "app.py"
secrets = ["JWT_SECRET"]
routes = [{ pattern = "/wf/{id}", require_tenant = true }, { pattern = "/kv/{key}", require_tenant = true }]
workflows = [{ binding = "JOB", class_name = "Job", tenant_scoped = true }]

[[scripts.tools]]
name = "kv"
kind = "python"
source = "if input.get('value') is not None:\\n    edge.call('kv.put', {'key': 'notes/' + input['key'], 'value': input['value']})\\nresult = edge.call('kv.get', {'key': 'notes/' + input['key']})"
capabilities = ["kv.read:notes/", "kv.write:notes/"]
"""

APP = '''
from workers import Response, WorkflowEntrypoint, WorkflowError

class Job(WorkflowEntrypoint):
    async def run(self, event, step):
        return await step.do("echo", lambda: _echo(event.payload))

async def _echo(p):
    return p

async def fetch(request, env, ctx):
    if request.path.startswith("/wf/"):
        wid = request.params["id"]
        try:
            if request.method == "POST":
                await env.JOB.create(id=wid, params={"owner": ctx.tenant})
            inst = await env.JOB.get(wid)
            return Response.json(await inst.status())
        except WorkflowError as e:
            return Response.json({"error": e.code}, status=404 if e.code == "not_found" else 409)
    key = request.params["key"]
    body = await request.json() if request.method == "POST" else {}
    token = env.TOOLS.mint(["kv.read:notes/", "kv.write:notes/"])
    value = await env.TOOLS.run("kv", {"key": key, "value": body.get("value")}, capability=token)
    return Response.json({"value": value})
'''


def bearer(tenant):
    now = int(time.time())
    tok = jwt.encode({"sub": f"user@{tenant}", "tenant": tenant, "iss": "https://issuer.test", "aud": "edgeworks",
                      "iat": now, "exp": now + 600}, SECRET, algorithm="HS256")
    return {"authorization": f"Bearer {tok}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app = write_app(tmp_path_factory.mktemp("tenancy") / "app", MANIFEST, {"app.py": APP})
    (app / ".dev.vars").write_text(f"JWT_SECRET={SECRET}\n")
    with Server(app) as s:
        yield s


def test_workflow_instances_are_invisible_across_tenants(server):
    a, b = bearer("acme"), bearer("globex")
    with server.client() as c:
        created = c.post("/wf/order-1", headers=a)
        assert created.status_code == 200, created.text
        assert c.get("/wf/order-1", headers=a).status_code == 200
        assert c.get("/wf/order-1", headers=b).json() == {"error": "not_found"}
        # the same id under another tenant is another instance, with its own params
        assert c.post("/wf/order-1", headers=b).status_code == 200
        from tests.support import wait_until

        wait_until(lambda: c.get("/wf/order-1", headers=b).json()["status"] == "complete")
        wait_until(lambda: c.get("/wf/order-1", headers=a).json()["status"] == "complete")
        assert c.get("/wf/order-1", headers=b).json()["output"] == {"owner": "globex"}
        assert c.get("/wf/order-1", headers=a).json()["output"] == {"owner": "acme"}
        assert c.get("/wf/order-1").status_code == 401


def test_tool_kv_is_scoped_by_tenant(server):
    a, b = bearer("acme"), bearer("globex")
    with server.client() as c:
        assert c.post("/kv/secret", headers=a, json={"value": "acme-only"}).json() == {"value": "acme-only"}
        assert c.get("/kv/secret", headers=b).json() == {"value": None}
        assert c.post("/kv/secret", headers=b, json={"value": "globex"}).json() == {"value": "globex"}
        assert c.get("/kv/secret", headers=a).json() == {"value": "acme-only"}
