"""EpochTicker: the background thread that turns wasmtime epochs into wall-clock deadlines.

What it guarantees, exactly:

- One ticker per `wasmtime.Engine`; it is the only code that calls `engine.increment_epoch()`.
- The thread ticks (increments the epoch every `tick_s` seconds) while at least one
  `running()` block is open and for `idle_grace_s` after the last one closed; then it parks
  on a condition variable, so an idle process does not wake up. Opening a block while it is
  parked wakes it; the first tick comes `tick_s` later. (The grace period exists because
  waking a parked thread costs a GIL hand-off, which back-to-back short calls would otherwise
  pay on every call.)
- `deadline_ticks(wall_ms)` = ceil(wall_ms / tick) + 1. A store given that many ticks with
  `Store.set_epoch_deadline` *inside* a `running()` block traps with `TrapCode.INTERRUPT`
  no earlier than `wall_ms` after the deadline was set (the +1 absorbs the partly elapsed
  current tick) and no later than `wall_ms + 2 * tick_s` plus OS scheduling delay, as long as
  the guest is executing wasm. Time spent inside a host function is not interrupted by the
  epoch; host functions bound their own waits (HTTP timeouts) by the same deadline.
- The thread is a daemon; `close()` stops it and joins it. Exceptions cannot escape it (the
  loop does nothing that raises besides `increment_epoch`, which does not fail).
- `running()` is thread-safe and reentrant across threads; it never blocks on guest code.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import wasmtime

__all__ = ["EpochTicker"]


class EpochTicker:
    def __init__(
        self, engine: wasmtime.Engine, tick_s: float = 0.005, idle_grace_s: float = 1.0
    ):
        if tick_s <= 0 or idle_grace_s < 0:
            raise ValueError("tick_s must be positive and idle_grace_s not negative")
        self.engine = engine
        self.tick_s = tick_s
        self.idle_grace_s = idle_grace_s
        self._cond = threading.Condition()
        self._active = 0
        self._parked = False
        self._last_active = time.monotonic()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.ticks = 0

    def deadline_ticks(self, wall_ms: int) -> int:
        return math.ceil(wall_ms / 1000 / self.tick_s) + 1

    @contextmanager
    def running(self) -> Iterator[None]:
        with self._cond:
            if self._closed:
                raise RuntimeError("EpochTicker is closed")
            self._active += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="sandbox-epoch-ticker", daemon=True
                )
                self._thread.start()
            elif self._parked:
                self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._last_active = time.monotonic()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _loop(self) -> None:
        # Ticks are spaced at least tick_s apart on the monotonic clock, whatever wakes the
        # condition early (a new running() block, close()), so a deadline is never cut short.
        while True:
            with self._cond:
                while (
                    self._active == 0
                    and not self._closed
                    and time.monotonic() - self._last_active >= self.idle_grace_s
                ):
                    self._parked = True
                    self._cond.wait()
                self._parked = False
                due = time.monotonic() + self.tick_s
                while not self._closed:
                    remaining = due - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if self._closed:
                    return
            self.engine.increment_epoch()
            self.ticks += 1
