"""Input and output gates of one durable object (modelled on workerd's io-gate.h).

One object is one logical single-threaded executor. Its events are requests (``fetch``), RPC
calls and alarms; the host starts each event as its own task, in arrival order, and only while
the input gate is open. Two gates make interleaving at ``await`` points safe.

InputGate
---------
The gate is *closed* while it has a holder or queued lockers, *open* otherwise.

- Holders: a storage operation that must really wait (a cache miss read from SQLite, ``list``)
  holds the gate for the duration of its I/O (``sql.exec`` blocks instead: nothing else runs); ``transaction(fn)``, an idempotent
  op, ``delete_all()`` and ``block_concurrency_while(fn)`` hold it until they finish (a
  *critical section*). Lockers are granted in FIFO order.
- What is blocked while it is closed: (1) the delivery of any new event to the object;
  (2) other storage operations that must wait for I/O (they queue for the gate); (3) while a
  critical section holds it, *every* storage call made from outside the holding context (events
  that were already running wait at their next storage call). Cached reads and writes from
  another context during a mere I/O hold proceed: they take effect before the pending operation
  completes, which is a valid order. Code running *inside* the holding context (the task holding
  it, and tasks it spawns, tracked with a context variable) is never blocked by its own gate.
  Unlike workerd, the completion of other I/O of an event that is already running (a timer, an
  outgoing request) is not held back: such an event resumes, and is stopped as described above.
- Release: on exit of the holding operation. The next locker is granted, and waiters are woken,
  on a later turn of the event loop, so the code that awaited the storage operation runs up to
  its next real suspension *before* another holder starts or another waiting event or storage
  call proceeds. Reads from the cache and writes do not suspend then, hence
  ``v = await get(k); await put(k, v + 1)`` is atomic under any concurrency.
- Failure: an exception in a holding *storage operation* just releases the gate (the caller gets
  the exception). An exception in ``block_concurrency_while(fn)`` releases it and the host resets
  the object. ``break_(exc)`` (used by a reset) fails every waiter and future call with ``exc``.
- Cancellation: a cancelled waiter leaves the queue without being granted (or, if granted but not
  yet resumed, releases at once); a cancelled holder releases on exit like an exception.

OutputGate
----------
Writes are numbered by *epoch*: every write joins the batch being accumulated, and a batch (one
SQLite transaction, see ``objects.storage``) has one epoch. ``note_write(e)`` records that a write
of epoch ``e`` exists; ``mark_durable(e)`` that every batch up to ``e`` is committed.

- What is blocked: the release of a reply (a ``fetch`` response or an RPC result) and the
  sending of an outgoing stub call made by the object, produced while writes were not durable:
  ``wait()`` returns only once every write noted *before the call* is durable. A reply produced
  when nothing is pending is released at once.
- Failure: when a commit fails, ``break_(exc)`` makes every pending and future ``wait`` raise;
  the host turns the reply into an error and resets the object (instance dropped, cache
  discarded, queued events failed; the next event reconstructs it from disk).
- Cancellation: cancelling ``wait()`` cancels only that wait; the commit itself runs on the
  object's I/O thread and cannot be cancelled, and the write stays in place.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import itertools
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from objects.errors import contain_exit

__all__ = ["InputGate", "OutputGate", "current_output_gate"]

T = TypeVar("T")
_gate_ids = itertools.count()


class _Token:
    __slots__ = ("exclusive",)

    def __init__(self, exclusive: bool) -> None:
        self.exclusive = exclusive


class InputGate:
    def __init__(self) -> None:
        self._owner_var: contextvars.ContextVar[_Token | None] = contextvars.ContextVar(
            f"input_gate_{next(_gate_ids)}", default=None
        )
        self._holder: _Token | None = None
        self._lockers: collections.deque[tuple[_Token, asyncio.Future[None]]] = collections.deque()
        self._open_waiters: list[asyncio.Future[None]] = []
        self._broken: BaseException | None = None
        self._grant_scheduled = False

    # -- state ---------------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._holder is None and not self._lockers

    @property
    def blocks_storage(self) -> bool:
        """True when a critical section held by *another* context must stop storage calls."""
        holder = self._holder
        return holder is not None and holder.exclusive and self._owner_var.get() is not holder

    def owns(self) -> bool:
        """True when the current context is inside the section holding the gate."""
        return self._holder is not None and self._owner_var.get() is self._holder

    def _check(self) -> None:
        if self._broken is not None:
            raise self._broken

    # -- waiting for the gate to open ----------------------------------------------------------
    async def wait_open(self) -> None:
        """Return once the gate is open, or at once when called from inside the holder."""
        while True:
            self._check()
            if self.is_open or self.owns():
                return
            fut = asyncio.get_running_loop().create_future()
            self._open_waiters.append(fut)
            try:
                await fut
            finally:
                if fut in self._open_waiters:
                    self._open_waiters.remove(fut)

    # -- holding the gate ----------------------------------------------------------------------
    def _enqueue(self, exclusive: bool) -> tuple[_Token, asyncio.Future[None]]:
        self._check()
        token = _Token(exclusive)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._holder is None and not self._lockers:
            self._holder = token
            fut.set_result(None)
        else:
            self._lockers.append((token, fut))
        return token, fut

    async def _acquire(self, token: _Token, fut: asyncio.Future[None]) -> None:
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._release(token)  # granted, then cancelled before resuming
            else:
                self._lockers = collections.deque(e for e in self._lockers if e[0] is not token)
                if not fut.done():
                    fut.cancel()
            raise
        self._check()

    def _release(self, token: _Token) -> None:
        if self._holder is not token:
            return
        self._holder = None
        if self._lockers:
            # Grant on the next loop turn, not now: the code that awaited the releasing
            # operation must run to its next suspension before the next holder starts (else a
            # critical section could slip between its ``get`` and its ``put``).
            if not self._grant_scheduled:
                self._grant_scheduled = True
                asyncio.get_running_loop().call_soon(self._grant_next)
            return
        self._wake_open_waiters()

    def _grant_next(self) -> None:
        self._grant_scheduled = False
        if self._holder is not None or self._broken is not None:
            return
        while self._lockers:
            nxt, fut = self._lockers.popleft()
            if fut.done():
                continue
            self._holder = nxt
            fut.set_result(None)
            return
        self._wake_open_waiters()

    def _wake_open_waiters(self) -> None:
        waiters, self._open_waiters = self._open_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    @asynccontextmanager
    async def hold(self, *, exclusive: bool = False) -> Any:
        """Hold the gate for the body (re-entrant inside the holding context).

        ``exclusive``: a critical section, which also stops storage calls of other contexts.
        """
        if self.owns():
            yield
            return
        token, fut = self._enqueue(exclusive)
        await self._acquire(token, fut)
        reset = self._owner_var.set(token)
        try:
            yield
        finally:
            self._owner_var.reset(reset)
            self._release(token)

    def run_critical_section(
        self,
        fn: Callable[[], Awaitable[T]],
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> asyncio.Task[T]:
        """Close the gate *now* and run ``fn()`` in a new task that holds it until ``fn`` ends.

        Usable from synchronous code (a constructor): the gate is closed before this returns.
        Called from inside the holder, ``fn`` simply runs as part of the current section.
        ``on_failure(exc)`` runs if ``fn`` raises (or is cancelled) *before* the gate reopens.
        """
        if self.owns():
            return asyncio.get_running_loop().create_task(contain_exit(_call(fn, on_failure)))
        token, fut = self._enqueue(True)
        ctx = contextvars.copy_context()
        ctx.run(self._owner_var.set, token)

        async def section() -> T:
            await self._acquire(token, fut)
            try:
                return await fn()
            except BaseException as exc:
                if on_failure is not None:
                    on_failure(exc)
                raise
            finally:
                self._release(token)

        return asyncio.get_running_loop().create_task(contain_exit(section()), context=ctx)

    def break_(self, exc: BaseException) -> None:
        """Fail every waiter and every later call with ``exc``."""
        self._broken = exc
        for _, fut in self._lockers:
            if not fut.done():
                fut.set_exception(exc)
        self._lockers.clear()
        for w in self._open_waiters:
            if not w.done():
                w.set_exception(exc)
        self._open_waiters.clear()


async def _call(
    fn: Callable[[], Awaitable[T]], on_failure: Callable[[BaseException], None] | None
) -> T:
    try:
        return await fn()
    except BaseException as exc:
        if on_failure is not None:
            on_failure(exc)
        raise


class OutputGate:
    """Holds replies *and outgoing calls* (stubs consult ``current_output_gate``)."""

    def __init__(self) -> None:
        self._latest = 0
        self._durable = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._broken: BaseException | None = None

    @property
    def pending(self) -> bool:
        return self._latest > self._durable

    @property
    def latest(self) -> int:
        return self._latest

    def note_write(self, epoch: int) -> None:
        if epoch > self._latest:
            self._latest = epoch

    def mark_durable(self, epoch: int) -> None:
        if epoch <= self._durable:
            return
        self._durable = epoch
        keep = []
        for target, fut in self._waiters:
            if target <= epoch:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((target, fut))
        self._waiters = keep

    async def wait(self) -> None:
        """Return once every write noted before this call is durable; raise if a commit failed."""
        if self._broken is not None:
            raise self._broken
        target = self._latest
        if target <= self._durable:
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((target, fut))
        await fut

    def break_(self, exc: BaseException) -> None:
        self._broken = exc
        for _, fut in self._waiters:
            if not fut.done():
                fut.set_exception(exc)
        self._waiters.clear()


current_output_gate: contextvars.ContextVar[OutputGate | None] = contextvars.ContextVar(
    "current_output_gate", default=None
)
"""The output gate of the object whose event is running in this context (None outside).

A stub call made from inside an object waits on it before sending, so an outgoing message
produced after a write is sent only once that write is durable (and fails if it never is).
"""
