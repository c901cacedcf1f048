"""The admin API's request and response bodies (pydantic models) and its OpenAPI 3 document,
generated from those models so the two cannot drift apart. `admin.py` validates requests with
the same models."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from runtime.admin.access import ADMIN_SCOPE
from runtime.admin.workflows import ACTIONS, CreateBody, DecisionBody, EventBody
from runtime.killswitch import KillKind

__all__ = [
    "ADMIN_SCOPE",
    "ActivationResult",
    "Approval",
    "ApprovalList",
    "DecisionRequest",
    "DeployResult",
    "ErrorBody",
    "Health",
    "Liveness",
    "KillEntry",
    "KillList",
    "KillRequest",
    "KillResult",
    "ReviveRequest",
    "ReviveResult",
    "RollbackRequest",
    "SplitRequest",
    "SplitState",
    "VersionInfo",
    "VersionList",
    "openapi_spec",
]

Name = Annotated[str, Field(min_length=1, max_length=512)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    error: str
    message: str


class ScriptHealth(BaseModel):
    pids: list[int]
    restarts: int


class Liveness(BaseModel):
    status: Literal["ok", "starting"]


class Health(BaseModel):
    ok: bool
    version: str | None
    scripts: dict[str, ScriptHealth]


class KillRequest(_In):
    kind: KillKind
    name: Name
    reason: Annotated[str, Field(min_length=1, max_length=2000, pattern=r"\S")]


class ReviveRequest(_In):
    kind: KillKind
    name: Name


class KillEntry(BaseModel):
    kind: str
    name: str
    reason: str
    actor: str | None
    ts: float


class KillResult(BaseModel):
    kill: KillEntry


class KillList(BaseModel):
    kills: list[KillEntry]


class ReviveResult(BaseModel):
    kind: str
    name: str
    revived: bool


class VersionInfo(BaseModel):
    id: str
    created: float
    created_by: str | None
    message: str | None
    source: Literal["upload", "initial"]
    content_hash: str
    bytes: int
    file_count: int


class SplitState(BaseModel):
    version: str
    percent: float


class VersionList(BaseModel):
    current: str | None
    split: SplitState | None
    versions: list[VersionInfo]


class DeployResult(BaseModel):
    version: VersionInfo
    previous: str | None


class RollbackRequest(_In):
    version: Name | None = None


class SplitRequest(_In):
    version: Name
    percent: Annotated[float, Field(ge=0, le=100)]


class ActivationResult(BaseModel):
    current: str | None
    previous: str | None
    split: SplitState | None


class RecordedResponse(BaseModel):
    status: int
    headers: list[list[str]]
    body: str
    encoding: Literal["utf-8", "base64"]


class Approval(BaseModel):
    id: str
    request_id: str
    script: str
    route: int | None
    method: str | None
    path: str | None
    tenant: str | None
    subject: str | None
    risk: str | None
    reason: str | None
    status: Literal["pending", "approved", "rejected"]
    created: float
    decided_by: str | None
    decided_at: float | None
    decision_reason: str | None
    response: RecordedResponse | None


class ApprovalList(BaseModel):
    approvals: list[Approval]


class DecisionRequest(_In):
    by: Annotated[str, Field(max_length=512)] | None = None
    reason: Annotated[str, Field(max_length=2000)] | None = None


class ScheduledResult(BaseModel):
    model_config = ConfigDict(extra="allow")
    request_id: str
    ok: bool | None = None


_MODELS: list[type[BaseModel]] = [
    ErrorBody, Liveness, Health, KillRequest, ReviveRequest, KillResult, KillList, ReviveResult, VersionList,
    DeployResult, RollbackRequest, SplitRequest, ActivationResult, Approval, ApprovalList,
    DecisionRequest, ScheduledResult, CreateBody, EventBody, DecisionBody,
]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "bad request", 401: "missing or invalid admin token",
            403: "token lacks the admin scope, a global admin is needed, or admin is disabled (serve without [auth]) "
                 "or loopback-only (dev without [auth])",
            404: "not found (or another tenant's)", 409: "conflicts with the current state", 413: "bundle too large",
            422: "invalid body, configuration or code", 500: "the scheduled handler failed"}
    return {str(c): _json(ErrorBody, text[c]) for c in codes}


def _op(summary: str, ok: dict[str, Any], *errors: int, body: type[BaseModel] | None = None,
        params: list[dict[str, Any]] | None = None, open_: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {**ok, **_errors(*(() if open_ else (401, 403)), *errors)}}
    if not open_:
        op["security"] = [{"bearer": [ADMIN_SCOPE]}]
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
    if params:
        op["parameters"] = params
    return op


def _query(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": {"type": "string", **schema}}


_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_TENANT = _query("tenant", "the tenant (a global admin's choice; a tenant admin acts within its own)")
_WF = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in ("script", "binding")]


def _any(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {}}}}


def _workflow_paths(p: str) -> dict[str, Any]:
    base = f"{p}/workflows/{{script}}/{{binding}}"
    action = {"name": "action", "in": "path", "required": True,
              "schema": {"type": "string", "enum": list(ACTIONS)}}
    return {
        base: {"get": {**_op("instances of a workflow binding (a global admin without ?tenant: every tenant's)",
                             {"200": _any("[{id, status, created, tenant}]")}, 400, 404,
                             params=[_query("status", "filter by status"), _TENANT]), "parameters": _WF},
               "post": {**_op("create an instance", {"200": _any("{id}")}, 400, 404, 409, body=CreateBody,
                              params=[_TENANT]), "parameters": _WF}},
        f"{base}/{{id}}": {"get": {**_op("status and step history of an instance", {"200": _any("status")}, 400, 404, 409,
                                         params=[_TENANT]), "parameters": [*_WF, _ID]}},
        f"{base}/{{id}}/{{action}}": {"post": {**_op(
            "pause, resume, terminate, restart, send an event ({type, payload}) or decide an approval ({by, reason})",
            {"200": _any("{ok, status}")}, 400, 404, 409, params=[_TENANT]), "parameters": [*_WF, _ID, action],
            "requestBody": {"required": False, "content": {"application/json": {"schema": {
                "oneOf": [_ref(EventBody), _ref(DecisionBody), {"type": "object", "maxProperties": 0}]}}}}}},
    }


def openapi_spec() -> dict[str, Any]:
    _, defs = models_json_schema([(m, "validation") for m in _MODELS],
                                 ref_template="#/components/schemas/{model}")
    schemas = defs.get("$defs", {})
    p = "/__edgeworks"
    return {
        "openapi": "3.1.0",
        "info": {"title": "edgeworks admin API", "version": "1",
                 "description": "Human override, deployments and approvals of a running edgeworks server. "
                                f"Every operation but health needs a bearer JWT with the scope {ADMIN_SCOPE}; "
                                "a token with a tenant claim acts only within that tenant, one without is a global admin."},
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}},
        "paths": {
            f"{p}/health": {"get": _op("liveness, nothing more", {"200": _json(Liveness, "serving"),
                                                             "503": _json(Liveness, "starting")}, open_=True)},
            f"{p}/health/details": {"get": _op("the current version and the isolates (pids, restarts) of each script",
                                               {"200": _json(Health, "health")})},
            f"{p}/openapi.json": {"get": _op("this document", {"200": {"description": "OpenAPI 3 document",
                                                                       "content": {"application/json": {"schema": {"type": "object"}}}}})},
            f"{p}/scheduled": {"post": _op("fire a script's scheduled handler now", {"200": _json(ScheduledResult, "handler ran")},
                                           400, 404, 500, params=[_query("script", "script name"), _query("cron", "cron expression")])},
            f"{p}/kill": {"post": _op("stop a script, route, tenant, workflow class or tool", {"200": _json(KillResult, "in force")},
                                      400, 422, body=KillRequest)},
            f"{p}/revive": {"post": _op("lift a kill", {"200": _json(ReviveResult, "lifted (revived: whether there was one)")},
                                        400, 422, body=ReviveRequest)},
            f"{p}/kills": {"get": _op("current kills", {"200": _json(KillList, "kills")})},
            f"{p}/versions": {
                "get": _op("stored versions, the current one and the split", {"200": _json(VersionList, "versions")}),
                "post": {**_op("deploy a bundle (tar.gz of the app dir); validated before it gets traffic",
                               {"201": _json(DeployResult, "deployed and serving")}, 400, 413, 422,
                               params=[_query("message", "what this version changes")]),
                         "requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
            },
            f"{p}/rollback": {"post": _op("serve an earlier version (default: the previous one)",
                                          {"200": _json(ActivationResult, "serving")}, 400, 404, 409, 422, body=RollbackRequest)},
            f"{p}/split": {"post": _op("send percent of requests to another version (0 clears, 100 promotes)",
                                       {"200": _json(ActivationResult, "in force")}, 400, 404, 409, 422, body=SplitRequest)},
            f"{p}/approvals": {"get": _op("requests held for approval (a tenant admin's: its tenant's only)",
                                          {"200": _json(ApprovalList, "approvals")}, 400,
                                          params=[_query("status", "filter", enum=["pending", "approved", "rejected"]),
                                                  _TENANT])},
            f"{p}/approvals/{{id}}": {"get": {**_op("one approval with its recorded response", {"200": _json(Approval, "approval")}, 404),
                                              "parameters": [_ID]}},
            f"{p}/approvals/{{id}}/approve": {"post": {**_op("approve: run the held request and record its response",
                                                             {"200": _json(Approval, "approved and run")}, 400, 404, 409, 422,
                                                             body=DecisionRequest), "parameters": [_ID]}},
            f"{p}/approvals/{{id}}/reject": {"post": {**_op("reject the held request", {"200": _json(Approval, "rejected")},
                                                            400, 404, 409, 422, body=DecisionRequest), "parameters": [_ID]}},
            **_workflow_paths(p),
            f"{p}/tail": {"get": _op("live log lines as NDJSON, until the client disconnects or limit lines",
                                     {"200": {"description": "a stream of JSON lines",
                                              "content": {"application/x-ndjson": {"schema": {"type": "string"}}}}},
                                     400, params=[_query("status", "a code (404) or a class (5xx)", pattern=r"^([1-5][0-9][0-9]|[1-5]xx)$"),
                                                  _query("script", "script name"), _query("request_id", "request id"),
                                                  _query("limit", "stop after this many lines", pattern=r"^[1-9][0-9]*$")])},
        },
    }
