"""Tenancy on the admin plane through a real server: an admin token with a tenant claim acts
only within its tenant (other tenants' held requests and workflow instances are not found, and
global things need a global admin); a token without one sees every tenant and handles a
tenant-scoped workflow's approval through the admin API and the CLI."""

import pytest

from tests.runtime.admin.test_admin import AUTH_SECTION, SECRET, audit_entries, bearer, token
from tests.support import Server, run_cli, wait_until, write_app

MANIFEST = AUTH_SECTION + """
[[risk]]
path = "/pay"
label = "high"
action = "approve"
reason = "every payment"

[[scripts]]
name = "app"
main = "app.py"
routes = [{ pattern = "/pay", methods = ["POST"], require_tenant = true },
          { pattern = "/wf/{id}", require_tenant = true }]
workflows = [{ binding = "JOB", class_name = "Job", tenant_scoped = true },
             { binding = "SHARED", class_name = "Shared" }]
"""

APP = '''
from workers import Response, WorkflowEntrypoint

class Job(WorkflowEntrypoint):
    async def run(self, event, step):
        decision = await step.wait_for_approval("manager", timeout=3600)
        return {"approved_by": decision.get("by")}

class Shared(WorkflowEntrypoint):
    async def run(self, event, step):
        return "shared"

async def fetch(request, env, ctx):
    if request.path == "/pay":
        return Response.json({"paid_for": ctx.tenant})
    wid = request.params["id"]
    if request.method == "POST":
        await env.JOB.create(id=wid)
    return Response.json(await (await env.JOB.get(wid)).status())
'''


def user(tenant):
    return bearer(token(sub=f"user@{tenant}", tenant=tenant, scope=""))


ACME_ADMIN = {"sub": "ops@acme", "tenant": "acme"}


@pytest.fixture
def server(tmp_path):
    app = write_app(tmp_path / "app", MANIFEST, {"app.py": APP})
    (app / ".dev.vars").write_text(f"JWT_SECRET={SECRET}\n")
    with Server(app, "serve", admin_token=token()) as s:
        yield s


def _hold_and_start(c):
    held = {}
    for tenant in ("acme", "globex"):
        r = c.post("/pay", json={}, headers=user(tenant))
        assert r.status_code == 202, r.text
        held[tenant] = r.json()["approval_id"]
        assert c.post("/wf/order-1", headers=user(tenant)).status_code == 200  # same id, one per tenant
    for tenant in ("acme", "globex"):
        wait_until(lambda t=tenant: c.get("/wf/order-1", headers=user(t)).json()["status"] == "waiting")
    return held


def test_a_tenant_admin_sees_and_decides_only_its_own_tenant(server):
    acme = bearer(token(**ACME_ADMIN))
    glob = bearer(token(sub="ops"))
    with server.client() as c:
        held = _hold_and_start(c)
        # held requests
        listed = c.get("/__edgeworks/approvals", headers=acme).json()["approvals"]
        assert [(a["id"], a["tenant"]) for a in listed] == [(held["acme"], "acme")]
        assert c.get("/__edgeworks/approvals", params={"tenant": "globex"}, headers=acme).json() == {"approvals": []}
        assert c.get(f"/__edgeworks/approvals/{held['globex']}", headers=acme).status_code == 404
        r = c.post(f"/__edgeworks/approvals/{held['globex']}/approve", json={}, headers=acme)
        assert (r.status_code, r.json()["error"]) == (404, "not_found")
        assert c.post(f"/__edgeworks/approvals/{held['globex']}/reject", json={}, headers=acme).status_code == 404
        assert c.get(f"/__edgeworks/approvals/{held['globex']}", headers=glob).json()["status"] == "pending"
        r = c.post(f"/__edgeworks/approvals/{held['acme']}/approve", json={}, headers=acme)
        assert r.status_code == 200 and r.json()["response"]["status"] == 200

        # workflow instances of the tenant-scoped binding
        listed = c.get("/__edgeworks/workflows/app/JOB", headers=acme).json()
        assert [(i["id"], i["tenant"]) for i in listed] == [("order-1", "acme")]
        for path in ("workflows/app/JOB/order-1", "workflows/app/JOB/order-1/approve"):
            method = "POST" if path.endswith("approve") else "GET"
            r = c.request(method, f"/__edgeworks/{path}", params={"tenant": "globex"}, headers=acme, json={})
            assert (r.status_code, r.json()["error"]) == (404, "not_found"), path
        assert c.get("/__edgeworks/workflows/app/JOB", params={"tenant": "globex"}, headers=acme).status_code == 404
        assert c.get("/wf/order-1", headers=user("globex")).json()["status"] == "waiting"
        r = c.post("/__edgeworks/workflows/app/JOB/order-1/approve", json={}, headers=acme)
        assert r.status_code == 200, r.text
        wait_until(lambda: c.get("/wf/order-1", headers=user("acme")).json()["status"] == "complete")
        assert c.get("/wf/order-1", headers=user("acme")).json()["output"] == {"approved_by": "ops@acme"}

        # kill switch: its own tenant only; other tenants' kills do not exist for it
        assert c.post("/__edgeworks/kill", json={"kind": "tenant", "name": "zeta", "reason": "x"},
                      headers=glob).status_code == 200
        r = c.post("/__edgeworks/kill", json={"kind": "tenant", "name": "globex", "reason": "x"}, headers=acme)
        assert r.status_code == 404
        assert c.post("/__edgeworks/revive", json={"kind": "tenant", "name": "zeta"}, headers=acme).status_code == 404
        assert c.post("/__edgeworks/kill", json={"kind": "tenant", "name": "acme", "reason": "ours"},
                      headers=acme).status_code == 200
        assert [k["name"] for k in c.get("/__edgeworks/kills", headers=acme).json()["kills"]] == ["acme"]
        assert {k["name"] for k in c.get("/__edgeworks/kills", headers=glob).json()["kills"]} == {"acme", "zeta"}
        assert c.post("/__edgeworks/revive", json={"kind": "tenant", "name": "acme"}, headers=acme).json()["revived"]

        # global things need a global admin
        for method, path, body in [
            ("POST", "kill", {"kind": "script", "name": "app", "reason": "x"}),
            ("POST", "revive", {"kind": "script", "name": "app"}),
            ("GET", "versions", None), ("POST", "versions", None), ("POST", "rollback", {}),
            ("POST", "split", {"version": "v", "percent": 5}), ("POST", "scheduled", None), ("GET", "tail", None),
            ("GET", "health/details", None), ("GET", "workflows/app/SHARED", None),
            ("POST", "workflows/app/SHARED", {}),
        ]:
            r = c.request(method, f"/__edgeworks/{path}", headers=acme, json=body)
            assert (r.status_code, r.json()["error"]) == (403, "global_admin_required"), path
            assert "global admin" in r.json()["message"] and "'acme'" in r.json()["message"]
        assert c.get("/none-such").status_code == 404  # the app is still up; nothing was stopped
    server.stop()  # flushes the audit log: a tenant admin's acts are on its tenant's record
    kinds = {e["kind"] for e in audit_entries(server.state_dir, tenant="acme") if e["subject"] == "ops@acme"}
    assert {"admin.read", "admin.approval.approve", "admin.workflow.approve", "admin.kill", "admin.revive"} <= kinds


def test_a_global_admin_sees_every_tenant_and_approves_a_tenant_scoped_workflow_from_the_cli(server):
    glob = bearer(token(sub="ops"))
    with server.client() as c:
        held = _hold_and_start(c)
        listed = c.get("/__edgeworks/approvals", params={"status": "pending"}, headers=glob).json()["approvals"]
        assert {(a["id"], a["tenant"]) for a in listed} == {(held["acme"], "acme"), (held["globex"], "globex")}
        only = c.get("/__edgeworks/approvals", params={"tenant": "globex"}, headers=glob).json()["approvals"]
        assert [a["id"] for a in only] == [held["globex"]]
        out = run_cli("approvals", "list", "--tenant", "globex", "--to", server.url, "--token", token(sub="ops"))
        assert out.returncode == 0 and held["globex"] in out.stdout and held["acme"] not in out.stdout, out.stderr
        out = run_cli("approvals", "approve", held["globex"], "--to", server.url, "--token", token(sub="ops"))
        assert out.returncode == 0 and '"approved"' in out.stdout, out.stderr
        assert c.get(f"/__edgeworks/approvals/{held['globex']}", headers=glob).json()["response"]["status"] == 200
        out = run_cli("approvals", "reject", held["acme"], "--to", server.url, "--token", token(sub="ops", tenant="globex"))
        assert out.returncode == 1 and "not_found" in out.stderr  # another tenant's, for a globex admin

        listed = c.get("/__edgeworks/workflows/app/JOB", headers=glob).json()
        assert sorted((i["id"], i["tenant"], i["status"]) for i in listed) == [
            ("order-1", "acme", "waiting"), ("order-1", "globex", "waiting")]
        assert [i["tenant"] for i in c.get("/__edgeworks/workflows/app/JOB", params={"tenant": "acme"},
                                           headers=glob).json()] == ["acme"]
        r = c.get("/__edgeworks/workflows/app/JOB/order-1", headers=glob)  # which tenant's order-1?
        assert (r.status_code, r.json()["error"]) == (400, "tenant_required") and "?tenant=" in r.json()["message"]
        r = c.get("/__edgeworks/workflows/app/JOB/order-1", params={"tenant": "globex"}, headers=glob)
        assert r.status_code == 200 and r.json()["status"] == "waiting"

        out = run_cli("workflows", "list", "app", "JOB", "--to", server.url, "--token", token(sub="ops"))
        assert out.returncode == 0 and out.stdout.count('"tenant"') == 2, out.stderr
        out = run_cli("workflows", "approve", "app", "JOB", "order-1", "--tenant", "globex", "--reason", "ok",
                      "--to", server.url, "--token", token(sub="cli-ops"))
        assert out.returncode == 0, out.stderr
        wait_until(lambda: c.get("/wf/order-1", headers=user("globex")).json()["status"] == "complete")
        assert c.get("/wf/order-1", headers=user("globex")).json()["output"] == {"approved_by": "cli-ops"}
        assert c.get("/wf/order-1", headers=user("acme")).json()["status"] == "waiting"  # the other order-1
        out = run_cli("workflows", "status", "app", "JOB", "order-1", "--tenant", "acme",
                      "--to", server.url, "--token", token(sub="ops"))
        assert out.returncode == 0 and '"waiting"' in out.stdout
