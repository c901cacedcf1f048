"""Reading the audit log: query, verify, inclusion proofs and exports.

`verify` recomputes the tree from every stored record (and walks a migrated version-1 log's
hash chain first) and checks, segment by segment: seqs without gaps, columns equal to the
record they index, every stored tile, every stored checkpoint (its root, and its signature when
a verifier is given), and the segment's recorded head. With `anchor` (checkpoints read from the
anchor sink, outside the state dir) it also checks that the log still holds every anchored head:
a log cut short, or rewritten and re-chained to look consistent, fails there, because the root
recomputed at the anchored size differs (a consistency check against the data itself).

`prove` gives the inclusion proof of one entry against a signed checkpoint; `verify_proof`
checks it with nothing but the proof and a public key. `export` writes entries with their
proofs as JSON lines; `verify_export` checks such a file offline.
"""

from __future__ import annotations

import base64
import contextlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from runtime.audit import legacy
from runtime.audit.anchor import AnchorError, Checkpoint, Verifier
from runtime.audit.merkle import Frontier, Tree, leaf_hash, root_from_inclusion
from runtime.audit.records import (
    AuditEntry,
    RecordError,
    decode_data,
    decode_record,
    entry_filters,
    entry_of,
    format_ts,
)
from runtime.audit.store import Segment, legacy_state, list_segments

__all__ = ["ProofError", "VerifyResult", "export", "has_log", "prove", "query", "state_dir_of",
           "verify", "verify_export", "verify_proof"]

PROOF_FORMAT = "edgeworks-audit-proof/v1"
EXPORT_FORMAT = "edgeworks-audit-export/v1"


class ProofError(Exception):
    """A proof or export cannot be made, or does not check; the message says why."""


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    first_bad_seq: int | None
    reason: str | None
    entries: int
    last_good_checkpoint: int | None = None  # seq of the last entry a good checkpoint covers
    last_hash: str | None = None  # the tree's root (hex) when ok: record it elsewhere to anchor
    size: int = 0  # leaves of the tree (entries after a migrated version-1 log)
    anchored: int | None = None  # the largest anchored tree size that was checked


def state_dir_of(path: str | Path) -> Path:
    """The state dir for `path`: the dir itself, or the dir of a version-1 ``audit.sqlite``."""
    p = Path(path)
    return p.parent if p.name == legacy.AUDIT_FILENAME else p


def has_log(state_dir: Path) -> bool:
    return bool(list_segments(state_dir)) or (state_dir / legacy.AUDIT_FILENAME).is_file()


def _ro(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=30, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


@contextlib.contextmanager
def _segments(state_dir: Path) -> Iterator[list[tuple[sqlite3.Connection, Segment]]]:
    opened: list[tuple[sqlite3.Connection, Segment]] = []
    try:
        for path in list_segments(state_dir):
            conn = _ro(path)
            conn.execute("BEGIN")  # one snapshot per segment while the writer goes on
            opened.append((conn, Segment.read(path, conn)))
        yield opened
    finally:
        for conn, _ in opened:
            conn.close()


# -- query ---------------------------------------------------------------------------------


def _since_epoch(since: datetime | str | float | None) -> float | None:
    if since is None:
        return None
    if isinstance(since, int | float):
        return float(since)
    if isinstance(since, str):
        since = datetime.fromisoformat(since.replace("Z", "+00:00"))
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return since.timestamp()


def query(path: str | Path, *, request_id: str | None = None, tenant: str | None = None,
          since: datetime | str | float | None = None, kind: str | None = None,
          limit: int | None = None) -> list[AuditEntry]:
    """Entries matching every given filter, in seq order; with `limit`, the last `limit` ones.

    `since` is a datetime (naive means UTC), an ISO 8601 string or epoch seconds; `kind` ending
    in ``*`` matches by prefix ("tool.*"). A missing log raises FileNotFoundError."""
    state_dir = state_dir_of(path)
    if not has_log(state_dir):
        raise FileNotFoundError(f"no audit log in {state_dir}")
    ts = _since_epoch(since)
    where, params = entry_filters(request_id, tenant, ts, kind)
    sql = "SELECT seq, record FROM entries" + where
    sql += " ORDER BY seq DESC" + (" LIMIT ?" if limit is not None else "")
    out: list[AuditEntry] = []
    remaining = None if limit is None else int(limit)
    with _segments(state_dir) as segments:
        for conn, _ in reversed(segments):
            if remaining is not None and remaining <= 0:
                break
            rows = conn.execute(sql, [*params, remaining] if remaining is not None else params).fetchall()
            out.extend(entry_of(seq, raw, leaf_hash(raw)) for seq, raw in rows)
            if remaining is not None:
                remaining -= len(rows)
    old = state_dir / legacy.AUDIT_FILENAME
    if old.is_file() and (remaining is None or remaining > 0):
        out.extend(legacy.query(old, request_id=request_id, tenant=tenant, since=ts, kind=kind, limit=remaining))
    out.sort(key=lambda e: e.seq)
    return out


# -- verify ----------------------------------------------------------------------------------


def verify(path: str | Path, *, verifier: Verifier | None = None,
           anchor: list[Checkpoint] | None = None) -> VerifyResult:
    """Check the whole log (see the module docstring). A missing log raises FileNotFoundError;
    a file SQLite cannot read is reported as broken."""
    state_dir = state_dir_of(path)
    if not has_log(state_dir):
        raise FileNotFoundError(f"no audit log in {state_dir}")
    legacy_entries = 0
    old = state_dir / legacy.AUDIT_FILENAME
    if old.is_file():
        result = legacy.verify(old)
        if not result.ok:
            return VerifyResult(False, result.first_bad_seq, f"the version-1 log {old.name}: {result.reason}",
                                result.entries)
        legacy_entries = result.entries
    try:
        with _segments(state_dir) as segments:
            return _verify(state_dir, segments, legacy_entries, verifier, anchor)
    except sqlite3.DatabaseError as exc:
        return VerifyResult(False, None, f"the log cannot be read: {exc}", legacy_entries)


class _Broken(Exception):
    def __init__(self, seq: int | None, reason: str):
        super().__init__(reason)
        self.seq, self.reason = seq, reason


class _Walk:
    """Recomputes the tree entry by entry and checks every head stored or anchored on the way."""

    def __init__(self, origin: str, base: int, verifier: Verifier | None, anchored: dict[int, list[Checkpoint]]):
        self.origin, self.base, self.verifier, self.anchored = origin, base, verifier, anchored
        self.frontier: Frontier | None = None
        self.checkpoints: dict[int, list[tuple[bytes, str | None]]] = {}
        self.last_good: int | None = None
        self.checked_anchor: int | None = None

    def heads(self) -> None:
        """Check the checkpoints and anchored heads at the current tree size."""
        assert self.frontier is not None
        size, seq = self.frontier.size, self.base + self.frontier.size
        root: bytes | None = None
        for stored, signed in self.checkpoints.get(size, ()):
            root = root or self.frontier.root()
            if stored != root:
                raise _Broken(seq, f"checkpoint at seq {seq} does not match the entries")
            if signed is not None:
                try:
                    cp = Checkpoint.from_json(signed)
                except AnchorError as e:
                    raise _Broken(seq, f"checkpoint at seq {seq} is malformed: {e}") from None
                if cp.size != size or cp.root != root.hex() or cp.origin != self.origin:
                    raise _Broken(seq, f"checkpoint at seq {seq} signs another head")
                if self.verifier is not None and not self.verifier.verify(cp):
                    raise _Broken(seq, _signature_problem(f"checkpoint at seq {seq}", cp, self.verifier))
            if size:
                self.last_good = seq
        for cp in self.anchored.get(size, ()):
            root = root or self.frontier.root()
            if cp.root != root.hex():
                raise _Broken(seq, f"the log differs from the head anchored at seq {seq}: it was rewritten")
            self.checked_anchor = max(self.checked_anchor or 0, size)

    def segment(self, conn: sqlite3.Connection, seg: Segment) -> int:
        """Walk one segment; the number of entries it holds."""
        base = self.base
        if seg.origin != self.origin or seg.base_seq != base:
            raise _Broken(seg.first_seq, f"segment {seg.path.name} belongs to another log")
        if self.frontier is None:
            self.frontier = Frontier(seg.start.size, list(seg.start.hashes))
        elif seg.start.to_bytes() != self.frontier.to_bytes():
            raise _Broken(seg.first_seq, f"segment {seg.path.name} does not continue the segment before it")
        frontier = self.frontier
        tiles = dict(conn.execute("SELECT idx, hash FROM tiles").fetchall())
        self.checkpoints = {}
        for size, root, signed in conn.execute("SELECT size, root, signed FROM checkpoints"):
            self.checkpoints.setdefault(size, []).append((root, signed))
        outside = [s for s in self.checkpoints if s < seg.start.size or s > seg.frontier.size]
        if outside:
            raise _Broken(base + min(outside), f"a checkpoint of segment {seg.path.name} names entries it does not"
                          f" hold (tree size {min(outside)})")
        self.heads()
        n = 0
        for seq, ts, kind, request_id, tenant, raw in conn.execute(
                "SELECT seq, ts, kind, request_id, tenant, record FROM entries ORDER BY seq"):
            expected = base + frontier.size + 1
            if seq != expected:
                raise _Broken(expected, f"entry {expected} is missing (next is {seq})")
            try:
                record = decode_record(raw)
                decode_data(record)
            except (RecordError, TypeError) as e:
                raise _Broken(seq, f"the record is malformed: {e}") from None
            if (record.ts, record.kind, record.request_id, record.tenant) != (ts, kind, request_id, tenant):
                raise _Broken(seq, "the indexed columns do not match the record")
            for idx, h in frontier.append(leaf_hash(raw)):
                stored_tile = tiles.get(idx)
                if stored_tile is None:
                    raise _Broken(seq, f"tile {idx} is missing")
                if stored_tile != h:
                    raise _Broken(seq, f"tile {idx} does not match the entries: an entry was altered")
            n += 1
            self.heads()
        if frontier.to_bytes() != seg.frontier.to_bytes():
            last = base + frontier.size
            if frontier.size < seg.frontier.size:
                raise _Broken(last + 1, f"segment {seg.path.name} ends at seq {last} but its head records"
                              f" {base + seg.frontier.size}")
            if frontier.size > seg.frontier.size:
                raise _Broken(base + seg.frontier.size + 1, f"entries after the recorded head of {seg.path.name}")
            raise _Broken(last, "the recorded head does not match the entries: an entry was altered")
        return n


def _verify(state_dir: Path, segments: list[tuple[sqlite3.Connection, Segment]], legacy_entries: int,
            verifier: Verifier | None, anchor: list[Checkpoint] | None) -> VerifyResult:
    if not segments:
        return VerifyResult(True, None, None, legacy_entries)
    first = segments[0][1]
    anchored: dict[int, list[Checkpoint]] = {}
    for cp in anchor or ():
        if cp.origin != first.origin:
            continue
        if verifier is not None and not verifier.verify(cp):
            return VerifyResult(False, None, _signature_problem(f"an anchored checkpoint (size {cp.size})", cp, verifier),
                                legacy_entries)
        anchored.setdefault(cp.size, []).append(cp)
    walk = _Walk(first.origin, first.base_seq, verifier, anchored)
    entries = legacy_entries
    try:
        if first.start.size and int(first.path.stem) == 1:
            raise _Broken(first.first_seq, "the first segment does not start at the beginning of the log")
        if (state_dir / legacy.AUDIT_FILENAME).is_file():
            _check_migration(state_dir, segments[0])
        for conn, seg in segments:
            entries += walk.segment(conn, seg)
        assert walk.frontier is not None
        end = walk.frontier.size
        beyond = [s for s in anchored if s > end]
        if beyond:
            raise _Broken(walk.base + end + 1, f"the log ends at seq {walk.base + end} but a head of seq "
                          f"{walk.base + max(beyond)} was anchored: entries were removed")
    except _Broken as b:
        return VerifyResult(False, b.seq, b.reason, entries, walk.last_good)
    return VerifyResult(True, None, None, entries, walk.last_good, walk.frontier.root().hex(), end,
                        walk.checked_anchor)


def _signature_problem(what: str, cp: Checkpoint, verifier: Verifier) -> str:
    if cp.key_id != verifier.key_id:  # a forger's key, or the wrong public key given
        return (f"{what} is signed by key {cp.key_id}, not by the trusted key {verifier.key_id}"
                " (--public-key, else the configured signing key)")
    return f"{what} has a bad signature"


def _check_migration(state_dir: Path, first: tuple[sqlite3.Connection, Segment]) -> None:
    conn, seg = first
    if int(seg.path.stem) != 1:
        return  # the segment that recorded the migration was removed by retention
    row = conn.execute("SELECT record FROM entries ORDER BY seq LIMIT 1").fetchone()
    if row is None or decode_record(row[0]).kind != "audit.migrated":
        raise _Broken(seg.first_seq, f"a version-1 log ({legacy.AUDIT_FILENAME}) is present but the log does"
                      " not record its migration")
    recorded = decode_data(decode_record(row[0]))
    last_seq, now = legacy_state(state_dir / legacy.AUDIT_FILENAME)
    if (recorded.get("legacy_last_seq"), recorded.get("legacy_last_hash")) != (last_seq, now["legacy_last_hash"]):
        raise _Broken(seg.first_seq, f"the version-1 log changed after it was migrated (it ended at seq "
                      f"{recorded.get('legacy_last_seq')}, it now ends at {last_seq})")


# -- proofs and exports --------------------------------------------------------------------


class _Log:
    """The tree over the stored segments, for proofs."""

    def __init__(self, segments: list[tuple[sqlite3.Connection, Segment]]):
        if not segments:
            raise ProofError("the log has no entries")
        self.segments = segments
        self.base = segments[0][1].base_seq
        newest = segments[-1][0]
        self._tiles = dict(newest.execute("SELECT idx, hash FROM tiles").fetchall())

    def checkpoints(self) -> list[Checkpoint]:
        out = []
        for conn, _ in self.segments:
            for (signed,) in conn.execute("SELECT signed FROM checkpoints WHERE signed IS NOT NULL"):
                out.append(Checkpoint.from_json(signed))
        return sorted(out, key=lambda c: (c.size, c.ts))

    def records(self, start: int, end: int) -> list[tuple[int, bytes]]:
        """(seq, record) of leaves [start, end)."""
        lo, hi = self.base + start + 1, self.base + end
        out: list[tuple[int, bytes]] = []
        for conn, seg in self.segments:
            if seg.last_seq < lo or seg.first_seq > hi:
                continue
            out.extend(conn.execute("SELECT seq, record FROM entries WHERE seq BETWEEN ? AND ? ORDER BY seq",
                                    (lo, hi)).fetchall())
        if len(out) != end - start:
            raise ProofError(f"entries {lo}..{hi} are not all in the log any more (retention removed them)")
        return out

    def tree(self, size: int) -> Tree:
        return Tree(size, lambda s, e: [leaf_hash(r) for _, r in self.records(s, e)], self._tiles.get)


def _pick(checkpoints: list[Checkpoint], index: int) -> Checkpoint:
    covering = [c for c in checkpoints if c.size > index]
    if not covering:
        raise ProofError("no signed checkpoint covers this entry yet: the runtime signs one every "
                         "[audit] anchor_interval_s and when it stops")
    return covering[-1]


def _proof_line(log: _Log, tree: Tree, seq: int, raw: bytes, cp: Checkpoint) -> dict[str, Any]:
    index = seq - log.base - 1
    entry = entry_of(seq, raw, leaf_hash(raw))
    return {"seq": seq, "index": index, "record": base64.b64encode(raw).decode(), "entry": entry.as_dict(),
            "proof": [h.hex() for h in tree.inclusion_proof(index, cp.size)]}


def prove(path: str | Path, seq: int) -> dict[str, Any]:
    """The inclusion proof of entry `seq` against the newest signed checkpoint covering it."""
    state_dir = state_dir_of(path)
    with _segments(state_dir) as segments:
        log = _Log(segments)
        index = seq - log.base - 1
        size = segments[-1][1].frontier.size
        if index < 0 or index >= size:
            raise ProofError(f"no entry {seq} in the version-2 log (it holds seqs {log.base + 1}..{log.base + size})")
        cp = _pick(log.checkpoints(), index)
        [(_, raw)] = log.records(index, index + 1)
        line = _proof_line(log, log.tree(cp.size), seq, raw, cp)
        return {"format": PROOF_FORMAT, **line, "checkpoint": json.loads(cp.to_json())}


def _check_line(line: dict[str, Any], cp: Checkpoint) -> None:
    try:
        raw = base64.b64decode(line["record"], validate=True)
        index, seq, proof = int(line["index"]), int(line["seq"]), [bytes.fromhex(h) for h in line["proof"]]
        entry = line["entry"]
        record = decode_record(raw)
        data = decode_data(record)
    except (KeyError, TypeError, ValueError) as e:
        raise ProofError(f"malformed proof: {e}") from None
    shown = {"seq": seq, "ts": format_ts(record.ts), "kind": record.kind, "request_id": record.request_id,
             "tenant": record.tenant, "subject": record.subject, "script": record.script, "risk": record.risk,
             "classification": record.classification, "data": data, "hash": leaf_hash(raw).hex()}
    if entry != shown:
        raise ProofError(f"entry {seq}: the entry shown is not the record that was proven")
    try:
        root = root_from_inclusion(leaf_hash(raw), index, cp.size, proof)
    except ValueError as e:
        raise ProofError(f"entry {seq}: {e}") from None
    if root.hex() != cp.root:
        raise ProofError(f"entry {seq}: the proof does not lead to the checkpoint's root")


def _signed(doc: Any, verifier: Verifier | None) -> Checkpoint:
    try:
        cp = Checkpoint.from_json(json.dumps(doc))
    except (AnchorError, TypeError, ValueError) as e:
        raise ProofError(f"malformed checkpoint: {e}") from None
    if verifier is not None and not verifier.verify(cp):
        raise ProofError(f"the checkpoint's signature does not verify with key {verifier.key_id}")
    return cp


def verify_proof(doc: dict[str, Any], verifier: Verifier | None) -> Checkpoint:
    """Check an inclusion proof made by `prove`; returns its checkpoint. `verifier` None checks
    everything but the signature."""
    if not isinstance(doc, dict) or doc.get("format") != PROOF_FORMAT:
        raise ProofError(f"not an edgeworks audit proof (format {PROOF_FORMAT})")
    cp = _signed(doc.get("checkpoint"), verifier)
    _check_line(doc, cp)
    return cp


def export(path: str | Path, out: IO[str], *, since: datetime | str | float | None = None) -> tuple[int, Checkpoint]:
    """Write the entries since `since` that the newest signed checkpoint covers, each with its
    inclusion proof, as JSON lines after a header naming the checkpoint; (count, checkpoint)."""
    state_dir = state_dir_of(path)
    ts = _since_epoch(since)
    with _segments(state_dir) as segments:
        log = _Log(segments)
        checkpoints = log.checkpoints()
        if not checkpoints:
            raise ProofError("no signed checkpoint yet: the runtime signs one every [audit] anchor_interval_s"
                             " and when it stops")
        cp = checkpoints[-1]
        tree = log.tree(cp.size)
        out.write(json.dumps({"format": EXPORT_FORMAT, "origin": cp.origin, "since": ts,
                              "checkpoint": json.loads(cp.to_json())}, separators=(",", ":")) + "\n")
        n = 0
        for conn, _ in segments:
            sql = "SELECT seq, record FROM entries WHERE seq <= ?" + (" AND ts >= ?" if ts is not None else "")
            for seq, raw in conn.execute(sql + " ORDER BY seq", (log.base + cp.size, *(() if ts is None else (ts,)))):
                out.write(json.dumps(_proof_line(log, tree, seq, raw, cp), separators=(",", ":"),
                                     ensure_ascii=False) + "\n")
                n += 1
        return n, cp


def verify_export(lines: Iterator[str], verifier: Verifier | None) -> tuple[int, Checkpoint]:
    """Check an export offline; (entries checked, its checkpoint)."""
    try:
        header = json.loads(next(lines))
    except (StopIteration, ValueError) as e:
        raise ProofError(f"not an edgeworks audit export: {e}") from None
    if not isinstance(header, dict) or header.get("format") != EXPORT_FORMAT:
        raise ProofError(f"not an edgeworks audit export (format {EXPORT_FORMAT})")
    cp = _signed(header.get("checkpoint"), verifier)
    n = 0
    for number, text in enumerate(lines, start=2):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except ValueError as e:
            raise ProofError(f"line {number}: not JSON: {e}") from None
        if not isinstance(line, dict):
            raise ProofError(f"line {number}: not an entry")
        _check_line(line, cp)
        n += 1
    return n, cp
