"""`edgeworks deploy DIR`, `versions`, `rollback [VERSION]` and `split VERSION --percent N [--guard]`:
deployments to a running server through its admin API.

Every command takes the server as ``--to URL`` (``--url`` is the same option) and the admin
token as ``--token`` or the environment variable ``EDGEWORKS_TOKEN``. Output is the server's
JSON answer on stdout; the exit code is 0 on success, 1 when the server refused, 2 when it
could not be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from runtime.bundle import pack_dir, secrets_file

__all__ = ["add_target", "call", "register"]

DEFAULT_URL = "http://127.0.0.1:8787"


def add_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--to", "--url", dest="url", default=DEFAULT_URL, help=f"the running server (default {DEFAULT_URL})")
    p.add_argument("--token", default=None, help="admin bearer token (default: $EDGEWORKS_TOKEN)")


def call(args: argparse.Namespace, method: str, path: str, *, timeout: Any = 120, **kw: Any) -> int:
    """Send one admin request, print the JSON answer; return the exit code."""
    import httpx

    token = args.token or os.environ.get("EDGEWORKS_TOKEN")
    headers = {"authorization": f"Bearer {token}"} if token else {}
    headers.update(kw.pop("headers", {}))
    try:
        r = httpx.request(method, f"{args.url.rstrip('/')}/__edgeworks/{path}", headers=headers, timeout=timeout, **kw)
    except httpx.HTTPError as e:
        print(f"edgeworks: cannot reach {args.url}: {e}", file=sys.stderr)
        return 2
    try:
        out = json.dumps(r.json(), indent=1)
    except ValueError:
        out = r.text
    print(out, file=sys.stdout if r.is_success else sys.stderr)
    return 0 if r.is_success else 1


def register(sub: Any) -> None:
    p = sub.add_parser("deploy", help="deploy an app dir to a running server",
                       description="Pack DIR as a tar.gz and deploy it; the server validates and loads it "
                                   "before moving traffic, and keeps the old version on any error.")
    p.add_argument("dir", nargs="?", default=".", help="app directory (holds edgeworks.toml)")
    p.add_argument("--message", "-m", default=None, help="what this version changes")
    p.add_argument("--env", default=os.environ.get("EDGEWORKS_ENV") or None, metavar="NAME",
                   help="load the version with the manifest's [env.NAME] section and send .dev.vars.NAME as its "
                        "secrets when it exists (default: $EDGEWORKS_ENV, else the server's environment)")
    add_target(p)
    p.set_defaults(func=_deploy)

    p = sub.add_parser("versions", help="list the versions a server holds")
    add_target(p)
    p.set_defaults(func=lambda a: call(a, "GET", "versions"))

    p = sub.add_parser("rollback", help="serve an earlier version (default: the previous one)")
    p.add_argument("version", nargs="?", default=None)
    add_target(p)
    p.set_defaults(func=lambda a: call(a, "POST", "rollback", json={"version": a.version} if a.version else {}))

    p = sub.add_parser("split", help="send a percentage of requests to another version",
                       description="0 clears the split, 100 promotes VERSION to current. With --guard the server "
                                   "watches every [[slo]] objective over VERSION's own events and clears the split "
                                   "(all traffic back to the current version) when one burns over its fastest "
                                   "alert's factor.")
    p.add_argument("version")
    p.add_argument("--percent", type=float, required=True)
    p.add_argument("--guard", action="store_true", help="roll the split back when VERSION burns an objective")
    add_target(p)
    p.set_defaults(func=lambda a: call(a, "POST", "split", json={"version": a.version, "percent": a.percent,
                                                                 **({"guard": True} if a.guard else {})}))


def _deploy(args: argparse.Namespace) -> int:
    import httpx

    root = Path(args.dir)
    if not (root / "edgeworks.toml").is_file() and not (root / "pyproject.toml").is_file():
        print(f"edgeworks: {root} holds no edgeworks.toml or pyproject.toml", file=sys.stderr)
        return 2
    try:
        bundle = pack_dir(root, secrets=secrets_file(root, args.env))
    except OSError as e:
        print(f"edgeworks: cannot pack {root}: {e}", file=sys.stderr)
        return 2
    params = {k: v for k, v in (("message", args.message), ("env", args.env)) if v}
    # No read timeout: the server bounds a deploy itself (start-up limit, then the probe).
    return call(args, "POST", "versions", content=bundle, params=params, timeout=httpx.Timeout(30, read=None),
                headers={"content-type": "application/octet-stream"})
