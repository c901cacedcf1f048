"""Atomic sections of an object's storage and the ``txn`` handed to ``transaction(fn)``.

A section buffers the KV writes, the alarm change and the idempotency records made inside it;
``objects.storage`` merges them into the current batch when the section succeeds and drops them
when it fails (see its docstring for gating and the SQL SAVEPOINT).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from objects.storage import Storage

__all__ = ["MISSING", "Section", "Transaction"]

MISSING: Any = object()


@dataclass
class Section:
    writes: dict[str, bytes | None] = field(default_factory=dict)
    alarm: Any = MISSING  # int | None when set inside the section
    idempotency: list[tuple[str, bytes, int]] = field(default_factory=list)
    savepoint: str | None = None
    rolled_back: bool = False


class Transaction:
    """The ``txn`` passed to ``storage.transaction(fn)``: the same KV methods, plus rollback."""

    def __init__(self, storage: Storage, section: Section) -> None:
        self._storage = storage
        self._section = section

    async def get(self, key: str | list[str]) -> Any:
        return await self._storage.get(key)

    async def put(self, key: str | dict[str, Any], value: Any = MISSING) -> None:
        await self._storage.put(key, value)

    async def delete(self, key: str | list[str]) -> bool | int:
        return await self._storage.delete(key)

    async def list(self, **options: Any) -> dict[str, Any]:
        return await self._storage.list(**options)

    async def get_alarm(self) -> int | None:
        return await self._storage.get_alarm()

    async def set_alarm(self, when: int | float | dt.datetime) -> None:
        await self._storage.set_alarm(when)

    async def delete_alarm(self) -> None:
        await self._storage.delete_alarm()

    def rollback(self) -> None:
        """Discard every write of this transaction when ``fn`` returns."""
        self._section.rolled_back = True
