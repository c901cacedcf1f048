"""`edgeworks kill KIND NAME --reason R` and `edgeworks revive KIND NAME`: the kill switch of a
running server, through its admin API (``--url``/``--to``, ``--token`` or $EDGEWORKS_TOKEN)."""

from __future__ import annotations

import argparse
from typing import Any

from runtime.commands.deploy import add_target, call
from runtime.killkinds import KILL_KINDS

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser("kill", help="stop a script, route, tenant, workflow class, tool, AI model or provider, "
                                         "or outbound calls to a host pattern (egress, e.g. '*.example.com')",
                       description="Takes effect on every isolate within a second and survives restarts.")
    p.add_argument("kind", choices=KILL_KINDS)
    p.add_argument("name")
    p.add_argument("--reason", required=True, help="why (shown to refused callers and audited)")
    add_target(p)
    p.set_defaults(func=_kill)

    p = sub.add_parser("revive", help="lift a kill")
    p.add_argument("kind", choices=KILL_KINDS)
    p.add_argument("name")
    add_target(p)
    p.set_defaults(func=_revive)

    p = sub.add_parser("kills", help="list the kills in force")
    add_target(p)
    p.set_defaults(func=lambda a: call(a, "GET", "kills"))


def _kill(args: argparse.Namespace) -> int:
    return call(args, "POST", "kill", json={"kind": args.kind, "name": args.name, "reason": args.reason})


def _revive(args: argparse.Namespace) -> int:
    return call(args, "POST", "revive", json={"kind": args.kind, "name": args.name})
