"""An audit entry's record: the bytes that are journaled, stored and hashed into the tree.

A record is one msgpack array, written once by the producer (`RecordMaker.make`) and never
re-encoded, so its bytes are canonical by construction: the Merkle leaf is
``sha256(0x00 || record)`` over exactly the stored bytes, and a verifier needs no canonical
serialiser. The array::

    [ts, kind, request_id, tenant, subject, script, risk, classification, data]

``ts`` is epoch seconds (a float, the time of the append); ``kind`` a non-empty string; the five
columns strings or nil; ``classification`` the data classification level of what the entry
describes (the request's or workflow step's level when the producer knows it, else a default per
kind, see `DEFAULT_CLASSIFICATIONS`): a level name of `[ai] levels`, so any `CLASSIFICATION_NAME`
(default levels public/internal/confidential/restricted); ``data`` a msgpack *bin* holding the
packed map of every other field (kept packed so the writer never decodes it: only readers do).

Redaction (`runtime.redact.Redactor`) runs in `make`, before the record exists: nothing
unredacted reaches the journal or the log. The same walk makes ``data`` plain: bytes become
``{"bytes": n}`` (their content is never stored), sets sorted lists, non-finite floats and other
objects strings, lone surrogates U+FFFD.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import msgpack

from runtime.auditconfig import AuditOptions, Classification
from runtime.names import LEVEL_NAME
from runtime.redact import IDENTIFIER_FIELDS, Redactor

if TYPE_CHECKING:
    from runtime.redaction import RedactionPolicy

__all__ = [
    "CLASSIFICATIONS",
    "CLASSIFICATION_NAME",
    "COLUMNS",
    "REQUEST_ID",
    "DEFAULT_CLASSIFICATIONS",
    "AuditEntry",
    "Record",
    "RecordError",
    "RecordMaker",
    "canonical_json",
    "decode_record",
    "entry_filters",
    "format_ts",
]

CLASSIFICATIONS = ("public", "internal", "confidential", "restricted")
# What any classification level is named like (an app may declare its own levels in [ai] levels).
CLASSIFICATION_NAME = re.compile(LEVEL_NAME)
# Longest dotted prefix of the kind wins ("tool.call" -> "tool"); anything else is internal.
DEFAULT_CLASSIFICATIONS: dict[str, Classification] = {
    "request": "internal",
    "response": "internal",
    "auth": "confidential",
    "tool": "confidential",
    "ai": "confidential",
    "workflow": "confidential",
    "secret": "restricted",
    "killswitch": "internal",
    "admin": "internal",
    "deploy": "internal",
    "isolate": "internal",
    "limit": "internal",
    "audit": "internal",
}
COLUMNS = ("request_id", "tenant", "subject", "script", "risk")
# What a client-supplied request id (X-Request-Id) must look like to be used (else one is generated).
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}\Z")
_COLUMN_SET = frozenset(COLUMNS)


class RecordError(ValueError):
    """Bytes that are not a well-formed record."""


class Record(NamedTuple):
    ts: float
    kind: str
    request_id: str | None
    tenant: str | None
    subject: str | None
    script: str | None
    risk: str | None
    classification: str
    data: bytes  # the packed map


@dataclasses.dataclass(frozen=True, slots=True)
class AuditEntry:
    """One entry as readers see it; `hash` is its Merkle leaf (hex)."""

    seq: int
    ts: str
    kind: str
    request_id: str | None
    tenant: str | None
    subject: str | None
    script: str | None
    risk: str | None
    classification: str
    data: dict[str, Any]
    hash: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def entry_filters(request_id: str | None, tenant: str | None, since: Any, kind: str | None) -> tuple[str, list[Any]]:
    """The SQL WHERE clause (empty without filters) and its parameters for a query of entries
    by request id, tenant, time (``ts >= since``, in the column's own form) and kind (a prefix
    when it ends in ``*``); the same for both log versions."""
    where: list[str] = []
    params: list[Any] = []
    if request_id is not None:
        where.append("request_id = ?")
        params.append(request_id)
    if tenant is not None:
        where.append("tenant = ?")
        params.append(tenant)
    if since is not None:
        where.append("ts >= ?")
        params.append(since)
    if kind is not None:
        if kind.endswith("*"):
            where.append("substr(kind, 1, ?) = ?")
            params.extend([len(kind) - 1, kind[:-1]])
        else:
            where.append("kind = ?")
            params.append(kind)
    return (" WHERE " + " AND ".join(where) if where else ""), params


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


_ts_second: tuple[int, str] = (-1, "")


def format_ts(epoch_s: float) -> str:
    """UTC ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    global _ts_second
    second = math.floor(epoch_s)
    cached = _ts_second  # one tuple read: safe against a concurrent update
    if cached[0] != second:
        text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        cached = _ts_second = (second, text)
    micros = min(int(round((epoch_s - second) * 1_000_000)), 999_999)
    return f"{cached[1]}.{micros:06d}Z"


def _plain(value: Any) -> Any:
    """The `Redactor.redact` converter for values msgpack and JSON have no plain form for;
    bytes are summarised, never stored."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    if isinstance(value, bytes | bytearray | memoryview):
        return {"bytes": len(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _utf8(text: str) -> str:
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)


def _utf8_tree(value: Any) -> Any:
    if isinstance(value, str):
        return _utf8(value)
    if isinstance(value, list):
        return [_utf8_tree(v) for v in value]
    if isinstance(value, dict):
        return {_utf8(k): _utf8_tree(v) for k, v in value.items()}
    return value


class RecordMaker:
    """Turns (kind, columns, data) into a record, redacting first (with `policy`, as data of the
    entry's classification; else with `redactor`). Thread-safe."""

    def __init__(self, options: AuditOptions, redactor: Redactor | None = None,
                 policy: RedactionPolicy | None = None) -> None:
        self._redactor = redactor or Redactor(options.redact_patterns)
        self._policy = policy
        self._classes = {**DEFAULT_CLASSIFICATIONS, **options.classifications}
        self._class_cache: dict[str, str] = {}
        self._pack = msgpack.Packer(use_bin_type=True, default=str).pack

    def classification_for(self, kind: str) -> str:
        hit = self._class_cache.get(kind)
        if hit is None:
            parts = kind.split(".")
            hit = "internal"
            for n in range(len(parts), 0, -1):
                found = self._classes.get(".".join(parts[:n]))
                if found is not None:
                    hit = found
                    break
            if len(self._class_cache) < 4096:
                self._class_cache[kind] = hit
        return hit

    def split(self, fields: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(columns, data) of flat fields: known column names are columns, the rest data; a
        ``data`` mapping among them is merged into data."""
        columns: dict[str, Any] = {}
        data: dict[str, Any] = {}
        for key, value in fields.items():
            if key in _COLUMN_SET or key == "classification":
                columns[key] = value
            else:
                data[key] = value
        nested = data.get("data")
        if isinstance(nested, Mapping):
            del data["data"]
            data.update(nested)
        return columns, data

    def accepts_request_id(self, candidate: str) -> bool:
        """Whether a client's request id can key entries as it is: it must hold nothing the
        redactor would mask (a card-like run of digits, a key...); the runtime generates an id
        for a request whose own one does not pass, so the id a client is answered with is
        always the one its entries are found by."""
        return self._redactor.redact_text(candidate) == candidate

    def make(self, kind: str, columns: Mapping[str, Any], data: Mapping[str, Any], ts: float) -> bytes:
        """The record of one entry. The request id is an identifier, stored as given: the
        runtime generates request ids or accepts a client's only when `accepts_request_id`."""
        if not isinstance(kind, str) or not kind:
            raise ValueError("audit kind must be a non-empty string")
        classification = columns.get("classification") or self.classification_for(kind)
        if not isinstance(classification, str) or not CLASSIFICATION_NAME.fullmatch(classification):
            raise ValueError(f"unknown data classification {classification!r}")
        redactor = self._redactor if self._policy is None else self._policy.for_level(classification)
        redact, scan = redactor.redact_text, redactor.scan_text
        cols: list[str | None] = []
        for name in COLUMNS:
            value = columns.get(name)
            if value is None:
                cols.append(None)
            elif name == "request_id":
                cols.append(_utf8(value if type(value) is str else str(value)))
            else:
                text = value if type(value) is str else str(value)
                cols.append(_utf8(scan(text) if name in IDENTIFIER_FIELDS else redact(text)))
        plain = redactor.redact(data, _plain) if data else {}
        try:
            packed = self._pack(plain)
        except UnicodeEncodeError:  # lone surrogates: stored as U+FFFD, never a stuck entry
            packed = self._pack(_utf8_tree(plain))
        return self._pack([ts, _utf8(kind), *cols, classification, packed])


def decode_record(raw: bytes) -> Record:
    """The fields of a record; `RecordError` if it is not one."""
    try:
        value = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several types for malformed input
        raise RecordError(f"not a msgpack record: {exc}") from None
    if not isinstance(value, list) or len(value) != 9:
        raise RecordError("a record is an array of 9 fields")
    ts, kind, request_id, tenant, subject, script, risk, classification, data = value
    cols = (request_id, tenant, subject, script, risk)
    if not isinstance(ts, float | int) or isinstance(ts, bool) or not math.isfinite(ts):
        raise RecordError("ts is not a number")
    if not isinstance(kind, str) or not kind:
        raise RecordError("kind is not a non-empty string")
    if any(c is not None and not isinstance(c, str) for c in cols):
        raise RecordError("a column is neither a string nor nil")
    if not isinstance(classification, str) or not CLASSIFICATION_NAME.fullmatch(classification):
        raise RecordError("unknown classification")
    if not isinstance(data, bytes):
        raise RecordError("data is not packed bytes")
    return Record(float(ts), kind, request_id, tenant, subject, script, risk, classification, data)


def decode_data(record: Record) -> dict[str, Any]:
    """The data map of a record (msgpack as stored; a record is checked before it is stored)."""
    try:
        value = msgpack.unpackb(record.data, raw=False, strict_map_key=False)
    except Exception as exc:
        raise RecordError(f"data is not a packed map: {exc}") from None
    if not isinstance(value, dict):
        raise RecordError("data is not a map")
    return value


def entry_of(seq: int, raw: bytes, leaf: bytes) -> AuditEntry:
    record = decode_record(raw)
    return AuditEntry(seq, format_ts(record.ts), record.kind, record.request_id, record.tenant,
                      record.subject, record.script, record.risk, record.classification,
                      decode_data(record), leaf.hex())
