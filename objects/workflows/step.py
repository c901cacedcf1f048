"""The ``step`` object a run receives: durable steps, sleeps and event waits, by replay.

Replay semantics. A run is re-entered from the top every time the instance wakes (alarm,
event, resume, restart of the host). Each call on ``step`` gets a key ``name#n`` (``n`` counts
earlier calls with the same name in this run) and a position (0, 1, 2, ...). A call whose key
has a recorded outcome returns it (or raises the recorded failure) without running anything; a
call whose position holds a *different* recorded key raises ``StepDivergenceError`` naming the
expected and the actual step. A step's outcome is committed (durably) before ``step.do``
returns, so the next step never starts before its predecessor's result is on disk.

Waiting never holds a task: when a step must wait (sleep, event wait, retry delay) the run is
abandoned by raising an internal ``BaseException`` and the instance sets its alarm for the
wake-up time; the next wake replays to the same point and continues.

Steps are at-least-once: a step interrupted by a crash (or by pause/terminate while its
function runs) runs again on the next replay. ``step.do(..., transactional=True)`` makes a
step exactly-once when its only effects are writes to the workflow's own storage through
``step.sql`` / ``step.storage``: the function runs inside one storage transaction which also
records its result, so either both the writes and the result commit, or neither.

Classification. Every replay starts at the level of the instance's params (``meta["level"]``)
and the level only rises: ``step.do(..., classification=level)`` runs the step at least at
``level``; ``step.classify(level)`` inside a step function raises that step (and so the run
after it), outside one it raises the run from there on. Each step record keeps the level its
step ended at, and replaying the step raises the run to it again, so a replayed run walks the
same levels as the first. ``step.declassify(level, reason=...)`` is the one way down: it is a
recorded entry of the run (audited once, as ``classification.declassified``, with the previous
and new level and the reason), called from the run's own code, never from inside a step.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, NamedTuple

import msgpack

from .errors import (
    ApprovalRejected,
    NonRetryableError,
    StepDivergenceError,
    StepFailedError,
    WorkflowLimitError,
    WorkflowTimeoutError,
)
from .options import RetryPolicy, StepConfig, parse_duration, to_epoch_seconds
from .types import APPROVAL_EVENT

if TYPE_CHECKING:
    from ._objects import SqlStorage, Storage
    from .engine import InstanceEngine

__all__ = ["Step", "StepCall", "StepContext"]

StepFn = Callable[[], Awaitable[Any]]



class StepInfo(NamedTuple):
    """The workflow step running in this context (for what it calls: AI calls are accounted to
    the workflow class, instance and step)."""

    workflow_class: str
    instance: str
    step: str


CURRENT_STEP: contextvars.ContextVar[StepInfo | None] = contextvars.ContextVar("workflow_step", default=None)

class _Suspend(BaseException):
    """The run must wait until ``wake_at`` (epoch seconds; None = until an event arrives)."""

    def __init__(self, wake_at: float | None, kind: str, step: str) -> None:
        super().__init__(kind, step)
        self.wake_at = wake_at
        self.kind = kind
        self.step = step


class _Stop(BaseException):
    """The run stops at a step boundary (pause requested, kill switch, or superseded)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _ResultError(Exception):
    """A step returned something that cannot be recorded; never retried."""


def normalize_value(what: str, value: Any, max_bytes: int, bound: str) -> Any:
    """``value`` as it will read back from storage; a clear error if it cannot be stored."""
    try:
        packed = msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise _ResultError(
            f"{what} is not msgpack/JSON-serializable ({type(value).__name__}): {exc}"
        ) from None
    if len(packed) > max_bytes:
        raise WorkflowLimitError(bound, f"{what} is {len(packed)} bytes, over {bound}={max_bytes}")
    return msgpack.unpackb(packed, raw=False, strict_map_key=False)


def error_fields(exc: BaseException, redact: Callable[[str], str] = str) -> dict[str, str]:
    """What is stored and audited of an error; ``redact`` is the hooks' (see WorkflowHooks)."""
    return {"type": type(exc).__name__, "message": redact(str(exc))}


def _merge_config(
    base: StepConfig, retries: RetryPolicy | dict[str, Any] | None, timeout: Any
) -> StepConfig:
    update: dict[str, Any] = {}
    if retries is not None:
        if isinstance(retries, dict):
            retries = RetryPolicy(**{**base.retries.model_dump(), **retries})
        update["retries"] = retries
    if timeout is not None:
        update["timeout"] = timeout
    if not update:
        return base
    return StepConfig(**{**base.model_dump(), **update})


async def run_attempts(
    run: InstanceEngine,
    record_key: str,
    rec: dict[str, Any],
    fn: Callable[[], Awaitable[Any]],
    config: StepConfig,
    *,
    transactional: bool = False,
    audit_kind: str = "workflow.step",
) -> Any:
    """Run one attempt of ``fn`` and record its outcome (result, retry time or failure).

    Returns the recorded result; raises ``_Suspend`` for a retry delay and ``StepFailedError``
    once the retries are exhausted or the function raised ``NonRetryableError``.
    """
    await run.flush()  # the previous step's outcome is durable before this one starts
    name = rec["name"]
    attempt = len(rec["attempts"]) + 1
    recorded = run.steps.get(record_key) or run.comps.get(record_key)
    if recorded is not None and recorded["status"] == "complete":  # its result is durable: it must not run again
        run.audit("consistency.step_rerun", {"step": name, "key": record_key, "attempt": attempt})
    started = run.now()
    run.set_current(record_key, rec, attempt, started)
    run.audit(f"{audit_kind}.attempt", {"step": name, "key": record_key, "attempt": attempt, **_level_of(rec)})

    async def call() -> Any:
        meta = run.meta or {}
        with run.hooks.trace_step({"workflow": run.definition.class_name, "instance": meta.get("id"), "step": name,
                                   "attempt": attempt, "trace": meta.get("trace"), "resumed": not run.created_here}):
            result = await run.call_user(fn, config.timeout, name)
        return normalize_value(
            f"result of step {name!r}", result,
            run.limits.max_step_result_bytes, "max_step_result_bytes",
        )

    try:
        if transactional:
            async def body(txn: Any) -> Any:
                result = await call()
                done = _completed(rec, result, started, run.now())
                await run.write(record_key, done, txn)
                return done

            done = await run.storage.transaction(body)
            await run.storage.sync()
            run.remember(record_key, done)
        else:
            result = await call()
            done = _completed(rec, result, started, run.now())
            await run.commit({record_key: done})
    except Exception as exc:  # a step's SystemExit arrives as ScriptExit (see `call_user`)
        run.clear_current()
        ended = run.now()
        error = error_fields(exc, run.hooks.redact)
        failed = {**rec, "attempts": [*rec["attempts"], {
            "started": started, "ended": ended, "error": error,
        }]}
        final = isinstance(exc, NonRetryableError | _ResultError | WorkflowLimitError)
        if final or attempt > config.retries.limit:
            failed.update(status="failed", error=error, ended=ended)
            await run.commit({record_key: failed})
            run.audit(f"{audit_kind}.outcome", {
                "step": name, "key": record_key, "outcome": "failed", "attempts": attempt,
                "duration_s": round(ended - started, 6), "error": error, **_level_of(rec),
            })
            raise StepFailedError(name, type(exc).__name__, str(exc), attempt) from exc
        wake_at = ended + config.retries.delay_after(attempt)
        failed.update(status="retrying", wake_at=wake_at)
        await run.commit({record_key: failed})
        run.audit(f"{audit_kind}.outcome", {
            "step": name, "key": record_key, "outcome": "retry", "attempt": attempt,
            "duration_s": round(ended - started, 6), "retry_at": wake_at, "error": error, **_level_of(rec),
        })
        kind = "retry" if record_key.startswith("step:") else "compensation retry"
        raise _Suspend(wake_at, kind, record_key.split(":", 1)[1]) from None
    run.clear_current()
    run.audit(f"{audit_kind}.outcome", {
        "step": name, "key": record_key, "outcome": "complete", "attempts": attempt,
        "duration_s": round(done["ended"] - started, 6), **_level_of(rec),
    })
    return done["result"]


def _level_of(rec: dict[str, Any]) -> dict[str, Any]:
    """The classification of an entry about a step: the level of the data the step handled."""
    level = rec.get("level")
    return {"classification": level} if level is not None else {}


def _completed(rec: dict[str, Any], result: Any, started: float, ended: float) -> dict[str, Any]:
    return {
        **rec, "status": "complete", "result": result, "ended": ended, "wake_at": None,
        "attempts": [*rec["attempts"], {"started": started, "ended": ended, "error": None}],
    }


def failure_from_record(rec: dict[str, Any]) -> Exception:
    """The exception a recorded failed step raises again on replay."""
    error = rec.get("error") or {"type": "Error", "message": ""}
    if rec["kind"] == "event":
        return WorkflowTimeoutError(rec["name"], rec["event_type"])
    return StepFailedError(rec["name"], error["type"], error["message"], len(rec["attempts"]))


class StepContext:
    """What a step function's ``ctx`` parameter receives (Cloudflare's WorkflowStepContext):
    ``step.name``, ``step.count`` (calls with that name so far, from 1), ``attempt`` (from 1)
    and the resolved ``config``."""

    def __init__(self, name: str, count: int, attempt: int, config: StepConfig) -> None:
        self.step = SimpleNamespace(name=name, count=count)
        self.attempt = attempt
        self.config = config.model_dump()

    def __repr__(self) -> str:
        return f"StepContext(step={self.step.name!r}#{self.step.count}, attempt={self.attempt})"


@dataclass(frozen=True, slots=True)
class _StepOptions:
    """How ``step.do`` runs one step (what its keyword arguments resolved to)."""

    config: StepConfig
    compensate: Callable[..., Awaitable[Any]] | None
    transactional: bool
    classification: str | None = None


class StepCall:
    """What ``@step.do(name)`` returns: call it (or await it directly) to run the step.

    It runs at most once per run of the workflow: steps that depend on it and the code that
    calls it share its result."""

    def __init__(self, step: Step, name: str, fn: Callable[..., Awaitable[Any]],
                 options: _StepOptions, depends: list[StepCall]) -> None:
        self._step = step
        self._name = name
        self._fn = fn
        self._options = options
        self._depends = depends
        self._result: asyncio.Future[Any] | None = None

    def __call__(self) -> Awaitable[Any]:
        return self._once()

    def __await__(self) -> Generator[Any, None, Any]:
        return self().__await__()

    async def _once(self) -> Any:
        if self._result is not None:
            return await asyncio.shield(self._result)
        self._result = asyncio.get_running_loop().create_future()
        try:
            value = await self._run()
        except BaseException as exc:
            self._result.set_exception(exc)
            self._result.exception()  # retrieved: whoever awaits it gets it raised
            raise
        self._result.set_result(value)
        return value

    async def _run(self) -> Any:
        for dependency in self._depends:
            await dependency()
        injected = {}
        for param in inspect.signature(self._fn).parameters:
            declared = self._step._declared.get(param)
            if declared is not None and declared is not self:
                injected[param] = await declared()
        fn = functools.partial(self._fn, **injected) if injected else self._fn
        return await self._step._do(self._name, fn, self._options)


class Step:
    """The durable step API of one run (see the module docstring for replay semantics)."""

    def __init__(self, run: InstanceEngine) -> None:
        self._run = run
        self._counts: dict[str, int] = {}
        self._position = 0
        self._declared: dict[str, StepCall] = {}  # decorated step functions, by function name
        self._levels = run.hooks.levels
        self._running: dict[str, Any] | None = None  # the record of the step function running now
        # The run's classification level: the params' at the start of every replay (None: the
        # instance was created without one, and levels are not tracked).
        self._set_level((run.meta or {}).get("level"))

    @property
    def sql(self) -> SqlStorage:
        """The workflow instance's own SQL storage (``exec(query, *params)``)."""
        return self._run.storage.sql

    @property
    def storage(self) -> Storage:
        """The workflow instance's own storage (KV and SQL)."""
        return self._run.storage

    def do(
        self,
        name: str | None = None,
        fn: StepFn | None = None,
        *,
        retries: RetryPolicy | dict[str, Any] | None = None,
        timeout: str | float | None = None,
        config: dict[str, Any] | None = None,
        compensate: Callable[..., Awaitable[Any]] | None = None,
        transactional: bool = False,
        depends: list[StepCall] | None = None,
        concurrent: bool = False,
        classification: str | None = None,
    ) -> Any:
        """Run ``fn`` once (durably); as a decorator when ``fn`` is omitted.

        The decorator form is Cloudflare's Python one: ``@step.do()`` names the step after the
        function; calling (or awaiting) the result runs it. A parameter named like an earlier
        decorated step function receives that step's result (the step runs first if it has
        not yet), as do the steps listed in ``depends``; a parameter named ``ctx`` receives the
        ``StepContext``. ``config={"retries": ..., "timeout": ...}`` is Cloudflare's
        ``WorkflowStepConfig``. ``concurrent`` is accepted; dependencies run one after
        another, each durably, which gives the same results. ``classification`` runs the step
        at least at that level (and the run after it; see the module docstring).
        """
        if classification is not None:
            self._check_level(classification)
        if config is not None:
            if not isinstance(config, dict) or set(config) - {"retries", "timeout"}:
                raise TypeError(f"step {name!r}: config takes the keys retries and timeout, "
                                f"got {config!r}")
            retries = config.get("retries") if retries is None else retries
            timeout = config.get("timeout") if timeout is None else timeout
        options = _StepOptions(_merge_config(self._run.step_defaults, retries, timeout),
                               compensate, transactional, classification)
        if fn is None:
            def decorator(func: Callable[..., Awaitable[Any]]) -> StepCall:
                call = StepCall(self, name or func.__name__, func, options, depends or [])
                self._declared[func.__name__] = call
                return call

            return decorator
        if name is None:
            raise TypeError("step.do(name, fn): a step run directly needs a name")
        return self._do(name, fn, options)

    async def _do(self, name: str, fn: StepFn, options: _StepOptions) -> Any:
        config, compensate = options.config, options.compensate
        if not callable(fn):
            raise TypeError(f"step {name!r}: expected an async function, got {fn!r}")
        key, position, rec = self._enter(name)
        if _wants(fn, "ctx"):
            fn = self._with_context(fn, name, int(key.rsplit("#", 1)[1]), config)
        if rec is None:
            rec = {"name": name, "kind": "do", "pos": position, "status": "pending",
                   "attempts": [], "started": self._run.now(), "wake_at": None,
                   "compensable": compensate is not None}
        elif rec["status"] == "complete":
            self._rise(rec.get("level"))
            self._run.add_compensation(key, rec, compensate, config)
            return rec["result"]
        elif rec["status"] == "failed":
            self._rise(rec.get("level"))
            raise failure_from_record(rec)
        elif rec["wake_at"] is not None and rec["wake_at"] > self._run.now():
            raise _Suspend(rec["wake_at"], "retry", key)
        if self.level is not None:  # this attempt runs at the run's level, raised as asked
            self._rise(options.classification)
            rec = {**rec, "level": self.level}
        meta = self._run.meta or {}
        token = CURRENT_STEP.set(StepInfo(self._run.definition.class_name, str(meta.get("id", "")), name))
        self._running = rec
        try:
            result = await run_attempts(self._run, "step:" + key, rec, fn, config,
                                        transactional=options.transactional)
        finally:
            self._running = None
            CURRENT_STEP.reset(token)
            self._rise(rec.get("level"))  # what the step raised itself (step.classify) holds after it
        self._run.add_compensation(key, self._run.steps["step:" + key], compensate, config)
        return result

    # -- classification ----------------------------------------------------------------------

    @property
    def level(self) -> str | None:
        """The run's classification level now."""
        return self._run.level

    def _set_level(self, level: str | None) -> None:
        """The run goes on at `level`: its task runs at it and its audit entries carry it."""
        self._run.level = level
        if level is not None:
            self._run.hooks.run_at_level(level)

    def _check_level(self, level: Any) -> str:
        if not isinstance(level, str) or level not in self._levels:
            raise ValueError(f"unknown classification level {level!r} (levels: {', '.join(self._levels)})")
        return level

    def _rise(self, level: str | None) -> None:
        """Raise the run's level to `level` (never lower it); the running task runs at the result."""
        if level is None or self.level is None or level not in self._levels:
            return
        if self._levels.index(level) > self._levels.index(self.level):
            self._set_level(level)

    def classify(self, level: str) -> str:
        """Raise the level of the data handled from here on to at least `level`; inside a step
        function, the step's (recorded with its result); outside, the run's. Returns the level."""
        self._check_level(level)
        if self.level is None:
            return level
        running = self._running
        if running is not None and self._run._in_user:
            # Inside the step function: its task runs at the raised level now; the record
            # carries it, and the run rises to it when the step is done (and on every replay).
            if self._levels.index(level) > self._levels.index(running["level"]):
                running["level"] = level
                self._run.hooks.run_at_level(level)
            return str(running["level"])
        self._rise(level)
        return self.level or level

    async def declassify(self, level: str, *, reason: str, name: str = "declassify") -> None:
        """Lower the run's level to `level` from here on: a recorded, audited decision
        (``classification.declassified`` with the previous level, the new one and `reason`),
        taken by the run's own code, never inside a step function."""
        self._check_level(level)
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("step.declassify needs a reason (who decided, and why)")
        if self._run._in_user:
            raise RuntimeError("step.declassify is called by the run's code, not inside a step function")
        key, position, rec = self._enter(name)
        if rec is not None:
            if rec.get("kind") != "declassify":
                raise StepDivergenceError(position, key, f"{key} (declassify)")
        else:
            now = self._run.now()
            previous = self.level
            rec = {"name": name, "kind": "declassify", "pos": position, "status": "complete",
                   "attempts": [], "started": now, "ended": now, "wake_at": None,
                   "level": level, "previous": previous, "reason": reason}
            await self._run.commit({"step:" + key: rec})
            self._run.audit("classification.declassified", {
                "step": key, "level": level, "previous": previous, "reason": reason,
                "classification": previous or level})
        if self.level is not None:
            self._set_level(rec["level"])

    def _with_context(self, fn: Callable[..., Awaitable[Any]], name: str, count: int,
                      config: StepConfig) -> StepFn:
        def call() -> Awaitable[Any]:
            return fn(ctx=StepContext(name, count, self._run.attempt, config))

        return call

    async def sleep(self, name: str, duration: str | int | float) -> None:
        """Wait ``duration`` ("10 seconds", "2 hours", or seconds) without holding a task."""
        seconds = parse_duration(duration)
        await self._sleep(name, lambda now: now + seconds)

    async def sleep_until(self, name: str, when: datetime | int | float) -> None:
        """Wait until ``when`` (a datetime, naive = UTC, or epoch seconds)."""
        at = to_epoch_seconds(when)
        await self._sleep(name, lambda now: at)

    async def _sleep(self, name: str, wake_at: Callable[[float], float]) -> None:
        key, position, rec = self._enter(name)
        now = self._run.now()
        if rec is None:
            rec = {"name": name, "kind": "sleep", "pos": position, "status": "waiting",
                   "attempts": [], "started": now, "wake_at": wake_at(now)}
            if rec["wake_at"] > now:
                await self._run.commit({"step:" + key: rec})
                raise _Suspend(rec["wake_at"], "sleep", key)
        elif rec["status"] == "complete":
            return
        if rec["wake_at"] > now:
            raise _Suspend(rec["wake_at"], "sleep", key)
        await self._run.commit({"step:" + key: {**rec, "status": "complete", "ended": now}})

    async def wait_for_event(
        self, name: str, event_type: str | None = None, timeout: str | int | float = "24 hours",
        *, type: str | None = None,
    ) -> dict[str, Any]:
        """The first event of ``event_type`` (or ``type=``) sent to this instance, also one
        sent before the wait began.

        Returns ``{"type", "payload", "timestamp"}``; raises ``WorkflowTimeoutError`` when
        ``timeout`` passes first.
        """
        type = event_type if type is None else type
        if not isinstance(type, str) or not type:
            raise TypeError(f"wait_for_event({name!r}): event_type must be a non-empty str, "
                            f"got {type!r}")
        seconds = parse_duration(timeout)
        key, position, rec = self._enter(name)
        now = self._run.now()
        if rec is not None and rec["status"] == "complete":
            return rec["result"]
        if rec is not None and rec["status"] == "failed":
            raise failure_from_record(rec)
        fresh = rec is None
        if rec is None:
            rec = {"name": name, "kind": "event", "pos": position, "status": "waiting",
                   "event_type": type, "attempts": [], "started": now, "wake_at": now + seconds}
        event_key = self._run.find_event(type)
        if event_key is not None:
            event = self._run.events[event_key]
            result = {"type": type, "payload": event["payload"], "timestamp": event["received"]}
            await self._run.commit({
                "step:" + key: {**rec, "status": "complete", "result": result, "ended": now},
                event_key: {**event, "consumed_by": key},
            })
            return result
        if rec["wake_at"] <= now:
            error = WorkflowTimeoutError(name, type)
            await self._run.commit({"step:" + key: {
                **rec, "status": "failed", "error": error_fields(error, self._run.hooks.redact), "ended": now}})
            raise error
        if fresh:
            await self._run.commit({"step:" + key: rec})
        raise _Suspend(rec["wake_at"], "event", key)

    async def wait_for_approval(
        self, name: str, timeout: str | int | float = "24 hours"
    ) -> dict[str, Any]:
        """Wait for a human approval (event type ``"approval"``); raises ``ApprovalRejected``.
        Returns the decision: ``approved``, ``by``, ``reason`` and, when the approver amended
        what was proposed, ``payload``: the value the task goes on with."""
        event = await self.wait_for_event(name, APPROVAL_EVENT, timeout)
        payload = event["payload"] if isinstance(event["payload"], dict) else {}
        if not payload.get("approved"):
            raise ApprovalRejected(name, payload.get("by"), payload.get("reason"))
        return payload

    def _diverged(self, position: int, recorded: str, key: str) -> StepDivergenceError:
        """A replay that calls another step than the one recorded at `position`: a consistency
        defect, audited as such, and the instance fails."""
        self._run.audit("consistency.divergence", {"position": position, "recorded": recorded, "called": key})
        return StepDivergenceError(position, recorded, key)

    def _enter(self, name: str) -> tuple[str, int, dict[str, Any] | None]:
        if not isinstance(name, str) or not name:
            raise TypeError(f"step name must be a non-empty string, got {name!r}")
        self._run.check_boundary()
        count = self._counts[name] = self._counts.get(name, 0) + 1
        key = f"{name}#{count}"
        position = self._position
        self._position += 1
        recorded = self._run.key_at(position)
        if recorded is not None and recorded != key:
            raise self._diverged(position, recorded, key)
        rec = self._run.steps.get("step:" + key)
        if rec is not None and rec["pos"] != position:
            raise self._diverged(position, "<nothing recorded>", key)
        if rec is None and position >= self._run.limits.max_steps:
            raise WorkflowLimitError(
                "max_steps", f"step {name!r} would be step {position + 1}, over "
                f"max_steps={self._run.limits.max_steps}"
            )
        return key, position, rec


def _wants(fn: Callable[..., Any], param: str) -> bool:
    """Whether ``fn`` has a parameter ``param`` still to be given."""
    try:
        return param in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def takes_argument(fn: Callable[..., Any]) -> bool:
    """Whether a compensation function wants the step's result as its argument."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    # Only a parameter the function *requires* receives the step result; ``name=name``-style
    # defaults (closing over a loop variable) are left alone.
    return any(p.kind == p.VAR_POSITIONAL or (
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty)
        for p in params)

