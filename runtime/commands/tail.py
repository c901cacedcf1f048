"""`edgeworks tail`: print a running server's log lines live (NDJSON), optionally filtered by
status (a code or a class like 5xx), script or request id."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from runtime.commands.deploy import add_target

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser("tail", help="stream a running server's log lines",
                       description="Stream log lines as JSON, one per line, until interrupted.")
    p.add_argument("--status", default=None, help="a status code (404) or class (5xx)")
    p.add_argument("--script", default=None)
    p.add_argument("--request-id", dest="request_id", default=None)
    p.add_argument("--limit", type=int, default=None, help="stop after this many lines")
    add_target(p)
    p.set_defaults(func=_tail)


def _tail(args: argparse.Namespace) -> int:
    import httpx

    params = {k: v for k, v in (("status", args.status), ("script", args.script), ("request_id", args.request_id),
                                ("limit", args.limit)) if v is not None}
    token = args.token or os.environ.get("EDGEWORKS_TOKEN")
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        with httpx.stream("GET", f"{args.url.rstrip('/')}/__edgeworks/tail", params=params, headers=headers,
                          timeout=httpx.Timeout(10, read=None)) as r:
            if not r.is_success:
                r.read()
                print(r.text, file=sys.stderr)
                return 1
            for line in r.iter_lines():
                if line and '"event":"tail.started"' not in line:
                    sys.stdout.write(line + "\n")
                    sys.stdout.flush()
    except httpx.HTTPError as e:
        print(f"edgeworks: cannot reach {args.url}: {e}", file=sys.stderr)
        return 2
    return 0
