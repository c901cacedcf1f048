"""What of a workflow instance's records is sealed at rest, and how (``RecordCodec``).

A run is replayed from its records, so its params, step results, events and stored errors must
read back exactly as written: they cannot be redacted, so they are encrypted instead, by two
callables the upper layer injects (the runtime passes its data key's AES-GCM ``seal``/``open``).

Layout. Each record keeps in clear only what listing, scheduling and retention read without
opening it (ids, tenant, status, times, step names and positions, event types). Its other fields
(``SEALED_FIELDS``) are packed together (msgpack) into one blob under the record's ``sealed``
key, sealed with associated data ``workflow/<object class>/<object id>/<record key>``: a blob
copied to another record or instance does not open.

Upgrade. A record without a ``sealed`` key was written in clear (before sealing, or by a codec
without callables, as the objects package's own tests use): it is read as it is, and an instance
whose records a sealing codec loads rewrites them sealed at once. No migration step runs.

Refusal. ``check()`` raises when records cannot be sealed (the runtime without a data key): the
binding calls it before it creates an instance or sends an event, so nothing is stored in clear.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

__all__ = ["SEALED_FIELDS", "RecordCodec"]

# By record kind (the part of the key before ":"), the fields holding the run's data.
_STEP_FIELDS = ("result", "error", "attempts")
SEALED_FIELDS: dict[str, tuple[str, ...]] = {
    "meta": ("params", "output", "error"),
    "step": _STEP_FIELDS,
    "comp": _STEP_FIELDS,
    "event": ("payload",),
}
_SEALED = "sealed"


def _available() -> None:
    return None


@dataclass(frozen=True)
class RecordCodec:
    """Seals and opens instance records; with no callables, records are kept in clear."""

    seal: Callable[[bytes, str], bytes] | None = None
    open: Callable[[bytes, str], bytes] | None = None
    check: Callable[[], None] = field(default=_available)

    def can_seal(self) -> bool:
        """Whether records are sealed and can be now (``check`` passes)."""
        if self.seal is None:
            return False
        try:
            self.check()
        except Exception:
            return False
        return True

    @staticmethod
    def context(class_name: str, object_id: str, key: str) -> str:
        return f"workflow/{class_name}/{object_id}/{key}"

    def seal_record(self, class_name: str, object_id: str, key: str, record: Any) -> Any:
        """The stored form of ``record`` (under ``key``)."""
        fields = SEALED_FIELDS.get(key.split(":", 1)[0])
        if self.seal is None or fields is None or not isinstance(record, dict):
            return record
        secret = {name: record[name] for name in fields if name in record}
        stored = {k: v for k, v in record.items() if k not in secret}
        packed = msgpack.packb(secret, use_bin_type=True)
        stored[_SEALED] = self.seal(packed, self.context(class_name, object_id, key))
        return stored

    def open_record(self, class_name: str, object_id: str, key: str, stored: Any) -> Any:
        """``stored`` as the run wrote it; a record written in clear comes back unchanged."""
        if not isinstance(stored, dict) or _SEALED not in stored:
            return stored
        if self.open is None:
            raise RuntimeError(f"workflow record {key!r} is sealed and no codec opens it")
        blob = stored[_SEALED]
        secret = msgpack.unpackb(self.open(blob, self.context(class_name, object_id, key)),
                                 raw=False, strict_map_key=False)
        record = {k: v for k, v in stored.items() if k != _SEALED}
        record.update(secret)
        return record

    @staticmethod
    def clear_part(key: str, record: dict[str, Any]) -> dict[str, Any]:
        """What of ``record`` is kept in clear (listing reads only this)."""
        drop = {_SEALED, *SEALED_FIELDS.get(key.split(":", 1)[0], ())}
        return {k: v for k, v in record.items() if k not in drop}
