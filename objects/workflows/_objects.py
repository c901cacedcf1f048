"""The durable-object API workflows are built on (one import point for the package)."""

from __future__ import annotations

from objects import DurableObject, DurableObjectNamespace, LocalTransport, ObjectHost
from objects.stub import DEFAULT_SECRET
from objects.types import ScanningTransport

__all__ = [
    "DEFAULT_SECRET", "DurableObject", "DurableObjectNamespace", "LocalTransport", "ObjectHost",
    "ScanningTransport",
]
