"""The operational contract the front applies to every request before a handler runs.

Order, and what each step may answer instead of the handler:
1. kill switch for the script and the route            -> 503 {"error": "killed", "reason"}
2. identity: verify the bearer token per route policy  -> 401 / 403 with WWW-Authenticate
3. kill switch for the tenant                          -> 503 {"error": "killed", "reason"}
4. risk label from the rules; when a rule reads body fields, the body is parsed exactly as the
   handler's `request.json()` parses it, whatever its content type (a body that is not JSON
   matches such rules: fail closed, see risk.py)
   body nested deeper than MAX_JSON_DEPTH                -> 400 {"error": "json_too_deep", "limit"}
   action block                                        -> 403 {"error": "blocked_by_policy"}
   action approve                                      -> 202 {"error": "approval_required"}
5. data classification level: the route's, raised by matching risk rules and by the route's
   `field_levels` present in the body (runtime/classification.py); sent to the isolate with the
   request and recorded as the classification of the request's entries and log line
Refusals by the kill switch, identity and risk rules are audited (`request.killed`,
`auth.failure`, `request.blocked`, `request.held`, `request.hold_refused`, with request id, script
and, where known, tenant, subject and risk); the JWT itself is never logged or audited. A request
that reaches an isolate gets one `request` entry, journaled by the front (app.py handle_http)
before the last byte of its response leaves: method, path, status, `started` (its start time),
cpu_ms, wall_ms, error, and the fields above. `[audit] requests = false` turns that entry off;
refusals are audited regardless, before they are answered (a refusal no step above records is
audited as `request.refused` with its code).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runtime.classification import Levels, request_level
from runtime.config import AppConfig, RouteConfig
from runtime.front.auditd import AuditJournal
from runtime.front.identity import AuthError, Identity, Verifier
from runtime.killswitch import KillSwitch
from runtime.risk import UNREADABLE_BODY, RiskDecision, RiskEngine
from runtime.safejson import JSONTooDeep, parse_json

__all__ = ["Contract", "Refusal"]


@dataclass
class Refusal(Exception):
    status: int
    code: str
    message: str
    extra: dict[str, Any]
    headers: list[tuple[bytes, bytes]]
    audited: bool = False  # already on the record (else the front audits it as request.refused)


class Contract:
    """The policy of one deployed version (identity, risk rules) over the runtime-wide kill
    switch and audit log, which outlive versions."""

    def __init__(self, app: AppConfig, secrets: dict[str, str], kills: KillSwitch, audit_log: AuditJournal):
        self.verifier = Verifier(app.auth, secrets, base_dir=app.root) if app.auth else None
        self.risk = RiskEngine(app.risk)
        self.levels = Levels.of(app.ai.levels if app.ai is not None else None)
        self.kills = kills
        self.audit_log = audit_log
        self.audit_requests = app.audit.requests

    def audit(self, kind: str, **fields: Any) -> None:
        self.audit_log.append(kind, **fields)

    def route_mode(self, route: RouteConfig) -> str:
        if route.auth is not None:
            return route.auth
        return "required" if self.verifier is not None else "none"

    def check_killed(self, kind: str, name: str | None, rid: str, **ctx: Any) -> None:
        if name is None:
            return
        reason = self.kills.check(kind, name)
        if reason is not None:
            self.audit("request.killed", request_id=rid, target_kind=kind, target=name, reason=reason, **ctx)
            raise Refusal(503, "killed", f"{kind} {name!r} is stopped by the kill switch",
                          {"reason": reason, "target": f"{kind}:{name}"}, [], audited=True)

    def identify(self, route: RouteConfig, authorization: str | None, rid: str, script: str) -> Identity | None:
        mode = self.route_mode(route)
        if mode == "none" or self.verifier is None:
            return None
        try:
            return self.verifier.authenticate(authorization, mode, route.scopes, route.require_tenant)  # type: ignore[arg-type]
        except AuthError as e:
            self.audit("auth.failure", request_id=rid, script=script, code=e.code, status=e.status)
            raise Refusal(e.status, e.code, e.message, {}, [(b"www-authenticate", e.www_authenticate.encode())],
                          audited=True) from None

    def assess(self, route: RouteConfig, method: str, path: str, tenant: str | None,
               body: bytes) -> tuple[RiskDecision, str]:
        """The risk decision and the data classification level of a request."""
        parsed: Any = None
        if (self.risk.reads_body or route.field_levels) and body:
            try:
                parsed = parse_json(body)
            except JSONTooDeep as e:
                raise Refusal(400, "json_too_deep", f"the request body nests JSON deeper than {e.limit} levels",
                              {"limit": e.limit}, []) from None
            except ValueError:
                parsed = UNREADABLE_BODY
        decision = self.risk.evaluate(method, path, tenant, parsed)
        level = request_level(self.levels, route.classification, decision.classifications, route.field_levels, parsed)
        return decision, level
