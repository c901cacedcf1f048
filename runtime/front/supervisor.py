"""Front side of the isolates: start, supervise, respawn and drain isolate processes.

An `IsolatePool` holds `pool_size` slots for one script version. Each slot runs one
`IsolateProcess` at a time; when the process dies (crash, limit kill, OOM) the slot starts a new
one, and callers waiting on the slot get the new process once it is ready. Requests in flight on a
dead process fail at once with `IsolateDied`, which says whether that request was the one that
broke a limit (from the note the isolate's watchdog leaves behind) or just shared the process.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from runtime import protocol
from runtime.config import ScriptConfig
from runtime.front import traces
from runtime.ipc import Channel, ChannelClosed, open_channel
from runtime.logs import emit, log

__all__ = ["IsolateDied", "IsolatePool", "IsolateProcess", "LoadFailed", "WallTimeExceeded", "isolate_environ"]

# What an isolate (and the zygote it is forked from) keeps of the front's environment: what Python,
# the C library and TLS need to run, and the runtime's own non-secret switches. Handler code gets
# its configuration from `env` (vars, secrets, bindings), as a Worker does; the front's variables
# (a data key, another script's secret, a cloud credential) are not handler code's to read.
_KEPT_VARS = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP", "TERM",
    "VIRTUAL_ENV", "LD_LIBRARY_PATH", "SSL_CERT_FILE", "SSL_CERT_DIR", "COVERAGE_PROCESS_START",
    "EDGEWORKS_BINDINGS", "EDGEWORKS_EGRESS_HOSTS",
})


def isolate_environ(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment an isolate process starts with: `_KEPT_VARS`, the locale (``LC_*``) and
    Python's own (``PYTHON*``) variables of `environ` (default: this process's)."""
    source = os.environ if environ is None else environ
    return {k: v for k, v in source.items() if k in _KEPT_VARS or k.startswith(("LC_", "PYTHON"))}

# How long callers (e.g. calls between isolates) wait for an isolate to become ready; each start
# itself is bounded by its script's `startup_ms` limit (10 s by default).
INIT_TIMEOUT_S = 60.0
SHUTDOWN_GRACE_S = 30.0
ACTIVATE_WAIT_S = 10.0  # an isolate answers `activate` once its alarm tasks are cancelled
DEATH_REPORT_S = 5.0  # how long a start that lost its channel waits to learn the exit status


class LoadFailed(Exception):
    """The script could not be loaded in a fresh isolate (import error, missing handler...).

    `cause` names why, for callers that answer with it: ``import_error`` (the module raised),
    ``load_error`` (no handler, a bad route model, env could not be built), ``exited``
    (SystemExit or os._exit during start-up), ``memory_limit``, ``startup_timeout``, ``crashed``
    (killed by a signal), ``config``, or ``stopped`` (the pool was stopped meanwhile)."""

    def __init__(self, message: str, cause: str = "load_error"):
        super().__init__(message)
        self.cause = cause


class WallTimeExceeded(Exception):
    pass


@dataclass
class IsolateDied(Exception):
    reason: str  # cpu_limit | memory_limit | crashed | wall_limit
    request_id: str | None
    exit_code: int | None
    detail: dict[str, Any]

    def __str__(self) -> str:
        return f"isolate died ({self.reason}, exit code {self.exit_code})"

    @property
    def cause(self) -> str:
        """What a caller reports: the limit it hit, else ``crashed`` (a signal) or ``exited``."""
        if self.reason in ("memory_limit", "cpu_limit"):
            return self.reason
        return "crashed" if (self.exit_code or 0) < 0 else "exited"


class ChildProcess(Protocol):
    """What the supervisor needs of an isolate's process: an asyncio subprocess, or the
    ForkedProcess a zygote hands back."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def kill(self) -> None: ...


class IsolateProcess:
    def __init__(self, pool: IsolatePool, index: int, generation: int):
        self.pool = pool
        self.index = index
        self.note_path = str(pool.run_dir / f"{pool.script.name}-{index}-{generation}-{os.getpid()}.note")
        self.proc: ChildProcess | None = None
        self.channel: Channel | None = None
        self.in_flight = 0
        self.died: asyncio.Future[IsolateDied] = asyncio.get_running_loop().create_future()
        self.stopping = False
        self.kill_reason: str | None = None  # why the front killed it (the isolate left no note)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def start(self, init: protocol.Init) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            zygote = getattr(self.pool.router, "zygote", None)
            if zygote is not None and zygote.alive:
                try:
                    self.proc = await zygote.spawn(child.fileno(), self.note_path)
                except (ConnectionError, TimeoutError) as e:
                    log("zygote_unavailable", error=str(e))
            if self.proc is None:
                self.proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "runtime.isolate.main", str(child.fileno()), self.note_path,
                    pass_fds=(child.fileno(),), stdin=asyncio.subprocess.DEVNULL, env=isolate_environ(),
                )
        finally:
            child.close()
        self.channel = await open_channel(parent, self.pool.on_isolate_message(self), self._on_close)
        asyncio.ensure_future(self._reap())
        limits = self.pool.script.limits
        try:
            reply = await asyncio.wait_for(self.channel.request(init.encode()), limits.startup_ms / 1000)
        except TimeoutError:
            self.kill()
            raise LoadFailed(f"the module did not finish loading within the start-up limit of {limits.startup_ms} ms"
                             " ([scripts.limits] startup_ms)", "startup_timeout") from None
        except ChannelClosed:
            raise await self._start_died() from None
        try:
            ready = protocol.Ready.decode(reply) if "error" not in reply else None
            if ready is None:
                failed = protocol.InitFailed.decode(reply)
        except protocol.ProtocolError as e:
            self.kill()
            raise LoadFailed(f"the isolate answered its init with a malformed message: {e}", "crashed") from None
        if ready is None:
            self.kill()
            raise LoadFailed(failed.error, failed.cause)
        self.load_ms = ready.load_ms

    async def _start_died(self) -> LoadFailed:
        """Why a process that was starting went away: its limit note or its exit status (the
        closed channel already had it killed, see `_on_close`)."""
        try:
            died = await asyncio.wait_for(asyncio.shield(self.died), DEATH_REPORT_S)
        except TimeoutError:
            self.kill()
            return LoadFailed("the isolate closed its channel while starting", "crashed")
        if died.reason == "memory_limit":
            return LoadFailed(f"the module exceeded the memory limit of {self.pool.script.limits.memory_mb} MB"
                              " while loading ([scripts.limits] memory_mb)", "memory_limit")
        code = died.exit_code
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return LoadFailed(f"the isolate was killed by {name} while loading the module", "crashed")
        return LoadFailed(f"the isolate exited with code {code} while loading the module"
                          " (os._exit, or a crash in native code)", "exited")

    def _on_close(self, exc: BaseException | None) -> None:
        if self.proc is not None and self.proc.returncode is None and not self.stopping:
            self.kill()

    async def _reap(self) -> None:
        assert self.proc is not None
        code = await self.proc.wait()
        note: dict[str, Any] = {}
        try:
            with open(self.note_path) as f:
                note = json.load(f)
            os.unlink(self.note_path)
        except (OSError, ValueError):
            pass
        died = IsolateDied(note.get("reason") or self.kill_reason or "crashed", note.get("request_id"), code, note)
        if self.channel is not None:
            self.channel.connection_lost(ChannelClosed(str(died)))
        if not self.died.done():
            self.died.set_result(died)
        self.pool.on_death(self, died)

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass

    async def request(self, msg: dict[str, Any], wall_s: float | None = None) -> dict[str, Any]:
        """Send a request and wait for its reply; the process's death or the wall limit end it."""
        assert self.channel is not None
        self.in_flight += 1
        fut = self.channel.request(msg)
        timer = None
        if wall_s is not None:
            timer = asyncio.get_running_loop().call_later(wall_s, self._wall_expired, fut, msg)
        try:
            return await fut
        except ChannelClosed:
            raise await self.died from None
        finally:
            self.in_flight -= 1
            if timer is not None:
                timer.cancel()

    def _wall_expired(self, fut: asyncio.Future[Any], msg: dict[str, Any]) -> None:
        if fut.done():
            return
        fut.set_exception(WallTimeExceeded())
        if self.channel is None or self.channel.closed:
            return
        self.channel.send(protocol.Cancel(target=msg["id"]).encode())
        asyncio.ensure_future(self._check_alive())

    async def _check_alive(self) -> None:
        """After a wall-time cancel the process must still answer; a stuck one is replaced."""
        assert self.channel is not None
        try:
            await asyncio.wait_for(self.channel.request(protocol.Ping().encode()), 5.0)
        except (TimeoutError, ChannelClosed):
            log("isolate_stuck", script=self.pool.script.name, pid=self.pid)
            self.kill_reason = "wall_limit"
            self.kill()

    async def shutdown(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        self.stopping = True
        if self.proc is None or self.proc.returncode is not None:
            return
        try:
            assert self.channel is not None
            await asyncio.wait_for(self.channel.request(protocol.Shutdown(grace_s=grace_s).encode()), grace_s + 2)
        except (TimeoutError, ChannelClosed):
            pass
        try:
            await asyncio.wait_for(self.proc.wait(), 2)
        except TimeoutError:
            self.kill()
            await self.proc.wait()


class IsolatePool:
    def __init__(
        self,
        script: ScriptConfig,
        *,
        root: Path,
        state_dir: Path,
        version: str,
        dev: bool,
        secrets: dict[str, str],
        router: Any,
        active: bool = True,
        levels: list[str] | None = None,
        data_key: bytes | None = None,
        redaction: dict[str, Any] | None = None,
        principals: dict[str, list[str] | None] | None = None,
        egress: dict[str, Any] | None = None,
    ):
        self.script = script
        self.data_key = data_key  # handed to each isolate in its init message, over its own pipe
        self.redaction = redaction  # the app's redaction per level, for the isolates' log lines
        self.principals = principals  # the app's principals and their capability ceilings
        self.levels = levels  # the app's classification levels ([ai] levels; None: the defaults)
        self.egress = egress  # the app's egress policy as plain data (runtime.egress.EgressPolicy.to_wire)
        self.root = root
        self.state_dir = state_dir
        self.version = version
        self.dev = dev
        self.secrets = secrets
        self.router = router  # the front: receives the messages isolates send (`on_isolate_message`) and their deaths (`on_event`)
        self.run_dir = state_dir / "run"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.slots: list[IsolateProcess | None] = [None] * script.pool_size
        self.ready: list[asyncio.Event] = [asyncio.Event() for _ in range(script.pool_size)]
        self.generation = 0
        self.closed = False
        self.restarts = 0
        self._rr = 0
        self.starting: set[IsolateProcess] = set()  # started, not yet in a slot: `stop` kills them
        self.active = active  # whether its version serves, see `set_active`

    def init_message(self, index: int) -> protocol.Init:
        return protocol.Init(
            script=self.script.model_dump(mode="json"),
            root=str(self.root),
            state_dir=str(self.state_dir),
            pool_index=index,
            pool_size=self.script.pool_size,
            dev=self.dev,
            secrets={k: v for k, v in self.secrets.items() if k in self.script.secrets},
            version=self.version,
            active=self.active,
            levels=self.levels,
            data_key=self.data_key,
            redaction=self.redaction,
            principals=self.principals,
            egress=self.egress,
            tracing=traces.isolate_settings(),
        )

    async def _spawn(self, index: int) -> IsolateProcess:
        self.generation += 1
        proc = IsolateProcess(self, index, self.generation)
        await self._start(proc)
        self.slots[index] = proc
        self.ready[index].set()
        return proc

    async def _start(self, proc: IsolateProcess) -> None:
        """Start `proc`; a pool stopped meanwhile gets no process installed after its stop."""
        self.starting.add(proc)
        try:
            init = self.init_message(proc.index)
            await proc.start(init)
            active = init.active
            while active != self.active and not self.closed:  # `set_active` ran meanwhile
                active = self.active
                try:
                    await proc.request(protocol.Activate(active=self.active).encode(), ACTIVATE_WAIT_S)
                except (IsolateDied, WallTimeExceeded) as e:
                    proc.kill()
                    raise LoadFailed(f"the isolate did not take its version's activation: {e}", "crashed") from None
        finally:
            self.starting.discard(proc)
        if self.closed:
            await proc.shutdown(1)
            raise LoadFailed(f"the pool of {self.script.name!r} was stopped while an isolate started", "stopped")

    async def set_active(self, active: bool) -> None:
        """Let this pool's isolates fire durable-object alarms (their version serves) or stop them.

        A deployment's pools start inactive (`Front.load`): while a version is probed, split or
        never promoted, the serving version's isolates stay the only owners of its objects.
        `Front.promote` deactivates the old version's pools (each isolate cancels its alarm
        tasks unfired; alarms stay stored) before it activates the new one's. Returns once every
        live isolate answered. One that is starting, or dies meanwhile, comes up with the pool's
        flag (an isolate respawned in an active pool starts active); one that does not answer
        within ACTIVATE_WAIT_S is killed, so it cannot go on firing alarms, and respawns so."""
        self.active = active
        procs = [p for p in self.slots if p is not None]
        results = await asyncio.gather(
            *(p.request(protocol.Activate(active=active).encode(), ACTIVATE_WAIT_S) for p in procs),
            return_exceptions=True)
        for p, r in zip(procs, results, strict=True):
            if isinstance(r, Exception) and not isinstance(r, IsolateDied):
                log("isolate_activate_failed", script=self.script.name, pid=p.pid, active=active, error=repr(r))
                p.kill()

    async def start(self) -> None:
        results = await asyncio.gather(
            *(self._spawn(i) for i in range(self.script.pool_size)), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.stop()
            raise errors[0]

    def on_isolate_message(self, proc: IsolateProcess) -> Callable[[dict[str, Any]], None]:
        def handle(raw: dict[str, Any]) -> None:
            try:
                msg = protocol.decode(raw)
            except protocol.ProtocolError as e:  # a broken isolate: answered, logged, never a crash here
                log("protocol_error", script=self.script.name, pid=proc.pid, error=str(e))
                mid = raw.get("id") if isinstance(raw, dict) else None
                if isinstance(mid, int) and proc.channel is not None and not proc.channel.closed:
                    proc.channel.reply(mid, protocol.error_reply(str(e)))
                return
            if isinstance(msg, protocol.Log):  # handler output the isolate captured and redacted
                if msg.record.get("event") == "handler_log":  # never a line posing as the runtime's
                    emit(msg.record)
            elif isinstance(msg, protocol.Recycle):
                asyncio.ensure_future(self.recycle(proc, msg.reason))
            else:
                self.router.on_isolate_message(self, proc, msg, raw.get("id"))

        return handle

    def on_death(self, proc: IsolateProcess, died: IsolateDied) -> None:
        if self.slots[proc.index] is not proc:
            return  # already replaced (recycled) or never installed
        self.slots[proc.index] = None
        self.ready[proc.index].clear()
        if self.closed or proc.stopping:
            return
        self.restarts += 1
        log("isolate_died", script=self.script.name, pid=proc.pid, reason=died.reason,
            exit_code=died.exit_code, request_id=died.request_id)
        self.router.on_event(self, {"kind": "isolate_died", "reason": died.reason, "pid": proc.pid,
                                    "exit_code": died.exit_code, "request_id": died.request_id})
        asyncio.ensure_future(self._respawn(proc.index))

    async def _respawn(self, index: int) -> None:
        delay = 0.05
        while not self.closed and self.slots[index] is None:
            try:
                await self._spawn(index)
                log("isolate_respawned", script=self.script.name, pid=self.slots[index].pid)  # type: ignore[union-attr]
                return
            except LoadFailed as e:
                log("isolate_respawn_failed", script=self.script.name, error=str(e))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def recycle(self, proc: IsolateProcess, reason: str) -> None:
        """Replace a process that asked to go (e.g. after a MemoryError), then drain it."""
        if self.slots[proc.index] is not proc or self.closed:
            return
        log("isolate_recycle", script=self.script.name, pid=proc.pid, reason=reason)
        proc.stopping = True
        new = IsolateProcess(self, proc.index, self.generation + 1)
        self.generation += 1
        try:
            await self._start(new)
        except LoadFailed:
            proc.stopping = False
            return
        self.slots[proc.index] = new
        await proc.shutdown()

    async def get(self, index: int) -> IsolateProcess:
        while True:
            proc = self.slots[index]
            if proc is not None:
                return proc
            if self.closed:
                raise IsolateDied("stopped", None, None, {})
            await self.ready[index].wait()

    async def pick(self) -> IsolateProcess:
        """The live process with the fewest requests in flight (round robin among equals)."""
        n = len(self.slots)
        if n == 1:
            return self.slots[0] or await self.get(0)
        self._rr = (self._rr + 1) % n
        best = None
        for k in range(n):
            p = self.slots[(self._rr + k) % n]
            if p is not None and (best is None or p.in_flight < best.in_flight):
                best = p
        return best or await self.get(self._rr)

    def pids(self) -> list[int]:
        return [p.pid for p in self.slots if p is not None and p.pid is not None]

    async def stop(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        self.closed = True
        for p in self.starting:
            p.stopping = True
            p.kill()
        procs = [p for p in self.slots if p is not None]
        await asyncio.gather(*(p.shutdown(grace_s) for p in procs))
        for e in self.ready:
            e.set()
