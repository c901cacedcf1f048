"""Opening a shared SQLite file (``objects.sqlitefile``): concurrent first opens by several
processes never fail, through the helper and through every store that uses it; the first-open
lock, its failure and its release when the holder is killed."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from objects.sqlitefile import LOCK_SUFFIX, connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS t_v ON t (v);
"""
PROCESSES = 5
ROUNDS = 60


# -- openers run in worker processes: each opens a new file (or state dir) and writes once --

def _open_helper(d: Path, me: int) -> None:
    conn = connect(d / "f.sqlite", SCHEMA)
    conn.execute("INSERT OR REPLACE INTO t (k, v) VALUES (?, 'x')", (str(me),))
    conn.close()


def _open_alarm_index(d: Path, me: int) -> None:
    from objects.alarms import AlarmIndex

    index = AlarmIndex(d / "_alarms.sqlite")
    index.set("C", f"{me:064x}", 1)
    index.close()


def _open_shared_database(d: Path, me: int) -> None:
    from objects.shared import SharedDatabase

    SharedDatabase(d / "_shared.sqlite")._connect().close()


def _open_killswitch(d: Path, me: int) -> None:
    from runtime.killswitch import KillSwitch

    KillSwitch(d).list()


def _open_approvals(d: Path, me: int) -> None:
    from runtime.approvals import ApprovalStore

    ApprovalStore(d).close()


def _open_audit(d: Path, me: int) -> None:
    from runtime.audit import AuditLog

    log = AuditLog(d)
    log.append("test", data={"me": me})
    log.close()


def _open_sandbox_kv(d: Path, me: int) -> None:
    from sandbox.kv import SandboxKV

    SandboxKV(d, "app").put("t", str(me), "1")


def _open_revocations(d: Path, me: int) -> None:
    from sandbox.tokens import _RevocationStore

    _RevocationStore(d / "revoked.sqlite").add(f"jti-{me}", 10, 0)


OPENERS = {
    "helper": _open_helper,
    "AlarmIndex": _open_alarm_index,
    "SharedDatabase": _open_shared_database,
    "KillSwitch": _open_killswitch,
    "ApprovalStore": _open_approvals,
    "AuditLog": _open_audit,
    "SandboxKV": _open_sandbox_kv,
    "RevocationStore": _open_revocations,
}


def _worker(root: str, names: list[str], rounds: int, me: int, barrier, results) -> None:
    failures = []
    for name in names:
        for r in range(rounds):
            barrier.wait(60)  # every process opens the same new file at the same moment
            try:
                OPENERS[name](Path(root) / name / str(r), me)
            except Exception as exc:  # noqa: BLE001 - every failure is reported to the test
                failures.append(f"{name} round {r}: {type(exc).__name__}: {exc}")
    results.put(failures)


def _run_concurrently(root: Path, names: list[str], rounds: int) -> list[str]:
    ctx = multiprocessing.get_context("spawn")  # no fork of the test process's threads
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(root), names, rounds, i, barrier, results))
             for i in range(PROCESSES)]
    for p in procs:
        p.start()
    try:
        failures = [f for _ in procs for f in results.get(timeout=100)]
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
                p.join()
    return failures


def test_processes_opening_the_same_new_file_at_once_never_fail(tmp_path):
    assert _run_concurrently(tmp_path, ["helper"], ROUNDS) == []
    for r in range(ROUNDS):
        conn = sqlite3.connect(tmp_path / "helper" / str(r) / "f.sqlite")
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == PROCESSES
        conn.close()


def test_every_shared_store_survives_concurrent_first_opens(tmp_path):
    names = [n for n in OPENERS if n != "helper"]
    assert _run_concurrently(tmp_path, names, ROUNDS // 3) == []


# -- the first-open lock ---------------------------------------------------------------------

def _hold_lock(lock_path: Path) -> subprocess.Popen[str]:
    """A process that holds the first-open lock of a file until it is killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys, time\n"
         f"fd = os.open({str(lock_path)!r}, os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\n"
         "print('held', flush=True)\n"
         "time.sleep(120)\n"],
        stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def _kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.stdout is not None
    proc.stdout.close()


def test_a_first_open_that_cannot_get_the_lock_fails_naming_the_lock_file(tmp_path):
    path = tmp_path / "f.sqlite"
    holder = _hold_lock(tmp_path / f"f.sqlite{LOCK_SUFFIX}")
    try:
        with pytest.raises(sqlite3.OperationalError, match=r"f\.sqlite\.lock is held"):
            connect(path, SCHEMA, busy_timeout_s=0.2)
    finally:
        _kill(holder)


def test_the_lock_of_an_opener_killed_while_holding_it_is_released(tmp_path):
    path = tmp_path / "f.sqlite"
    _kill(_hold_lock(tmp_path / f"f.sqlite{LOCK_SUFFIX}"))
    conn = connect(path, SCHEMA, busy_timeout_s=5)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_a_file_already_in_wal_mode_opens_without_the_lock(tmp_path):
    path = tmp_path / "f.sqlite"
    connect(path, SCHEMA).close()
    holder = _hold_lock(tmp_path / f"f.sqlite{LOCK_SUFFIX}")
    try:
        conn = connect(path, SCHEMA, busy_timeout_s=0.2)
        conn.execute("INSERT INTO t (k, v) VALUES ('a', 'b')")
        conn.close()
    finally:
        _kill(holder)


def test_threads_of_one_process_take_turns_at_the_first_open(tmp_path):
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def open_one(r: int) -> None:
        barrier.wait(10)
        try:
            connect(tmp_path / f"{r}.sqlite", SCHEMA).close()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    for r in range(20):
        threads = [threading.Thread(target=open_one, args=(r,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


def test_the_schema_is_created_and_synchronous_set(tmp_path):
    conn = connect(tmp_path / "sub" / "f.sqlite", SCHEMA, synchronous="FULL")
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert {"t", "t_v"} <= names
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    conn.close()
