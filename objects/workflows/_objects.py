"""The durable-object API workflows are built on (one import point for the package)."""

from __future__ import annotations

from objects import (
    AlarmInfo,
    DurableObject,
    DurableObjectNamespace,
    DurableObjectState,
    LocalTransport,
    ObjectHost,
    Storage,
)
from objects.sql import SqlStorage
from objects.stub import DEFAULT_SECRET
from objects.types import ScanningTransport

__all__ = [
    "DEFAULT_SECRET", "AlarmInfo", "DurableObject", "DurableObjectNamespace", "DurableObjectState",
    "LocalTransport", "ObjectHost", "ScanningTransport", "SqlStorage", "Storage",
]
