"""Tenant isolation through the runtime: tenant A can never read, write or address tenant B's
workflow instances or sandbox KV, whatever names or capability tokens it sends (objects:
test_durable_objects_e2e)."""

import time

import jwt
import pytest

from runtime.audit import query
from tests.support import Server, wait_until, write_app

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
routes = [{ pattern = "/wf/{id}", require_tenant = true }, { pattern = "/kv/{key}", require_tenant = true },
          { pattern = "/token/{action}", require_tenant = true }, { pattern = "/nap/{id}", require_tenant = true }]
workflows = [{ binding = "JOB", class_name = "Job", tenant_scoped = true },
             { binding = "NAP", class_name = "Nap", tenant_scoped = true }]

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

class Nap(WorkflowEntrypoint):
    async def run(self, event, step):
        await step.sleep("nap", 5)
        return await step.do("read", lambda: self.read_ledger())

    async def read_ledger(self):
        token = self.env.TOOLS.mint(["kv.read:notes/"])
        return await self.env.TOOLS.run("kv", {"key": "ledger", "value": None}, capability=token)

async def fetch(request, env, ctx):
    if request.path.startswith("/token/"):
        return await token_action(request, env, request.params["action"])
    if request.path.startswith("/nap/"):
        if request.method == "POST":
            await env.NAP.create(id=request.params["id"])
        return Response.json(await (await env.NAP.get(request.params["id"])).status())
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

async def token_action(request, env, action):
    if action == "mint":
        return Response.json({"token": env.TOOLS.mint(["kv.read:notes/", "kv.write:notes/"])})
    body = await request.json()
    try:
        if action == "attenuate":
            return Response.json({"token": env.TOOLS.attenuate(body["token"], ["kv.read:notes/"])})
        value = await env.TOOLS.run("kv", {"key": body["key"], "value": None}, capability=body["token"])
    except Exception as e:
        return Response.json({"error": getattr(e, "code", None) or e.reason, "message": e.message}, status=403)
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


def test_a_capability_token_minted_for_one_tenant_is_refused_in_another(server):
    a, b = bearer("acme"), bearer("globex")
    with server.client() as c:
        assert c.post("/kv/ledger", headers=a, json={"value": "acme books"}).status_code == 200
        token = c.post("/token/mint", headers=a).json()["token"]
        assert c.post("/token/use", headers=a, json={"token": token, "key": "ledger"}).json() == {"value": "acme books"}
        crossed = c.post("/token/use", headers=b, json={"token": token, "key": "ledger"})
        attenuated = c.post("/token/attenuate", headers=b, json={"token": token})
        own = c.post("/token/attenuate", headers=a, json={"token": token})
        assert c.post("/token/use", headers=a, json={"token": own.json()["token"], "key": "ledger"}).json() == {"value": "acme books"}
    assert crossed.status_code == 403 and crossed.json()["error"] == "invalid_token", crossed.text
    assert "another tenant" in crossed.json()["message"]
    assert attenuated.status_code == 403 and attenuated.json()["error"] == "wrong_tenant", attenuated.text

    def denied():
        entries = query(server.state_dir / "audit.sqlite", request_id=crossed.headers["x-request-id"])
        return [e for e in entries if e.kind == "sandbox.denied"]

    assert wait_until(denied, timeout=5)[0].data["reason"] == "wrong_tenant"


def test_a_workflow_resumed_by_its_alarm_after_a_restart_acts_in_its_tenant(tmp_path):
    """The alarm that resumes an instance carries no tenant: the instance's code must still act
    in the tenant it was created in (here: its tool token, and so its tool KV)."""
    app = write_app(tmp_path / "app", MANIFEST, {"app.py": APP})
    (app / ".dev.vars").write_text(f"JWT_SECRET={SECRET}\n")
    a = bearer("acme")
    with Server(app) as s, s.client() as c:
        assert c.post("/kv/ledger", headers=a, json={"value": "acme books"}).status_code == 200
        assert c.post("/nap/n1", headers=a).status_code == 200
        wait_until(lambda: c.get("/nap/n1", headers=a).json()["steps"], timeout=10)  # asleep
    with Server(app) as s, s.client() as c:
        done = wait_until(lambda: (r := c.get("/nap/n1", headers=a).json())["status"] in ("complete", "errored") and r,
                          timeout=30)
    assert done["status"] == "complete", done
    assert done["output"] == "acme books"
