"""``edgeworks d1 migrations apply|list DB`` and ``edgeworks d1 execute DB --command SQL``.

They open the database a script's ``d1_databases`` entry names (``DB`` is its binding; ``--script``
picks the script when several bind that name) in the app's state dir (``--state-dir`` to
override), through the same helper as the running isolates, so they are safe while a server runs.
``--tenant`` names a tenant's database of a tenant-scoped binding (``execute`` needs it; the
migration commands without it act on every tenant's database there is). Migrations are the
``migrations_dir``'s ``*.sql`` files in name order, each applied in its own transaction and
recorded in ``d1_migrations`` as wrangler does. Exit 0, 1 on a SQL or migration error, 2 on a
bad app or binding.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser("d1", help="D1 databases: apply and list migrations, execute SQL")
    d1 = p.add_subparsers(dest="d1_command", required=True)
    migrations = d1.add_parser("migrations", help="the migrations directory of a database")
    steps = migrations.add_subparsers(dest="migrations_command", required=True)
    for name, help_text in (("apply", "apply the pending migrations in order"),
                            ("list", "list the migrations and whether each is applied")):
        step = steps.add_parser(name, help=help_text)
        _common(step)
        step.set_defaults(func=_migrations, action=name)
    execute = d1.add_parser("execute", help="run SQL on a database")
    _common(execute)
    execute.add_argument("--command", required=True, help="the SQL (several statements: one transaction)")
    execute.add_argument("--json", action="store_true", help="print the results as JSON")
    execute.set_defaults(func=_execute)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("database", metavar="DB", help="the binding name of a d1_databases entry")
    p.add_argument("--app", default=".", help="the app directory (default: .)")
    p.add_argument("--script", default=None, help="the script whose binding it is (when several bind DB)")
    p.add_argument("--state-dir", dest="state_dir", default=None, help="state directory (default: the app's)")
    p.add_argument("--tenant", default=None, help="the tenant's database, for a tenant-scoped binding")


def _resolve(args: argparse.Namespace) -> tuple[Any, Path, Path] | int:
    """(binding, state dir, app root) or an exit code after printing why."""
    from runtime.commands.storage import find_binding

    found = find_binding("d1", args.app, "d1_databases", args.database, args.script,
                         lambda b: b.file_stem, "a D1 database", "databases")
    if isinstance(found, int):
        return found
    app, binding = found
    if args.tenant is not None and not binding.tenant_scoped:
        print(f"edgeworks d1: {args.database} is not tenant-scoped (no --tenant)", file=sys.stderr)
        return 2
    state_dir = Path(args.state_dir).resolve() if args.state_dir else app.state_dir
    return binding, state_dir, app.root


def _connect(state_dir: Path, binding: Any, tenant: str | None) -> Any:
    from objects import sqlitefile
    from runtime.bindings.d1 import database_path

    conn = sqlitefile.connect(database_path(state_dir, binding, tenant), synchronous="FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _tenants(state_dir: Path, binding: Any) -> list[str]:
    """The tenants that have a database of a tenant-scoped binding."""
    from runtime.bindings.d1 import database_path

    folder = database_path(state_dir, binding, "x").parent
    return sorted(urllib.parse.unquote(p.stem) for p in folder.glob("*.sqlite")) if folder.is_dir() else []


def _migrations(args: argparse.Namespace) -> int:
    """One database's migrations; a tenant-scoped binding without --tenant: every tenant's."""
    from runtime.bindings.d1 import D1Error, apply_migrations, list_migrations

    resolved = _resolve(args)
    if isinstance(resolved, int):
        return resolved
    binding, state_dir, root = resolved
    migrations_dir = root / binding.migrations_dir
    every = binding.tenant_scoped and args.tenant is None
    tenants: list[str | None] = list(_tenants(state_dir, binding)) if every else [args.tenant]
    if every and not tenants:
        print(f"no tenant has a {args.database} database yet (each is migrated on its first use)")
    for tenant in tenants:
        if every:
            print(f"tenant {tenant}:")
        conn = _connect(state_dir, binding, tenant)
        try:
            if args.action == "list":
                for migration in list_migrations(conn, migrations_dir, binding.migrations_table):
                    print(f"{'applied' if migration.applied else 'pending'}  {migration.name}")
                continue
            try:
                applied = apply_migrations(conn, migrations_dir, binding.migrations_table)
            except D1Error as e:
                print(f"edgeworks d1: {e}", file=sys.stderr)
                return 1
            for name in applied:
                print(f"applied {name}")
            if not applied:
                print("no migrations to apply")
        finally:
            conn.close()
    return 0


def _execute(args: argparse.Namespace) -> int:
    import sqlite3

    from runtime.bindings.d1 import split_statements

    resolved = _resolve(args)
    if isinstance(resolved, int):
        return resolved
    binding, state_dir, _ = resolved
    if binding.tenant_scoped and args.tenant is None:
        print(f"edgeworks d1: {args.database} is tenant-scoped: name the tenant with --tenant", file=sys.stderr)
        return 2
    conn = _connect(state_dir, binding, args.tenant)
    out: list[dict[str, Any]] = []
    try:
        conn.execute("BEGIN IMMEDIATE")
        for statement in split_statements(args.command):
            cursor = conn.execute(statement)
            columns = [d[0] for d in cursor.description or ()]
            out.append({"results": [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()],
                        "changes": cursor.rowcount if cursor.rowcount >= 0 else 0})
        conn.execute("COMMIT")
    except sqlite3.Error as e:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        print(f"edgeworks d1: D1_ERROR: {e}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    if args.json:
        print(json.dumps(out, default=lambda v: v.hex() if isinstance(v, bytes) else str(v)))
    else:
        for result in out:
            for row in result["results"]:
                print("\t".join("NULL" if v is None else str(v) for v in row.values()))
    return 0
