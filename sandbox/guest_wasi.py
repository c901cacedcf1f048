"""WASI command guests: JSON on stdin, JSON on stdout.

The module is a WASI preview-1 command exporting `_start`. stdin holds the input as UTF-8
JSON (from a private temporary file removed after the call), stdout must hold exactly one JSON
document (the result), stderr is kept (its last `stderr_bytes`) for error details. argv is
`[tool name]`, the environment is empty, and no directory is visible unless the tool declares
a preopen and the call's token grants it (`fs.read:` / `fs.write:`, see `sandbox.spec.Preopen`):
then it is mounted read-only, or writable when granted writable (wasmtime-py 50
exposes this as `preopen_dir(..., fs_mutable=...)`, which defaults to writable, so the flag is
always passed explicitly). Exit status 0 (or returning from `_start`) is success; any other
status is `guest_error` with the stderr tail. Output beyond `output_bytes` is not stored, the
guest's write fails with EIO, and the call ends with `output_limit`.

Output callbacks and process exit: wasmtime releases a WASI output callback from one of its own
runtime threads, shortly (tens of microseconds) after the Store is closed. If that happens
after the interpreter has begun to finalize, the thread cannot take the GIL, is unwound
through Rust frames that forbid it, and the whole process aborts. Each callback handed to
wasmtime therefore counts itself as held until wasmtime drops it, and an `atexit` hook waits
(at most 2 s) until none is held before the interpreter finalizes. The object handed over is
a `_Held` wrapper that only wasmtime references (the call keeps the stream inside it), so its
`__del__` runs exactly when wasmtime drops it: when the stream itself was counted, a failed
call's traceback (a trap, kept alive in a reference cycle by wasmtime-py until the garbage
collector runs) still held it, and `edgeworks tool run` waited the full 2 s at exit.
"""

from __future__ import annotations

import atexit
import errno
import os
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import wasmtime

from .errors import ErrorCode, ToolError
from .guest_call import GuestCall
from .guest_core import read_json_output
from .runner import MemoryProbe
from .spec import Preopen

__all__ = ["CappedStream", "TailStream", "call_wasi", "configure_preopens", "run_command"]


class _Releases:
    """Counts output callbacks wasmtime still holds; `wait` blocks until none are left."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._held = 0

    def acquire(self) -> None:
        with self._cond:
            self._held += 1

    def release(self) -> None:
        with self._cond:
            self._held -= 1
            if self._held == 0:
                self._cond.notify_all()

    def wait(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._held == 0, timeout)


_releases = _Releases()


@atexit.register
def _wait_for_released_streams() -> None:
    _releases.wait(2.0)


class _Held:
    """The callback given to wasmtime for `stream`; counted as held until wasmtime drops it."""

    __slots__ = ("stream",)

    def __init__(self, stream: CappedStream | TailStream):
        self.stream = stream
        _releases.acquire()

    def __del__(self) -> None:  # only wasmtime references it: runs when wasmtime drops it
        _releases.release()

    def __call__(self, data: bytes) -> int:
        return self.stream(data)


class CappedStream:
    """A WASI output callback that keeps at most `cap` bytes and remembers overflowing."""

    __slots__ = ("cap", "parts", "size", "overflowed")

    def __init__(self, cap: int):
        self.cap = cap
        self.parts: list[bytes] = []
        self.size = 0
        self.overflowed = False

    def __call__(self, data: bytes) -> int:
        if self.overflowed or self.size + len(data) > self.cap:
            self.overflowed = True
            return -errno.EIO
        self.parts.append(bytes(data))
        self.size += len(data)
        return len(data)

    def value(self) -> bytes:
        return b"".join(self.parts)


class TailStream:
    """A WASI output callback that accepts everything and keeps the last `cap` bytes."""

    __slots__ = ("cap", "buffer")

    def __init__(self, cap: int):
        self.cap = cap
        self.buffer = bytearray()

    def __call__(self, data: bytes) -> int:
        self.buffer += data
        if len(self.buffer) > 2 * self.cap:
            del self.buffer[: len(self.buffer) - self.cap]
        return len(data)

    def value(self) -> bytes:
        return bytes(self.buffer[-self.cap :])


def configure_preopens(wasi: wasmtime.WasiConfig, preopens: Iterable[Preopen], app_dir: Path) -> None:
    for p in preopens:
        host = (app_dir / p.host_path).resolve()
        if not host.is_dir():
            raise ToolError(ErrorCode.BAD_INPUT, f"preopen {p.host_path!r} is not a directory")
        wasi.preopen_dir(str(host), p.guest_path, fs_mutable=p.writable)


def run_command(
    store: wasmtime.Store, probe: MemoryProbe, call: GuestCall, argv: list[str], input_bytes: bytes
) -> tuple[int, bytes, bytes]:
    """Run `_start`; returns (exit status, stdout, stderr). Raises on output overflow."""
    ctx = call.ctx
    stdout = CappedStream(call.limits.output_bytes)
    stderr = TailStream(call.stderr_bytes)
    wasi = wasmtime.WasiConfig()
    wasi.argv = argv
    wasi.env = []
    wasi.stdout_custom = _Held(stdout)
    wasi.stderr_custom = _Held(stderr)
    stdin_path: str | None = None
    if input_bytes:
        fd, stdin_path = tempfile.mkstemp(dir=call.tmp_dir, prefix="stdin-")
        with os.fdopen(fd, "wb") as f:
            f.write(input_bytes)
        wasi.stdin_file = stdin_path
    status = 0
    try:
        configure_preopens(wasi, call.preopens, call.app_dir)
        store.set_wasi(wasi)
        instance = call.pre.instantiate(store)
        probe.instance = instance
        exports = instance.exports(store)
        memory = exports.get("memory")
        if isinstance(memory, wasmtime.Memory):
            probe.memory = memory
        start = exports.get("_start")
        if not isinstance(start, wasmtime.Func):
            raise ToolError(ErrorCode.BAD_OUTPUT, "WASI module does not export `_start`")
        try:
            start(store)
        except wasmtime.ExitTrap as e:
            status = e.code
    finally:
        if stdin_path is not None:
            os.unlink(stdin_path)
        if stdout.overflowed and ctx.abort is None:
            ctx.abort = ToolError(
                ErrorCode.OUTPUT_LIMIT,
                f"output exceeds the {call.limits.output_bytes}-byte limit",
                {"output_bytes": call.limits.output_bytes},
            )
    if ctx.abort is not None:
        raise ctx.abort
    return status, stdout.value(), stderr.value()


def call_wasi(
    store: wasmtime.Store, probe: MemoryProbe, call: GuestCall, argv: list[str], input_bytes: bytes
) -> Any:
    status, out, err = run_command(store, probe, call, argv, input_bytes)
    if status != 0:
        raise ToolError(
            ErrorCode.GUEST_ERROR,
            f"guest exited with status {status}",
            {"status": status, "stderr": err[-2000:].decode("utf-8", "replace")},
        )
    return read_json_output(out)
