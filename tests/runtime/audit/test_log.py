"""The audit log v2 end to end (``runtime.audit``): entries are the leaves of one Merkle tree,
every edit of the stored log makes `verify` fail and says where, signed checkpoints, several
processes on one log, redaction before anything reaches disk, queries across segments,
backpressure, the continued version-1 log, and the ``edgeworks audit`` command."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from runtime.audit import (
    AUDIT_FILENAME,
    AuditClosed,
    AuditLog,
    AuditOptions,
    AuditUnavailable,
    canonical_json,
    format_ts,
    legacy,
    query,
    verify,
)
from runtime.audit import journal as journal_module
from runtime.audit.anchor import (
    AnchorSink,
    Signer,
    load_public_key,
    load_signing_key,
    public_verifier,
    read_anchor,
)
from runtime.audit.journal import Journal, journal_dir
from runtime.audit.merkle import Frontier, leaf_hash
from runtime.audit.records import RecordMaker, entry_of
from runtime.audit.store import Store, list_segments
from runtime.cli import main

REPO = Path(__file__).resolve().parents[3]
T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


class FakeClock:
    """A clock that moves only when a test moves it."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """The state dir; tmp_path itself holds what must stay outside it (keys, proofs)."""
    return tmp_path / "state"


@pytest.fixture
def signer(tmp_path: Path, state: Path) -> Signer:
    return load_signing_key(state, configured=str(tmp_path / "keys" / "audit.key"))


def fill(state_dir: Path, n: int, *, start: int = 1, signer: Signer | None = None, **opts: Any) -> None:
    """Entries seq start..start+n-1 (one segment), each with a unique marker in its data."""
    with AuditLog(state_dir, AuditOptions(**opts), clock=FakeClock(), signer=signer) as log:
        for i in range(start, start + n):
            log.append("tool.call", request_id=f"req-{i}", tenant="acme", marker=f"MARKER-{i:04d}")


def segmented(state_dir: Path, sizes: list[int], *, signer: Signer | None = None) -> None:
    """A log whose sealed segment k holds sizes[k] entries (request ids req-1, req-2, ...), one
    minute apart, tenants alternating t1/t0, kinds alternating tool.call/request."""
    options = AuditOptions(segment_max_bytes=4096)
    clock = FakeClock()
    journal = Journal(state_dir, options, clock=clock)
    store = Store(state_dir, options, signer=signer, clock=clock)
    seq = 0
    try:
        for size in sizes:
            for _ in range(size):
                seq += 1
                clock.t += 60
                journal.append("tool.call" if seq % 2 else "request", request_id=f"req-{seq}",
                               tenant=f"t{seq % 2}", marker=f"MARKER-{seq:04d}")
            while store.consume().more:
                pass
            store.rotate()  # no-op when the consume above already sealed it (it is over 4096 bytes)
        journal.close()
        store.consume()  # deletes the finished journal file
    finally:
        store.close()


def segment(state_dir: Path, number: int = 1) -> Path:
    return list_segments(state_dir)[number - 1]


@contextlib.contextmanager
def db(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def record(request_id: str, *, ts: float = T0, tenant: str = "acme") -> bytes:
    """A well-formed record, as a forger with the code would make it."""
    return RecordMaker(AuditOptions()).make("tool.call", {"request_id": request_id, "tenant": tenant}, {}, ts)


def broken(state_dir: Path, **kwargs: Any) -> tuple[int | None, str]:
    result = verify(state_dir, **kwargs)
    assert not result.ok, result
    assert result.reason
    return result.first_bad_seq, result.reason


# -- the tree ---------------------------------------------------------------------------------


def test_entries_are_the_leaves_of_the_merkle_tree(state: Path):
    fill(state, 5)
    with db(segment(state)) as conn:
        rows = conn.execute("SELECT seq, ts, kind, request_id, tenant, record FROM entries ORDER BY seq").fetchall()
    frontier = Frontier()
    for _, _, _, _, _, raw in rows:
        frontier.append(leaf_hash(raw))
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0][1:5] == (T0, "tool.call", "req-1", "acme")  # the columns index the record
    result = verify(state)
    assert (result.ok, result.first_bad_seq, result.entries, result.size) == (True, None, 5, 5)
    assert result.last_hash == frontier.root().hex()
    entries = query(state)
    assert [e.hash for e in entries] == [leaf_hash(r[5]).hex() for r in rows]
    assert entries[0].ts == "2027-01-15T08:00:00.000000Z"  # from the injected clock
    assert entries[0].data == {"marker": "MARKER-0001"}


def test_the_tree_spans_several_segments(state: Path):
    segmented(state, [3, 4, 2])
    assert len(list_segments(state)) == 4  # three sealed, the empty current one
    frontier = Frontier()
    for path in list_segments(state):
        with db(path) as conn:
            for (raw,) in conn.execute("SELECT record FROM entries ORDER BY seq"):
                frontier.append(leaf_hash(raw))
    result = verify(state)
    assert (result.ok, result.entries, result.last_hash) == (True, 9, frontier.root().hex())


# -- tampering --------------------------------------------------------------------------------


def test_one_changed_byte_in_a_record_is_caught(state: Path):
    fill(state, 12)
    path = segment(state)
    assert not Path(f"{path}-wal").exists()  # checkpointed on close: the file holds every entry
    raw = path.read_bytes()
    assert raw.count(b"MARKER-0007") == 1
    path.write_bytes(raw.replace(b"MARKER-0007", b"MARKER-0009"))
    # No per-entry hash is stored: the first stored head after the edit (here the segment's) names it.
    seq, reason = broken(state)
    assert seq == 12
    assert "altered" in reason


def test_a_changed_record_is_caught_by_the_tile_that_covers_it(state: Path):
    fill(state, 300)
    path = segment(state)
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b"MARKER-0007", b"MARKER-0009"))
    seq, reason = broken(state)
    assert seq == 256  # the end of tile 0 (leaves 0..255)
    assert "tile 0" in reason and "altered" in reason


@pytest.mark.parametrize("column", ["tenant", "kind", "request_id"])
def test_an_indexed_column_that_no_longer_matches_its_record(state: Path, column: str):
    fill(state, 10)
    with db(segment(state)) as conn:
        conn.execute(f"UPDATE entries SET {column} = 'evil' WHERE seq = 5")
    seq, reason = broken(state)
    assert seq == 5
    assert "columns do not match" in reason


def test_a_deleted_row(state: Path):
    fill(state, 10)
    with db(segment(state)) as conn:
        conn.execute("DELETE FROM entries WHERE seq = 5")
    seq, reason = broken(state)
    assert seq == 5
    assert "entry 5 is missing" in reason


def test_a_deleted_last_row_is_caught_by_the_recorded_frontier(state: Path):
    fill(state, 10)
    with db(segment(state)) as conn:
        conn.execute("DELETE FROM entries WHERE seq = 10")
    seq, reason = broken(state)
    assert seq == 10
    assert "ends at seq 9" in reason and "records 10" in reason


def test_two_swapped_rows(state: Path):
    fill(state, 10)
    cols = ("ts", "kind", "request_id", "tenant", "record")
    with db(segment(state)) as conn:
        a = conn.execute(f"SELECT {', '.join(cols)} FROM entries WHERE seq = 4").fetchone()
        b = conn.execute(f"SELECT {', '.join(cols)} FROM entries WHERE seq = 5").fetchone()
        sets = ", ".join(f"{c} = ?" for c in cols)
        conn.execute(f"UPDATE entries SET {sets} WHERE seq = 4", b)
        conn.execute(f"UPDATE entries SET {sets} WHERE seq = 5", a)
    seq, reason = broken(state)
    assert seq == 10  # each row matches its columns; the order changes the tree, caught at the head
    assert "altered" in reason


def _insert_forged_row_at_5(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE entries SET seq = -seq WHERE seq >= 5")
    conn.execute("UPDATE entries SET seq = -seq + 1 WHERE seq < 0")
    raw = record("forged")
    conn.execute("INSERT INTO entries (seq, ts, kind, request_id, tenant, record) VALUES (5, ?, 'tool.call',"
                 " 'forged', 'acme', ?)", (T0, raw))


def test_an_inserted_forged_row_with_seqs_renumbered(state: Path):
    fill(state, 10)
    with db(segment(state)) as conn:
        _insert_forged_row_at_5(conn)
    seq, reason = broken(state)
    assert seq == 11
    assert "after the recorded head" in reason


def test_an_inserted_row_with_a_recomputed_frontier_is_caught_by_the_checkpoint(state: Path, signer: Signer):
    fill(state, 10, signer=signer)
    path = segment(state)
    with db(path) as conn:
        _insert_forged_row_at_5(conn)
        frontier = Frontier()
        for (raw,) in conn.execute("SELECT record FROM entries ORDER BY seq").fetchall():
            frontier.append(leaf_hash(raw))
        conn.execute("UPDATE state SET frontier = ?", (frontier.to_bytes(),))
    seq, reason = broken(state)
    assert seq == 10
    assert "checkpoint at seq 10 does not match" in reason


def test_a_row_appended_behind_the_writers_back(state: Path):
    fill(state, 3)
    with db(segment(state)) as conn:
        conn.execute("INSERT INTO entries (seq, ts, kind, request_id, tenant, record) VALUES (4, ?, 'tool.call',"
                     " 'late', 'acme', ?)", (T0, record("late")))
    seq, reason = broken(state)
    assert seq == 4
    assert "after the recorded head" in reason


def test_a_tampered_tile(state: Path):
    fill(state, 300)
    with db(segment(state)) as conn:
        assert conn.execute("SELECT idx FROM tiles").fetchall() == [(0,)]
        conn.execute("UPDATE tiles SET hash = zeroblob(32) WHERE idx = 0")
    seq, reason = broken(state)
    assert seq == 256
    assert "tile 0 does not match" in reason


def test_a_changed_checkpoint_root(state: Path, signer: Signer):
    fill(state, 10, signer=signer)
    with db(segment(state)) as conn:
        assert conn.execute("SELECT size FROM checkpoints").fetchall() == [(10,)]
        conn.execute("UPDATE checkpoints SET root = zeroblob(32)")
    seq, reason = broken(state)
    assert seq == 10
    assert "checkpoint at seq 10 does not match" in reason


def test_a_file_sqlite_cannot_read_is_reported_as_broken(state: Path, capsys: pytest.CaptureFixture[str]):
    fill(state, 3)
    path = segment(state)
    raw = bytearray(path.read_bytes())
    raw[0:16] = b"not sqlite at al"  # the header
    path.write_bytes(bytes(raw))
    result = verify(state)
    assert (result.ok, result.first_bad_seq) == (False, None)
    assert result.reason and "cannot be read" in result.reason
    assert main(["audit", "verify", "--state-dir", str(state)]) == 1
    assert "BROKEN: the log cannot be read" in capsys.readouterr().err
    assert main(["audit", "query", "--state-dir", str(state)]) == 2


def test_a_malformed_state_row_is_reported_as_broken(state: Path):
    fill(state, 3)
    with db(segment(state)) as conn:
        conn.execute("UPDATE state SET frontier = x'00'")
    result = verify(state)
    assert (result.ok, result.first_bad_seq) == (False, None)
    assert result.reason and "cannot be read" in result.reason and "state row is malformed" in result.reason
    assert main(["audit", "query", "--state-dir", str(state)]) == 2


def test_a_segment_removed_from_the_middle(state: Path):
    segmented(state, [3, 3, 3])
    segment(state, 2).unlink()
    seq, reason = broken(state)
    assert seq == 7  # the first entry of the segment that no longer follows
    assert "does not continue the segment before it" in reason


def test_a_segment_whose_start_frontier_does_not_continue_the_previous_one(state: Path):
    segmented(state, [3, 3, 3])
    forged = Frontier(6, [bytes(32)] * (6).bit_count()).to_bytes()
    with db(segment(state, 3)) as conn:
        conn.execute("UPDATE state SET start_frontier = ?", (forged,))
    seq, reason = broken(state)
    assert seq == 7
    assert "00000003.sqlite does not continue" in reason


# -- signed checkpoints ------------------------------------------------------------------------


def test_signed_checkpoints_verify_with_the_public_key(tmp_path: Path, state: Path, signer: Signer):
    fill(state, 10, signer=signer)
    fill(state, 5, start=11, signer=signer)  # reopened: a second checkpoint at 15
    with db(segment(state)) as conn:
        assert conn.execute("SELECT size FROM checkpoints ORDER BY size").fetchall() == [(10,), (15,)]
    by_file = load_public_key(tmp_path / "keys" / "audit.key")
    for verifier in (by_file, public_verifier(signer)):
        result = verify(state, verifier=verifier)
        assert (result.ok, result.entries, result.last_good_checkpoint) == (True, 15, 15)
    other = load_signing_key(state, configured=str(tmp_path / "keys" / "other.key"))
    seq, reason = broken(state, verifier=public_verifier(other))
    assert seq == 10
    assert f"signed by key {signer.key_id}, not by the trusted key {other.key_id}" in reason


def test_a_checkpoint_signed_by_another_key_fails_with_a_verifier(tmp_path: Path, state: Path, signer: Signer):
    fill(state, 10, signer=signer)
    other = load_signing_key(state, configured=str(tmp_path / "keys" / "other.key"))
    with db(segment(state)) as conn:
        size, ts, root, signed = conn.execute("SELECT size, ts, root, signed FROM checkpoints").fetchone()
        origin = json.loads(signed)["origin"]
        forged = other.sign_checkpoint(size, root, ts=ts, origin=origin)
        conn.execute("UPDATE checkpoints SET signed = ?", (forged.to_json(),))
    assert verify(state).ok  # without a verifier only the signed head's fields are checked
    seq, reason = broken(state, verifier=public_verifier(signer))
    assert seq == 10
    assert f"signed by key {other.key_id}, not by the trusted key {signer.key_id}" in reason


def test_a_checkpoint_with_a_forged_signature_under_the_trusted_key_id_is_a_bad_signature(
        state: Path, signer: Signer):
    fill(state, 10, signer=signer)
    with db(segment(state)) as conn:
        signed = json.loads(conn.execute("SELECT signed FROM checkpoints").fetchone()[0])
        signed["signature"] = base64.b64encode(bytes(64)).decode()  # the key id kept, the signature not its
        conn.execute("UPDATE checkpoints SET signed = ?", (json.dumps(signed, sort_keys=True, separators=(",", ":")),))
    seq, reason = broken(state, verifier=public_verifier(signer))
    assert seq == 10 and "has a bad signature" in reason


def test_the_last_good_checkpoint_is_reported(state: Path, signer: Signer):
    fill(state, 10, signer=signer)
    fill(state, 5, start=11, signer=signer)
    with db(segment(state)) as conn:
        conn.execute("UPDATE entries SET tenant = 'evil' WHERE seq = 13")
    result = verify(state, verifier=public_verifier(signer))
    assert (result.ok, result.first_bad_seq, result.last_good_checkpoint) == (False, 13, 10)


def test_a_consistent_rewrite_is_caught_by_the_anchored_head(tmp_path: Path, state: Path, signer: Signer,
                                                              capsys: pytest.CaptureFixture[str]):
    anchor_file = tmp_path / "anchors" / "log.jsonl"
    sink = AnchorSink(path=anchor_file, url=None, state_dir=state)
    with AuditLog(state, clock=FakeClock(), signer=signer, sink=sink) as log:
        for i in range(1, 6):
            log.append("tool.call", request_id=f"req-{i}", marker=f"MARKER-{i:04d}")
    (anchored,) = read_anchor(anchor_file)
    assert anchored.size == 5
    with db(segment(state)) as conn:  # edit entry 3, then recompute everything the segment holds
        conn.execute("UPDATE entries SET record = ? WHERE seq = 3",
                     (conn.execute("SELECT record FROM entries WHERE seq = 3").fetchone()[0]
                      .replace(b"MARKER-0003", b"MARKER-0009"),))
        frontier = Frontier()
        for (raw,) in conn.execute("SELECT record FROM entries ORDER BY seq").fetchall():
            frontier.append(leaf_hash(raw))
        conn.execute("UPDATE state SET frontier = ?", (frontier.to_bytes(),))
        conn.execute("DELETE FROM checkpoints")
    assert verify(state).ok  # consistent on its own: only a head kept elsewhere tells
    seq, reason = broken(state, verifier=public_verifier(signer), anchor=[anchored])
    assert seq == 5
    assert "rewritten" in reason
    public = tmp_path / "public.pem"
    public.write_text(signer.public_key_pem)
    args = ["audit", "verify", "--state-dir", str(state), "--anchor", str(anchor_file)]
    assert main([*args, "--public-key", str(public)]) == 1
    assert "rewritten" in capsys.readouterr().err


# -- several processes ---------------------------------------------------------------------------

_WRITER = """
import os, sys, time
from runtime.audit import AuditLog, AuditOptions
state_dir, worker, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
log = AuditLog(state_dir, AuditOptions(flush_interval_s=0.005))
print("ready", flush=True)
while not os.path.exists(os.path.join(state_dir, "go")):
    time.sleep(0.005)
for i in range(n):
    log.append("test.concurrent", request_id=f"{worker}-{i}", worker=worker, n=i)
    if i % 40 == 0:
        log.flush()
log.close()
"""


def test_appends_from_several_processes_make_one_log(state: Path):
    n, workers = 150, 4
    state.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(state), f"w{w}", str(n)], env=env,
                              stdout=subprocess.PIPE, text=True)
             for w in range(workers)]
    try:
        for p in procs:  # start every producer at once so their entries interleave
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        (state / "go").touch()
        with AuditLog(state, AuditOptions(flush_interval_s=0.005)) as log:  # and two threads here
            def append_all(worker: str) -> None:
                for i in range(n):
                    log.append("test.concurrent", request_id=f"{worker}-{i}", worker=worker, n=i)

            threads = [threading.Thread(target=append_all, args=(f"t{t}",)) for t in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        for p in procs:
            assert p.wait(timeout=60) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()
    total = n * (workers + 2)
    result = verify(state)
    assert (result.ok, result.entries) == (True, total), result
    entries = query(state, kind="test.concurrent")
    assert [e.seq for e in entries] == list(range(1, total + 1))
    by_worker: dict[str, list[int]] = {}
    for e in entries:
        by_worker.setdefault(e.data["worker"], []).append(e.data["n"])
    assert sorted(by_worker) == ["t0", "t1", "w0", "w1", "w2", "w3"]
    for ns in by_worker.values():
        assert ns == list(range(n)), "every entry once, each producer's in append order"
    assert os.listdir(journal_dir(state)) == []  # every journal consumed and deleted


def test_a_writer_never_takes_a_new_journal_for_a_finished_one(state: Path, monkeypatch: pytest.MonkeyPatch):
    """Another process's writer may list the journal dir between a producer's creating its file
    and locking it: it must not see the file unlocked (it would delete it as finished and empty,
    and every entry the producer then appends would be lost)."""
    other = Store(state)

    def flock(fd: int, operation: int) -> None:
        other.consume()  # the other writer looks at the journal dir right now
        fcntl.flock(fd, operation)

    monkeypatch.setattr(journal_module, "fcntl", SimpleNamespace(flock=flock, LOCK_EX=fcntl.LOCK_EX))
    try:
        with AuditLog(state) as log:
            log.append("request", request_id="kept")
    finally:
        other.close()
    assert [e.request_id for e in query(state)] == ["kept"]


# -- redaction -----------------------------------------------------------------------------------


def test_nothing_unredacted_reaches_disk(state: Path):
    secrets = [
        "jane.doe@example.com",
        "4111 1111 1111 1111",
        "+1 415 555 2671",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJqYW5lIn0.c2lnbmF0dXJlc2lnbmF0dXJl",
        "sk-live0123456789abcdefXYZ",
        "hunter2-very-secret",
        "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5",
        "ACME-778899",
    ]

    def on_disk() -> bytes:
        return b"".join(p.read_bytes() for p in sorted(state.rglob("*")) if p.is_file())

    blobs: list[bytes] = []
    with AuditLog(state, AuditOptions(redact_patterns=[r"ACME-\d{6}"])) as log:
        log.append(
            "auth.login",
            request_id="r1",
            subject="jane.doe@example.com",
            data={
                "email": secrets[0],
                "card": f"card {secrets[1]}",
                "phone": secrets[2],
                "headers": {"authorization": f"Bearer {secrets[3]}"},
                "note": f"jwt {secrets[3]} and key {secrets[4]}",
                "password": secrets[5],
                "url": f"/cb?token={secrets[6]}",
                "order": secrets[7],
            },
        )
        log.audit("tool.call", {"tenant": "acme", "args": [secrets[0], {"secret": secrets[5]}]})
        assert list(journal_dir(state).glob("*.log"))
        blobs.append(on_disk())  # the journal holds the entries now
        log.flush()
        blobs.append(on_disk())  # the segment (and its WAL) too
    blobs.append(on_disk())
    for blob in blobs:
        assert b"[redacted:" in blob
        for s in secrets:
            assert s.encode() not in blob, s
    entry, tool = query(state)
    assert entry.subject == "[redacted:email]"
    assert entry.data["email"] == "[redacted:email]"
    assert entry.data["password"] == "[redacted:secret]"
    assert entry.data["order"] == "[redacted:custom]"
    assert tool.data["args"] == ["[redacted:email]", {"secret": "[redacted:secret]"}]
    assert verify(state).ok


# -- query ---------------------------------------------------------------------------------------


def test_query_filters_and_limit_across_segments(state: Path):
    clock = FakeClock()
    with AuditLog(state, AuditOptions(segment_max_bytes=4096), clock=clock) as log:
        for i in range(6):
            clock.t += 60
            log.append("request" if i % 2 else "tool.call", request_id=f"r{i}", tenant=f"t{i % 3}")
            log.flush()  # each step fills a segment past 4096 bytes: it is sealed
    assert len(list_segments(state)) >= 4
    assert [e.request_id for e in query(state, tenant="t0")] == ["r0", "r3"]
    assert [e.request_id for e in query(state, request_id="r4")] == ["r4"]
    assert [e.request_id for e in query(state, kind="request")] == ["r1", "r3", "r5"]
    assert [e.request_id for e in query(state, kind="tool.*")] == ["r0", "r2", "r4"]
    assert [e.request_id for e in query(state, kind="tool")] == []
    later = ["r3", "r4", "r5"]
    assert [e.request_id for e in query(state, since=T0 + 240)] == later
    assert [e.request_id for e in query(state, since="2027-01-15T08:04:00Z")] == later
    assert [e.request_id for e in query(state, since=datetime(2027, 1, 15, 8, 4, tzinfo=UTC))] == later
    assert [e.request_id for e in query(state, since=datetime(2027, 1, 15, 8, 4))] == later  # naive: UTC
    assert [e.seq for e in query(state, limit=2)] == [5, 6]
    assert [e.request_id for e in query(state, kind="tool.*", limit=2)] == ["r2", "r4"]
    assert [e.request_id for e in query(state, tenant="t0", since=T0 + 120, kind="request")] == ["r3"]
    assert query(state, tenant="nobody") == []
    assert verify(state).ok


def test_verify_and_query_of_a_missing_log_raise(state: Path):
    with pytest.raises(FileNotFoundError):
        verify(state)
    with pytest.raises(FileNotFoundError):
        query(state)
    assert not state.exists()


# -- what an entry holds --------------------------------------------------------------------------


def test_classification_defaults_per_kind_and_overrides(state: Path):
    opts = AuditOptions(classifications={"tool.read": "public"})
    with AuditLog(state, opts) as log:
        log.append("tool.call")
        log.append("tool.read.file")
        log.append("secret.read")
        log.append("something.else")
        log.append("request", classification="restricted")
        assert log.classification_for("tool.read") == "public"
        log.append("request", classification="need-to-know")  # an app's own [ai] level
        with pytest.raises(ValueError, match="classification"):
            log.append("request", classification="Top Secret")  # not a level name
        with pytest.raises(ValueError):
            log.append("")
    assert [e.classification for e in query(state)] == [
        "confidential", "public", "restricted", "internal", "restricted", "need-to-know",
    ]
    assert verify(state).entries == 6  # the refused appends left nothing behind


def test_invalid_classification_in_options_is_refused():
    with pytest.raises(ValueError):
        AuditOptions(classifications={"tool": "top-secret"})


def test_non_json_values_are_stored_plainly(state: Path):
    when = datetime(2027, 1, 15, 8, 0, tzinfo=UTC)
    with AuditLog(state) as log:
        log.audit(
            "tool.call",
            {
                "request_id": "r1",
                "tenant": "acme",
                "risk": "high",
                "fuel": 1234,
                "caps": {"kv.write", "kv.read"},
                "body": b"\x00\x01secret bytes",
                "ratio": float("nan"),
                "when": when,
                "data": {"outcome": "ok"},
            },
        )
    (e,) = query(state)
    assert (e.request_id, e.tenant, e.risk) == ("r1", "acme", "high")
    assert e.data == {
        "fuel": 1234,
        "caps": ["kv.read", "kv.write"],
        "body": {"bytes": 14},
        "ratio": "nan",
        "when": when.isoformat(),
        "outcome": "ok",
    }
    assert b"secret bytes" not in segment(state).read_bytes()
    assert verify(state).ok


def test_non_ascii_and_lone_surrogates_are_stored_without_blocking_the_log(state: Path):
    with AuditLog(state) as log:
        log.append("request", tenant="café", data={"msg": "naïve ✓ 日本", "bad": "x\ud800y"})
        log.append("request", subject="a\udcffb", data={"k\ud800": ["\udfff"]})
        log.append("request", request_id="after")
    first, second, third = query(state)
    assert first.tenant == "café"
    assert first.data == {"msg": "naïve ✓ 日本", "bad": "x\ufffdy"}
    assert second.subject == "a\ufffdb"
    assert second.data == {"k\ufffd": ["\ufffd"]}
    assert third.request_id == "after"
    assert query(state, tenant="café") == [first]
    assert verify(state).ok


# -- lifecycle -------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_cannot_use_the_parents_log(state: Path):
    with AuditLog(state) as log:
        log.append("request", request_id="before")
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                try:
                    log.append("request", request_id="child")
                    outcome = "appended"
                except AuditClosed:
                    outcome = "refused"
                log.close()  # must not touch the parent's journal or segment
                os.write(w, outcome.encode())
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            assert f.read() == "refused"
        os.waitpid(pid, 0)
        log.append("request", request_id="after")
    assert [e.request_id for e in query(state)] == ["before", "after"]
    assert verify(state).ok


def test_append_after_close_raises_and_close_is_idempotent(state: Path):
    log = AuditLog(state)
    log.append("request")
    log.close()
    log.close()
    with pytest.raises(AuditClosed):
        log.append("request")
    with pytest.raises(AuditClosed):
        log.audit("request", {})
    assert verify(state).entries == 1


def test_backpressure_fails_closed_and_loses_nothing(state: Path):
    opts = AuditOptions(max_backlog_bytes=4096, backpressure_timeout_s=0.05, flush_interval_s=0.01)
    lock_path = state / "audit" / "writer.lock"
    lock_path.parent.mkdir(parents=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # no writer can take the lock: nothing is consumed
    log = AuditLog(state, opts)
    appended: list[str] = []
    try:
        with pytest.raises(AuditUnavailable):
            for i in range(1000):
                log.append("request", request_id=f"r{i}", filler="x" * 200)
                appended.append(f"r{i}")
        assert log.pending >= 4096
        assert len(appended) < 1000
    finally:
        os.close(fd)  # the writer may go on
    log.append("request", request_id="after")
    log.flush()
    assert log.pending == 0
    log.close()
    assert [e.request_id for e in query(state)] == [*appended, "after"]
    assert verify(state).ok


# -- the version-1 log ---------------------------------------------------------------------------

V1_SCHEMA = """
CREATE TABLE entries (seq INTEGER PRIMARY KEY, ts TEXT NOT NULL, kind TEXT NOT NULL, request_id TEXT,
    tenant TEXT, subject TEXT, script TEXT, risk TEXT, classification TEXT NOT NULL, data TEXT NOT NULL,
    prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TABLE checkpoints (seq INTEGER PRIMARY KEY, hash TEXT NOT NULL);
CREATE TABLE head (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, hash TEXT NOT NULL);
"""


def v1_rows(n: int, *, changed: int | None = None) -> list[tuple[Any, ...]]:
    """The rows of a version-1 hash chain of n entries (entry `changed` with other data)."""
    rows, prev = [], legacy.GENESIS_HASH
    for seq in range(1, n + 1):
        entry = {"seq": seq, "ts": format_ts(T0 - 3600 + seq), "kind": "tool.call", "request_id": f"v1-{seq}",
                 "tenant": "acme", "subject": None, "script": None, "risk": None,
                 "classification": "confidential", "data": {"n": seq, "changed": seq == changed},
                 "prev_hash": prev}
        h = legacy.entry_hash(prev, entry)
        rows.append((*(entry[k] for k in ("seq", "ts", "kind", "request_id", "tenant", "subject", "script", "risk",
                                           "classification")), canonical_json(entry["data"]), prev, h))
        prev = h
    return rows


def write_v1(state_dir: Path, rows: list[tuple[Any, ...]], checkpoint_every: int = 2) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    with db(state_dir / AUDIT_FILENAME) as conn:
        conn.executescript(V1_SCHEMA)
        store_v1(conn, rows, checkpoint_every)


def store_v1(conn: sqlite3.Connection, rows: list[tuple[Any, ...]], checkpoint_every: int = 2) -> None:
    conn.execute("DELETE FROM entries")
    conn.execute("DELETE FROM checkpoints")
    conn.execute("DELETE FROM head")
    conn.executemany("INSERT INTO entries VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    conn.executemany("INSERT INTO checkpoints VALUES (?, ?)",
                     [(r[0], r[-1]) for r in rows if r[0] % checkpoint_every == 0])
    conn.execute("INSERT INTO head VALUES (1, ?, ?)", (rows[-1][0], rows[-1][-1]))


def test_a_version_1_log_is_verified_and_continued(state: Path):
    rows = v1_rows(5)
    write_v1(state, rows)
    assert legacy.verify(state).ok  # the hand-made log is a valid version-1 log
    fill(state, 3, start=100)
    result = verify(state)
    assert (result.ok, result.entries, result.size) == (True, 5 + 1 + 3, 4)
    entries = query(state)
    assert [e.seq for e in entries] == list(range(1, 10))
    assert [e.request_id for e in entries[:5]] == [f"v1-{i}" for i in range(1, 6)]
    assert [e.hash for e in entries[:5]] == [r[-1] for r in rows]
    migrated = entries[5]
    assert migrated.kind == "audit.migrated"
    assert migrated.data == {"legacy_file": AUDIT_FILENAME, "legacy_entries": 5, "legacy_last_seq": 5,
                             "legacy_last_hash": rows[-1][-1], "legacy_ok": True, "legacy_problem": None}
    assert [e.request_id for e in entries[6:]] == ["req-100", "req-101", "req-102"]
    assert [e.request_id for e in query(state, tenant="acme", limit=4)] == ["v1-5", "req-100", "req-101", "req-102"]
    assert [e.request_id for e in query(state, request_id="v1-2")] == ["v1-2"]


def test_editing_the_version_1_log_after_migration_is_caught(state: Path):
    write_v1(state, v1_rows(5))
    fill(state, 2)
    with db(state / AUDIT_FILENAME) as conn:
        conn.execute("""UPDATE entries SET data = '{"changed":true,"n":3}' WHERE seq = 3""")
    seq, reason = broken(state)
    assert seq == 3
    assert "version-1" in reason and "hash mismatch" in reason


def test_rewriting_the_version_1_chain_after_migration_is_caught(state: Path):
    write_v1(state, v1_rows(5))
    fill(state, 2)
    with db(state / AUDIT_FILENAME) as conn:
        store_v1(conn, v1_rows(5, changed=3))  # every hash recomputed: a valid chain on its own
    assert legacy.verify(state).ok
    seq, reason = broken(state)
    assert seq == 6  # the audit.migrated entry, which recorded the old chain's head
    assert "changed after it was migrated" in reason


def test_a_version_1_log_broken_before_migration_is_named(state: Path):
    write_v1(state, v1_rows(5))
    with db(state / AUDIT_FILENAME) as conn:
        conn.execute("UPDATE entries SET tenant = 'evil' WHERE seq = 3")
    fill(state, 2)  # the log goes on: appending never waits for an old problem
    seq, reason = broken(state)
    assert seq == 3
    assert "version-1" in reason and "hash mismatch" in reason
    migrated = query(state, kind="audit.migrated")[0].data
    assert migrated["legacy_ok"] is False
    assert "hash mismatch" in migrated["legacy_problem"]


# -- the CLI -------------------------------------------------------------------------------------


def test_cli_verify_exit_codes(state: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["audit", "verify", "--state-dir", str(state)]) == 2
    assert "no audit log" in capsys.readouterr().err
    fill(state, 4)
    assert main(["audit", "verify", "--state-dir", str(state)]) == 0
    assert "4 entries" in capsys.readouterr().out
    with db(segment(state)) as conn:
        conn.execute("UPDATE entries SET kind = 'x' WHERE seq = 3")
    assert main(["audit", "verify", "--state-dir", str(state)]) == 1
    err = capsys.readouterr().err
    assert "seq 3" in err and "columns do not match" in err
    assert main(["audit", "verify", "--state-dir", str(state), "--public-key", str(state / "nope.pem")]) == 2


def test_cli_uses_dot_edgeworks_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]):
    monkeypatch.chdir(tmp_path)
    fill(tmp_path / ".edgeworks", 2)
    assert main(["audit", "verify"]) == 0
    assert main(["audit", "query", "--request-id", "req-2"]) == 0
    (line,) = capsys.readouterr().out.splitlines()[1:]
    assert json.loads(line)["seq"] == 2


def test_cli_query_prints_json_lines(state: Path, capsys: pytest.CaptureFixture[str]):
    with AuditLog(state) as log:  # the real clock: --since 10m includes these
        log.append("request", request_id="a", tenant="t1")
        log.append("tool.call", request_id="b", tenant="t2", note="ünï")
    capsys.readouterr()
    assert main(["audit", "query", "--state-dir", str(state), "--since", "10m"]) == 0
    lines = capsys.readouterr().out.splitlines()
    docs = [json.loads(line) for line in lines]
    assert [d["request_id"] for d in docs] == ["a", "b"]
    assert docs[1]["data"] == {"note": "ünï"}
    assert docs[1]["hash"] == query(state, request_id="b")[0].hash
    assert main(["audit", "query", "--state-dir", str(state), "--tenant", "t2", "--kind", "tool.*"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["seq"] == 2
    assert main(["audit", "query", "--state-dir", str(state), "--limit", "1"]) == 0
    assert [json.loads(x)["seq"] for x in capsys.readouterr().out.splitlines()] == [2]
    assert main(["audit", "query", "--state-dir", str(state), "--since", "2999-01-01T00:00:00"]) == 0
    assert capsys.readouterr().out == ""
    with pytest.raises(SystemExit):
        main(["audit", "query", "--state-dir", str(state), "--since", "yesterday"])


def test_parse_since_durations_and_iso():
    from runtime.commands.audit import parse_since

    assert parse_since("1h30m", lambda: 7200.0) == "1970-01-01T00:30:00.000000Z"
    assert parse_since("90s", lambda: 100.0) == "1970-01-01T00:00:10.000000Z"
    assert parse_since("2d", lambda: 3 * 86400.0) == "1970-01-02T00:00:00.000000Z"
    assert parse_since("2026-01-01T00:00:00+01:00") == "2025-12-31T23:00:00.000000Z"
    assert parse_since("2026-01-01T00:00:00Z") == "2026-01-01T00:00:00.000000Z"
    assert parse_since("2026-01-01T00:00:00") == "2026-01-01T00:00:00.000000Z"  # naive: UTC


# -- proofs and exports ----------------------------------------------------------------------------


@pytest.fixture
def proven(tmp_path: Path, state: Path, signer: Signer) -> tuple[Path, Path]:
    """A signed log of 5 entries, the proof of entry 3 and the signing key's public half."""
    fill(state, 5, signer=signer)  # close signs (and anchors) the head
    proof = tmp_path / "proof.json"
    assert main(["audit", "prove", "3", "--state-dir", str(state), "--out", str(proof)]) == 0
    public = tmp_path / "public.pem"
    public.write_text(signer.public_key_pem)
    return proof, public


def check(path: Path, public: Path) -> int:
    return main(["audit", "verify-proof", str(path), "--public-key", str(public)])


def test_prove_and_verify_proof_round_trip(proven: tuple[Path, Path], capsys: pytest.CaptureFixture[str]):
    proof, public = proven
    doc = json.loads(proof.read_text())
    assert (doc["seq"], doc["entry"]["request_id"], doc["checkpoint"]["size"]) == (3, "req-3", 5)
    capsys.readouterr()
    assert check(proof, public) == 0
    assert "proof ok: entry 3" in capsys.readouterr().out


def _rewrite(path: Path, change: Any) -> Path:
    doc = json.loads(path.read_text())
    change(doc)
    out = path.with_name("altered.json")
    out.write_text(json.dumps(doc))
    return out


def test_a_proof_whose_record_is_altered_fails(proven: tuple[Path, Path], capsys: pytest.CaptureFixture[str]):
    proof, public = proven

    def alter(doc: dict[str, Any]) -> None:  # the entry shown follows the record: only the tree disagrees
        raw = base64.b64decode(doc["record"]).replace(b"MARKER-0003", b"MARKER-0004")
        doc["record"] = base64.b64encode(raw).decode()
        doc["entry"] = entry_of(doc["seq"], raw, leaf_hash(raw)).as_dict()

    assert check(_rewrite(proof, alter), public) == 1
    assert "does not lead to the checkpoint's root" in capsys.readouterr().err


def test_a_proof_whose_entry_text_is_altered_fails(proven: tuple[Path, Path], capsys: pytest.CaptureFixture[str]):
    proof, public = proven

    def alter(doc: dict[str, Any]) -> None:
        doc["entry"]["data"]["marker"] = "MARKER-0004"

    assert check(_rewrite(proof, alter), public) == 1
    assert "not the record that was proven" in capsys.readouterr().err


def test_a_proof_whose_signature_is_altered_fails(proven: tuple[Path, Path], capsys: pytest.CaptureFixture[str]):
    proof, public = proven

    def alter(doc: dict[str, Any]) -> None:
        signature = bytearray(base64.b64decode(doc["checkpoint"]["signature"]))
        signature[0] ^= 1
        doc["checkpoint"]["signature"] = base64.b64encode(bytes(signature)).decode()

    assert check(_rewrite(proof, alter), public) == 1
    assert "signature does not verify" in capsys.readouterr().err


def test_verify_proof_with_another_key_fails(tmp_path: Path, state: Path, proven: tuple[Path, Path]):
    proof, _ = proven
    other = load_signing_key(state, configured=str(tmp_path / "keys" / "other.key"))
    other_public = tmp_path / "other.pem"
    other_public.write_text(other.public_key_pem)
    assert check(proof, other_public) == 1


def test_export_and_verify_it_offline(tmp_path: Path, state: Path, signer: Signer,
                                      capsys: pytest.CaptureFixture[str]):
    clock = FakeClock()
    with AuditLog(state, clock=clock, signer=signer) as log:
        for i in range(1, 7):
            clock.t += 60
            log.append("tool.call", request_id=f"req-{i}", marker=f"MARKER-{i:04d}")
    out = tmp_path / "export.jsonl"
    since = format_ts(T0 + 240)  # entries 4..6
    assert main(["audit", "export", "--state-dir", str(state), "--since", since, "--out", str(out)]) == 0
    header, *lines = out.read_text().splitlines()
    assert json.loads(header)["checkpoint"]["size"] == 6
    assert [json.loads(line)["seq"] for line in lines] == [4, 5, 6]
    public = tmp_path / "public.pem"
    public.write_text(signer.public_key_pem)
    capsys.readouterr()
    assert check(out, public) == 0
    assert "export ok: 3 entries" in capsys.readouterr().out
    text = out.read_text()
    assert text.count("MARKER-0005") == 1
    altered = tmp_path / "altered.jsonl"
    altered.write_text(text.replace("MARKER-0005", "MARKER-0009"))
    assert check(altered, public) == 1
    assert "entry 5" in capsys.readouterr().err
