"""The SQL API of an object's storage: ``await ctx.storage.sql.exec(query, *params)`` -> cursor.

``exec`` is a coroutine here (SQLite runs on the object's I/O thread); it runs exactly one
statement, holding the input gate while it runs, inside the object's current write batch, so
SQL writes are committed together with KV writes and are covered by the output gate.

Rejected before execution (``ValueError``): any statement that mentions an internal ``_ew_``
name, and transaction or connection control (BEGIN, COMMIT, END, ROLLBACK, SAVEPOINT, RELEASE,
ATTACH, DETACH, VACUUM, PRAGMA) — batching owns the transaction; use ``storage.transaction``.

The cursor is fully materialised: iterate it for rows as dicts, ``to_list()``, ``one()`` (exactly
one row or ``ValueError``), ``raw()`` for tuples, ``column_names``, ``rows_read`` (rows returned)
and ``rows_written`` (rows changed, per SQLite's change counter).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from objects.storage import Storage

__all__ = ["SqlCursor", "SqlStorage", "check_statement"]

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


class SqlCursor:
    def __init__(self, columns: list[str], rows: list[tuple[Any, ...]], rows_written: int) -> None:
        self.column_names = columns
        self._rows = rows
        self.rows_read = len(rows)
        self.rows_written = rows_written

    def __iter__(self) -> Iterator[dict[str, Any]]:
        cols = self.column_names
        for row in self._rows:
            yield dict(zip(cols, row, strict=True))

    def to_list(self) -> list[dict[str, Any]]:
        return list(self)

    def raw(self) -> list[tuple[Any, ...]]:
        return list(self._rows)

    def one(self) -> dict[str, Any]:
        if len(self._rows) != 1:
            raise ValueError(f"expected exactly one row from the query, got {len(self._rows)}")
        return dict(zip(self.column_names, self._rows[0], strict=True))


class SqlStorage:
    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    async def exec(self, query: str, *params: Any) -> SqlCursor:
        check_statement(query)
        return await self._storage._exec_sql(query, params)

    @property
    def database_size(self) -> int:
        return self._storage._database_size()
