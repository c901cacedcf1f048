"""`edgeworks workflows ...`: the human override for workflow instances on a running server.

``--tenant NAME`` addresses the instances of a tenant-scoped binding (a global admin's choice; a
tenant admin's token acts within its own tenant anyway); ``list`` without it shows a global
admin every tenant's instances."""

from __future__ import annotations

import argparse
from typing import Any

from runtime.commands.deploy import add_target, call
from runtime.safejson import JSONTooDeep, parse_json

__all__ = ["register"]


def json_value(text: str) -> Any:
    """An argparse type: a JSON argument, refused with a message (exit 2) instead of a traceback."""
    try:
        return parse_json(text)
    except JSONTooDeep as e:
        raise argparse.ArgumentTypeError(f"nests JSON deeper than {e.limit} levels") from None
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e})") from None


_AS_PROPOSED = object()


def _decision(x: argparse.Namespace) -> dict[str, Any]:
    """An approve/reject body; an amended payload only when --payload was given (null included)."""
    body = {"by": x.by, "reason": x.reason}
    payload = getattr(x, "payload", _AS_PROPOSED)
    if payload is not _AS_PROPOSED:
        body["payload"] = payload
    return body


def register(sub: Any) -> None:
    p = sub.add_parser("workflows", help="list, inspect and steer workflow instances",
                       description="Human override for the workflow binding BINDING of script SCRIPT.")
    wsub = p.add_subparsers(dest="wf_command", required=True, metavar="ACTION")

    def action(name: str, help: str, instance: bool = True) -> argparse.ArgumentParser:
        a = wsub.add_parser(name, help=help, description=help)
        a.add_argument("script")
        a.add_argument("binding", help="the workflow binding name, e.g. REFUND")
        if instance:
            a.add_argument("instance", help="instance id")
        a.add_argument("--tenant", default=None, help="the tenant of a tenant-scoped binding's instances")
        add_target(a)
        return a

    def params(x: argparse.Namespace, **extra: str | None) -> dict[str, str] | None:
        found = {k: v for k, v in {"tenant": x.tenant, **extra}.items() if v is not None}
        return found or None

    a = action("list", "list instances (optionally by status)", instance=False)
    a.add_argument("--status", default=None)
    a.set_defaults(func=lambda x: call(x, "GET", f"workflows/{x.script}/{x.binding}", params=params(x, status=x.status)))
    a = action("create", "create an instance", instance=False)
    a.add_argument("--id", default=None)
    a.add_argument("--params", type=json_value, default=None, help="JSON params")
    a.set_defaults(func=lambda x: call(x, "POST", f"workflows/{x.script}/{x.binding}", params=params(x),
                                       json={"id": x.id, "params": x.params}))
    a = action("status", "status and step history of an instance")
    a.set_defaults(func=lambda x: call(x, "GET", f"workflows/{x.script}/{x.binding}/{x.instance}", params=params(x)))
    for name in ("pause", "resume", "terminate", "restart"):
        a = action(name, f"{name} an instance")
        a.set_defaults(func=lambda x, n=name: call(x, "POST", f"workflows/{x.script}/{x.binding}/{x.instance}/{n}",
                                                   params=params(x)))
    a = action("event", "send an event to an instance")
    a.add_argument("--type", required=True)
    a.add_argument("--payload", type=json_value, default=None, help="JSON payload")
    a.set_defaults(func=lambda x: call(x, "POST", f"workflows/{x.script}/{x.binding}/{x.instance}/event", params=params(x),
                                       json={"type": x.type, "payload": x.payload}))
    for name in ("approve", "reject"):
        a = action(name, f"{name} a pending approval")
        a.add_argument("--by", default=None, help="who decided (default: the token's subject)")
        a.add_argument("--reason", default=None)
        if name == "approve":
            a.add_argument("--payload", type=json_value, default=_AS_PROPOSED,
                           help="JSON: an amended value for the workflow to go on with (default: as proposed)")
        a.set_defaults(func=lambda x, n=name: call(x, "POST", f"workflows/{x.script}/{x.binding}/{x.instance}/{n}", params=params(x),
                                                   json=_decision(x)))
