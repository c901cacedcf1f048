"""The D1 binding (`env.DB`): a SQL database in the shape of Cloudflare's D1 Worker API.

    row = await env.DB.prepare("SELECT * FROM users WHERE id = ?").bind(7).first()
    name = await env.DB.prepare("SELECT name FROM users WHERE id = ?").bind(7).first("name")
    res = await env.DB.prepare("SELECT * FROM users").all()      # res["results"], res["meta"] (also res.results)
    rows = await env.DB.prepare("SELECT id, name FROM users").raw(columnNames=True)
    await env.DB.batch([env.DB.prepare("INSERT ...").bind(1), env.DB.prepare("UPDATE ...")])
    await env.DB.exec("CREATE TABLE t(x); INSERT INTO t VALUES (1)")  # {"count": 2, "duration": ms}

Declared per script as wrangler does, ``d1_databases = [{ binding = "DB", database_name = "app",
database_id = "...", migrations_dir = "migrations" }]``; the data lives in
``<state>/d1/<preview_database_id, database_id or database_name>.sqlite`` (``tenant_scoped = true``: one file per tenant,
``<state>/d1/<id>/tenants/<tenant>.sqlite``, migrations applied on its first open), shared by every
isolate of the runtime through `objects.sqlitefile.connect` (WAL, 30 s busy timeout).

Semantics kept from D1: a `batch` is one transaction (all statements or none, also across a
kill -9), `exec` runs its statements in one transaction too; errors raise `D1Error` carrying
SQLite's message (``D1_ERROR: no such table: x: SQLITE_ERROR``); foreign keys are enforced; bound booleans become 1/0 and a
value of another type than None, int, float, str, bytes is refused (``D1_TYPE_ERROR``). Writes run
under ``BEGIN IMMEDIATE`` so two isolates writing at once wait for each other (the busy timeout)
instead of failing with ``database is locked``; commits are ``synchronous=FULL``.

`meta.rows_read` counts the rows a statement returned and `meta.rows_written` the rows it changed:
SQLite does not report the rows a query scanned, so ``rows_read`` is a lower bound of D1's figure.

Every call (`first`, `all`, `run`, `raw`, `batch`, `exec`) counts once against the request's
binding-operations limit. A call that changed the database is audited as ``d1.write`` (database,
statement count, changes, request id, tenant; never the SQL's bound values). Statements run off the
event loop, on one thread per database binding per isolate, which owns its connections.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
import urllib.parse
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from objects import sqlitefile
from runtime.bindings import AuditHook, BindingHost, BindingKind
from runtime.isolate.context import current
from runtime.names import BINDING_NAME

if TYPE_CHECKING:
    from runtime.config import ScriptConfig

__all__ = ["KIND", "D1Binding", "D1Database", "D1Error", "D1PreparedStatement", "D1Result", "D1Row", "Migration",
           "apply_migrations", "database_path", "list_migrations", "split_statements"]

MIGRATIONS_TABLE = "d1_migrations"
_MIGRATIONS_SCHEMA = (f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE}(id INTEGER PRIMARY KEY AUTOINCREMENT, "
                      "name TEXT UNIQUE, applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP NOT NULL)")
_READ_START = re.compile(r"^\s*(?:--[^\n]*\n\s*|/\*.*?\*/\s*)*(SELECT|VALUES|EXPLAIN|WITH)\b", re.I | re.S)
_WRITE_WORD = re.compile(r"\b(INSERT|UPDATE|DELETE|REPLACE)\b", re.I)


class D1Binding(BaseModel):
    """One entry of `d1_databases`: a database bound as `env.<binding>`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    binding: Annotated[str, Field(pattern=BINDING_NAME)]
    database_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    database_id: Annotated[str | None, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")] = None
    # wrangler's local dev keeps the preview database apart: its id names the file when set.
    preview_database_id: Annotated[str | None, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")] = None
    migrations_dir: str = "migrations"
    migrations_table: Annotated[str, Field(pattern=BINDING_NAME)] = MIGRATIONS_TABLE
    tenant_scoped: bool = False

    @property
    def file_stem(self) -> str:
        return self.preview_database_id or self.database_id or self.database_name


class D1Error(Exception):
    """A statement D1 refused or SQLite failed; the message is D1's (``D1_ERROR: ...``)."""


class D1Row(dict[str, Any]):
    """A row (or result object), readable as a dict or by attribute as Pyodide's proxies are."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class D1Result(D1Row):
    """D1's result object: ``success``, ``results`` (rows) and ``meta``."""


def database_path(state_dir: Path, binding: D1Binding, tenant: str | None = None) -> Path:
    """Where a database's file lives (a tenant's own file when the binding is tenant-scoped)."""
    if tenant is None:
        return state_dir / "d1" / f"{binding.file_stem}.sqlite"
    return state_dir / "d1" / binding.file_stem / "tenants" / f"{urllib.parse.quote(tenant, safe='')}.sqlite"


def split_statements(sql: str) -> list[str]:
    """The complete statements of `sql`, in order (``;`` inside strings and triggers kept)."""
    statements, buf = [], ""
    parts = sql.split(";")
    for i, part in enumerate(parts):
        buf += part if i == len(parts) - 1 else part + ";"
        if i == len(parts) - 1 or sqlite3.complete_statement(buf):
            if buf.strip(" \t\r\n;"):
                statements.append(buf.strip())
            buf = ""
    return statements


def _is_read(sql: str) -> bool:
    match = _READ_START.match(sql)
    return match is not None and not (match.group(1).upper() == "WITH" and _WRITE_WORD.search(sql))


def _d1_error(exc: sqlite3.Error, prefix: str = "D1_ERROR") -> D1Error:
    name = getattr(exc, "sqlite_errorname", None) or "SQLITE_ERROR"
    return D1Error(f"{prefix}: {exc}: {name}")


def _param(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise D1Error(f"D1_TYPE_ERROR: integer {value} does not fit SQLite's 64 bits")
    if value is None or isinstance(value, (int, float, str, bytes)):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise D1Error(f"D1_TYPE_ERROR: Type '{type(value).__name__}' not supported for value '{value!r}'")


# ---------------------------------------------------------------------------------------------
# Migrations (also used by `edgeworks d1 migrations`)

class Migration(BaseModel):
    name: str
    path: Path
    applied: bool


def _migration_files(migrations_dir: Path) -> list[Path]:
    if not migrations_dir.is_dir():
        return []
    return sorted(p for p in migrations_dir.iterdir() if p.suffix == ".sql" and p.is_file())


def list_migrations(conn: sqlite3.Connection, migrations_dir: Path, table: str = MIGRATIONS_TABLE) -> list[Migration]:
    """Every migration file of `migrations_dir`, in the order they apply, each saying if it was."""
    conn.execute(_MIGRATIONS_SCHEMA.replace(MIGRATIONS_TABLE, table, 1))
    applied = {row[0] for row in conn.execute(f"SELECT name FROM {table}")}
    return [Migration(name=p.name, path=p, applied=p.name in applied) for p in _migration_files(migrations_dir)]


def apply_migrations(conn: sqlite3.Connection, migrations_dir: Path, table: str = MIGRATIONS_TABLE) -> list[str]:
    """Apply the pending migrations in order, each in its own transaction with its record in
    `table` (as wrangler does); stop at the first that fails, raising `D1Error` naming it."""
    done = []
    for migration in list_migrations(conn, migrations_dir, table):
        if migration.applied:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute(f"SELECT 1 FROM {table} WHERE name = ?", (migration.name,)).fetchone() is None:
                for statement in split_statements(migration.path.read_text()):
                    conn.execute(statement)
                conn.execute(f"INSERT INTO {table}(name) VALUES (?)", (migration.name,))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise D1Error(f"D1_ERROR: migration {migration.name} failed: {exc}") from None
        done.append(migration.name)
    return done


# ---------------------------------------------------------------------------------------------
# The isolate-side objects

class D1PreparedStatement:
    """`env.DB.prepare(sql)`: run with `first`, `all`, `run` or `raw`; `bind` returns a new one."""

    def __init__(self, db: D1Database, sql: str, params: tuple[Any, ...] = ()):
        self._db = db
        self.sql = sql
        self.params = params

    def bind(self, *values: Any) -> D1PreparedStatement:
        return D1PreparedStatement(self._db, self.sql, tuple(_param(v) for v in values))

    async def first(self, column: str | None = None) -> Any:
        result = await self._db._call(lambda conn: self._db._execute(conn, [self]))
        rows = result[0]["results"]
        if not rows:
            return None
        if column is None:
            return rows[0]
        if column not in rows[0]:
            raise D1Error(f"D1_COLUMN_NOTFOUND: Column not found ({column})")
        return rows[0][column]

    async def all(self) -> D1Result:
        return (await self._db._call(lambda conn: self._db._execute(conn, [self])))[0]

    async def run(self) -> D1Result:
        return await self.all()

    async def raw(self, columnNames: bool | dict[str, Any] = False) -> list[list[Any]]:  # noqa: N803 (D1's option name)
        """Rows as lists; ``columnNames=True`` (or D1's ``{"columnNames": True}``) puts the names first."""
        if isinstance(columnNames, dict):
            columnNames = bool(columnNames.get("columnNames"))
        result = await self._db._call(lambda conn: self._db._execute(conn, [self], raw=True))
        rows: list[list[Any]] = result[0]["results"]
        return [result[0]["columns"], *rows] if columnNames else rows


class D1Database:
    """`env.DB`: one database (one file per tenant when tenant-scoped), one thread per isolate."""

    def __init__(self, binding: D1Binding, state_dir: Path, app_root: Path, audit: AuditHook | None = None):
        self._binding = binding
        self._state_dir = state_dir
        self._migrations_dir = app_root / binding.migrations_dir
        self._audit = audit
        self._conns: dict[str | None, sqlite3.Connection] = {}
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"d1-{binding.binding}")

    def prepare(self, sql: str) -> D1PreparedStatement:
        return D1PreparedStatement(self, sql)

    async def batch(self, statements: Sequence[D1PreparedStatement]) -> list[D1Result]:
        """Every statement in one transaction: all results, or an error and no change at all."""
        if not all(isinstance(s, D1PreparedStatement) for s in statements):
            raise D1Error("D1_ERROR: batch takes a list of prepared statements")
        if not statements:
            return []
        return await self._call(lambda conn: self._execute(conn, list(statements)))

    async def exec(self, sql: str) -> D1Result:
        """Run the statements of `sql` (no bound values) in one transaction: ``count``, ``duration``."""
        statements = [D1PreparedStatement(self, s) for s in split_statements(sql)]
        if not statements:
            raise D1Error("D1_EXEC_ERROR: Error in line 1: no SQL statements")
        started = time.perf_counter()
        await self._call(lambda conn: self._execute(conn, statements, exec_mode=True))
        return D1Result(count=len(statements), duration=(time.perf_counter() - started) * 1000)

    def close(self) -> None:
        self._thread.submit(self._close_all).result()
        self._thread.shutdown()

    def _close_all(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    async def _call(self, work: Any) -> Any:
        scope = current()
        scope.count_binding_op()
        tenant = scope.tenant if self._binding.tenant_scoped else None
        if self._binding.tenant_scoped and tenant is None:
            raise D1Error(f"D1_ERROR: {self._binding.binding} is tenant-scoped and this request has no tenant")
        loop = asyncio.get_running_loop()
        results, changes = await loop.run_in_executor(self._thread, lambda: work(self._connection(tenant)))
        if changes is not None and self._audit is not None:
            self._audit("d1.write", {"request_id": scope.request_id or None, "database": self._binding.database_name,
                                     "binding": self._binding.binding, "statements": len(results),
                                     "changes": changes, "tenant": tenant})
        return results

    def _connection(self, tenant: str | None) -> sqlite3.Connection:
        conn = self._conns.get(tenant)
        if conn is None:
            path = database_path(self._state_dir, self._binding, tenant)
            conn = sqlitefile.connect(path, synchronous="FULL")
            conn.execute("PRAGMA foreign_keys = ON")  # D1 enforces foreign keys
            if tenant is not None:
                apply_migrations(conn, self._migrations_dir, self._binding.migrations_table)
            self._conns[tenant] = conn
        return conn

    def _execute(self, conn: sqlite3.Connection, statements: list[D1PreparedStatement], *, raw: bool = False,
                 exec_mode: bool = False) -> tuple[list[D1Result], int | None]:
        """Run `statements` on this database's thread: reads alone without a transaction, anything
        else under ``BEGIN IMMEDIATE``. Returns the results and the rows changed (None: a read)."""
        write = len(statements) > 1 or not _is_read(statements[0].sql)
        before = conn.total_changes
        if write:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise _d1_error(exc) from None
        results = []
        try:
            for line, statement in enumerate(statements, 1):
                try:
                    results.append(self._one(conn, statement, raw))
                except sqlite3.Error as exc:
                    if exec_mode:
                        raise D1Error(f"D1_EXEC_ERROR: Error in line {line}: {statement.sql}: {exc}") from None
                    raise _d1_error(exc) from None
            if write:
                conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results, (conn.total_changes - before) if write else None

    def _one(self, conn: sqlite3.Connection, statement: D1PreparedStatement, raw: bool) -> D1Result:
        started = time.perf_counter()
        before = conn.total_changes
        cursor = conn.execute(statement.sql, statement.params)
        rows = cursor.fetchall()
        columns = [d[0] for d in cursor.description or ()]
        changes = conn.total_changes - before
        duration = (time.perf_counter() - started) * 1000
        results: list[Any] = [list(r) for r in rows] if raw else [D1Row(zip(columns, r, strict=True)) for r in rows]
        meta = {"served_by": "edgeworks", "served_by_primary": True, "timings": {"sql_duration_ms": duration},
                "duration": duration, "changes": changes,
                "last_row_id": cursor.lastrowid or 0, "changed_db": changes > 0,
                "size_after": _size(conn), "rows_read": len(rows), "rows_written": changes}
        result = D1Result(success=True, results=results, meta=meta)
        if raw:
            result["columns"] = columns
        return result


def _size(conn: sqlite3.Connection) -> int:
    (pages,), = conn.execute("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()")
    return int(pages)


# ---------------------------------------------------------------------------------------------
# The kind

def _names(script: ScriptConfig) -> list[tuple[str, str]]:
    bindings: list[D1Binding] = getattr(script, "d1_databases", [])
    return [(f"d1_databases[{i}].binding", b.binding) for i, b in enumerate(bindings)]


def _build(host: BindingHost) -> dict[str, Any]:
    bindings: list[D1Binding] = getattr(host.script, "d1_databases", [])
    return {b.binding: D1Database(b, host.state_dir, host.app_root, host.audit) for b in bindings}


KIND = BindingKind(
    name="d1",
    fields={"d1_databases": (list[D1Binding], [])},
    env_names=_names,
    build=_build,
)
