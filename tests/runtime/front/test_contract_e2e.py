"""The operational contract end to end through a real server: JWT identity per route (every
rejection case with its status and WWW-Authenticate), what the handler sees (identity, risk),
risk rules (label in the request log line, block, approve with the approval flow), the audit
log (intact chain, entries found by request id), and that no token is ever written down."""

import json
import time

import jwt
import pytest

from runtime.audit import verify
from tests.runtime.admin.test_admin import AUD, ISS, SECRET, audit_entries, bearer
from tests.support import Server, run_cli, write_app

MANIFEST = """
[auth]
secret = "JWT_SECRET"
issuer = "https://idp.test"
audience = "edgeworks-test"

[[risk]]
path = "/pay"
methods = ["POST"]
when = [{ field = "amount", op = "gt", value = 100 }]
label = "medium"

[[risk]]
path = "/pay"
when = [{ field = "amount", op = "gt", value = 1000 }]
label = "high"
action = "approve"
reason = "large payment"

[[risk]]
path = "/pay"
when = [{ field = "to", op = "eq", value = "sanctioned" }]
label = "high"
action = "block"
reason = "sanctioned recipient"

[[scripts]]
name = "app"
main = "app.py"
routes = [
    { pattern = "/req", auth = "required", scopes = ["orders:read"] },
    { pattern = "/opt", auth = "optional" },
    { pattern = "/none", auth = "none" },
    { pattern = "/tenant", auth = "required", require_tenant = true },
    { pattern = "/pay", auth = "required", methods = ["POST"] },
]
"""

APP = '''
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        ident = self.ctx.identity
        return Response.json({
            "path": request.path,
            "subject": ident.subject if ident else None,
            "tenant": ident.tenant if ident else None,
            "scopes": list(ident.scopes) if ident else [],
            "risk": self.ctx.risk,
            "request_id": self.ctx.request_id,
            "saw_authorization": request.headers.get("authorization") is not None,
            "body": await request.text(),
        })
'''

tokens_issued: list[str] = []


def tok(secret=SECRET, alg="HS256", **overrides) -> str:
    now = int(time.time())
    claims = {"sub": "user-1", "tenant": "acme", "scope": "orders:read", "iss": ISS, "aud": AUD,
              "iat": now - 5, "exp": now + 600}
    claims.update(overrides)
    t = jwt.encode({k: v for k, v in claims.items() if v is not None}, secret, algorithm=alg)
    tokens_issued.append(t)
    return t


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    app = write_app(root / "app", MANIFEST, {"app.py": APP})
    (app / ".dev.vars").write_text(f"JWT_SECRET={SECRET}\n")
    srv = Server(app, "serve")
    srv.start()
    yield srv
    srv.stop()


def test_every_rejection_answers_401_or_403_with_www_authenticate(server):
    now = int(time.time())
    cases = [
        ("/req", None, 401, "missing_token"),
        ("/req", "Bearer", 401, "malformed"),
        ("/req", "Basic dXNlcjpwYXNz", 401, "malformed"),
        ("/req", "Bearer abc.def", 401, "malformed"),
        ("/req", f"Bearer {tok(alg='none', secret=None)}", 401, "alg_none"),
        ("/req", f"Bearer {tok(secret='wrong-secret-' + 'z' * 40)}", 401, "bad_signature"),
        ("/req", f"Bearer {tok(exp=now - 3600)}", 401, "expired"),
        ("/req", f"Bearer {tok(nbf=now + 3600)}", 401, "not_yet_valid"),
        ("/req", f"Bearer {tok(aud='another-app')}", 401, "wrong_audience"),
        ("/req", f"Bearer {tok(iss='https://evil.test')}", 401, "wrong_issuer"),
        ("/req", f"Bearer {tok(scope='orders:write')}", 403, "insufficient_scope"),
        ("/tenant", f"Bearer {tok(tenant=None)}", 401, "missing_tenant"),
        ("/opt", f"Bearer {tok(exp=now - 3600)}", 401, "expired"),  # optional: a bad token is still refused
    ]
    with server.client() as c:
        for path, auth, status, code in cases:
            r = c.get(path, headers={"authorization": auth} if auth else {})
            assert (r.status_code, r.json()["error"]) == (status, code), (path, code, r.text)
            challenge = r.headers["www-authenticate"]
            assert challenge.startswith('Bearer realm="edgeworks"'), code
            assert ('error="insufficient_scope"' if status == 403 else 'error="invalid_token"') in challenge
            assert r.headers["x-request-id"] == r.json()["request_id"]


def test_handler_sees_identity_and_risk(server):
    with server.client() as c:
        r = c.get("/req", headers=bearer(tok(sub="alice", tenant="t1", scope="orders:read extra")))
        assert r.status_code == 200
        body = r.json()
        assert (body["subject"], body["tenant"], body["scopes"], body["risk"]) == ("alice", "t1", ["orders:read", "extra"], "low")
        assert body["saw_authorization"] is False and body["request_id"] == r.headers["x-request-id"]
        assert c.get("/opt").json()["subject"] is None
        assert c.get("/opt", headers=bearer(tok(sub="bob"))).json()["subject"] == "bob"
        assert c.get("/none").json()["subject"] is None
        assert c.get("/tenant", headers=bearer(tok(tenant="t2"))).json()["tenant"] == "t2"


def test_risk_rules_label_block_and_approval_flow(server):
    user = bearer(tok(sub="payer", tenant="acme"))
    admin = bearer(tok(sub="approver", scope="edgeworks:admin"))
    with server.client() as c:
        r = c.post("/pay", json={"amount": 500}, headers={**user, "x-request-id": "pay-medium-0001"})
        assert r.status_code == 200 and r.json()["risk"] == "medium"
        r = c.post("/pay", json={"amount": 5, "to": "sanctioned"}, headers=user)
        assert (r.status_code, r.json()["error"], r.json()["risk"]) == (403, "blocked_by_policy", "high")

        r = c.post("/pay", json={"amount": 5000}, headers={**user, "x-request-id": "pay-held-0001"})
        assert r.status_code == 202 and r.json()["error"] == "approval_required"
        aid = r.json()["approval_id"]
        r2 = c.post("/pay", json={"amount": 9000}, headers=user)
        other = r2.json()["approval_id"]

        assert c.get("/__edgeworks/approvals", headers=user).status_code == 403  # not an admin
        pending = c.get("/__edgeworks/approvals", params={"status": "pending"}, headers=admin).json()["approvals"]
        assert [a["id"] for a in pending] == [aid, other]
        assert pending[0]["subject"] == "payer" and pending[0]["risk"] == "high" and pending[0]["reason"] == "large payment"
        assert c.get(f"/__edgeworks/approvals/{aid}", headers=admin).json()["status"] == "pending"

        r = c.post(f"/__edgeworks/approvals/{aid}/approve", json={"reason": "checked with finance"}, headers=admin)
        assert r.status_code == 200
        row = r.json()
        assert (row["status"], row["decided_by"], row["decision_reason"]) == ("approved", "approver", "checked with finance")
        assert row["response"]["status"] == 200
        ran = json.loads(row["response"]["body"])
        assert (ran["subject"], ran["risk"], ran["request_id"], ran["saw_authorization"]) == ("payer", "high", "pay-held-0001", False)
        assert json.loads(ran["body"]) == {"amount": 5000}
        assert c.get(f"/__edgeworks/approvals/{aid}", headers=admin).json()["response"]["status"] == 200
        assert c.post(f"/__edgeworks/approvals/{aid}/approve", json={}, headers=admin).status_code == 409

        r = c.post(f"/__edgeworks/approvals/{other}/reject", json={"by": "cfo", "reason": "no"}, headers=admin)
        assert (r.json()["status"], r.json()["decided_by"], r.json()["response"]) == ("rejected", "cfo", None)
        assert c.post(f"/__edgeworks/approvals/{other}/approve", json={}, headers=admin).status_code == 409
        assert c.post("/__edgeworks/approvals/nope/approve", json={}, headers=admin).status_code == 404
        assert c.get("/__edgeworks/approvals", params={"status": "bogus"}, headers=admin).status_code == 400
    lines: dict[str, list] = {}
    for rec in server.logs("request"):
        lines.setdefault(rec["request_id"], []).append(rec)
    assert [x["risk"] for x in lines["pay-medium-0001"]] == ["medium"]
    held, run = lines["pay-held-0001"]  # answered 202, then run on approval
    assert (held["status"], held["risk"], run["status"], run["approval_id"]) == (202, "high", 200, aid)


def test_approving_a_request_of_a_killed_script_records_the_refusal_not_a_run(server):
    user = bearer(tok(sub="payer"))
    admin = bearer(tok(sub="approver", scope="edgeworks:admin", tenant=None))  # killing a script: a global admin
    with server.client() as c:
        aid = c.post("/pay", json={"amount": 2000}, headers=user).json()["approval_id"]
        assert c.post("/__edgeworks/kill", json={"kind": "script", "name": "app", "reason": "freeze"},
                      headers=admin).status_code == 200
        row = c.post(f"/__edgeworks/approvals/{aid}/approve", json={}, headers=admin).json()
        assert row["status"] == "approved" and row["response"]["status"] == 503
        assert json.loads(row["response"]["body"])["error"] == "killed"
        assert c.post("/__edgeworks/revive", json={"kind": "script", "name": "app"}, headers=admin).json()["revived"]
        assert c.get("/none").status_code == 200


def test_audit_log_is_intact_findable_by_request_id_and_holds_no_token(tmp_path):
    # its own server: it stops it to flush the audit writer, and reads only what it did itself
    app = write_app(tmp_path / "app", MANIFEST, {"app.py": APP})
    (app / ".dev.vars").write_text(f"JWT_SECRET={SECRET}\n")
    server = Server(app, "serve")
    tokens_issued.clear()
    with server, server.client() as c:
        r = c.get("/req", headers={**bearer(tok()), "x-request-id": "audit-probe-0001"})
        assert r.status_code == 200
        c.get("/req", headers={"x-request-id": "audit-probe-0002"})
        r = c.post("/pay", json={"amount": 5000}, headers={**bearer(tok(sub="payer")), "x-request-id": "pay-held-0001"})
        assert r.status_code == 202
        admin = bearer(tok(sub="approver", scope="edgeworks:admin"))
        assert c.post(f"/__edgeworks/approvals/{r.json()['approval_id']}/approve", json={"reason": "ok"},
                      headers=admin).status_code == 200
    state = server.state_dir
    assert verify(state / "audit.sqlite").ok
    out = run_cli("audit", "query", "--request-id", "audit-probe-0001", "--state-dir", str(state))
    entries = [json.loads(x) for x in out.stdout.splitlines()]
    assert out.returncode == 0 and [e["kind"] for e in entries] == ["request"]
    assert entries[0]["subject"] == "user-1" and entries[0]["data"]["status"] == 200
    refused = [json.loads(x) for x in run_cli("audit", "query", "--request-id", "audit-probe-0002",
                                             "--state-dir", str(state)).stdout.splitlines()]
    assert [e["kind"] for e in refused] == ["auth.failure"]
    held = audit_entries(state, request_id="pay-held-0001")
    assert {"request.held", "admin.approval.approve", "request.approved_run"} <= {e["kind"] for e in held} | {
        e["kind"] for e in audit_entries(state, kind="admin.approval.*")}
    assert audit_entries(state, kind="request.approved_run")[0]["request_id"] == "pay-held-0001"

    assert tokens_issued
    blobs = [p.read_bytes() for p in state.rglob("*") if p.is_file()]
    blobs.append(server.output().encode())
    for t in tokens_issued:
        signature = t.rsplit(".", 1)[-1].encode()
        for blob in blobs:
            assert t.encode() not in blob
            assert len(signature) < 10 or signature not in blob
