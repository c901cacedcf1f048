"""The admin plane under `/__edgeworks/`: health, the kill switch, deployments and versions,
approvals of held requests, a live log tail and the OpenAPI document describing all of it. A
Starlette app; the request hot path never goes through it.

Access: ``GET /__edgeworks/health`` is open and answers only ``{"status": "ok"}``;
``GET /__edgeworks/.well-known/jwks.json`` is open too: the public keys of the principals of the
serving versions (`runtime.identity`), for services that verify their assertions. Every other
endpoint (``/health/details`` with the isolates' pids included) needs an admin caller, see
`admin_access`: a bearer JWT with the scope ``edgeworks:admin`` (a tenant claim confines it to
that tenant), or, without an ``[auth]`` section, a loopback client in ``dev`` mode (refused with
403 ``admin_disabled`` in ``serve`` mode). Every admin call that changes something is audited
as ``admin.*`` with the caller's subject, and every refusal as ``admin.denied``.

Deployments (see `_Deployer`): one deploy, rollback or split runs at a time. A bundle is staged
in the version store, validated (`load_app`, then loaded in fresh isolates and probed, see
`probe.py`), committed, and only then gets the traffic; a bundle that fails any step is answered
with a structured 4xx naming the cause (audited as ``admin.deploy_rejected``) and removed, and
the old version keeps serving. Any change of the current version clears a traffic split. ``serve`` restarted on
the same, unchanged app dir resumes the version that was current and its rollback history
(`VersionStore.write_active`); a changed app dir, or ``dev``, serves the app dir.
"""

from __future__ import annotations

import asyncio
import os
import traceback
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from runtime.admin.access import AccessDenied, AdminCaller
from runtime.admin.access import authorize as authorize_admin
from runtime.admin.api import (
    ADMIN_ROUTES,
    ADMIN_SCOPE,
    ActivationResult,
    AdminRoute,
    BodyRefused,
    DecisionRequest,
    KillRequest,
    ReviveRequest,
    RollbackRequest,
    SplitRequest,
    SplitResult,
    openapi_spec,
    parse_body,
)
from runtime.admin.port import FrontPort
from runtime.admin.probe import Unhealthy, probe
from runtime.admin.tail import Subscriber, TailHub, TailResponse
from runtime.admin.versions import MAX_BUNDLE_BYTES, BundleError, SecretsNeedKey, VersionStore
from runtime.admin.workflows import Handler, workflow_endpoints
from runtime.approvals import AlreadyDecided
from runtime.audit.records import REQUEST_ID
from runtime.config import AppConfig, ConfigError, load_app
from runtime.datakey import HOW_TO_SET, DataKeyError
from runtime.errors import error_json
from runtime.front.contract import Refusal
from runtime.front.deployments import Deployment
from runtime.front.supervisor import LoadFailed
from runtime.identity import PrincipalKeys, deployment_principals
from runtime.logs import log
from runtime.slo.config import parse_duration

__all__ = ["ADMIN_SCOPE", "build_admin"]

TAIL_QUEUE = 1000


def _err(status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, **extra}, status_code=status, headers=headers)


class _Problem(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any):
        super().__init__(message)
        self.code, self.message, self.cause = code, message, extra.get("cause")
        self.response = _err(status, code, message, **extra)


# -- deployments -----------------------------------------------------------------------------


class _Deployer:
    """Moves traffic between versions of the store; one change at a time."""

    def __init__(self, front: FrontPort, store: VersionStore):
        self.front = front
        self.deployments = front.deployments
        self.store = store
        self.environment = front.deployments.initial.environment  # the server's --env: a deploy's default
        self.lock = asyncio.Lock()
        self.aliases: dict[str, str] = {}
        self.history: list[str] = []  # activated version ids, the current one last
        self.started_from = self._record_initial()
        self.history = self._resume() or [self.started_from]
        self.aliases["v1"] = self.history[-1]  # the name Front.start gives the version it loads
        self._save()

    def _record_initial(self) -> str:
        root = Path(self.deployments.initial.root)
        return self.store.record_dir(root, by=None, message=f"serving at startup from {root}",
                                     skip=[self.front.state_dir], environment=self.environment).id

    def _resume(self) -> list[str] | None:
        """`serve` restarted on an unchanged app dir comes back with the version that was
        current, and its history (for rollback). A changed app dir wins, like a fresh start;
        `dev` always serves the app dir."""
        state = self.store.read_active()
        if self.front.dev or state is None or state.get("started_from") != self.started_from:
            return None
        history = [v for v in state["history"] if self.store.get(v) is not None]
        if not history or history[-1] == self.started_from:
            return history or None
        try:
            self.deployments.initial = self._load(history[-1])
        except ConfigError as e:
            log("resume_failed", version=history[-1], error=str(e))
            return None
        log("resumed", version=history[-1])
        return history

    def _save(self) -> None:
        self.store.write_active(self.started_from, self.history)

    def _activated(self, vid: str) -> None:
        self.history.append(vid)
        self._save()

    def current(self) -> str | None:
        dep = self.deployments.current
        return None if dep is None else self.aliases.get(dep.version, dep.version)

    def split_state(self) -> dict[str, Any] | None:
        split = self.deployments.split
        if split is None:
            return None
        return {"version": self.aliases.get(split[0].version, split[0].version), "percent": round(split[1] * 100, 4)}

    def _load(self, vid: str) -> AppConfig:
        """Version `vid`'s config, with the environment it was deployed for."""
        meta = self.store.get(vid)
        return load_app(self.store.app_dir(vid), meta.environment if meta is not None else None)

    def _app(self, vid: str) -> AppConfig:
        if self.store.get(vid) is None:
            raise _Problem(404, "unknown_version", f"no version {vid!r} in the store")
        try:
            return self._load(vid)
        except ConfigError as e:
            raise _Problem(422, "invalid_config", "the version's configuration is invalid", problems=e.problems) from None

    async def _bring_up(self, app: AppConfig, vid: str) -> Deployment:
        """Load `app` in fresh isolates and probe it (see `probe.py`); on failure nothing of it
        keeps running and a 422 names the cause."""
        try:
            dep = await self.deployments.load(app, vid)
        except LoadFailed as e:
            raise _load_problem(e) from None
        try:
            await probe(self.front, dep)
        except BaseException as e:
            await asyncio.shield(self.deployments.unload(dep))
            if isinstance(e, LoadFailed):
                raise _load_problem(e) from None
            raise
        return dep

    async def _activate(self, vid: str) -> None:
        dep = await self._bring_up(self._app(vid), vid)
        self.deployments.promote(dep)
        self.deployments.clear_split()

    async def deploy(self, bundle: bytes, by: str | None, message: str | None, max_bytes: int,
                     environment: str | None = None) -> dict[str, Any]:
        """Stage, load and promote `bundle` with `environment` (default: the server's)."""
        environment = environment or self.environment
        async with self.lock:
            try:
                staged = await asyncio.to_thread(self.store.stage, bundle, max_bytes=max_bytes)
            except SecretsNeedKey as e:
                raise _Problem(422, "data_key_required", str(e), how=HOW_TO_SET) from None
            except BundleError as e:
                raise _Problem(400, "bad_bundle", str(e)) from None
            except OSError as e:  # the store's disk, not the bundle (which maps to BundleError)
                raise _Problem(507, "storage_error", f"the version store could not take the bundle: {e}") from None
            try:
                try:
                    app = load_app(staged.root, environment)
                except ConfigError as e:
                    raise _Problem(422, "invalid_config", "the bundle's configuration is invalid", problems=e.problems) from None
                previous = self.current()
                dep = await self._bring_up(app, staged.id)
                try:  # committed before it gets traffic: a served version is always in the store
                    meta = self.store.commit(staged, by=by, message=message, environment=environment)
                except OSError as e:
                    await self.deployments.unload(dep)
                    raise _Problem(507, "storage_error", f"the version store could not record the version: {e}") from None
            except BaseException:
                self.store.discard(staged)
                raise
            self.deployments.promote(dep)
            self.deployments.clear_split()
            self._activated(meta.id)
            return {"version": self.store.describe(meta), "previous": previous}

    async def rollback(self, version: str | None) -> dict[str, Any]:
        async with self.lock:
            previous = self.current()
            if version is None:
                if len(self.history) < 2:
                    raise _Problem(409, "no_previous_version", "there is no earlier version to roll back to")
                target = self.history[-2]
                await self._activate(target)
                self.history.pop()
                self._save()
            else:
                await self._activate(version)
                self._activated(version)
            return {"current": self.current(), "previous": previous, "split": None}

    async def split(self, version: str, percent: float) -> dict[str, Any]:
        async with self.lock:
            previous = self.current()
            if percent == 0:
                self.deployments.clear_split()
                return {"current": previous, "previous": previous, "split": None}
            if version == previous:
                raise _Problem(409, "already_current", f"{version!r} is the current version")
            if percent == 100:
                await self._activate(version)
                self._activated(version)
                return {"current": self.current(), "previous": previous, "split": None}
            split = self.deployments.split
            if split is not None and self.aliases.get(split[0].version, split[0].version) == version:
                self.deployments.set_split(split[0], percent / 100)
            else:
                dep = await self._bring_up(self._app(version), version)
                self.deployments.set_split(dep, percent / 100)
            return {"current": previous, "previous": previous, "split": self.split_state()}


def _load_problem(e: LoadFailed) -> _Problem:
    """The 422 for a version that did not load (`load_failed`), did not start in time
    (`startup_timeout`) or failed its probe (`deploy_unhealthy`); `cause` says why."""
    if isinstance(e, Unhealthy):
        return _Problem(422, "deploy_unhealthy", str(e), cause=e.cause)
    if e.cause == "startup_timeout":
        return _Problem(422, "startup_timeout", str(e), cause=e.cause)
    return _Problem(422, "load_failed", str(e), cause=e.cause)


# -- the app ---------------------------------------------------------------------------------


def build_admin(front: FrontPort, *, max_bundle_bytes: int | None = None, tail_queue: int = TAIL_QUEUE) -> Starlette:
    """The admin app for `front`. Bundles are capped at `max_bundle_bytes` (default: the
    environment variable EDGEWORKS_MAX_BUNDLE_BYTES, else 64 MiB). Versions' secrets are sealed
    with the front's data key, the one that seals held requests."""
    if max_bundle_bytes is None:
        max_bundle_bytes = int(os.environ.get("EDGEWORKS_MAX_BUNDLE_BYTES") or MAX_BUNDLE_BYTES)
    store = VersionStore(front.state_dir, key=front.data_key)
    deployer = _Deployer(front, store)
    approvals = front.approvals
    hub = TailHub()
    spec = openapi_spec()

    def audit(kind: str, request: Request, subject: str | None, **fields: Any) -> None:
        caller = getattr(request.state, "caller", None)
        if caller is not None and caller.tenant is not None:  # a tenant admin's acts are its tenant's
            fields.setdefault("tenant", caller.tenant)
        front.audit_log.append(kind, request_id=request.state.rid, subject=subject, **fields)

    def denied(request: Request, e: AccessDenied) -> Response:
        front.audit_log.append("admin.denied", request_id=request.state.rid, path=request.url.path,
                               code=e.code, status=e.status)
        return _err(e.status, e.code, e.message,
                    headers={"www-authenticate": e.www_authenticate} if e.www_authenticate else None)

    def guarded(fn: Handler, *, global_only: str | None = None) -> Callable[[Request], Awaitable[Response]]:
        """`fn` behind admin access control; `global_only` names what needs a global admin.
        The caller is in ``request.state.caller`` (an `AdminCaller`)."""
        async def endpoint(request: Request) -> Response:
            # a client's id only when its entries can be found by it (see RecordMaker.accepts_request_id)
            cand = request.headers.get("x-request-id")
            ok = cand is not None and REQUEST_ID.match(cand) and front.audit_log.accepts_request_id(cand)
            request.state.rid = cand if ok else uuid.uuid4().hex
            dep = front.deployments.current
            try:
                caller = authorize_admin(dep.contract.verifier if dep is not None else None, front.dev,
                                         request.scope, request.headers.get("authorization"))
                if global_only:
                    caller.require_global(global_only)
            except AccessDenied as e:
                return denied(request, e)
            request.state.caller = caller
            subject = caller.subject
            if request.method == "GET" and fn is not tail:
                front.audit_log.append("admin.read", request_id=request.state.rid, subject=subject,
                                       tenant=caller.tenant, path=request.url.path)
            try:
                return await fn(request, subject)
            except _Problem as p:
                return p.response
            except BodyRefused as b:
                return _err(b.status, b.code, b.message, **b.extra)
            except AccessDenied as e:
                return denied(request, e)
            except ClientDisconnect:  # went away (or timed out) mid-body: nobody to answer
                log("admin_client_gone", request_id=request.state.rid, path=request.url.path)
                return Response(status_code=499)
        return endpoint

    async def health(request: Request, subject: str | None) -> JSONResponse:
        # open to anyone: liveness only, nothing about the processes behind it
        if front.deployments.current is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        return JSONResponse({"status": "ok"})

    principal_keys = PrincipalKeys(front.state_dir)

    async def jwks(request: Request, subject: str | None) -> JSONResponse:
        # open to anyone: public keys only, for services that check the principals' assertions
        deps = [d for d in (front.deployments.current, front.deployments.split[0] if front.deployments.split else None) if d]
        principals = {p for d in deps for p in deployment_principals(d.app)}
        body = await asyncio.to_thread(principal_keys.jwks, principals)  # a new principal's key is made on first use
        return JSONResponse(body, headers={"cache-control": "public, max-age=60"})

    async def health_details(request: Request, subject: str | None) -> JSONResponse:
        dep = front.deployments.current
        return JSONResponse({
            "ok": dep is not None,
            "version": deployer.current() if dep else None,
            "environment": dep.app.environment if dep else None,
            "scripts": {n: {"pids": p.pids(), "restarts": p.restarts} for n, p in dep.pools.items()} if dep else {},
        })

    async def openapi(request: Request, subject: str | None) -> JSONResponse:
        return JSONResponse(spec)

    async def scheduled(request: Request, subject: str | None) -> JSONResponse:
        script = request.query_params.get("script")
        dep = front.deployments.current
        if not script and dep is not None and len(dep.app.scripts) == 1:
            script = dep.app.scripts[0].name
        if not script:
            return _err(400, "bad_request", "query parameter 'script' is required")
        cron = request.query_params.get("cron") or "* * * * *"
        try:
            result = await front.fire_scheduled(script, cron)
        except LookupError as e:
            return _err(404, "not_found", str(e))
        audit("admin.scheduled", request, subject, script=script, cron=cron, ok=bool(result.get("ok")))
        return JSONResponse(result, status_code=200 if result.get("ok") else 500)

    # -- kill switch
    def confine_kill(caller: AdminCaller, kind: str, name: str) -> None:
        """A tenant admin may stop (and revive) its own tenant, nothing else."""
        if kind != "tenant":
            caller.require_global(f"a {kind} kill")
        elif not caller.sees(name):
            raise _Problem(404, "not_found", f"no tenant {name!r}")

    async def kill(request: Request, subject: str | None) -> JSONResponse:
        body = await parse_body(request, KillRequest)
        confine_kill(request.state.caller, body.kind, body.name)
        front.kills.kill(body.kind, body.name, body.reason, actor=subject)
        audit("admin.kill", request, subject, target_kind=body.kind, target=body.name, reason=body.reason)
        log("killed", kind=body.kind, name=body.name, reason=body.reason, subject=subject)
        entry = next(k for k in front.kills.list() if (k.kind, k.name) == (body.kind, body.name))
        return JSONResponse({"kill": _kill_dict(entry)})

    async def revive(request: Request, subject: str | None) -> JSONResponse:
        body = await parse_body(request, ReviveRequest)
        confine_kill(request.state.caller, body.kind, body.name)
        changed = front.kills.revive(body.kind, body.name, actor=subject)
        audit("admin.revive", request, subject, target_kind=body.kind, target=body.name, changed=changed)
        log("revived", kind=body.kind, name=body.name, subject=subject, changed=changed)
        return JSONResponse({"kind": body.kind, "name": body.name, "revived": changed})

    async def kills(request: Request, subject: str | None) -> JSONResponse:
        caller: AdminCaller = request.state.caller  # other tenants' kills are invisible to a tenant admin
        return JSONResponse({"kills": [_kill_dict(k) for k in front.kills.list()
                                       if k.kind != "tenant" or caller.sees(k.name)]})

    # -- versions
    async def versions(request: Request, subject: str | None) -> JSONResponse:
        return JSONResponse({"current": deployer.current(), "split": deployer.split_state(),
                             "versions": [store.describe(m) for m in store.list()]})

    def rejected(request: Request, subject: str | None, p: _Problem, kind: str = "admin.deploy_rejected") -> JSONResponse:
        audit(kind, request, subject, code=p.code, cause=p.cause, detail=p.message, status=p.response.status_code)
        return p.response

    async def deploy(request: Request, subject: str | None) -> JSONResponse:
        too_large = _Problem(413, "bundle_too_large", f"bundles are limited to {max_bundle_bytes} bytes")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_bundle_bytes:
            return rejected(request, subject, too_large)
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bundle_bytes:
                    return rejected(request, subject, too_large)
                chunks.append(chunk)
        except ClientDisconnect:  # nobody to answer, but the attempt stays on the record
            return rejected(request, subject, _Problem(400, "incomplete_bundle", f"the client went away after {size} bytes"))
        message = request.query_params.get("message") or request.headers.get("x-edgeworks-message")
        environment = request.query_params.get("env") or None
        try:
            result = await deployer.deploy(b"".join(chunks), subject, message, max_bundle_bytes, environment)
        except _Problem as p:
            return rejected(request, subject, p)
        except Exception as e:  # a bug, but still an answer the client can read, and on the record
            log("error", request_id=request.state.rid, exception=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
            return rejected(request, subject, _Problem(500, "deploy_error", f"the deploy failed: {type(e).__name__}: {e}"))
        environment = result["version"]["environment"]
        audit("admin.deploy", request, subject, version=result["version"]["id"], previous=result["previous"],
              message=message, environment=environment)
        log("deployed", version=result["version"]["id"], previous=result["previous"], subject=subject,
            environment=environment)
        return JSONResponse(result, status_code=201)

    async def rollback(request: Request, subject: str | None) -> JSONResponse:
        body = await parse_body(request, RollbackRequest)
        try:
            result = await deployer.rollback(body.version)
        except _Problem as p:
            return rejected(request, subject, p, "admin.rollback_rejected")
        audit("admin.rollback", request, subject, version=result["current"], previous=result["previous"])
        log("rolled_back", version=result["current"], previous=result["previous"], subject=subject)
        return JSONResponse(ActivationResult.model_validate(result).model_dump())

    async def split(request: Request, subject: str | None) -> JSONResponse:
        body = await parse_body(request, SplitRequest)
        try:
            result = await deployer.split(body.version, body.percent)
        except _Problem as p:
            return rejected(request, subject, p, "admin.split_rejected")
        split_to = front.deployments.split
        guarded = body.guard and split_to is not None
        front.slo.guard(split_to[0] if guarded and split_to is not None else None, subject)
        audit("admin.split", request, subject, version=body.version, percent=body.percent, current=result["current"],
              guard=guarded)
        log("split", version=body.version, percent=body.percent, current=result["current"], subject=subject,
            guard=guarded)
        return JSONResponse(SplitResult.model_validate({**result, "guarded": guarded}).model_dump())

    # -- SLOs
    async def slo(request: Request, subject: str | None) -> JSONResponse:
        since_text = request.query_params.get("since")
        try:
            since = parse_duration(since_text) if since_text else None
        except ValueError as e:
            return _err(400, "bad_request", f"since: {e}")
        report = await asyncio.to_thread(front.slo.report, since, request.query_params.get("version") or None)
        return JSONResponse({**report, "guarded_split": front.slo.guarded()})

    # -- metrics
    async def metrics(request: Request, subject: str | None) -> Response:
        if front.metrics is None:
            return _err(404, "metrics_disabled", "metrics are off ([observability] metrics = false)")
        body, content_type = front.metrics.exposition(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    # -- approvals
    async def list_approvals(request: Request, subject: str | None) -> JSONResponse:
        status = request.query_params.get("status")
        if status not in (None, "pending", "approved", "rejected"):
            return _err(400, "bad_request", "status is one of pending, approved, rejected")
        caller: AdminCaller = request.state.caller
        tenant = request.query_params.get("tenant")
        if caller.tenant is not None:
            if tenant is not None and tenant != caller.tenant:
                return JSONResponse({"approvals": []})  # another tenant's: invisible, not forbidden
            tenant = caller.tenant
        return JSONResponse({"approvals": approvals.list(status, tenant=tenant)})

    def visible_approval(request: Request) -> dict[str, Any]:
        row = approvals.get(request.path_params["id"])
        if row is None or not request.state.caller.sees(row["tenant"]):
            raise _Problem(404, "not_found", "no such approval")
        return row

    async def get_approval(request: Request, subject: str | None) -> JSONResponse:
        return JSONResponse(visible_approval(request))

    async def decide(request: Request, subject: str | None, status: Literal["approved", "rejected"]) -> JSONResponse:
        aid = request.path_params["id"]
        visible_approval(request)  # a row's tenant never changes: checking before deciding is enough
        body = await parse_body(request, DecisionRequest)
        by = body.by or subject
        msg = None
        if status == "approved":
            try:  # a request that cannot be replayed stays pending until the right key is configured
                msg = approvals.message(aid)
            except DataKeyError as e:
                return _err(503, "data_key_unavailable", str(e))
            except KeyError:
                return _err(404, "not_found", "no such approval")
        try:
            row = approvals.decide(aid, status, by, body.reason)
        except KeyError:
            return _err(404, "not_found", "no such approval")
        except AlreadyDecided as e:
            return _err(409, "already_decided", str(e))
        audit(f"admin.approval.{'approve' if status == 'approved' else 'reject'}", request, subject,
              approval_id=aid, held_request_id=row["request_id"], script=row["script"], tenant=row["tenant"],
              decided_by=by, reason=body.reason)
        if msg is not None:
            await _run_approved(aid, row, msg)
            return JSONResponse(approvals.get(aid))  # the row as the replay left it
        return JSONResponse(row)

    async def _run_approved(aid: str, row: dict[str, Any], msg: dict[str, Any]) -> None:
        rid = row["request_id"]
        dep = front.deployments.current
        try:
            if dep is None:
                raise LookupError("the runtime is still starting")
            dep.contract.check_killed("script", row["script"], rid)
            dep.contract.check_killed("tenant", row["tenant"], rid, script=row["script"])
            status, headers, body, _ = await front.run_collected(msg, row["script"])
        except Refusal as r:
            status, headers, body = r.status, [("content-type", "application/json")], error_json(r.code, r.message, rid, **r.extra)
        except LookupError as e:
            status, headers, body = 503, [("content-type", "application/json")], error_json("script_gone", str(e), rid)
        approvals.record_response(aid, status, headers, body)
        front.audit_log.append("request.approved_run", request_id=rid, approval_id=aid, script=row["script"],
                               tenant=row["tenant"], subject=row["subject"], risk=row["risk"], status=status)
        log("request", request_id=rid, script=row["script"], method=row["method"], path=row["path"], status=status,
            risk=row["risk"], approval_id=aid)

    async def approve(request: Request, subject: str | None) -> JSONResponse:
        return await decide(request, subject, "approved")

    async def reject(request: Request, subject: str | None) -> JSONResponse:
        return await decide(request, subject, "rejected")

    # -- tail
    async def tail(request: Request, subject: str | None) -> Response:
        q = request.query_params
        status = q.get("status")
        if status is not None and not (status.isdigit() and len(status) == 3 or status in ("1xx", "2xx", "3xx", "4xx", "5xx")):
            return _err(400, "bad_request", "status is a code like 404 or a class like 5xx")
        limit = q.get("limit")
        if limit is not None and not (limit.isdigit() and int(limit) > 0):
            return _err(400, "bad_request", "limit is a positive integer")
        audit("admin.tail", request, subject, filters={k: v for k, v in q.items()})
        log("tail_subscribed", filters=dict(q.items()), subject=subject)
        sub = Subscriber(status, q.get("script"), q.get("request_id"), tail_queue)
        return TailResponse(hub, sub, int(limit) if limit else None)

    endpoints: dict[str, Handler] = {
        "health": health, "health_details": health_details, "openapi": openapi, "scheduled": scheduled,
        "kill": kill, "revive": revive, "kills": kills, "versions": versions, "deploy": deploy,
        "rollback": rollback, "split": split, "list_approvals": list_approvals, "get_approval": get_approval,
        "approve": approve, "reject": reject, "tail": tail, "jwks": jwks, "slo": slo, "metrics": metrics, **workflow_endpoints(front, audit),
    }
    return Starlette(routes=_routes(endpoints, guarded))


def _routes(endpoints: dict[str, Handler],
            guarded: Callable[..., Callable[[Request], Awaitable[Response]]]) -> list[Route]:
    """The Starlette routes of `ADMIN_ROUTES`, each served by the endpoint it names: open ones
    as they are, every other one behind `guarded`. A declared route without an endpoint, or an
    endpoint no route declares, is a bug caught when the app is built."""
    declared = {r.endpoint for r in ADMIN_ROUTES}
    if declared != endpoints.keys():
        raise RuntimeError(f"admin routes and endpoints differ: declared without an endpoint "
                           f"{sorted(declared - endpoints.keys())}, undeclared {sorted(endpoints.keys() - declared)}")

    def serve(route: AdminRoute) -> Callable[[Request], Awaitable[Response]]:
        fn = endpoints[route.endpoint]
        if not route.open:
            return guarded(fn, global_only=route.global_only)

        async def endpoint(request: Request) -> Response:
            return await fn(request, None)
        return endpoint

    return [Route(r.path, serve(r), methods=[r.method], name=r.endpoint) for r in ADMIN_ROUTES]


def _kill_dict(k: Any) -> dict[str, Any]:
    return {"kind": k.kind, "name": k.name, "reason": k.reason, "actor": k.actor, "ts": k.ts}
