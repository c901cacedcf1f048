"""Durable objects: one strongly consistent, single-threaded owner per key, persisted in SQLite.

Public API; see the modules for exact semantics (``gates`` for the input and output gates,
``storage`` for caching and group commit, ``database`` for the file layout and durability,
``shared`` for classes whose objects share one file (``shared_storage = True``),
``host`` for delivery, eviction and alarms, ``stub`` for E-order and idempotency keys).

Where this differs from Cloudflare's API, and why:

- ``ctx.storage.sql.exec(...)`` is synchronous, as in Cloudflare's API (it blocks until the
  object's I/O thread ran the statement); its cursor may also be awaited. Only while another
  event's ``storage.transaction`` runs must it be awaited (see ``objects.sql``). It runs one
  statement; transaction control statements are rejected (batching owns the transaction; use
  ``storage.transaction``).
- ``ctx.storage.kv`` is Cloudflare's synchronous KV API over the same entries (a key not in the
  cache is read with a blocking call); like synchronous SQL it refuses to run while another
  event's transaction holds the storage.
- ``ctx.id.name`` is the name callers derived the id from (``id_from_name``/``get_by_name``),
  as in Cloudflare since 2026-03; the host checks it against the id, and it is stored with the
  object's next write, so an alarm that constructs the object sees it too.
- Values are msgpack values (tuples come back as lists), not structured clones.
- ``fetch``, ``alarm`` and RPC methods may be sync or async; a stub call returns a task,
  started at once (E-order).
- Cloudflare's JavaScript names (``idFromName``, ``getByName``, ``setAlarm``, ``deleteAll``,
  ``blockConcurrencyWhile``, ``toArray``...) are aliases of the snake_case ones, so code written
  for Python Workers, which calls them through JS proxies, runs unchanged.
- ``ctx.block_concurrency_while(fn)`` returns the task running ``fn`` (call it from
  ``__init__`` without awaiting, or await it from a method).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from objects.alarms import AlarmInfo
    from objects.clock import Clock, FakeClock, SystemClock
    from objects.durable_object import DurableObject, DurableObjectState
    from objects.errors import CodedError, DurableObjectError, DurableObjectReset, InvalidIdError
    from objects.host import ObjectHost, PassThroughCodec
    from objects.ids import DurableObjectId, owner_index
    from objects.options import ObjectHostOptions
    from objects.sql import SqlCursor
    from objects.storage import Storage
    from objects.stub import DurableObjectNamespace, DurableObjectStub, LocalTransport
    from objects.transaction import Transaction
    from objects.types import ObjectAddress, Transport

# Imported on first use: a process that needs one module (the audit log needs `sqlitefile`)
# does not pay for all of them.
_HOME = {
    'AlarmInfo': 'objects.alarms',
    'Clock': 'objects.clock',
    'CodedError': 'objects.errors',
    'DurableObject': 'objects.durable_object',
    'DurableObjectError': 'objects.errors',
    'DurableObjectId': 'objects.ids',
    'DurableObjectNamespace': 'objects.stub',
    'DurableObjectReset': 'objects.errors',
    'DurableObjectState': 'objects.durable_object',
    'DurableObjectStub': 'objects.stub',
    'FakeClock': 'objects.clock',
    'InvalidIdError': 'objects.errors',
    'LocalTransport': 'objects.stub',
    'ObjectAddress': 'objects.types',
    'ObjectHost': 'objects.host',
    'ObjectHostOptions': 'objects.options',
    'PassThroughCodec': 'objects.host',
    'SqlCursor': 'objects.sql',
    'Storage': 'objects.storage',
    'SystemClock': 'objects.clock',
    'Transaction': 'objects.transaction',
    'Transport': 'objects.types',
    'owner_index': 'objects.ids',
}

__all__ = [
    "AlarmInfo",
    "Clock",
    "CodedError",
    "DurableObject",
    "DurableObjectError",
    "DurableObjectId",
    "DurableObjectNamespace",
    "DurableObjectReset",
    "DurableObjectState",
    "DurableObjectStub",
    "FakeClock",
    "InvalidIdError",
    "LocalTransport",
    "ObjectAddress",
    "ObjectHost",
    "ObjectHostOptions",
    "PassThroughCodec",
    "SqlCursor",
    "Storage",
    "SystemClock",
    "Transaction",
    "Transport",
    "owner_index",
]


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'objects' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
