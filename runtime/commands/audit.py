"""``edgeworks audit verify`` and ``edgeworks audit query``.

`register(subparsers)` adds the ``audit`` command; the chosen subcommand's ``args.func(args)``
returns the exit code. ``verify`` exits 0 when the chain is intact, 1 when it is broken (naming
the first bad seq and why) and 2 when there is no log. ``query`` prints one JSON line per entry.

`runtime.audit` (SQLite through the object store, the manifest models) is imported only by the
functions that run a subcommand, so the other ``edgeworks`` commands start without it.
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_STATE_DIR", "parse_since", "register"]

DEFAULT_STATE_DIR = Path(".") / ".edgeworks"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_DURATIONS = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: Callable[[], float] = time.time) -> str:
    """An ISO timestamp, or a duration back from now (``90s``, ``10m``, ``1h30m``, ``2d``),
    as the audit log's UTC timestamp string."""
    from runtime.audit import format_ts

    text = text.strip()
    if _DURATIONS.fullmatch(text):
        seconds = sum(float(n) * _UNIT_S[u] for n, u in _DURATION.findall(text))
        return format_ts(now() - seconds)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--since takes an ISO 8601 time or a duration like 10m, not {text!r}"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return format_ts(dt.timestamp())


def _add_state_dir(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS keeps a --state-dir given to the parent parser from being overwritten.
    parser.add_argument(
        "--state-dir",
        dest="state_dir",
        default=argparse.SUPPRESS,
        help="state directory (default: ./.edgeworks)",
    )


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("audit", help="verify and query the audit log")
    commands = parser.add_subparsers(dest="audit_command", metavar="{verify,query}")
    commands.required = True

    p_verify = commands.add_parser("verify", help="check the hash chain; exit 1 if broken")
    _add_state_dir(p_verify)
    p_verify.set_defaults(func=_cmd_verify)

    p_query = commands.add_parser("query", help="print matching entries as JSON lines")
    _add_state_dir(p_query)
    p_query.add_argument("--request-id", dest="request_id")
    p_query.add_argument("--tenant")
    p_query.add_argument("--since", type=parse_since, help="ISO time or duration like 10m")
    p_query.add_argument("--kind", help="exact kind, or a prefix ending in * (tool.*)")
    p_query.add_argument("--limit", type=int, help="only the last N matching entries")
    p_query.set_defaults(func=_cmd_query)
    return parser


def _log_path(args: argparse.Namespace) -> Path:
    from runtime.audit import AUDIT_FILENAME

    state_dir = getattr(args, "state_dir", None) or DEFAULT_STATE_DIR
    return Path(state_dir) / AUDIT_FILENAME


def _cmd_verify(args: argparse.Namespace) -> int:
    from runtime.audit import verify

    path = _log_path(args)
    if not path.is_file():
        print(f"no audit log at {path}", file=sys.stderr)
        return 2
    result = verify(path)
    if result.ok:
        cp = result.last_good_checkpoint
        print(
            f"audit log ok: {result.entries} entries"
            + (f", checkpoint at {cp}" if cp else "")
            + (f", last hash {result.last_hash}" if result.last_hash else "")
        )
        return 0
    cp = result.last_good_checkpoint
    where = "" if result.first_bad_seq is None else f" at seq {result.first_bad_seq}"
    print(
        f"audit log BROKEN{where}: {result.reason}"
        + (f" (last good checkpoint: {cp})" if cp else " (no good checkpoint before it)"),
        file=sys.stderr,
    )
    return 1


def _cmd_query(args: argparse.Namespace) -> int:
    from runtime.audit import query

    path = _log_path(args)
    if not path.is_file():
        print(f"no audit log at {path}", file=sys.stderr)
        return 2
    try:
        entries = query(
            path,
            request_id=args.request_id,
            tenant=args.tenant,
            since=args.since,
            kind=args.kind,
            limit=args.limit,
        )
    except sqlite3.DatabaseError as exc:
        print(f"cannot read the audit log at {path}: {exc}", file=sys.stderr)
        return 2
    out = sys.stdout
    for entry in entries:
        out.write(json.dumps(entry.as_dict(), ensure_ascii=False, separators=(",", ":")) + "\n")
    out.flush()
    return 0
