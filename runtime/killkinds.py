"""What the kill switch can stop, kept apart from `runtime.killswitch` (which opens SQLite through
the object store) so the ``edgeworks kill`` command can offer the choices without importing it."""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["KILL_KINDS", "KillKind"]

KillKind = Literal["script", "route", "tenant", "workflow", "tool", "ai", "egress"]
# ai: a model or a provider; egress: a host pattern (runtime/egress/hosts.py) outbound calls may not reach
KILL_KINDS: tuple[str, ...] = get_args(KillKind)
