"""The durable-object API workflows are built on (one import point for the package)."""

from __future__ import annotations

from objects import DurableObject, DurableObjectNamespace, LocalTransport, ObjectHost

__all__ = ["DurableObject", "DurableObjectNamespace", "LocalTransport", "ObjectHost"]
