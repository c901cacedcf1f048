"""CPU accounting per request and the limit watchdog of an isolate process.

What is counted: `metered(coro, meter)` drives a request's coroutine one step at a time (each
`send`/`throw`) and adds the main thread's CPU time spent inside each step to `meter.cpu`. Time
spent waiting (I/O, timers, other requests' steps) is not counted, so concurrent requests are
accounted separately, like Workers' CPU time.

What is enforced, by `Watchdog`, a daemon thread that samples the main thread's CPU clock every
`tick` seconds:
- While a step runs, if the request's CPU (accumulated + the running step) passes its limit, the
  watchdog raises `CpuLimitExceeded` inside the main thread (an asynchronous exception). The request
  fails with the CPU-limit error and the isolate keeps serving. After every step the driver also
  checks the total itself, so a request made of many short steps is stopped too.
- If that request is still running `grace` CPU-seconds later (it swallowed the exception, or it is
  stuck in native code), the watchdog writes a note naming the request and limit to `note_path`
  and ends the process with `EXIT_LIMIT`. The front reads the note, answers that request with the
  limit error and the other requests in flight on the process with `isolate_restarted`, and
  respawns the process.
- Memory: `cap_memory` sets RLIMIT_DATA so that allocations beyond the limit fail with MemoryError
  instead of growing; the watchdog also reads RSS each tick and, over the limit, writes a note and
  exits the same way. wasmtime's address-space reservations are not writable, so they don't count.

An asynchronous exception can only land in Python code; the driver arms it only while a request
step is running, so the window where it could hit loop internals is the few instructions between
the watchdog's check and the raise. If it does land there, the loop dies, the process exits and is
respawned: the failure is contained to this isolate.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import threading
import time
from collections.abc import Coroutine, Generator
from typing import Any

__all__ = [
    "EXIT_LIMIT",
    "CpuLimitExceeded",
    "Meter",
    "Watchdog",
    "cap_memory",
    "metered",
    "rss_bytes",
]

EXIT_LIMIT = 86
_PAGE = os.sysconf("SC_PAGE_SIZE")


class CpuLimitExceeded(BaseException):
    """Raised inside a request's code when it used up its CPU time (BaseException on purpose:
    a handler's `except Exception` must not swallow it)."""


class Meter:
    __slots__ = ("request_id", "limit", "cpu", "step_start", "signalled")

    def __init__(self, request_id: str, limit_s: float):
        self.request_id = request_id
        self.limit = limit_s
        self.cpu = 0.0
        self.step_start: float | None = None
        self.signalled = False


_running: Meter | None = None  # the meter whose step is executing on the main thread


class _Driver:
    __slots__ = ("coro", "meter")

    def __init__(self, coro: Coroutine[Any, Any, Any], meter: Meter):
        self.coro, self.meter = coro, meter

    def __await__(self) -> Generator[Any, Any, Any]:
        global _running
        coro, meter = self.coro, self.meter
        value: Any = None
        error: BaseException | None = None
        clock = time.thread_time
        while True:
            if meter.cpu > meter.limit and error is None:
                error = CpuLimitExceeded()
            outer = _running  # metered code may run metered code (a workflow step in a request)
            _running = meter
            start = meter.step_start = clock()
            try:
                if error is None:
                    yielded = coro.send(value)
                else:
                    yielded = coro.throw(error)
            except StopIteration as stop:
                return stop.value
            finally:
                meter.step_start = None
                _running = outer
                meter.cpu += clock() - start
            try:
                value, error = (yield yielded), None
            except BaseException as e:  # cancellation and friends go into the coroutine
                value, error = None, e


def metered(coro: Coroutine[Any, Any, Any], meter: Meter) -> _Driver:
    return _Driver(coro, meter)


def cap_memory(limit_bytes: int) -> None:
    try:
        resource.setrlimit(resource.RLIMIT_DATA, (limit_bytes, limit_bytes))
    except (ValueError, OSError):
        pass  # a lower hard limit is already in force; the RSS check still applies


def rss_bytes() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


class Watchdog(threading.Thread):
    def __init__(self, note_path: str, memory_limit: int, tick: float = 0.005, grace: float = 0.5):
        super().__init__(name="edgeworks-watchdog", daemon=True)
        self.note_path = note_path
        self.memory_limit = memory_limit
        self.tick = tick
        self.grace = grace
        self.main_ident = threading.main_thread().ident or 0
        self.clock_id = time.pthread_getcpuclockid(self.main_ident)
        self.in_flight: set[str] = set()  # request ids, maintained by the isolate loop

    def _exit(self, reason: str, request_id: str | None, **detail: Any) -> None:
        note = {"reason": reason, "request_id": request_id, **detail}
        tmp = f"{self.note_path}.tmp"
        with open(tmp, "w") as f:
            json.dump(note, f)
        os.replace(tmp, self.note_path)
        os._exit(EXIT_LIMIT)

    def run(self) -> None:
        mem_every = max(1, int(0.05 / self.tick))
        n = 0
        while True:
            time.sleep(self.tick)
            n += 1
            m = _running
            start = m.step_start if m is not None else None
            if m is not None and start is not None:
                used = m.cpu + time.clock_gettime(self.clock_id) - start
                if used > m.limit + self.grace:
                    self._exit("cpu_limit", m.request_id, limit_ms=int(m.limit * 1000))
                if used > m.limit and not m.signalled and _running is m:
                    m.signalled = True
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(
                        ctypes.c_ulong(self.main_ident), ctypes.py_object(CpuLimitExceeded)
                    )
            if n % mem_every == 0 and rss_bytes() > self.memory_limit:
                rid = m.request_id if m is not None else None
                self._exit("memory_limit", rid, limit_mb=self.memory_limit // (1024 * 1024))
