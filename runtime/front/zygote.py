"""The zygote: a process that has imported the isolate code once and forks new isolates from it.

Starting an isolate with `python -m runtime.isolate.main` costs a few hundred milliseconds of imports
(pydantic, wasmtime, cryptography, the runtime itself); a fork of a process that already holds
them costs a few milliseconds. That matters whenever an isolate has to be replaced: after a crash
or a limit kill, on reload and deploy.

Rules that keep fork safe: the zygote imports modules but starts no thread and no event loop, so
the child starts from a single-threaded state; the handler script is imported only in the child,
after the fork, so every child sees the current code of the app. Imports of the runtime itself
are those of the zygote's start (they change only with an upgrade of edgeworks, which restarts).

Protocol on the control socket (AF_UNIX, SOCK_SEQPACKET: one msgpack map per record):
- front -> zygote: `{"note": path}` with the child's end of its IPC socketpair attached
  (SCM_RIGHTS); the zygote forks, the child runs `runtime.isolate.main.run(fd, note)`.
- zygote -> front: `{"pid": pid}` for each spawn, in request order; `{"exited": pid, "code": n}`
  when a child ends (n < 0: killed by signal -n), like `Popen.returncode`.
The zygote dies with the front (PR_SET_PDEATHSIG), and its children die with it.
"""

from __future__ import annotations

import array
import asyncio
import os
import select
import signal
import socket
import sys
from typing import Any

import msgpack

__all__ = ["ForkedProcess", "Zygote"]

_MAX_RECORD = 64 * 1024


def _recv(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    fds = array.array("i")
    data, ancdata, _flags, _addr = sock.recvmsg(_MAX_RECORD, socket.CMSG_SPACE(fds.itemsize))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
    return (msgpack.unpackb(data) if data else {}), list(fds)


class ForkedProcess:
    """A forked isolate as the supervisor sees it: the subset of asyncio's Process it uses."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None
        self._exited = asyncio.get_running_loop().create_future()

    def _set_exit(self, code: int) -> None:
        self.returncode = code
        if not self._exited.done():
            self._exited.set_result(code)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def kill(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class Zygote:
    """Front side: start the zygote, ask it for isolates, learn when they exit."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.sock: socket.socket | None = None
        self.children: dict[int, ForkedProcess] = {}
        self._waiting: list[asyncio.Future[int]] = []
        self._lock = asyncio.Lock()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None and self.sock is not None

    async def start(self) -> None:
        from runtime.front.supervisor import isolate_environ  # the front's side only

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "runtime.front.zygote", str(theirs.fileno()),
                pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL, env=isolate_environ())
        finally:
            theirs.close()
        ours.setblocking(False)
        self.sock = ours
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        self._waiting.append(ready)
        loop.add_reader(ours.fileno(), self._readable)
        await asyncio.wait_for(ready, 60)  # the zygote says {"pid": its own} when imported

    def _readable(self) -> None:
        assert self.sock is not None
        try:
            msg, _ = _recv(self.sock)
        except BlockingIOError:
            return
        except OSError:
            msg = {}
        if not msg:  # the zygote is gone: callers fall back to spawning
            self._close()
            return
        if "exited" in msg:
            child = self.children.pop(msg["exited"], None)
            if child is not None:
                child._set_exit(msg["code"])
        elif "pid" in msg and self._waiting:
            fut = self._waiting.pop(0)
            if not fut.done():
                fut.set_result(msg["pid"])

    def _close(self) -> None:
        if self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        for fut in self._waiting:
            if not fut.done():
                fut.set_exception(ConnectionError("zygote exited"))
        self._waiting.clear()
        for child in self.children.values():  # their parent is gone, and so are they
            child._set_exit(-signal.SIGKILL)
        self.children.clear()

    async def spawn(self, fd: int, note_path: str) -> ForkedProcess:
        async with self._lock:  # replies come in request order
            if not self.alive:
                raise ConnectionError("zygote is not running")
            assert self.sock is not None
            fut = asyncio.get_running_loop().create_future()
            self._waiting.append(fut)
            self.sock.sendmsg([msgpack.packb({"note": note_path})],
                              [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
            pid = await asyncio.wait_for(fut, 30)
        child = ForkedProcess(pid)
        self.children[pid] = child
        return child

    async def stop(self) -> None:
        if self.sock is not None:
            self._close()
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


def _serve(ctrl: socket.socket) -> None:
    from runtime.isolate.main import run

    # SIGCHLD wakes the loop through this pipe, so a child's exit is reported at once.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    ctrl.sendmsg([msgpack.packb({"pid": os.getpid()})])
    while True:
        watched: list[socket.socket | int] = [ctrl, wake_r]
        readable, _, _ = select.select(watched, [], [], 1.0)
        if wake_r in readable:
            while True:
                try:
                    if not os.read(wake_r, 512):
                        break
                except BlockingIOError:
                    break
        if ctrl in readable:
            msg, fds = _recv(ctrl)
            if not msg:
                os._exit(0)  # the front closed the control socket
            pid = os.fork()
            if pid == 0:
                ctrl.close()
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                os.close(wake_r)
                os.close(wake_w)
                try:
                    run(fds[0], msg["note"])
                finally:
                    os._exit(1)
            for fd in fds:
                os.close(fd)
            ctrl.sendmsg([msgpack.packb({"pid": pid})])
        while True:  # reap every child that ended
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            ctrl.sendmsg([msgpack.packb({"exited": pid, "code": os.waitstatus_to_exitcode(status)})])


def main() -> None:
    from runtime.isolate import main as isolate

    isolate._die_with_parent()  # noqa: SLF001 - the zygote follows the front the same way
    ctrl = socket.socket(fileno=int(sys.argv[1]))
    try:
        _serve(ctrl)
    except ConnectionError:  # the front went away (it exits at once when a start-up fails)
        os._exit(0)


if __name__ == "__main__":
    main()
