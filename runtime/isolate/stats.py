"""Counters an isolate keeps for the front: `bump("object.call")` adds to a process-local delta,
and the isolate loop sends the deltas to the front every second (`protocol.Stats`) and once more
on a clean shutdown. The front adds them to its own totals (`Front.observers.stats`), so its
counters keep growing when an isolate is killed and replaced; a killed isolate loses at most its
last second of increments.

Names are dotted: "object.call", "object.commit", "workflow.step_commit", a sum and a count for
a duration ("workflow.step_duration_s", "workflow.step_duration_count"). Code in `objects/`
cannot import the runtime: it gets `bump` injected by its binding kind.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

__all__ = ["FLUSH_INTERVAL_S", "bump", "flush_every", "take"]

FLUSH_INTERVAL_S = 1.0

_deltas: dict[str, float] = {}
_lock = threading.Lock()  # objects' storage threads bump too


def bump(name: str, n: float = 1.0) -> None:
    """Add `n` to counter `name` (a sum for durations: bump its `_count` too)."""
    with _lock:
        _deltas[name] = _deltas.get(name, 0.0) + n


def take() -> dict[str, float]:
    """The deltas since the last `take` (empty when nothing was bumped), reset to none."""
    global _deltas
    with _lock:
        out, _deltas = _deltas, {}
    return out


async def flush_every(send: Callable[[dict[str, float]], None], interval_s: float = FLUSH_INTERVAL_S) -> None:
    """Send the deltas with `send` every `interval_s` while there are any (runs until cancelled)."""
    while True:
        await asyncio.sleep(interval_s)
        counts = take()
        if counts:
            send(counts)
