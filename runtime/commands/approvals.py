"""`edgeworks approvals list|show|approve|reject`: requests a risk rule held for approval, on a
running server through its admin API (``--url``/``--to``, ``--token`` or $EDGEWORKS_TOKEN). A
tenant admin's token sees its own tenant's only; a global admin may filter with ``--tenant``."""

from __future__ import annotations

from typing import Any

from runtime.commands.deploy import add_target, call

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser("approvals", help="list and decide requests held for approval",
                       description="Requests that a [[risk]] rule with action = \"approve\" held.")
    asub = p.add_subparsers(dest="approvals_command", required=True, metavar="ACTION")

    a = asub.add_parser("list", help="held requests, oldest first")
    a.add_argument("--status", choices=("pending", "approved", "rejected"), default=None)
    a.add_argument("--tenant", default=None, help="only this tenant's (a global admin's filter)")
    add_target(a)
    a.set_defaults(func=lambda x: call(x, "GET", "approvals", params={
        k: v for k, v in (("status", x.status), ("tenant", x.tenant)) if v is not None} or None))

    a = asub.add_parser("show", help="one held request, with its recorded response once approved")
    a.add_argument("id")
    add_target(a)
    a.set_defaults(func=lambda x: call(x, "GET", f"approvals/{x.id}"))

    for name in ("approve", "reject"):
        a = asub.add_parser(name, help=f"{name} a held request" + (" (it runs now)" if name == "approve" else ""))
        a.add_argument("id")
        a.add_argument("--by", default=None, help="who decided (default: the token's subject)")
        a.add_argument("--reason", default=None)
        add_target(a)
        a.set_defaults(func=lambda x, n=name: call(x, "POST", f"approvals/{x.id}/{n}", json={"by": x.by, "reason": x.reason}))
