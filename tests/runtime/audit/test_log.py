import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from runtime.audit import (
    AUDIT_FILENAME,
    GENESIS_HASH,
    AuditClosed,
    AuditLog,
    AuditOptions,
    AuditUnavailable,
    query,
    verify,
)

REPO = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def fill(state_dir: Path, n: int, **opts) -> None:
    with AuditLog(state_dir, AuditOptions(**opts), clock=FakeClock()) as log:
        for i in range(1, n + 1):
            log.append("tool.call", request_id=f"req-{i}", tenant="acme", marker=f"MARKER-{i:04d}")


def db(state_dir: Path) -> sqlite3.Connection:
    return sqlite3.connect(state_dir / AUDIT_FILENAME, isolation_level=None)


def test_entries_form_a_sha256_chain_over_canonical_json(tmp_path: Path):
    fill(tmp_path, 5)
    with db(tmp_path) as conn:
        rows = conn.execute(
            "SELECT seq, ts, kind, request_id, tenant, subject, script, risk, classification,"
            " data, prev_hash, hash FROM entries ORDER BY seq"
        ).fetchall()
    conn.close()
    prev = GENESIS_HASH
    names = ("seq", "ts", "kind", "request_id", "tenant", "subject", "script", "risk")
    for row in rows:
        entry = dict(zip(names, row[:8], strict=True))
        entry.update(classification=row[8], data=json.loads(row[9]), prev_hash=row[10])
        body = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert row[9] == json.dumps(json.loads(row[9]), sort_keys=True, separators=(",", ":"))
        assert row[10] == prev
        assert row[11] == hashlib.sha256(prev.encode() + body.encode()).hexdigest()
        prev = row[11]
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0][1] == "2027-01-15T08:00:00.000000Z"  # from the injected clock
    result = verify(tmp_path)
    assert (result.ok, result.first_bad_seq, result.entries) == (True, None, 5)
    assert result.last_hash == rows[-1][11]


def test_verify_detects_one_edited_byte_in_the_file(tmp_path: Path):
    fill(tmp_path, 12)
    path = tmp_path / AUDIT_FILENAME
    assert not (tmp_path / (AUDIT_FILENAME + "-wal")).exists()  # checkpointed on close
    raw = path.read_bytes()
    assert raw.count(b"MARKER-0007") == 1
    path.write_bytes(raw.replace(b"MARKER-0007", b"MARKER-0009"))
    result = verify(path)
    assert not result.ok
    assert result.first_bad_seq == 7
    assert "hash mismatch" in result.reason


def test_verify_reports_an_unreadable_file_as_broken(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    fill(tmp_path, 3)
    path = tmp_path / AUDIT_FILENAME
    raw = bytearray(path.read_bytes())
    raw[0:16] = b"not sqlite at al"  # the header
    path.write_bytes(bytes(raw))
    result = verify(tmp_path)
    assert (result.ok, result.first_bad_seq) == (False, None)
    assert "cannot be read" in result.reason
    assert run_cli("audit", "verify", "--state-dir", str(tmp_path)) == 1
    assert "BROKEN: the log cannot be read" in capsys.readouterr().err
    assert run_cli("audit", "query", "--state-dir", str(tmp_path)) == 2


def test_verify_detects_non_canonical_whitespace_in_data(tmp_path: Path):
    fill(tmp_path, 3)
    with db(tmp_path) as conn:
        conn.execute("UPDATE entries SET data = replace(data, ':', ': ') WHERE seq = 2")
    conn.close()
    result = verify(tmp_path)
    assert (result.ok, result.first_bad_seq) == (False, 2)
    assert "canonical" in result.reason


def test_verify_detects_a_deleted_row(tmp_path: Path):
    fill(tmp_path, 10)
    with db(tmp_path) as conn:
        conn.execute("DELETE FROM entries WHERE seq = 5")
    conn.close()
    result = verify(tmp_path)
    assert (result.ok, result.first_bad_seq) == (False, 5)
    assert "missing" in result.reason


def test_verify_detects_a_deleted_last_row(tmp_path: Path):
    fill(tmp_path, 10)
    with db(tmp_path) as conn:
        conn.execute("DELETE FROM entries WHERE seq = 10")
    conn.close()
    result = verify(tmp_path)
    assert (result.ok, result.first_bad_seq) == (False, 10)


def test_verify_detects_two_swapped_rows(tmp_path: Path):
    fill(tmp_path, 10)
    cols = "ts, kind, request_id, tenant, subject, script, risk, classification, data, prev_hash, hash"
    with db(tmp_path) as conn:
        a = conn.execute(f"SELECT {cols} FROM entries WHERE seq = 4").fetchone()
        b = conn.execute(f"SELECT {cols} FROM entries WHERE seq = 5").fetchone()
        sets = ", ".join(f"{c.strip()} = ?" for c in cols.split(","))
        conn.execute(f"UPDATE entries SET {sets} WHERE seq = 4", b)
        conn.execute(f"UPDATE entries SET {sets} WHERE seq = 5", a)
    conn.close()
    result = verify(tmp_path)
    assert (result.ok, result.first_bad_seq) == (False, 4)


def test_verify_detects_an_inserted_row_even_with_a_correct_hash(tmp_path: Path):
    fill(tmp_path, 10)
    with db(tmp_path) as conn:
        conn.execute("UPDATE entries SET seq = -seq WHERE seq >= 5")
        conn.execute("UPDATE entries SET seq = -seq + 1 WHERE seq < 0")
        ts, prev = conn.execute("SELECT ts, hash FROM entries WHERE seq = 4").fetchone()
        forged = {
            "seq": 5, "ts": ts, "kind": "tool.call", "request_id": "forged", "tenant": "acme",
            "subject": None, "script": None, "risk": None, "classification": "confidential",
            "data": {}, "prev_hash": prev,
        }
        body = json.dumps(forged, sort_keys=True, separators=(",", ":"))
        h = hashlib.sha256(prev.encode() + body.encode()).hexdigest()
        conn.execute(
            "INSERT INTO entries VALUES (5, ?, 'tool.call', 'forged', 'acme', NULL, NULL, NULL,"
            " 'confidential', '{}', ?, ?)",
            (ts, prev, h),
        )
    conn.close()
    result = verify(tmp_path)
    assert (result.ok, result.first_bad_seq) == (False, 6)
    assert "prev_hash" in result.reason


def test_verify_detects_a_row_appended_behind_the_logs_back(tmp_path: Path):
    fill(tmp_path, 3)
    with db(tmp_path) as conn:
        prev = conn.execute("SELECT hash FROM entries WHERE seq = 3").fetchone()[0]
        conn.execute(
            "INSERT INTO entries VALUES (4, '2027-01-15T08:00:00.000000Z', 'x', NULL, NULL, NULL,"
            " NULL, NULL, 'internal', '{}', ?, ?)",
            (prev, "f" * 64),
        )
    conn.close()
    assert verify(tmp_path).first_bad_seq == 4


def test_verify_reports_the_last_good_checkpoint(tmp_path: Path):
    fill(tmp_path, 25, checkpoint_every=10)
    assert verify(tmp_path).last_good_checkpoint == 20
    with db(tmp_path) as conn:
        assert conn.execute("SELECT seq FROM checkpoints ORDER BY seq").fetchall() == [(10,), (20,)]
        conn.execute("UPDATE entries SET tenant = 'evil' WHERE seq = 15")
    conn.close()
    result = verify(tmp_path)
    assert (result.ok, result.first_bad_seq, result.last_good_checkpoint) == (False, 15, 10)


_WRITER = """
import os, sys, time
from runtime.audit import AuditLog, AuditOptions
state_dir, worker, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
log = AuditLog(state_dir, AuditOptions(flush_interval_s=0.005, flush_max_entries=7))
print("ready", flush=True)
while not os.path.exists(os.path.join(state_dir, "go")):
    time.sleep(0.005)
for i in range(n):
    log.append("test.concurrent", request_id=f"{worker}-{i}", worker=worker, n=i)
    if i % 40 == 0:
        log.flush()
log.close()
"""


def test_concurrent_appends_from_several_processes_keep_one_chain(tmp_path: Path):
    n, workers = 150, 4
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(tmp_path), f"w{w}", str(n)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for w in range(workers)
    ]
    for p in procs:  # start every writer at once so their batches interleave
        assert p.stdout.readline().strip() == "ready"
    (tmp_path / "go").touch()
    # Threads of this process append to the same file at the same time.
    with AuditLog(tmp_path, AuditOptions(flush_interval_s=0.005)) as log:
        threads = [
            threading.Thread(
                target=lambda t=t: [
                    log.append("test.concurrent", request_id=f"t{t}-{i}", worker=f"t{t}", n=i)
                    for i in range(n)
                ]
            )
            for t in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for p in procs:
        assert p.wait(timeout=60) == 0
        p.stdout.close()
    result = verify(tmp_path)
    total = n * (workers + 2)
    assert (result.ok, result.entries) == (True, total), result
    entries = query(tmp_path, kind="test.concurrent")
    assert [e.seq for e in entries] == list(range(1, total + 1))
    by_worker: dict[str, list[int]] = {}
    for e in entries:
        by_worker.setdefault(e.data["worker"], []).append(e.data["n"])
    assert len(by_worker) == workers + 2
    for ns in by_worker.values():
        assert ns == list(range(n)), "each appender's entries stay in append order"


def test_nothing_unredacted_reaches_disk(tmp_path: Path):
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
    opts = AuditOptions(redact_patterns=[r"ACME-\d{6}"], flush_max_entries=1)
    with AuditLog(tmp_path, opts) as log:
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
        log.flush()
        # Still open: the WAL holds the data now.
        raw_open = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    for blob in (raw_open, raw):
        assert b"[redacted:" in blob
        for s in secrets:
            assert s.encode() not in blob, s
    (entry, tool) = query(tmp_path)
    assert entry.subject == "[redacted:email]"
    assert entry.data["password"] == "[redacted:secret]"
    assert entry.data["order"] == "[redacted:custom]"
    assert tool.data["args"] == ["[redacted:email]", {"secret": "[redacted:secret]"}]
    assert verify(tmp_path).ok


def test_query_filters_and_limit(tmp_path: Path):
    clock = FakeClock(1_800_000_000.0)
    with AuditLog(tmp_path, clock=clock) as log:
        for i in range(6):
            clock.t += 60
            log.append("request" if i % 2 else "tool.call", request_id=f"r{i}", tenant=f"t{i % 3}")
    assert [e.request_id for e in query(tmp_path, tenant="t0")] == ["r0", "r3"]
    assert [e.request_id for e in query(tmp_path, request_id="r4")] == ["r4"]
    assert [e.request_id for e in query(tmp_path, kind="request")] == ["r1", "r3", "r5"]
    assert [e.request_id for e in query(tmp_path, kind="tool.*")] == ["r0", "r2", "r4"]
    assert [e.request_id for e in query(tmp_path, since=1_800_000_000.0 + 240)] == ["r3", "r4", "r5"]
    assert [e.request_id for e in query(tmp_path, since="2027-01-15T08:04:00Z")] == ["r3", "r4", "r5"]
    assert [e.seq for e in query(tmp_path, limit=2)] == [5, 6]
    assert query(tmp_path, tenant="nobody") == []


def test_classification_defaults_per_kind_and_overrides(tmp_path: Path):
    opts = AuditOptions(classifications={"tool.read": "public"})
    with AuditLog(tmp_path, opts) as log:
        log.append("tool.call")
        log.append("tool.read.file")
        log.append("secret.read")
        log.append("something.else")
        log.append("request", classification="restricted")
        with pytest.raises(ValueError, match="classification"):
            log.append("request", classification="top-secret")
        with pytest.raises(ValueError):
            log.append("")
    assert [e.classification for e in query(tmp_path)] == [
        "confidential",
        "public",
        "restricted",
        "internal",
        "restricted",
    ]


def test_audit_hook_splits_columns_from_data_and_keeps_non_json_values(tmp_path: Path):
    with AuditLog(tmp_path) as log:
        log.audit(
            "tool.call",
            {
                "request_id": "r1",
                "tenant": "acme",
                "risk": "high",
                "fuel": 1234,
                "caps": {"kv.read"},
                "body": b"\x00\x01secret bytes",
                "ratio": float("nan"),
                "data": {"outcome": "ok"},
            },
        )
    (e,) = query(tmp_path)
    assert (e.request_id, e.tenant, e.risk) == ("r1", "acme", "high")
    assert e.data == {
        "fuel": 1234,
        "caps": ["kv.read"],
        "body": {"bytes": 14},
        "ratio": "nan",
        "outcome": "ok",
    }
    assert verify(tmp_path).ok


def test_non_ascii_and_lone_surrogates_are_stored_without_blocking_the_log(tmp_path: Path):
    with AuditLog(tmp_path) as log:
        log.append("request", tenant="café", data={"msg": "naïve ✓ 日本", "bad": "x\ud800y"})
        log.append("request", subject="a\udcffb", data={"k\ud800": ["\udfff"]})
        log.append("request", request_id="after")
    first, second, third = query(tmp_path)
    assert first.tenant == "café"
    assert first.data == {"msg": "naïve ✓ 日本", "bad": "x\ufffdy"}
    assert second.subject == "a\ufffdb"
    assert second.data == {"k\ufffd": ["\ufffd"]}
    assert third.request_id == "after"
    assert verify(tmp_path).ok


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_cannot_use_the_parents_log(tmp_path: Path):
    with AuditLog(tmp_path) as log:
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
                log.close()  # must not touch the parent's connection
                os.write(w, outcome.encode())
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            assert f.read() == "refused"
        os.waitpid(pid, 0)
        log.append("request", request_id="after")
    assert [e.request_id for e in query(tmp_path)] == ["before", "after"]
    assert verify(tmp_path).ok


def test_append_after_close_raises_and_close_is_idempotent(tmp_path: Path):
    log = AuditLog(tmp_path)
    log.append("request")
    log.close()
    log.close()
    with pytest.raises(AuditClosed):
        log.append("request")
    assert verify(tmp_path).entries == 1


def test_failed_writes_are_retried_and_a_full_buffer_fails_closed(tmp_path: Path):
    opts = AuditOptions(
        busy_timeout_s=0.01, max_pending=3, backpressure_timeout_s=0.05, flush_interval_s=0.01
    )
    log = AuditLog(tmp_path, opts)
    blocker = db(tmp_path)
    blocker.execute("BEGIN IMMEDIATE")  # holds the write lock: every flush fails
    try:
        for i in range(3):
            log.append("request", request_id=f"r{i}")
        with pytest.raises(sqlite3.OperationalError):
            log.flush()
        with pytest.raises(AuditUnavailable):
            log.append("request", request_id="r3")
        assert log.write_errors >= 1
        assert log.pending == 3
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    log.flush()
    log.close()
    assert [e.request_id for e in query(tmp_path)] == ["r0", "r1", "r2"]
    assert verify(tmp_path).ok


def test_verify_and_query_of_a_missing_log_raise(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        verify(tmp_path)
    with pytest.raises(FileNotFoundError):
        query(tmp_path / "nope.sqlite")
    assert not (tmp_path / AUDIT_FILENAME).exists()


# -- the CLI command ---------------------------------------------------------------------


def run_cli(*argv: str) -> int:
    import argparse

    from runtime.commands import audit as command

    parser = argparse.ArgumentParser(prog="edgeworks")
    command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_cli_verify_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert run_cli("audit", "verify", "--state-dir", str(tmp_path)) == 2
    fill(tmp_path, 4)
    assert run_cli("audit", "verify", "--state-dir", str(tmp_path)) == 0
    assert "4 entries" in capsys.readouterr().out
    with db(tmp_path) as conn:
        conn.execute("UPDATE entries SET kind = 'x' WHERE seq = 3")
    conn.close()
    assert run_cli("audit", "verify", "--state-dir", str(tmp_path)) == 1
    err = capsys.readouterr().err
    assert "seq 3" in err and "hash mismatch" in err


def test_cli_verify_uses_dot_edgeworks_by_default(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fill(tmp_path / ".edgeworks", 2)
    assert run_cli("audit", "verify") == 0


def test_cli_query_prints_json_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    with AuditLog(tmp_path) as log:  # real clock: --since 10m must include these
        log.append("request", request_id="a", tenant="t1")
        log.append("tool.call", request_id="b", tenant="t2")
    capsys.readouterr()
    assert run_cli("audit", "query", "--state-dir", str(tmp_path), "--since", "10m") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == ["a", "b"]
    run_cli("audit", "query", "--state-dir", str(tmp_path), "--tenant", "t2", "--kind", "tool.*")
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["seq"] == 2
    run_cli("audit", "query", "--state-dir", str(tmp_path), "--since", "2999-01-01T00:00:00")
    assert capsys.readouterr().out == ""
    with pytest.raises(SystemExit):
        run_cli("audit", "query", "--state-dir", str(tmp_path), "--since", "yesterday")


def test_parse_since_durations():
    from runtime.commands.audit import parse_since

    assert parse_since("1h30m", lambda: 7200.0) == "1970-01-01T00:30:00.000000Z"
    assert parse_since("90s", lambda: 100.0) == "1970-01-01T00:00:10.000000Z"
    assert parse_since("2026-01-01T00:00:00+01:00") == "2025-12-31T23:00:00.000000Z"
