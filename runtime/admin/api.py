"""The admin API declared once: its request and response bodies (pydantic models), one
`AdminRoute` per operation (`ADMIN_ROUTES`: method, path, summary, answers, parameters, body and
who may call it), the one parser of JSON request bodies, and the OpenAPI 3 document generated
from those declarations. `build_admin` makes its Starlette routes from the same table, so the
document cannot drift from what the server routes, checks or parses."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.json_schema import models_json_schema
from starlette.requests import Request

from runtime.admin.access import ADMIN_SCOPE, BodyTooLarge, read_admin_body
from runtime.egress.hosts import parse_host_pattern
from runtime.killswitch import KillKind
from runtime.safejson import JSONTooDeep, parse_json

__all__ = [
    "ACTIONS",
    "ADMIN_PREFIX",
    "ADMIN_ROUTES",
    "ADMIN_SCOPE",
    "ActivationResult",
    "AdminRoute",
    "Approval",
    "ApprovalList",
    "BodyRefused",
    "CreateBody",
    "DecisionBody",
    "DecisionRequest",
    "DeployResult",
    "ErrorBody",
    "EventBody",
    "Health",
    "Liveness",
    "KillEntry",
    "KillList",
    "KillRequest",
    "KillResult",
    "Param",
    "ReviveRequest",
    "ReviveResult",
    "SloReport",
    "RollbackRequest",
    "SplitRequest",
    "SplitResult",
    "SplitState",
    "VersionInfo",
    "VersionList",
    "openapi_spec",
    "parse_body",
]

ADMIN_PREFIX = "/__edgeworks"
# what `POST .../workflows/{script}/{binding}/{id}/{action}` can do to an instance
ACTIONS = ("pause", "resume", "terminate", "restart", "event", "approve", "reject")

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


class JWK(BaseModel):
    """A principal's public key (RFC 8037 OKP)."""
    kty: Literal["OKP"]
    crv: Literal["Ed25519"]
    x: str
    kid: str
    alg: Literal["EdDSA"]
    use: Literal["sig"]


class JWKSet(BaseModel):
    keys: list[JWK]


class Health(BaseModel):
    ok: bool
    version: str | None
    environment: str | None = None  # the [env.<name>] the current version runs with
    scripts: dict[str, ScriptHealth]


class KillRequest(_In):
    kind: KillKind
    name: Name
    reason: Annotated[str, Field(min_length=1, max_length=2000, pattern=r"\S")]

    @model_validator(mode="after")
    def _egress_pattern(self) -> KillRequest:
        if self.kind == "egress":
            parse_host_pattern(self.name)  # its ValueError says what a host pattern is
        return self


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
    environment: str | None = None


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
    # roll back when an objective burns over its fastest alert's factor on this version's events
    guard: bool = False


class ActivationResult(BaseModel):
    current: str | None
    previous: str | None
    split: SplitState | None


class SplitResult(ActivationResult):
    guarded: bool  # the server rolls the split back when the new version burns an objective


class SloAlert(BaseModel):
    window: str
    long: str
    short: str
    burn: float
    burn_long: float | str  # "inf" when nothing bad is allowed
    burn_short: float | str
    firing: bool


class SloObjective(BaseModel):
    name: str
    family: str
    task_class: str | None
    workflow_class: str | None
    unit: str
    value: float | None
    objective: float
    bad: float
    total: float
    window: str
    since: str
    budget_left: float | str
    alerts: list[SloAlert]
    firing: list[str]
    detail: dict[str, Any]


class SloReport(BaseModel):
    now: float
    version: str | None
    objectives: list[SloObjective]
    guarded_split: str | None


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


class EventBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str
    payload: Any = None


class DecisionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    by: str | None = None
    reason: str | None = None
    # approve only: the amended value the workflow goes on with (absent: as proposed)
    payload: Any = None


class CreateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = None
    params: Any = None


class ScheduledResult(BaseModel):
    model_config = ConfigDict(extra="allow")
    request_id: str
    ok: bool | None = None



# -- the one parser of JSON request bodies ---------------------------------------------------


class BodyRefused(Exception):
    """A JSON request body the admin API does not take; the answer is `status` with
    ``{"error": code, "message": message, **extra}``."""

    def __init__(self, status: int, code: str, message: str, **extra: Any):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


async def parse_body(request: Request, model: type[BaseModel], *, invalid_status: int = 422) -> Any:
    """The request's JSON body as `model` (an empty body is ``{}``), or BodyRefused: 413
    ``body_too_large`` past ADMIN_BODY_BYTES, 400 ``json_too_deep`` past MAX_JSON_DEPTH, 400
    ``invalid_json``, and `invalid_status` ``invalid_body`` (with pydantic's ``errors``) for JSON
    that does not match `model`; the workflow operations document 400 for that."""
    try:
        raw = await read_admin_body(request)
    except BodyTooLarge as e:
        raise BodyRefused(413, "body_too_large", str(e), limit=e.limit) from None
    try:
        data = parse_json(raw) if raw.strip() else {}
    except JSONTooDeep as e:
        raise BodyRefused(400, "json_too_deep", f"the request body nests JSON deeper than {e.limit} levels",
                          limit=e.limit) from None
    except ValueError:
        raise BodyRefused(400, "invalid_json", "the request body is not JSON") from None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        errors = [{"loc": list(x["loc"]), "msg": x["msg"], "type": x["type"]} for x in e.errors(include_url=False)]
        raise BodyRefused(invalid_status, "invalid_body", "the request body does not match the schema",
                          errors=errors) from None


# -- the declarations ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Param:
    """A parameter of an operation. Path parameters of a route's path need no Param unless their
    schema says more than "a string"."""
    name: str
    description: str | None = None
    where: Literal["query", "path"] = "query"
    pattern: str | None = None
    enum: tuple[str, ...] | None = None

    def openapi(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string"}
        if self.pattern is not None:
            schema["pattern"] = self.pattern
        if self.enum is not None:
            schema["enum"] = list(self.enum)
        out: dict[str, Any] = {"name": self.name, "in": self.where, "required": self.where == "path"}
        if self.description is not None:
            out["description"] = self.description
        return {**out, "schema": schema}


@dataclasses.dataclass(frozen=True, slots=True)
class AdminRoute:
    """One operation of the admin API. `endpoint` names the handler `build_admin` supplies;
    `open` routes need no caller at all, every other one an admin caller, and `global_only`
    (what the caller is doing, for the refusal's message) a global admin. `body` is the JSON
    body's model, or the OpenAPI request body itself for anything else."""
    method: Literal["GET", "POST"]
    path: str
    endpoint: str
    summary: str
    ok: Mapping[str, Any]
    errors: tuple[int, ...] = ()
    body: type[BaseModel] | Mapping[str, Any] | None = None
    params: tuple[Param, ...] = ()
    global_only: str | None = None
    open: bool = False

    def path_params(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)

    def openapi(self) -> dict[str, Any]:
        errors = self.errors if self.open else (401, 403, *self.errors)
        op: dict[str, Any] = {"summary": self.summary, "responses": {**self.ok, **_errors(*errors)}}
        if not self.open:
            op["security"] = [{"bearer": [ADMIN_SCOPE]}]
        if isinstance(self.body, type):
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(self.body)}}}
        elif self.body is not None:
            op["requestBody"] = dict(self.body)
        declared = {p.name: p for p in self.params}
        path = [declared.pop(n, Param(n, where="path")) for n in self.path_params()]
        if path or declared:
            op["parameters"] = [p.openapi() for p in (*path, *declared.values())]
        return op


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _any(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {}}}}


_ERROR_TEXT = {
    400: "bad request", 401: "missing or invalid admin token",
    403: "token lacks the admin scope, a global admin is needed, or admin is disabled (serve without [auth]) "
         "or loopback-only (dev without [auth])",
    404: "not found (or another tenant's)", 409: "conflicts with the current state", 413: "bundle too large",
    422: "invalid body, configuration or code", 500: "the scheduled handler failed",
}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): _json(ErrorBody, _ERROR_TEXT[c]) for c in codes}


_P = ADMIN_PREFIX
_WF = f"{_P}/workflows/{{script}}/{{binding}}"
_TENANT = Param("tenant", "the tenant (a global admin's choice; a tenant admin acts within its own)")

ADMIN_ROUTES: tuple[AdminRoute, ...] = (
    AdminRoute("GET", f"{_P}/health", "health", "liveness, nothing more",
               {"200": _json(Liveness, "serving"), "503": _json(Liveness, "starting")}, open=True),
    AdminRoute("GET", f"{_P}/.well-known/jwks.json", "jwks",
               "the public keys of the deployment's principals, to verify their capability tokens and outbound assertions",
               {"200": _json(JWKSet, "a JWK Set")}, open=True),
    AdminRoute("GET", f"{_P}/health/details", "health_details",
               "the current version and the isolates (pids, restarts) of each script", {"200": _json(Health, "health")},
               global_only="process details"),
    AdminRoute("GET", f"{_P}/openapi.json", "openapi", "this document",
               {"200": {"description": "OpenAPI 3 document", "content": {"application/json": {"schema": {"type": "object"}}}}}),
    AdminRoute("POST", f"{_P}/scheduled", "scheduled", "fire a script's scheduled handler now",
               {"200": _json(ScheduledResult, "handler ran")}, (400, 404, 500),
               params=(Param("script", "script name"), Param("cron", "cron expression")),
               global_only="firing a scheduled handler"),
    AdminRoute("POST", f"{_P}/kill", "kill", "stop a script, route, tenant, workflow class or tool",
               {"200": _json(KillResult, "in force")}, (400, 422), body=KillRequest),
    AdminRoute("POST", f"{_P}/revive", "revive", "lift a kill",
               {"200": _json(ReviveResult, "lifted (revived: whether there was one)")}, (400, 422), body=ReviveRequest),
    AdminRoute("GET", f"{_P}/kills", "kills", "current kills", {"200": _json(KillList, "kills")}),
    AdminRoute("GET", f"{_P}/versions", "versions", "stored versions, the current one and the split",
               {"200": _json(VersionList, "versions")}, global_only="the version list"),
    AdminRoute("POST", f"{_P}/versions", "deploy", "deploy a bundle (tar.gz of the app dir); validated before it gets traffic",
               {"201": _json(DeployResult, "deployed and serving")}, (400, 413, 422),
               body={"required": True, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
               params=(Param("message", "what this version changes"),), global_only="a deploy"),
    AdminRoute("POST", f"{_P}/rollback", "rollback", "serve an earlier version (default: the previous one)",
               {"200": _json(ActivationResult, "serving")}, (400, 404, 409, 422), body=RollbackRequest,
               global_only="a rollback"),
    AdminRoute("POST", f"{_P}/split", "split", "send percent of requests to another version (0 clears, 100 promotes)",
               {"200": _json(SplitResult, "in force")}, (400, 404, 409, 422), body=SplitRequest,
               global_only="a traffic split"),
    AdminRoute("GET", f"{_P}/slo", "slo",
               "every [[slo]] objective: value, error budget left, burn rate per alert window, firing alerts",
               {"200": _json(SloReport, "the objectives")}, (400,),
               params=(Param("since", "the value's window, a duration like 1h (default: the objective's window)",
                             pattern=r"^[0-9]+(\.[0-9]+)?[smhdw]$"),
                       Param("version", "only this version's events")),
               global_only="the SLOs (every tenant's tasks)"),
    AdminRoute("GET", f"{_P}/metrics", "metrics", "Prometheus metrics of the front and every isolate (runtime.metrics)",
               {"200": {"description": "the Prometheus text format (OpenMetrics when the Accept header asks for it)",
                        "content": {"text/plain": {"schema": {"type": "string"}}}}},
               (404,), global_only="the metrics (every tenant's requests)"),
    AdminRoute("GET", f"{_P}/approvals", "list_approvals", "requests held for approval (a tenant admin's: its tenant's only)",
               {"200": _json(ApprovalList, "approvals")}, (400,),
               params=(Param("status", "filter", enum=("pending", "approved", "rejected")), _TENANT)),
    AdminRoute("GET", f"{_P}/approvals/{{id}}", "get_approval", "one approval with its recorded response",
               {"200": _json(Approval, "approval")}, (404,)),
    AdminRoute("POST", f"{_P}/approvals/{{id}}/approve", "approve", "approve: run the held request and record its response",
               {"200": _json(Approval, "approved and run")}, (400, 404, 409, 422), body=DecisionRequest),
    AdminRoute("POST", f"{_P}/approvals/{{id}}/reject", "reject", "reject the held request",
               {"200": _json(Approval, "rejected")}, (400, 404, 409, 422), body=DecisionRequest),
    AdminRoute("GET", f"{_P}/tail", "tail", "live log lines as NDJSON, until the client disconnects or limit lines",
               {"200": {"description": "a stream of JSON lines", "content": {"application/x-ndjson": {"schema": {"type": "string"}}}}},
               (400,), params=(Param("status", "a code (404) or a class (5xx)", pattern=r"^([1-5][0-9][0-9]|[1-5]xx)$"),
                               Param("script", "script name"), Param("request_id", "request id"),
                               Param("limit", "stop after this many lines", pattern=r"^[1-9][0-9]*$")),
               global_only="the log tail (every tenant's requests)"),
    # workflows (runtime.admin.workflows): who may steer an instance depends on its binding
    AdminRoute("GET", _WF, "workflow_list", "instances of a workflow binding (a global admin without ?tenant: every tenant's)",
               {"200": _any("[{id, status, created, tenant}]")}, (400, 404),
               params=(Param("status", "filter by status"), _TENANT)),
    AdminRoute("POST", _WF, "workflow_create", "create an instance", {"200": _any("{id}")}, (400, 404, 409),
               body=CreateBody, params=(_TENANT,)),
    AdminRoute("GET", f"{_WF}/{{id}}", "workflow_status", "status and step history of an instance",
               {"200": _any("status")}, (400, 404, 409), params=(_TENANT,)),
    AdminRoute("POST", f"{_WF}/{{id}}/{{action}}", "workflow_act",
               "pause, resume, terminate, restart, send an event ({type, payload}) or decide an approval ({by, reason})",
               {"200": _any("{ok, status}")}, (400, 404, 409),
               body={"required": False, "content": {"application/json": {"schema": {
                   "oneOf": [_ref(EventBody), _ref(DecisionBody), {"type": "object", "maxProperties": 0}]}}}},
               params=(Param("action", where="path", enum=ACTIONS), _TENANT)),
)

# every model the document refers to (nested ones come along)
_MODELS: list[type[BaseModel]] = [
    ErrorBody, Liveness, JWKSet, Health, KillRequest, ReviveRequest, KillResult, KillList, ReviveResult, VersionList,
    DeployResult, RollbackRequest, SplitRequest, ActivationResult, Approval, ApprovalList,
    DecisionRequest, ScheduledResult, CreateBody, EventBody, DecisionBody, SloReport, SplitResult,
]


def openapi_spec() -> dict[str, Any]:
    _, defs = models_json_schema([(m, "validation") for m in _MODELS],
                                 ref_template="#/components/schemas/{model}")
    paths: dict[str, dict[str, Any]] = {}
    for route in ADMIN_ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = route.openapi()
    return {
        "openapi": "3.1.0",
        "info": {"title": "edgeworks admin API", "version": "1",
                 "description": "Human override, deployments and approvals of a running edgeworks server. "
                                f"Every operation but health and the JWKS needs a bearer JWT with the scope {ADMIN_SCOPE}; "
                                "a token with a tenant claim acts only within that tenant, one without is a global admin."},
        "components": {"schemas": defs.get("$defs", {}),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}},
        "paths": paths,
    }
