"""Both kinds of object storage — a database of its own (``ObjectDatabase``) and rows in the
shared file (``SharedObjectDatabase``) — are a ``Database``: same methods, same signatures and,
for the same calls, the same answers."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from objects.database import Batch, Database, ObjectDatabase, SqlResult
from objects.shared import SharedDatabase, SharedObjectDatabase

KINDS = ["own", "shared"]
PROTOCOL_METHODS = [
    name for name, member in vars(Database).items()
    if inspect.isfunction(member) and not name.startswith("_")
]
SQL_ONLY_IN_OWN = "must move to its own database before SQL"


async def _open_kind(kind: str, tmp_path: Path) -> tuple[Database, Callable[[], Any]]:
    """A fresh database of ``kind`` for one object, and the coroutine function that closes it."""
    path = tmp_path / "objects" / "app" / "Box" / "abc.sqlite"
    if kind == "own":
        own = ObjectDatabase(path)
        return own, own.close
    store = SharedDatabase(tmp_path / "objects" / "app" / "_shared.sqlite")
    view = SharedObjectDatabase(store, "Box", "abc", path)

    async def close() -> None:
        await view.close()
        await store.close()

    return view, close


@pytest.fixture(params=KINDS)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    database, close = await _open_kind(request.param, tmp_path)
    await database.open(preload_rows=100, preload_bytes=1 << 20)
    yield database
    await close()


def test_protocol_lists_the_shared_methods() -> None:
    assert set(PROTOCOL_METHODS) >= {
        "open", "close", "read", "read_now", "list", "list_now", "read_idempotency",
        "commit_soon", "delete_all", "exec", "open_savepoint", "savepoint",
    }


@pytest.mark.parametrize("cls", [ObjectDatabase, SharedObjectDatabase])
@pytest.mark.parametrize("name", PROTOCOL_METHODS)
def test_each_method_has_the_protocol_signature(cls: type, name: str) -> None:
    expected = inspect.signature(getattr(Database, name))
    actual = inspect.signature(getattr(cls, name))
    assert actual == expected, f"{cls.__name__}.{name}{actual} != Database.{name}{expected}"
    assert inspect.iscoroutinefunction(getattr(cls, name)) == \
        inspect.iscoroutinefunction(getattr(Database, name))


async def test_both_kinds_are_a_database(db: Database) -> None:
    assert isinstance(db, Database)
    assert db.path.name == "abc.sqlite"
    assert db.file.exists()


async def _transcript(db: Database) -> list[tuple[str, Any]]:
    """The same calls, in the same order, on any ``Database``: what each answered."""
    seen: list[tuple[str, Any]] = []
    await db.commit_soon(Batch(epoch=1, writes={"a": b"1", "b/x": b"2", "b/y": b"3", "c": b"4"},
                               alarm_changed=True, alarm=5_000,
                               idempotency=[("op-1", b"reply", 1_000)], name="box-a"))
    seen.append(("read", await db.read(["a", "b/x", "missing"])))
    seen.append(("read_now", db.read_now(["c", "missing"])))
    seen.append(("list all", await db.list(None, None, None, False, None)))
    seen.append(("list prefix reversed", await db.list(None, None, "b/", True, None)))
    seen.append(("list range limited", db.list_now("a", "c", None, False, 2)))
    seen.append(("idempotency", await db.read_idempotency("op-1")))
    seen.append(("no idempotency", await db.read_idempotency("op-2")))
    await db.commit_soon(Batch(epoch=2, writes={"a": None, "c": b"5"}, expire_before=2_000))
    seen.append(("after delete", db.list_now(None, None, None, False, None)))
    seen.append(("expired", await db.read_idempotency("op-1")))
    await db.delete_all()
    seen.append(("after delete_all", await db.list(None, None, None, False, None)))
    return seen


async def test_the_same_calls_give_the_same_answers_on_both_kinds(tmp_path: Path) -> None:
    transcripts = {}
    reopened = {}
    for kind in KINDS:
        database, close = await _open_kind(kind, tmp_path / kind)
        first = await database.open(preload_rows=100, preload_bytes=1 << 20)
        assert (first.alarm, first.rows, first.complete, first.name) == (None, [], True, None)
        transcripts[kind] = await _transcript(database)
        await database.commit_soon(Batch(epoch=3, writes={"kept": b"6"}))
        await close()
        again, close = await _open_kind(kind, tmp_path / kind)
        reopened[kind] = await again.open(preload_rows=100, preload_bytes=1 << 20)
        await close()

    assert transcripts["own"] == transcripts["shared"]
    assert dict(transcripts["own"]) == {
        "read": {"a": b"1", "b/x": b"2"},
        "read_now": {"c": b"4"},
        "list all": [("a", b"1"), ("b/x", b"2"), ("b/y", b"3"), ("c", b"4")],
        "list prefix reversed": [("b/y", b"3"), ("b/x", b"2")],
        "list range limited": [("a", b"1"), ("b/x", b"2")],
        "idempotency": (b"reply", 1_000),
        "no idempotency": None,
        "after delete": [("b/x", b"2"), ("b/y", b"3"), ("c", b"5")],
        "expired": None,
        "after delete_all": [],
    }
    assert reopened["own"] == reopened["shared"]
    assert (reopened["own"].alarm, reopened["own"].rows, reopened["own"].name) == \
        (5_000, [("kept", b"6")], "box-a")


@pytest.mark.parametrize("kind", KINDS)
async def test_a_preload_too_large_loads_nothing_on_both_kinds(kind: str, tmp_path: Path) -> None:
    database, close = await _open_kind(kind, tmp_path)
    await database.open(preload_rows=100, preload_bytes=1 << 20)
    await database.commit_soon(Batch(epoch=1, writes={f"k{i}": b"v" for i in range(5)}))
    await close()
    database, close = await _open_kind(kind, tmp_path)
    state = await database.open(preload_rows=3, preload_bytes=1 << 20)
    await close()
    assert (state.rows, state.complete) == ([], False)


async def test_sql_runs_only_in_a_database_of_its_own(db: Database) -> None:
    if isinstance(db, SharedObjectDatabase):
        with pytest.raises(RuntimeError, match=SQL_ONLY_IN_OWN):
            db.exec("SELECT 1", ())
        with pytest.raises(RuntimeError, match=SQL_ONLY_IN_OWN):
            db.open_savepoint("sp")
        with pytest.raises(RuntimeError, match=SQL_ONLY_IN_OWN):
            await db.savepoint("sp", "release")
        return
    db.open_savepoint("sp")
    created = db.exec("CREATE TABLE t (n INTEGER, s TEXT)", ())
    written = db.exec("INSERT INTO t VALUES (?, ?), (?, ?)", (1, "one", 2, "two"))
    await db.savepoint("sp", "release")
    selected = db.exec("SELECT n, s FROM t ORDER BY n", ())
    assert isinstance(selected, SqlResult)
    assert created == SqlResult([], [], 0)
    assert written.rows_written == 2
    assert selected == SqlResult(["n", "s"], [(1, "one"), (2, "two")], 0)
