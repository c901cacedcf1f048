"""`edgeworks trigger SCRIPT --cron EXPR`: fire a scheduled handler by hand on a running server."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("trigger", help="fire a script's scheduled handler now",
                       description="Fire the scheduled (cron) handler of SCRIPT on a running server.")
    p.add_argument("script", nargs="?", default=None, help="script name (optional when the app has one)")
    p.add_argument("--cron", default="* * * * *", help="cron expression passed to the handler")
    p.add_argument("--url", default="http://127.0.0.1:8787", help="the running server")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import httpx

    params = {"cron": args.cron, **({"script": args.script} if args.script else {})}
    try:
        r = httpx.post(f"{args.url}/__edgeworks/scheduled", params=params, timeout=60)
    except httpx.HTTPError as e:
        print(f"edgeworks: cannot reach {args.url}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(r.json()))
    return 0 if r.status_code == 200 else 1
