"""What an alert transition causes: an audit entry (``slo.alert_firing`` / ``slo.alert_resolved``
with the objective, its family, the window pair, both burn rates and the objective's current
value), a log line of the same name and fields, and, when the objective names a ``webhook``, a
POST of the same fields as JSON (plus ``kind`` and ``ts``).

The webhook goes out through the runtime's egress client as principal ``runtime``, under the
app's ``[egress]`` rules plus one rule per objective webhook allowing exactly its origin
(scheme, host, port) to that principal, as ``[audit] anchor_url`` is allowed: naming the URL in
the manifest is the operator's permission, so an IP literal there (loopback included) is
reachable while a host name must still resolve to public addresses; in ``dev`` without an
``[egress]`` section everything is open, as for handlers. The kill switch kind ``egress``
applies and each call is audited as ``egress.request`` / ``egress.denied``. A failed or refused
POST is logged (``slo_webhook_failed``) and never retried: the audit entry is the record.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from runtime.egress import (
    RUNTIME_PRINCIPAL,
    EgressClient,
    EgressDenied,
    EgressError,
    EgressPolicy,
    EgressRule,
)
from runtime.egress.policy import DEFAULT_LEVELS
from runtime.logs import log
from runtime.slo.alerts import Transition

__all__ = ["Notifier", "webhook_policy"]

WEBHOOK_TIMEOUT_S = 5.0
AuditHook = Callable[[str, dict[str, Any]], None]


def _origin_rule(url: str) -> EgressRule:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return EgressRule(principals=[RUNTIME_PRINCIPAL], schemes=[scheme], hosts=[parts.hostname or ""],
                      ports=[parts.port or (443 if scheme == "https" else 80)])


def webhook_policy(app: Any, webhooks: Sequence[str], *, dev: bool) -> EgressPolicy:
    """The app's ``[egress]`` policy with each webhook's origin allowed to ``runtime``."""
    levels = app.ai.levels if getattr(app, "ai", None) is not None else DEFAULT_LEVELS
    section = getattr(app, "egress", None)
    rules = [*(section.rules if section is not None else []), *(_origin_rule(u) for u in webhooks)]
    return EgressPolicy(rules, open=dev and section is None, levels=levels, configured=section is not None)


class Notifier:
    """Reports transitions; `audit(kind, fields)` journals an entry; `egress` carries webhooks."""

    def __init__(self, audit: AuditHook, egress: EgressClient | None) -> None:
        self.audit = audit
        self.egress = egress

    async def notify(self, transition: Transition) -> None:
        fields = transition.describe()
        self.audit(transition.audit_kind, dict(fields))
        log(transition.audit_kind, **fields)
        url = getattr(transition.objective, "webhook", None)
        if url and self.egress is not None:
            body = json.dumps({"kind": transition.audit_kind, "ts": transition.ts, **fields}, default=str)
            await self._post(url, body)

    async def _post(self, url: str, body: str) -> None:
        assert self.egress is not None
        parts = urlsplit(url)  # shown without credentials or query, which may carry a token
        shown = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"
        try:
            response = await self.egress.request("POST", url, principal=RUNTIME_PRINCIPAL, level="public",
                                                 headers={"content-type": "application/json"},
                                                 content=body.encode(), timeout=WEBHOOK_TIMEOUT_S)
        except (EgressDenied, EgressError) as exc:
            log("slo_webhook_failed", url=shown, error=str(exc))
            return
        if not response.is_success:
            log("slo_webhook_failed", url=shown, status=response.status_code)

    async def aclose(self) -> None:
        if self.egress is not None:
            await self.egress.aclose()
