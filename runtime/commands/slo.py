"""``edgeworks slo [--since DURATION] [--json]``: every ``[[slo]]`` objective with its current
value (in its unit: %, per 1000, per million), the objective, the error budget left, the burn
rate of each alert window (long/short) and the alerts whose condition holds.

It reads the state dir (``--state-dir``, default ``./.edgeworks``, as ``edgeworks audit``): the
event store, and the objectives the server last served (``slo/objectives.json``, written at each
promotion), so no server is needed and nothing but the SLO modules is imported. ``--app DIR``
takes the objectives from that app's manifest instead (validated; the state dir then defaults to
the app's). With ``--url`` it asks a running server (``GET /__edgeworks/slo``, admin token as
``--token`` or ``EDGEWORKS_TOKEN``), which also names a guarded split. ``--json`` prints the
same object the endpoint returns. Exit 0, 1 when the server refused, 2 when there is nothing to
read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["register"]


def _duration(text: str) -> float:
    from runtime.slo.config import parse_duration

    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def register(sub: Any) -> None:
    p = sub.add_parser("slo", help="service-level objectives: values, error budgets, burn rates, firing alerts")
    p.add_argument("--since", type=_duration, default=None, metavar="DURATION",
                   help="the value's window, like 1h or 7d (default: each objective's window)")
    p.add_argument("--version", default=None, help="only this version's events")
    p.add_argument("--json", action="store_true", help="the report as one JSON object")
    p.add_argument("--app", default=None,
                   help="take the objectives from this app's manifest (default: those the server last served)")
    p.add_argument("--state-dir", dest="state_dir", default=None,
                   help="state directory (default: ./.edgeworks, or the app's with --app)")
    p.add_argument("--url", default=None, help="ask this running server instead of reading the state dir")
    p.add_argument("--token", default=None, help="admin bearer token with --url (default: $EDGEWORKS_TOKEN)")
    p.set_defaults(func=_slo)


def _slo(args: argparse.Namespace) -> int:
    report = _from_server(args) if args.url else _from_store(args)
    if isinstance(report, int):
        return report
    from runtime.slo.report import format_table

    if args.json:
        print(json.dumps(report, indent=1))
    else:
        sys.stdout.write(format_table(report))
        if report.get("guarded_split"):
            print(f"guarded split: {report['guarded_split']}")
    return 0


def _from_store(args: argparse.Namespace) -> dict[str, Any] | int:
    from runtime.commands.audit import DEFAULT_STATE_DIR
    from runtime.slo.families import tally
    from runtime.slo.report import OBJECTIVES_FILE, load_objectives, slo_report
    from runtime.slo.store import STORE_FILE, EventStore

    objectives: list[Any] | None
    if args.app is not None:
        from runtime.config import ConfigError, load_app

        try:
            app = load_app(args.app)
        except ConfigError as e:
            print("edgeworks slo: the app's configuration is invalid:\n  " + "\n  ".join(e.problems),
                  file=sys.stderr)
            return 2
        objectives, state_dir = list(app.slo), Path(args.state_dir) if args.state_dir else app.state_dir
    else:
        state_dir = Path(args.state_dir or DEFAULT_STATE_DIR)
        try:
            objectives = load_objectives(state_dir)
        except ValueError as e:
            print(f"edgeworks slo: {e}", file=sys.stderr)
            return 2
        if objectives is None:
            print(f"no SLO objectives recorded in {state_dir / OBJECTIVES_FILE} (a server writes them when it "
                  "serves a version); --app DIR reads an app's manifest instead", file=sys.stderr)
            return 2
    if not (state_dir / STORE_FILE).is_file():
        print(f"no SLO event store in {state_dir} (the server records events there while it runs)", file=sys.stderr)
        return 2
    store = EventStore(state_dir)
    try:
        report = slo_report(objectives, lambda o, start, end, v: tally(store, o, start, end, version=v),
                            now=time.time(), since=args.since, version=args.version)
    finally:
        store.close()
    return {**report, "guarded_split": None}


def _from_server(args: argparse.Namespace) -> dict[str, Any] | int:
    import httpx

    from runtime.slo.alerts import format_duration

    token = args.token or os.environ.get("EDGEWORKS_TOKEN")
    params = {k: v for k, v in (("since", format_duration(args.since) if args.since else None),
                                ("version", args.version)) if v}
    try:
        r = httpx.get(f"{args.url.rstrip('/')}/__edgeworks/slo", params=params, timeout=30,
                      headers={"authorization": f"Bearer {token}"} if token else {})
    except httpx.HTTPError as e:
        print(f"edgeworks: cannot reach {args.url}: {e}", file=sys.stderr)
        return 2
    if not r.is_success:
        print(r.text, file=sys.stderr)
        return 1
    body: dict[str, Any] = r.json()
    return body
