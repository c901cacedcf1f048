"""``edgeworks audit verify|query|prove|verify-proof|export``.

`register(subparsers)` adds the ``audit`` command; the chosen subcommand's ``args.func(args)``
returns the exit code. ``verify`` exits 0 when the log is intact, 1 when it is broken (naming
the first bad seq and why) and 2 when there is no log or an input is unusable; with ``--anchor``
it also checks the log against the heads anchored outside the state dir. ``query`` prints one
JSON line per entry. ``prove SEQ`` prints an inclusion proof that ``verify-proof`` checks
offline (as it checks an ``export``: entries with their proofs as JSON lines).

`runtime.audit` (SQLite through the object store, the manifest models) is imported only by the
functions that run a subcommand, so the other ``edgeworks`` commands start without it.
"""

from __future__ import annotations

import argparse
import json
import os
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
    parser = subparsers.add_parser("audit", help="verify, query, prove and export the audit log")
    commands = parser.add_subparsers(dest="audit_command", metavar="{verify,query,prove,verify-proof,export}")
    commands.required = True

    p_verify = commands.add_parser("verify", help="recompute the tree and check every head; exit 1 if broken")
    _add_state_dir(p_verify)
    p_verify.add_argument("--anchor", help="an anchor file (JSONL of signed checkpoints kept outside the state dir)")
    _add_public_key(p_verify)
    p_verify.set_defaults(func=_cmd_verify)

    p_query = commands.add_parser("query", help="print matching entries as JSON lines")
    _add_state_dir(p_query)
    p_query.add_argument("--request-id", dest="request_id")
    p_query.add_argument("--tenant")
    p_query.add_argument("--since", type=parse_since, help="ISO time or duration like 10m")
    p_query.add_argument("--kind", help="exact kind, or a prefix ending in * (tool.*)")
    p_query.add_argument("--limit", type=int, help="only the last N matching entries")
    p_query.set_defaults(func=_cmd_query)

    p_prove = commands.add_parser("prove", help="print the inclusion proof of entry SEQ (JSON)")
    _add_state_dir(p_prove)
    p_prove.add_argument("seq", type=int)
    p_prove.add_argument("--out", help="write the proof to this file instead of stdout")
    p_prove.set_defaults(func=_cmd_prove)

    p_check = commands.add_parser("verify-proof", help="check a proof or an export offline; exit 1 if it fails")
    p_check.add_argument("file", help="a proof (from prove) or an export (from export); - for stdin")
    _add_public_key(p_check)
    p_check.set_defaults(func=_cmd_verify_proof)

    p_export = commands.add_parser("export", help="write entries with their inclusion proofs as JSON lines")
    _add_state_dir(p_export)
    p_export.add_argument("--since", type=parse_since, help="ISO time or duration like 10m")
    p_export.add_argument("--out", help="write to this file instead of stdout")
    p_export.set_defaults(func=_cmd_export)
    return parser


def _add_public_key(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--public-key", dest="public_key",
                        help="the signing key's public key (PEM), or the key file itself (default: the "
                             "configured signing key, if this machine has it)")


def _state_dir(args: argparse.Namespace) -> Path:
    return Path(getattr(args, "state_dir", None) or DEFAULT_STATE_DIR)


def _no_log(state_dir: Path) -> int:
    print(f"no audit log in {state_dir}", file=sys.stderr)
    return 2


def _verifier(args: argparse.Namespace) -> Any:
    """The public key to check signatures with: --public-key, else the configured signing key
    if it exists here; None when neither is available (signatures are then not checked)."""
    from runtime.audit.anchor import ENV_SIGNING_KEY_FILE, default_signing_key_path, load_public_key

    if args.public_key:
        return load_public_key(Path(args.public_key))
    configured = os.environ.get(ENV_SIGNING_KEY_FILE)
    path = Path(configured) if configured else default_signing_key_path()
    return load_public_key(path) if path.is_file() else None


def _cmd_verify(args: argparse.Namespace) -> int:
    from runtime.audit import has_log, verify
    from runtime.audit.anchor import AnchorError, read_anchor

    state_dir = _state_dir(args)
    if not has_log(state_dir):
        return _no_log(state_dir)
    try:
        verifier = _verifier(args)
        anchor = read_anchor(Path(args.anchor)) if args.anchor else None
    except AnchorError as e:
        print(f"edgeworks audit verify: {e}", file=sys.stderr)
        return 2
    if anchor is not None and verifier is None:
        print("edgeworks audit verify: --anchor needs the public key to trust the anchored heads: give "
              "--public-key (or run where the signing key is configured)", file=sys.stderr)
        return 2
    result = verify(state_dir, verifier=verifier, anchor=anchor)
    cp = result.last_good_checkpoint
    if result.ok:
        print(
            f"audit log ok: {result.entries} entries"
            + (f", signed checkpoint at seq {cp}" if cp else "")
            + (f", root {result.last_hash}" if result.last_hash else "")
            + (f", anchored head at tree size {result.anchored} matches" if result.anchored else "")
            + ("" if verifier else " (signatures not checked: no public key)")
        )
        if anchor is not None and not result.anchored:
            print("note: the anchor file holds no head of this log", file=sys.stderr)
        return 0
    where = "" if result.first_bad_seq is None else f" at seq {result.first_bad_seq}"
    print(
        f"audit log BROKEN{where}: {result.reason}"
        + (f" (last good checkpoint: seq {cp})" if cp else " (no good checkpoint before it)"),
        file=sys.stderr,
    )
    return 1


def _cmd_query(args: argparse.Namespace) -> int:
    from runtime.audit import has_log, query

    state_dir = _state_dir(args)
    if not has_log(state_dir):
        return _no_log(state_dir)
    try:
        entries = query(state_dir, request_id=args.request_id, tenant=args.tenant, since=args.since,
                        kind=args.kind, limit=args.limit)
    except sqlite3.DatabaseError as exc:
        print(f"cannot read the audit log in {state_dir}: {exc}", file=sys.stderr)
        return 2
    out = sys.stdout
    for entry in entries:
        out.write(json.dumps(entry.as_dict(), ensure_ascii=False, separators=(",", ":")) + "\n")
    out.flush()
    return 0


def _cmd_prove(args: argparse.Namespace) -> int:
    from runtime.audit import ProofError, has_log, prove

    state_dir = _state_dir(args)
    if not has_log(state_dir):
        return _no_log(state_dir)
    try:
        proof = prove(state_dir, args.seq)
    except (ProofError, sqlite3.DatabaseError) as e:
        print(f"edgeworks audit prove: {e}", file=sys.stderr)
        return 2
    text = json.dumps(proof, ensure_ascii=False, indent=1) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _cmd_verify_proof(args: argparse.Namespace) -> int:
    from runtime.audit import ProofError, verify_export, verify_proof
    from runtime.audit.anchor import AnchorError

    try:
        verifier = _verifier(args)
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    except (AnchorError, OSError, UnicodeDecodeError) as e:
        print(f"edgeworks audit verify-proof: {e}", file=sys.stderr)
        return 2
    try:
        first = text.lstrip().splitlines()[0] if text.strip() else ""
        if '"edgeworks-audit-export/' in first:
            n, cp = verify_export(iter(text.splitlines()), verifier)
            what = f"export ok: {n} entries included in the tree of {cp.size} entries"
        else:
            try:
                doc = json.loads(text)
            except ValueError as e:
                raise ProofError(f"not JSON: {e}") from None
            cp = verify_proof(doc, verifier)
            what = f"proof ok: entry {doc['seq']} is in the tree of {cp.size} entries"
    except ProofError as e:
        print(f"proof FAILED: {e}", file=sys.stderr)
        return 1
    signed = (f"signed by key {cp.key_id}" if verifier is not None
              else f"signature NOT checked (no public key; the checkpoint names key {cp.key_id})")
    print(f"{what}, root {cp.root}, {signed}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from runtime.audit import ProofError, export, has_log
    from runtime.audit.store import Store

    state_dir = _state_dir(args)
    if not has_log(state_dir):
        return _no_log(state_dir)
    try:
        if args.out:
            with open(args.out, "w", encoding="utf-8") as out:
                n, cp = export(state_dir, out, since=args.since)
        else:
            n, cp = export(state_dir, sys.stdout, since=args.since)
    except (ProofError, OSError, sqlite3.DatabaseError) as e:
        print(f"edgeworks audit export: {e}", file=sys.stderr)
        return 2
    if args.out:  # an export kept elsewhere lets retention remove the segments it covers
        store = Store(state_dir)
        try:
            store.mark_exported(cp.size)
        finally:
            store.close()
    print(f"exported {n} entries with proofs against the signed head of {cp.size} entries", file=sys.stderr)
    return 0
