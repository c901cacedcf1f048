"""``edgeworks ai usage``: calls, tokens, cost, cache hit rate and forecast vs actual, from the
AI usage ledger (``<state>/ai.sqlite``, see `runtime.ai.ledger`), grouped by tenant, inference
class, workflow class, model, provider or grade. Exit 0, or 2 when there is no ledger."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from runtime.commands.audit import DEFAULT_STATE_DIR, parse_since

__all__ = ["register"]

_BY = ("tenant", "class", "workflow", "instance", "model", "provider", "grade")


def register(sub: Any) -> None:
    p = sub.add_parser("ai", help="model inference: usage and cost")
    commands = p.add_subparsers(dest="ai_command", metavar="{usage}")
    commands.required = True
    u = commands.add_parser("usage", help="calls, tokens, cost, cache hit rate, forecast vs actual")
    u.add_argument("--state-dir", dest="state_dir", default=None, help="state directory (default: ./.edgeworks)")
    u.add_argument("--since", type=parse_since, help="ISO time or duration like 24h (default: everything)")
    u.add_argument("--by", choices=_BY, default="model")
    u.add_argument("--app", help="the app dir, for the [ai.forecast] of workflow classes (--by workflow|instance)")
    u.add_argument("--json", action="store_true", help="one JSON object per line")
    u.set_defaults(func=_usage)


def _usage(args: argparse.Namespace) -> int:
    from datetime import datetime

    from runtime.ai.ledger import LEDGER_FILENAME, usage_report

    state_dir = Path(args.state_dir or DEFAULT_STATE_DIR)
    if not (state_dir / LEDGER_FILENAME).is_file():
        print(f"no AI usage ledger in {state_dir}", file=sys.stderr)
        return 2
    forecast: dict[str, float] = {}
    if args.app:
        from runtime.config import ConfigError, load_app

        try:
            app = load_app(args.app)
        except ConfigError as e:
            print("edgeworks ai usage: the app's configuration is invalid:\n  " + "\n  ".join(e.problems), file=sys.stderr)
            return 2
        forecast = dict(app.ai.forecast) if app.ai is not None else {}
    since = datetime.fromisoformat(args.since.replace("Z", "+00:00")).timestamp() if args.since else None
    rows = usage_report(state_dir, since=since, by=args.by, forecast=forecast)
    if args.json:
        for r in rows:
            print(json.dumps(r, separators=(",", ":")))
        return 0
    if not rows:
        print("no AI calls" + (" since then" if since else ""))
        return 0
    columns = [args.by, "calls", "tokens_in", "tokens_out", "cost_usd", "cache_hit_rate", "failed"]
    if args.by == "instance":
        columns = ["instance", "workflow", "calls", "actual_usd", "forecast_usd", "forecast_from", "over_forecast"]
    elif args.by == "workflow":
        columns += ["instances", "actual_per_instance_usd", "forecast_per_instance_usd"]
    table = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(cells[i]) for cells in table)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for cells in table:
        print("  ".join(v.ljust(w) for v, w in zip(cells, widths, strict=True)))
    return 0


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.8f}".rstrip("0").rstrip(".") if value else "0"
    return str(value)
