"""The audit writer's loop: consume the journal, sign and anchor the head, rotate.

`Writer.tick` runs one round: `Store.consume` until the journal is drained, then, every
``anchor_interval_s`` (and for every segment sealed meanwhile), a signed checkpoint of the head
written to the anchor sink. A checkpoint whose anchor write failed is retried at the next
interval; the log itself never waits for the anchor. `Writer.finish` drains and anchors once
more, for a clean stop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from runtime.audit.anchor import AnchorSink, Checkpoint
from runtime.audit.store import Step, Store

__all__ = ["Writer"]


class Writer:
    def __init__(self, store: Store, sink: AnchorSink | None, *, anchor_interval_s: float,
                 clock: Callable[[], float] = time.monotonic,
                 on_event: Callable[..., None] | None = None) -> None:
        self.store = store
        self.sink = sink
        self.interval = anchor_interval_s
        self._clock = clock
        self._on_event = on_event or (lambda event, **fields: None)
        self._next_anchor = clock() + anchor_interval_s
        self._unanchored: Checkpoint | None = None  # signed, but its anchor write failed

    def drain(self) -> Step:
        """Consume until nothing is left; the steps' offsets and finished files, merged."""
        total = Step()
        while True:
            step = self.store.consume()
            total.entries += step.entries
            total.offsets.update(step.offsets)
            total.finished.extend(step.finished)
            if step.sealed is not None:
                self._anchor(step.sealed)
            if not step.more:
                return total

    def tick(self) -> Step:
        step = self.drain()
        if self._clock() >= self._next_anchor:
            self.anchor()
        return step

    def anchor(self, *, force: bool = False) -> Checkpoint | None:
        """Sign the head (when it changed, or `force`) and write it to the sink."""
        self._next_anchor = self._clock() + self.interval
        cp = self.store.checkpoint(force=force) or self._unanchored
        if cp is not None:
            self._anchor(cp)
        return cp

    def _anchor(self, cp: Checkpoint) -> None:
        if self.sink is None:
            return
        problems = self.sink.write(cp)
        if problems:
            self._unanchored = cp
            self._on_event("audit_anchor_failed", size=cp.size, problems=problems)
        else:
            self._unanchored = None
            self.store.mark_anchored(cp.size)

    def finish(self) -> Any:
        step = self.drain()
        self.anchor(force=True)
        return step
