"""Human override for workflows: list instances, see status and history, pause, resume,
terminate, restart, send an event, approve or reject a pending approval.

The instances live in isolates; each call is relayed to one isolate of the script
(`Front.call` with a `runtime.protocol.WorkflowAdmin` message), which performs it through the script's own workflow binding, within
one tenant. Instances of a ``tenant_scoped`` binding are addressed with ``?tenant=NAME``: a
tenant admin always acts within its own tenant (another tenant's instances do not exist for
it: 404); a global admin names the tenant, and its list without ``?tenant`` shows every
tenant's instances, each with its tenant. Instances of a binding that is not tenant-scoped are
shared by every tenant, so only a global admin steers them.

What an instance holds is shown redacted (`runtime.redaction`, as data of the instance's level;
the highest level when the status names none): its output, its errors, each step's and
compensation's errors and the pause reason. The records themselves stay sealed and unredacted
in the isolate, for replay. Error messages the isolate answers with are redacted too.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from runtime.admin.access import AccessDenied
from runtime.admin.api import ACTIONS, CreateBody, DecisionBody, EventBody, parse_body
from runtime.admin.port import FrontPort
from runtime.protocol import WorkflowAdmin
from runtime.redact import Redactor

__all__ = ["Handler", "workflow_endpoints"]

# an admin endpoint before access control: the request and the caller's subject
Handler = Callable[[Request, str | None], Awaitable[Response]]


def _status_for(code: str) -> int:
    """HTTP status of a workflow error code: what is missing, what is malformed, what conflicts."""
    if code in ("not_found", "no_such_binding", "no_such_script"):
        return 404
    if code.startswith(("invalid_", "max_")) or code == "bad_request":
        return 400
    if code == "unavailable":
        return 503
    return 409  # legal request, wrong state: duplicate_id, instance_finished, not_paused, killed...


def shown_status(status: dict[str, Any], redactor: Redactor) -> dict[str, Any]:
    """An instance's status as people see it: the data it holds redacted, ids and times kept."""
    shown = dict(status)
    for name in ("output", "error", "pause_reason"):
        if shown.get(name) is not None:
            shown[name] = redactor.redact(shown[name])
    for part in ("steps", "compensations"):
        rows = []
        for row in shown.get(part) or ():
            row = {**row, "error": redactor.redact(row.get("error"))}
            if isinstance(row.get("attempts"), list):
                row["attempts"] = [{**a, "error": redactor.redact(a.get("error"))} if isinstance(a, dict) else a
                                   for a in row["attempts"]]
            rows.append(row)
        if part in shown:
            shown[part] = rows
    return shown


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


def _tenant_scoped(front: FrontPort, script: str, binding: str) -> bool | None:
    """Whether the binding is tenant-scoped; None when the script or binding is unknown."""
    dep = front.deployments.current
    cfg = dep.scripts.get(script) if dep is not None else None
    found = [w for w in (cfg.workflows if cfg is not None else ()) if w.binding == binding]
    return found[0].tenant_scoped if found else None


def _classes(front: FrontPort, script: str, binding: str) -> dict[str, str]:
    """The workflow class and task class of a binding's instances (for the SLOs' corrections)."""
    dep = front.deployments.current
    cfg = dep.scripts.get(script) if dep is not None else None
    for w in cfg.workflows if cfg is not None else ():
        if w.binding == binding:
            return {"workflow_class": w.class_name, "task_class": w.task_class or w.class_name}
    return {}


def _tenant(front: FrontPort, request: Request, listing: bool = False) -> str | None:
    """The tenant the call acts within; raises AccessDenied (another tenant's instances are
    not found, not forbidden)."""
    caller = request.state.caller
    p = request.path_params
    asked = request.query_params.get("tenant") or None
    if caller.tenant is None:
        if asked is None and not listing and _tenant_scoped(front, p["script"], p["binding"]):
            raise AccessDenied(400, "tenant_required", f"{p['binding']} is tenant-scoped: name the instance's tenant "
                                                       "with ?tenant=NAME (edgeworks workflows ... --tenant NAME)")
        return asked
    if _tenant_scoped(front, p["script"], p["binding"]) is False:
        caller.require_global(f"workflow binding {p['binding']!r} (not tenant-scoped: its instances are shared by every tenant)")
    if asked is not None and asked != caller.tenant:
        raise AccessDenied(404, "not_found", "no such workflow instance")
    return caller.tenant


async def _body(request: Request, model: type[BaseModel]) -> Any:
    """The body as `model`; BodyRefused otherwise, 400 (not 422) when it does not match."""
    return await parse_body(request, model, invalid_status=400)


def workflow_endpoints(front: FrontPort, audit: Callable[..., None]) -> dict[str, Handler]:
    """The endpoints of the workflow operations, by the names `ADMIN_ROUTES` gives them."""
    async def call(request: Request, tenant: str | None, action: str, instance: str | None = None,
                   args: list[Any] | None = None, status: str | None = None) -> JSONResponse:
        p = request.path_params
        every = action == "list" and request.state.caller.tenant is None and tenant is None
        reply = await front.call(p["script"], WorkflowAdmin(
            binding=p["binding"], action=action, instance=instance, args=args or [], status=status,
            rid=uuid.uuid4().hex, every_tenant=every,
            identity={"subject": None, "tenant": tenant, "scopes": []} if tenant is not None else None))
        if "error" in reply:
            err = reply["error"]
            code = err.get("code") or err.get("type") or "workflow_error"
            http_status = err.get("status") if isinstance(err.get("status"), int) else _status_for(code)
            return _error(http_status, code, front.redaction.default.redact_text(str(err.get("message", ""))))
        result = reply.get("result")
        if action == "status" and isinstance(result, dict):
            level = result.get("level")
            policy = front.redaction
            result = shown_status(result, policy.for_level(level) if isinstance(level, str) else policy.highest)
        return JSONResponse(result)

    async def list_instances(request: Request, subject: str | None) -> Response:
        return await call(request, _tenant(front, request, listing=True), "list", status=request.query_params.get("status"))

    async def create(request: Request, subject: str | None) -> Response:
        p = request.path_params
        tenant = _tenant(front, request)
        body = await _body(request, CreateBody)
        audit("admin.workflow.create", request, subject, script=p["script"], binding=p["binding"], instance=body.id,
              tenant=tenant)
        return await call(request, tenant, "create", body.id, [body.params])

    async def status(request: Request, subject: str | None) -> Response:
        return await call(request, _tenant(front, request), "status", request.path_params["id"])

    async def act(request: Request, subject: str | None) -> Response:
        p = request.path_params
        action = p["action"]
        if action not in ACTIONS:
            return _error(404, "not_found", f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
        tenant = _tenant(front, request)
        if action == "event":
            ev = await _body(request, EventBody)
            args: list[Any] = [ev.type, ev.payload]
            action = "send_event"
        elif action in ("approve", "reject"):
            d = await _body(request, DecisionBody)
            args = [d.by or subject or "admin", d.reason]
            if "payload" in d.model_fields_set:
                if action == "reject":
                    return _error(400, "bad_request", "a rejection takes no payload")
                args.append(d.payload)
        else:
            args = []
        audit(f"admin.workflow.{p['action']}", request, subject, script=p["script"], binding=p["binding"],
              instance=p["id"], tenant=tenant, args=args, **_classes(front, p["script"], p["binding"]))
        return await call(request, tenant, action, p["id"], args)

    return {"workflow_list": list_instances, "workflow_create": create, "workflow_status": status,
            "workflow_act": act}
