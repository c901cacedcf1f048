"""The audit log v2 end to end through a real server: no answered request goes unrecorded when
the front, the audit writer or both are killed with SIGKILL under load; backpressure refuses
requests with 503 while the writer is stopped and records the refusals; anchored heads catch a
consistent rewrite and a truncation that plain verification cannot; rotation, retention,
inclusion proofs and exports across a running server's segments."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest

from runtime.audit import query, verify
from runtime.audit.anchor import default_anchor_path, load_public_key, read_anchor
from runtime.audit.journal import journal_dir
from runtime.audit.merkle import Frontier, leaf_hash
from runtime.audit.store import list_segments, segments_dir
from tests.support import ROOT, Server, alive, descendants, outside_state, wait_until, write_app

MANIFEST = """
[[scripts]]
name = "app"
main = "app.py"
routes = [{ pattern = "/hello", auth = "none" }]
"""

APP = '''
from workers import Response

async def fetch(request, env, ctx):
    return Response("hello")
'''


def make_app(parent: Path, audit: str = "") -> Path:
    return write_app(parent / "app", MANIFEST + (f"\n[audit]\n{audit}\n" if audit else ""), {"app.py": APP})


def signing_key(app: Path) -> Path:
    """The key file the servers of `app` sign with (tests.support.outside_state)."""
    return app.parent / "audit-signing.key"


def audit_cli(app: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """`edgeworks audit ARGS` with the environment the servers of `app` ran with."""
    return subprocess.run([sys.executable, "-m", "runtime.cli", "audit", *map(str, args)], cwd=ROOT,
                          env={**os.environ, **outside_state(app.parent)}, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


_NO_DIGITS = str.maketrans("0123456789", "ghijklmnop")


def request_id() -> str:
    """A random X-Request-Id without digits. A uuid4 hex holds a Luhn-valid run of 13-19 digits
    (a "card number") about once in a thousand, and the front replaces a client id the redactor
    would mask with one it generates (test_a_client_request_id_is_kept_only_when_entries_can_be_found_by_it):
    these tests look entries up by the id they sent."""
    return uuid.uuid4().hex.translate(_NO_DIGITS)


def hello(c: httpx.Client) -> tuple[str, httpx.Response]:
    rid = request_id()
    return rid, c.get("/hello", headers={"x-request-id": rid})


def writer_pid(front: int) -> int | None:
    """The front's audit writer process, if one is running."""
    for pid in descendants(front):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"runtime.front.auditd" in cmdline and alive(pid):
            return pid
    return None


def process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[-1].split()[0]


def started(pid: int) -> int | None:
    """The start time of process `pid` (clock ticks since boot), None once it is gone: with the
    pid it names one process, so a pid reused by another process is never killed."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[-1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def kill_leftovers(procs: dict[int, int | None]) -> None:
    """SIGKILL the processes of `procs` (pid -> start time) still alive; they are not our
    children, so wait for them by polling."""
    def left() -> list[int]:
        return [pid for pid, start in procs.items() if alive(pid) and started(pid) == start]

    for pid in left():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not left(), timeout=10)


class Load:
    """Client threads sending GET /hello, each request with its own X-Request-Id. `answered`
    maps the id of every request whose response completed to its status."""

    def __init__(self, url: str, threads: int = 3):
        self.url = url
        self.answered: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as c:
            while not self._stop.is_set():
                try:
                    rid, r = hello(c)
                except httpx.HTTPError:  # the front is gone, or restarting its writer
                    time.sleep(0.01)
                    continue
                with self._lock:
                    self.answered[rid] = r.status_code

    def count(self) -> int:
        with self._lock:
            return len(self.answered)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


def request_entries(state: Path) -> Counter[str]:
    return Counter(e.request_id for e in query(state, kind="request") if e.request_id is not None)


def assert_all_recorded(state: Path, answered: dict[str, int]) -> None:
    """Each answered request has exactly one `request` entry, with the status it was answered."""
    counts = request_entries(state)
    wrong = {rid: counts[rid] for rid in answered if counts[rid] != 1}
    assert not wrong, f"{len(wrong)} of {len(answered)} answered requests without exactly one entry"
    statuses = {e.request_id: e.data["status"] for e in query(state, kind="request")}
    assert all(statuses[rid] == status for rid, status in answered.items())


def assert_journal_empty(state: Path) -> None:
    assert list(journal_dir(state).iterdir()) == []


def assert_verifies(app: Path, state: Path) -> None:
    result = verify(state, verifier=load_public_key(signing_key(app)))
    assert result.ok, result.reason


@contextlib.contextmanager
def reaped(server: Server) -> Iterator[dict[int, int | None]]:
    """Yields a dict to note the server's processes in (`note`). At the end a running server
    is stopped cleanly; then whatever noted process is left (after its front was killed) is
    killed, and the killed front is reaped."""
    procs: dict[int, int | None] = {}
    try:
        yield procs
    finally:
        try:
            if server.proc is not None and server.proc.poll() is None:
                server.stop()
        finally:
            with contextlib.suppress(AssertionError):  # give them a moment to exit on their own
                wait_until(lambda: not any(alive(p) for p in procs), timeout=5)
            kill_leftovers(procs)
            server.stop()


def note(procs: dict[int, int | None], front: int) -> None:
    """Add the front's descendants (zygote, isolates, audit writer) to `procs`."""
    for pid in descendants(front):
        procs.setdefault(pid, started(pid))


# -- 1. kill -9 ------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["front", "writer", "both"])
def test_no_answered_request_goes_unrecorded_when_killed(tmp_path: Path, target: str) -> None:
    app = make_app(tmp_path)
    state = app / ".edgeworks"
    server = Server(app, "serve")
    with reaped(server) as procs:
        server.start()
        assert server.proc is not None
        front = server.proc.pid
        writer = wait_until(lambda: writer_pid(front))
        with Load(server.url) as load:
            wait_until(lambda: load.count() >= 20, timeout=30)
            time.sleep(random.uniform(0.0, 1.5))
            note(procs, front)
            if target in ("writer", "both"):
                os.kill(writer, signal.SIGKILL)
            if target in ("front", "both"):
                os.kill(front, signal.SIGKILL)
            if target == "writer":  # the front starts another writer; keep the load on meanwhile
                wait_until(lambda: writer_pid(front) not in (None, writer), timeout=30)
                after = load.count()
                wait_until(lambda: load.count() >= after + 20, timeout=30)
            else:
                time.sleep(0.2)
        answered = dict(load.answered)
    assert answered
    if target != "writer":  # the next server on the state dir consumes what the dead one journaled
        with Server(app, "serve"):
            pass
    assert_journal_empty(state)
    assert_all_recorded(state, answered)
    assert_verifies(app, state)


# -- 2. backpressure -------------------------------------------------------------------------


def request_sizes(state: Path) -> dict[str, int]:
    """The size of each `request` entry's record, by request id."""
    sizes: dict[str, int] = {}
    for path in list_segments(state):
        with contextlib.closing(sqlite3.connect(path)) as conn:
            sizes.update(conn.execute("SELECT request_id, length(record) FROM entries WHERE kind = 'request'"))
    return sizes


def test_backpressure_refuses_while_the_writer_is_stopped_and_records_the_refusals(tmp_path: Path) -> None:
    limit = 4096
    app = make_app(tmp_path, f"max_backlog_bytes = {limit}")
    state = app / ".edgeworks"
    answered: dict[str, int] = {}
    admitted_while_stopped: list[str] = []
    with Server(app, "serve") as server, server.client() as c:
        assert server.proc is not None
        writer = wait_until(lambda: writer_pid(server.proc.pid))

        def send() -> httpx.Response:
            rid, r = hello(c)
            answered[rid] = r.status_code
            return r

        os.kill(writer, signal.SIGSTOP)
        try:
            wait_until(lambda: process_state(writer) == "T")
            for _ in range(2000):
                r = send()
                if r.status_code != 200:
                    break
                admitted_while_stopped.append(r.headers["x-request-id"])
            assert r.status_code == 503, "the backlog never filled up"
            assert r.json()["error"] == "audit_unavailable" and r.headers["retry-after"] == "1"
            for _ in range(3):
                assert send().status_code == 503
        finally:
            os.kill(writer, signal.SIGCONT)
        wait_until(lambda: send().status_code == 200, timeout=30)
    assert_journal_empty(state)
    ok = {rid: s for rid, s in answered.items() if s == 200}
    refused = [rid for rid, s in answered.items() if s == 503]
    assert_all_recorded(state, ok)
    assert not set(refused) & set(request_entries(state)), "a refused request was recorded as served"
    # Each request is admitted only while the backlog is under the limit: all but the last one
    # admitted while the writer was stopped fit under it.
    sizes = request_sizes(state)
    assert sum(sizes[rid] for rid in admitted_while_stopped[:-1]) < limit
    notes = query(state, kind="audit.backpressure")
    assert notes and all(e.data["refused"] >= 1 and e.data["limit_bytes"] == limit for e in notes)
    assert sum(e.data["refused"] for e in notes) == len(refused)
    assert_verifies(app, state)


# -- 3. anchoring ----------------------------------------------------------------------------


def rewrite_log(state: Path, edit: Callable[[int, bytes], bytes | None]) -> None:
    """Rewrite the log as someone with write access to the state dir but not the signing key
    would: `edit(seq, record)` gives the new record (None drops it; only a tail may be dropped),
    then every leaf, tile and head is recomputed so the tree is self-consistent, and the signed
    checkpoints that no longer match are deleted."""
    conns = [sqlite3.connect(p, isolation_level=None) for p in list_segments(state)]
    try:
        assert all(c.execute("SELECT base_seq FROM state").fetchone()[0] == 0 for c in conns)
        sizes = {size for c in conns for (size,) in c.execute("SELECT size FROM checkpoints")}
        frontier = Frontier()
        roots = {0: frontier.root()}
        tiles: list[tuple[int, bytes]] = []
        for conn in conns:
            conn.execute("BEGIN")
            start = frontier.to_bytes()
            for seq, raw in conn.execute("SELECT seq, record FROM entries ORDER BY seq").fetchall():
                new = edit(seq, raw)
                if new is None:
                    conn.execute("DELETE FROM entries WHERE seq = ?", (seq,))
                    continue
                conn.execute("UPDATE entries SET record = ? WHERE seq = ?", (new, seq))
                tiles.extend(frontier.append(leaf_hash(new)))
                if frontier.size in sizes:
                    roots[frontier.size] = frontier.root()
            conn.execute("DELETE FROM tiles")
            conn.executemany("INSERT INTO tiles (idx, hash) VALUES (?, ?)", tiles)
            conn.execute("UPDATE state SET start_frontier = ?, frontier = ? WHERE id = 1", (start, frontier.to_bytes()))
            for size, root in conn.execute("SELECT size, root FROM checkpoints").fetchall():
                if roots.get(size) != root:
                    conn.execute("DELETE FROM checkpoints WHERE size = ? AND root = ?", (size, root))
            conn.execute("COMMIT")
    finally:
        for conn in conns:
            conn.close()


def with_status(raw: bytes, status: int) -> bytes:
    """A `request` record whose data says another status; same array shape, same columns."""
    record = msgpack.unpackb(raw, raw=False)
    data = msgpack.unpackb(record[8], raw=False)
    data["status"] = status
    record[8] = msgpack.packb(data, use_bin_type=True)
    return msgpack.packb(record, use_bin_type=True)


def test_anchored_heads_catch_a_consistent_rewrite_and_a_truncation(tmp_path: Path) -> None:
    app = make_app(tmp_path, "anchor_interval_s = 0.2")
    state = app / ".edgeworks"
    key = signing_key(app)
    with Server(app, "serve") as server, server.client() as c:
        rids = [hello(c)[0] for _ in range(30)]
    anchor = default_anchor_path(state, outside_state(app.parent))
    anchored = read_anchor(anchor)
    assert anchored and anchored[-1].size == verify(state).size
    r = audit_cli(app, "verify", "--state-dir", state, "--anchor", anchor, "--public-key", key)
    assert r.returncode == 0 and "anchored head at tree size" in r.stdout, r.stderr
    truncated = tmp_path / "truncated-state"
    shutil.copytree(state, truncated)

    [target] = query(state, request_id=rids[5])
    rewrite_log(state, lambda seq, raw: with_status(raw, 500) if seq == target.seq else raw)
    assert query(state, request_id=rids[5])[0].data["status"] == 500
    r = audit_cli(app, "verify", "--state-dir", state)
    assert r.returncode == 0 and r.stdout.startswith("audit log ok"), r.stderr  # why anchors exist
    r = audit_cli(app, "verify", "--state-dir", state, "--anchor", anchor, "--public-key", key)
    first_covering = min(cp.size for cp in anchored if cp.size >= target.seq)
    assert r.returncode == 1
    assert f"differs from the head anchored at seq {first_covering}: it was rewritten" in r.stderr

    end = anchored[-1].size
    rewrite_log(truncated, lambda seq, raw: None if seq > end - 3 else raw)
    assert verify(truncated).size == end - 3
    r = audit_cli(app, "verify", "--state-dir", truncated)
    assert r.returncode == 0, r.stderr
    r = audit_cli(app, "verify", "--state-dir", truncated, "--anchor", anchor, "--public-key", key)
    assert r.returncode == 1 and f"a head of seq {end} was anchored: entries were removed" in r.stderr


# -- 4. rotation and retention ---------------------------------------------------------------


def run_load(app: Path, requests: int) -> dict[str, int]:
    """Serve `app` under load until `requests` are answered; stop cleanly; the answers."""
    with Server(app, "serve") as server, Load(server.url) as load:
        wait_until(lambda: load.count() >= requests, timeout=120)
    return dict(load.answered)


def test_rotation_across_a_running_server(tmp_path: Path) -> None:
    app = make_app(tmp_path, "segment_max_bytes = 4096\nanchor_interval_s = 0.2")
    state = app / ".edgeworks"
    key = signing_key(app)
    answered = run_load(app, 300)
    segments = list_segments(state)
    assert len(segments) >= 3
    assert_journal_empty(state)
    assert_all_recorded(state, answered)
    anchor = default_anchor_path(state, outside_state(app.parent))
    result = verify(state, verifier=load_public_key(key), anchor=read_anchor(anchor))
    assert result.ok and result.anchored == result.size, result.reason

    with contextlib.closing(sqlite3.connect(segments[0])) as conn:
        seq, rid = conn.execute("SELECT seq, request_id FROM entries WHERE kind = 'request' ORDER BY seq LIMIT 1").fetchone()
    assert [e.seq for e in query(state, request_id=rid)] == [seq]
    proof = tmp_path / "proof.json"
    r = audit_cli(app, "prove", seq, "--state-dir", state, "--out", proof)
    assert r.returncode == 0, r.stderr
    r = audit_cli(app, "verify-proof", proof, "--public-key", key)
    assert r.returncode == 0 and r.stdout.startswith(f"proof ok: entry {seq} "), r.stderr


def test_retention_removes_only_anchored_segments_and_records_each_removal(tmp_path: Path) -> None:
    app = make_app(tmp_path, "segment_max_bytes = 4096\nanchor_interval_s = 0.2\nretain_segments = 1")
    state = app / ".edgeworks"
    key = signing_key(app)
    run_load(app, 300)
    anchor = default_anchor_path(state, outside_state(app.parent))
    anchored = read_anchor(anchor)
    removals = query(state, kind="audit.segment_removed")
    assert removals
    for e in removals:
        assert e.data["reason"] == "anchored" and not (segments_dir(state) / e.data["segment"]).exists()
        removed_at = datetime.fromisoformat(e.ts.replace("Z", "+00:00")).timestamp()
        assert any(cp.size >= e.data["last_seq"] and cp.ts <= removed_at for cp in anchored), e.data
    remaining = list_segments(state)
    newest_removal = max(removals, key=lambda e: e.seq).data
    assert int(remaining[0].stem) == int(Path(newest_removal["segment"]).stem) + 1
    assert query(state)[0].seq == newest_removal["last_seq"] + 1
    assert_verifies(app, state)
    r = audit_cli(app, "verify", "--state-dir", state, "--anchor", anchor, "--public-key", key)
    assert r.returncode == 0, r.stderr


# -- 5. export -------------------------------------------------------------------------------


def test_export_verifies_offline_and_a_flipped_record_does_not(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    state = app / ".edgeworks"
    key = signing_key(app)
    with Server(app, "serve") as server, server.client() as c:
        for _ in range(20):
            assert hello(c)[1].status_code == 200
    out = tmp_path / "export.jsonl"
    r = audit_cli(app, "export", "--since", "10m", "--out", out, "--state-dir", state)
    assert r.returncode == 0, r.stderr
    r = audit_cli(app, "verify-proof", out, "--public-key", key)
    assert r.returncode == 0 and r.stdout.startswith("export ok: "), r.stderr

    lines = out.read_text().splitlines()
    entry = lines[5]
    start = entry.index('"record":"') + len('"record":"')
    i = start + 10
    flipped = entry[:i] + ("B" if entry[i] == "A" else "A") + entry[i + 1:]
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("\n".join([*lines[:5], flipped, *lines[6:]]) + "\n")
    r = audit_cli(app, "verify-proof", tampered, "--public-key", key)
    assert r.returncode == 1 and "proof FAILED" in r.stderr


def test_a_client_request_id_is_kept_only_when_entries_can_be_found_by_it(tmp_path: Path):
    app = make_app(tmp_path)
    with Server(app, "serve") as server, httpx.Client(base_url=server.url, timeout=30) as c:
        kept = c.get("/hello", headers={"x-request-id": "order-abc-123"})
        card = c.get("/hello", headers={"x-request-id": "pay.4111111111111111"})
        bad = c.get("/hello", headers={"x-request-id": "has space"})
    assert kept.headers["x-request-id"] == "order-abc-123"
    for response in (card, bad):  # replaced by a generated id: the one the entry is keyed by
        assert response.status_code == 200
        assert len(response.headers["x-request-id"]) == 32 and "4111" not in response.headers["x-request-id"]
    state = app / ".edgeworks"
    for response in (kept, card, bad):
        [entry] = query(state, request_id=response.headers["x-request-id"], kind="request")
        assert entry.data["status"] == 200
    assert query(state, request_id="pay.4111111111111111") == []
