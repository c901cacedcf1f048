"""The durable-object API workflows are built on, from ``objects`` once it exports it.

Until ``objects`` exports ``DurableObject``, ``ObjectHost``, ``DurableObjectNamespace`` and
``LocalTransport``, a minimal stand-in with the same shapes is used (``_fallback_host``).
"""

from __future__ import annotations

try:
    from objects import (  # type: ignore[attr-defined]
        DurableObject,
        DurableObjectNamespace,
        LocalTransport,
        ObjectHost,
    )
except ImportError:  # pragma: no cover - depends on what objects/ has landed
    from ._fallback_host import DurableObject, DurableObjectNamespace, LocalTransport, ObjectHost

__all__ = ["DurableObject", "DurableObjectNamespace", "LocalTransport", "ObjectHost"]
