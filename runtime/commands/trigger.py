"""`edgeworks trigger SCRIPT --cron EXPR`: fire a scheduled handler by hand on a running server."""

from __future__ import annotations

import argparse
from typing import Any

from runtime.commands.deploy import add_target, call


def register(sub: Any) -> None:
    p = sub.add_parser("trigger", help="fire a script's scheduled handler now",
                       description="Fire the scheduled (cron) handler of SCRIPT on a running server.")
    p.add_argument("script", nargs="?", default=None, help="script name (optional when the app has one)")
    p.add_argument("--cron", default="* * * * *", help="cron expression passed to the handler")
    add_target(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    params = {"cron": args.cron, **({"script": args.script} if args.script else {})}
    return call(args, "POST", "scheduled", params=params, timeout=60)
