"""Admin routes are declared once (`runtime.admin.api.ADMIN_ROUTES`): the OpenAPI document says
what it said when every path was written out by hand, the served routes are exactly the
documented operations, and the access a route declares is what the server enforces."""

import httpx
import pytest

from runtime.admin.api import ADMIN_PREFIX, ADMIN_ROUTES, ADMIN_SCOPE, openapi_spec
from runtime.admin.app import build_admin
from runtime.config import load_app
from runtime.front.app import Front
from tests.runtime.admin.test_admin import APP, OPEN_MANIFEST, auth_app, bearer, token
from tests.support import write_app

P = ADMIN_PREFIX
WF = f"{P}/workflows/{{script}}/{{binding}}"
TENANT = "tenant:query"

# (method, path) -> (response statuses, parameters as "name:in", request body media type or model)
# as the hand-written document had them, bar the workflow operations' query parameters, which it
# dropped (a path-level list overwrote them) although the endpoints always read them.
OPERATIONS = {
    ("get", f"{P}/health"): ({"200", "503"}, set(), None),
    ("get", f"{P}/.well-known/jwks.json"): ({"200"}, set(), None),
    ("get", f"{P}/health/details"): ({"200", "401", "403"}, set(), None),
    ("get", f"{P}/openapi.json"): ({"200", "401", "403"}, set(), None),
    ("post", f"{P}/scheduled"): ({"200", "400", "401", "403", "404", "500"}, {"script:query", "cron:query"}, None),
    ("post", f"{P}/kill"): ({"200", "400", "401", "403", "422"}, set(), "KillRequest"),
    ("post", f"{P}/revive"): ({"200", "400", "401", "403", "422"}, set(), "ReviveRequest"),
    ("get", f"{P}/kills"): ({"200", "401", "403"}, set(), None),
    ("get", f"{P}/versions"): ({"200", "401", "403"}, set(), None),
    ("post", f"{P}/versions"): ({"201", "400", "401", "403", "413", "422"}, {"message:query"},
                                "application/octet-stream"),
    ("post", f"{P}/rollback"): ({"200", "400", "401", "403", "404", "409", "422"}, set(), "RollbackRequest"),
    ("post", f"{P}/split"): ({"200", "400", "401", "403", "404", "409", "422"}, set(), "SplitRequest"),
    ("get", f"{P}/approvals"): ({"200", "400", "401", "403"}, {"status:query", TENANT}, None),
    ("get", f"{P}/approvals/{{id}}"): ({"200", "401", "403", "404"}, {"id:path"}, None),
    ("post", f"{P}/approvals/{{id}}/approve"): ({"200", "400", "401", "403", "404", "409", "422"}, {"id:path"},
                                                "DecisionRequest"),
    ("post", f"{P}/approvals/{{id}}/reject"): ({"200", "400", "401", "403", "404", "409", "422"}, {"id:path"},
                                               "DecisionRequest"),
    ("get", WF): ({"200", "400", "401", "403", "404"}, {"script:path", "binding:path", "status:query", TENANT}, None),
    ("post", WF): ({"200", "400", "401", "403", "404", "409"}, {"script:path", "binding:path", TENANT}, "CreateBody"),
    ("get", f"{WF}/{{id}}"): ({"200", "400", "401", "403", "404", "409"},
                              {"script:path", "binding:path", "id:path", TENANT}, None),
    ("post", f"{WF}/{{id}}/{{action}}"): ({"200", "400", "401", "403", "404", "409"},
                                          {"script:path", "binding:path", "id:path", "action:path", TENANT},
                                          "application/json"),
    ("get", f"{P}/slo"): ({"200", "400", "401", "403"}, {"since:query", "version:query"}, None),
    ("get", f"{P}/metrics"): ({"200", "401", "403", "404"}, set(), None),
    ("get", f"{P}/tail"): ({"200", "400", "401", "403"},
                           {"status:query", "script:query", "request_id:query", "limit:query"}, None),
}

SCHEMAS = {"ActivationResult", "Approval", "ApprovalList", "CreateBody", "DecisionBody", "DecisionRequest",
           "DeployResult", "ErrorBody", "EventBody", "Health", "JWK", "JWKSet", "KillEntry", "KillList", "KillRequest",
           "KillResult", "Liveness", "RecordedResponse", "ReviveRequest", "ReviveResult", "RollbackRequest",
           "ScheduledResult", "ScriptHealth", "SloAlert", "SloObjective", "SloReport", "SplitRequest", "SplitResult", "SplitState", "VersionInfo", "VersionList"}


def _operations(spec):
    return {(m, path): op for path, item in spec["paths"].items() for m, op in item.items()}


def _body(op):
    if "requestBody" not in op:
        return None
    (media, content), = op["requestBody"]["content"].items()
    ref = content["schema"].get("$ref", "")
    return ref.rsplit("/", 1)[1] if ref else media


def _refs(node):
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for v in node.values():
            yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def test_the_document_describes_what_the_hand_written_one_did():
    spec = openapi_spec()
    assert spec["openapi"] == "3.1.0" and spec["info"]["title"] == "edgeworks admin API"
    assert set(spec["components"]["schemas"]) == SCHEMAS
    assert spec["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer",
                                                                "bearerFormat": "JWT"}}
    ops = _operations(spec)
    assert set(ops) == set(OPERATIONS)
    for key, (responses, params, body) in OPERATIONS.items():
        op = ops[key]
        assert set(op["responses"]) == responses, key
        assert {f"{p['name']}:{p['in']}" for p in op.get("parameters", [])} == params, key
        assert all(p["required"] == (p["in"] == "path") for p in op.get("parameters", [])), key
        assert _body(op) == body, key
        open_route = key[1] in (f"{P}/health", f"{P}/.well-known/jwks.json")
        assert op.get("security") == (None if open_route else [{"bearer": [ADMIN_SCOPE]}]), key
        assert op["summary"], key
    action = next(p for p in ops[("post", f"{WF}/{{id}}/{{action}}")]["parameters"] if p["name"] == "action")
    assert action["schema"]["enum"] == ["pause", "resume", "terminate", "restart", "event", "approve", "reject"]
    assert ops[("post", f"{WF}/{{id}}/{{action}}")]["requestBody"]["required"] is False
    prefix = "#/components/schemas/"
    assert {r.removeprefix(prefix) for r in _refs(spec)} <= set(spec["components"]["schemas"])


def test_each_route_is_declared_once():
    keys = [(r.method, r.path) for r in ADMIN_ROUTES]
    assert len(keys) == len(set(keys))
    assert len({r.endpoint for r in ADMIN_ROUTES}) == len(ADMIN_ROUTES)


@pytest.fixture
def front(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return Front(load_app(str(write_app(tmp_path / "app", OPEN_MANIFEST, {"app.py": APP.format(version="one")}))),
                 dev=True)


def test_the_served_routes_are_the_documented_operations(front):
    admin = build_admin(front)
    served = {(m.lower(), r.path) for r in admin.routes for m in r.methods if m != "HEAD"}
    assert served == set(_operations(openapi_spec()))


async def test_tenant_admins_get_403_from_global_only_routes_and_everyone_401_without_a_token(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    front = Front(load_app(str(auth_app(tmp_path / "app"))), dev=True)
    front.admin = build_admin(front)
    await front.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=front, client=("127.0.0.1", 1)),
                                     base_url="http://edge.test", timeout=30) as c:
            tenant_admin = bearer(token(tenant="acme"))
            global_only = [r for r in ADMIN_ROUTES if r.global_only]
            assert {r.path.removeprefix(P) for r in global_only} >= {"/versions", "/tail"}
            for route in global_only:
                r = await c.request(route.method, route.path, headers=tenant_admin)
                assert r.status_code == 403, (route.path, r.text)
                assert r.json()["error"] == "global_admin_required", route.path
                assert route.global_only in r.json()["message"]
            for route in ADMIN_ROUTES:
                path = route.path.format(script="app", binding="JOB", id="x", action="pause")
                r = await c.request(route.method, path)  # no token
                assert r.status_code == (200 if route.open else 401), (path, r.text)
            r = await c.get(f"{P}/kills", headers=tenant_admin)  # admin, not global-only
            assert r.status_code == 200 and r.json() == {"kills": []}
    finally:
        await front.stop()


async def test_one_body_parser_answers_alike_on_admin_and_workflow_routes(front):
    """Admin bodies that are not JSON, too deep or the wrong shape get the same answers
    everywhere, except the status of a wrong shape: 422, and 400 on the workflow operations
    (as their documentation says)."""
    front.admin = build_admin(front)
    await front.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=front, client=("127.0.0.1", 1)),
                                     base_url="http://edge.test", timeout=30) as c:
            for path, wrong_shape in ((f"{P}/kill", 422), (f"{P}/workflows/app/JOB", 400)):
                r = await c.post(path, content=b"{not json")
                assert (r.status_code, r.json()["error"]) == (400, "invalid_json"), path
                r = await c.post(path, content=b"[" * 200)
                assert (r.status_code, r.json()["error"], r.json()["limit"]) == (400, "json_too_deep", 128), path
                r = await c.post(path, json={"unknown": 1})
                assert (r.status_code, r.json()["error"]) == (wrong_shape, "invalid_body"), path
                assert any(e["loc"] == ["unknown"] for e in r.json()["errors"]), path
    finally:
        await front.stop()
