"""Durable objects: one strongly consistent, single-threaded owner per key, persisted in SQLite.

Public API; see the modules for exact semantics (``gates`` for the input and output gates,
``storage`` for caching and group commit, ``host`` for delivery, eviction and alarms).
"""

from objects.alarms import AlarmInfo
from objects.clock import Clock, FakeClock, SystemClock
from objects.durable_object import DurableObject, DurableObjectState
from objects.errors import DurableObjectError, DurableObjectReset, InvalidIdError
from objects.host import ObjectHost, PassThroughCodec
from objects.ids import DurableObjectId, owner_index
from objects.options import ObjectHostOptions
from objects.sql import SqlCursor
from objects.storage import Storage, Transaction
from objects.stub import DurableObjectNamespace, DurableObjectStub, LocalTransport
from objects.types import ObjectAddress, Transport

__all__ = [
    "AlarmInfo",
    "Clock",
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
