"""The SQL API of an object's storage: ``ctx.storage.sql.exec(query, *params)`` -> cursor.

``exec`` is synchronous, as in Cloudflare's API: it runs exactly one statement on the object's
I/O thread and blocks until it ran, inside the object's current write batch, so SQL writes are
committed together with KV writes and are covered by the output gate. The cursor may also be
awaited (``await sql.exec(...)`` gives the same cursor). One case cannot be synchronous: while
a ``transaction`` of *another* event of the object is running, a statement must wait for it;
``exec`` then returns a ``PendingSql``, which runs the statement when awaited and whose rows,
read without awaiting, raise a ``RuntimeError`` saying so.

Rejected before execution (``ValueError``): any statement that mentions an internal ``_ew_``
name, and transaction or connection control (BEGIN, COMMIT, END, ROLLBACK, SAVEPOINT, RELEASE,
ATTACH, DETACH, VACUUM, PRAGMA) — batching owns the transaction; use ``storage.transaction``.

The cursor is fully materialised: iterate it for rows as dicts, ``to_list()``, ``one()`` (exactly
one row or ``ValueError``), ``raw()`` for tuples, ``column_names``, ``rows_read`` (rows returned)
and ``rows_written`` (rows changed, per SQLite's change counter). Rows are dicts whose columns
are also attributes (``cursor.one().greeting``).
"""

from __future__ import annotations

import re
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from objects.storage import Storage

__all__ = ["PendingSql", "SqlCursor", "SqlRow", "SqlStorage", "check_statement"]

_INTERNAL = re.compile(r"_ew_", re.IGNORECASE)
_LEADING_COMMENTS = re.compile(r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?(?:\*/|$))*", re.DOTALL)
_CONTROL = re.compile(
    r"^\s*(BEGIN|COMMIT|END|ROLLBACK|SAVEPOINT|RELEASE|ATTACH|DETACH|VACUUM|PRAGMA)\b",
    re.IGNORECASE,
)


def check_statement(query: Any) -> str:
    if not isinstance(query, str):
        raise TypeError(f"SQL query must be a str, got {type(query).__name__}")
    if _INTERNAL.search(query):
        raise ValueError(
            "SQL statement rejected: names starting with '_ew_' are internal storage tables"
        )
    m = _CONTROL.match(_LEADING_COMMENTS.sub("", query))
    if m:
        raise ValueError(
            f"SQL statement rejected: {m.group(1).upper()} is not allowed; "
            "writes are committed automatically (use storage.transaction for atomicity)"
        )
    return query


class SqlRow(dict[str, Any]):
    """One row: a dict of column -> value whose columns are also attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"the row has no column {name!r}") from None


class SqlCursor:
    def __init__(self, columns: list[str], rows: list[tuple[Any, ...]], rows_written: int) -> None:
        self.column_names = columns
        self._rows = rows
        self.rows_read = len(rows)
        self.rows_written = rows_written

    def __await__(self) -> Generator[Any, None, SqlCursor]:
        return self._itself().__await__()

    async def _itself(self) -> SqlCursor:
        return self

    def __iter__(self) -> Iterator[SqlRow]:
        cols = self.column_names
        for row in self._rows:
            yield SqlRow(zip(cols, row, strict=True))

    def to_list(self) -> list[SqlRow]:
        return list(self)

    def raw(self) -> list[tuple[Any, ...]]:
        return list(self._rows)

    def one(self) -> SqlRow:
        if len(self._rows) != 1:
            raise ValueError(f"expected exactly one row from the query, got {len(self._rows)}")
        return SqlRow(zip(self.column_names, self._rows[0], strict=True))

    # Cloudflare's (JavaScript) names, which Python Workers code calls through its JS proxies.
    toArray = to_list  # noqa: N815

    @property
    def columnNames(self) -> list[str]:  # noqa: N802
        return self.column_names

    @property
    def rowsRead(self) -> int:  # noqa: N802
        return self.rows_read

    @property
    def rowsWritten(self) -> int:  # noqa: N802
        return self.rows_written


class PendingSql:
    """A statement that must wait for another event's transaction: await it for the cursor."""

    def __init__(self, storage: Storage, query: str, params: tuple[Any, ...]) -> None:
        self._storage = storage
        self._query = query
        self._params = params

    def __await__(self) -> Generator[Any, None, SqlCursor]:
        return self._storage._exec_sql_when_free(self._query, self._params).__await__()

    def _refuse(self, *args: Any) -> Any:
        raise RuntimeError(
            "sql.exec() ran while a transaction of another event holds this object's storage: "
            "await it (await ctx.storage.sql.exec(...)) to run it once that transaction ends"
        )

    __iter__ = to_list = raw = one = _refuse

    def __getattr__(self, name: str) -> Any:
        self._refuse()


class SqlStorage:
    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    def exec(self, query: str, *params: Any) -> SqlCursor | PendingSql:
        check_statement(query)
        return self._storage._exec_sql(query, params)

    @property
    def database_size(self) -> int:
        return self._storage._database_size()
