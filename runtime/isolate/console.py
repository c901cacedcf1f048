"""Handler logs: what code in an isolate prints, logs or writes to `console`, as `handler_log`
records attributed to the request that wrote it (as Cloudflare's tail shows ``console.log``).

Exact semantics:

- **What is captured.** Writes to ``sys.stdout`` (severity ``log``) and ``sys.stderr``
  (``error``), records of Python's `logging` from any logger but the runtime's own and its
  libraries' (severity from the record's level: ``debug info warn error``; the root logger is
  set to DEBUG so a handler's ``logging.info`` is not dropped), and calls of `console`
  (``from workers import console``: ``log info warn error debug``, one record per call). Both
  streams are replaced, per process, by `HandlerOutput` objects (`install`); file descriptors
  1 and 2 are left alone, so C-level writes (a crashing extension, ``faulthandler``) still go
  to the server's stderr, unattributed.
- **Attribution.** A line belongs to the `RequestScope` current in the context that wrote it
  (the contextvar follows a request into every task and ``to_thread`` call it starts). Partial
  lines are buffered per scope and per stream, so a partial line of request A is never joined
  with the text of request B; tasks of one request share its buffer. A scope's partial lines
  are written out when its request, object call or workflow step attempt ends (`flush`).
  Output outside any scope (module import, a task started without one) has no request id.
- **Bounds.** Per scope at most `MAX_LINES` lines and `MAX_BYTES` bytes of messages, then one
  record with ``truncated: true`` and nothing more; a line longer than `MAX_LINE_CHARS` is cut
  and says how much was cut. Lines without a request id get the same budget per minute.
- **Redaction.** Records are built by `runtime.logs.record`, so they are redacted as data of the
  scope's classification level (the app's policy; the app's secret values are always masked).
- **Cost.** A scope that writes nothing costs nothing: its buffer is created on its first write.
- **Where records go.** To the sink `install` was given (the isolate sends them to the front,
  which writes them to its stderr and to `edgeworks tail`); writes from other threads are
  handed to the event loop first.
"""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from objects.actor import CURRENT_OBJECT
from objects.workflows.step import CURRENT_STEP
from runtime.isolate.context import RequestScope, current, in_scope
from runtime.logs import LogHandler, emit, record

__all__ = ["MAX_BYTES", "MAX_LINES", "MAX_LINE_CHARS", "Console", "HandlerOutput", "ScopeLog", "console",
           "flush", "install", "loading"]

MAX_LINES = 1000
MAX_BYTES = 256 * 1024
MAX_LINE_CHARS = 8192
_WINDOW_S = 60.0  # the budget of lines without a request id renews this often

# Loggers that are the runtime's own or its libraries': their records stay `python_log` lines.
_RUNTIME_LOGGERS = ("runtime", "objects", "sandbox", "asyncio", "httpx", "httpcore", "hpack", "h11", "h2",
                    "uvicorn", "urllib3", "wasmtime", "opentelemetry", "prometheus_client", "concurrent")
_SEVERITY = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warn", logging.ERROR: "error",
             logging.CRITICAL: "error"}

Sink = Callable[[dict[str, Any]], None]
_sink: Sink = emit
_script = ""
_loading = False
_loop: asyncio.AbstractEventLoop | None = None
_loop_thread = 0


class ScopeLog:
    """The handler output of one scope: its partial lines per stream and its use of the bounds."""

    __slots__ = ("bytes", "lines", "partial", "truncated", "window")

    def __init__(self) -> None:
        self.partial: dict[str, str] = {}
        self.lines = 0
        self.bytes = 0
        self.truncated = False
        self.window = time.monotonic()

    def flush(self, scope: RequestScope) -> None:
        """Write out the partial lines (their request, object call or step attempt ended)."""
        if self.partial:
            partial, self.partial = self.partial, {}
            for stream, text in partial.items():
                _line(scope, self, "error" if stream == "stderr" else "log", stream, text)

    def admit(self, scope: RequestScope, size: int) -> bool:
        """Whether one more line of `size` bytes fits; the first one that does not is replaced
        by the `truncated` marker."""
        if not scope.request_id and self.truncated and time.monotonic() - self.window >= _WINDOW_S:
            self.lines = self.bytes = 0
            self.truncated = False
            self.window = time.monotonic()
        if self.truncated:
            return False
        if self.lines < MAX_LINES and self.bytes + size <= MAX_BYTES:
            self.lines += 1
            self.bytes += size
            return True
        self.truncated = True
        _emit(scope, "warn", "runtime", f"handler output truncated: over {MAX_LINES} lines or {MAX_BYTES} bytes"
              + (" for this request" if scope.request_id else " this minute"), truncated=True)
        return False


def _scope_log(scope: RequestScope) -> ScopeLog:
    out = scope.output
    if out is None:
        out = scope.output = ScopeLog()
    return out


def _source() -> dict[str, Any]:
    """Which code wrote: a workflow step, an object, a request's handler, module import."""
    step = CURRENT_STEP.get()
    if step is not None:
        return {"source": "step", "workflow": step.workflow_class, "instance": step.instance, "step": step.step}
    obj = CURRENT_OBJECT.get()
    if obj is not None:
        return {"source": "object", "object": obj.class_name}
    if not in_scope():
        return {"source": "import" if _loading else "background"}
    scope = current()
    return {"source": "fetch", "route": scope.route} if scope.route is not None else {"source": "handler"}


def _emit(scope: RequestScope, severity: str, stream: str, message: str, **extra: Any) -> None:
    fields: dict[str, Any] = {"request_id": scope.request_id or None, "script": scope.script or _script,
                              "severity": severity, "stream": stream, **_source(), **extra, "message": message}
    if in_scope():
        fields["classification"] = scope.level
    _sink(record("handler_log", **fields))


def _cut(text: str) -> str:
    if len(text) <= MAX_LINE_CHARS:
        return text
    return f"{text[:MAX_LINE_CHARS]}… [{len(text) - MAX_LINE_CHARS} more characters]"


def _line(scope: RequestScope, out: ScopeLog, severity: str, stream: str, text: str, **extra: Any) -> None:
    text = _cut(text)
    if out.admit(scope, len(text)):
        _emit(scope, severity, stream, text, **extra)


def _write(scope: RequestScope, severity: str, stream: str, text: str) -> None:
    out = _scope_log(scope)
    if out.truncated and scope.request_id:
        return
    if "\n" not in text:
        kept = out.partial.get(stream, "")
        if len(kept) <= MAX_LINE_CHARS:  # beyond that the line is cut anyway
            out.partial[stream] = kept + text
        return
    *lines, rest = (out.partial.pop(stream, "") + text).split("\n")
    for line in lines:
        _line(scope, out, severity, stream, line)
    if rest:
        out.partial[stream] = rest


def flush(scope: RequestScope) -> None:
    """Write out the scope's partial lines (its request, object call or step attempt ended)."""
    if scope.output is not None:
        scope.output.flush(scope)


def _capture(severity: str, stream: str, text: str) -> None:
    scope = current()
    if _loop is not None and threading.get_ident() != _loop_thread:
        _loop.call_soon_threadsafe(_write, scope, severity, stream, text)
    else:
        _write(scope, severity, stream, text)


class HandlerOutput(io.TextIOBase):
    """What ``sys.stdout`` / ``sys.stderr`` are in an isolate: text written goes to the writing
    request's handler log."""

    def __init__(self, stream: str, severity: str, original: TextIO):
        super().__init__()
        self._stream, self._severity, self._original = stream, severity, original

    @property
    def name(self) -> str:
        return f"<{self._stream}>"

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        """The original stream's descriptor (for code that asks); bytes written there are not
        captured."""
        return self._original.fileno()

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        if s:
            _capture(self._severity, self._stream, s)
        return len(s)

    def flush(self) -> None:
        """Lines are written when complete; partial ones when the request ends."""

    @property
    def buffer(self) -> _BinaryOutput:
        """Bytes written here are captured as UTF-8 text (code that writes to ``sys.stdout.buffer``)."""
        return _BinaryOutput(self)


class _BinaryOutput(io.RawIOBase):
    def __init__(self, text: HandlerOutput):
        super().__init__()
        self._text = text

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self._text.write(data.decode("utf-8", "replace"))
        return len(data)


class _HandlerLogging(LogHandler):
    """The root logger's handler in an isolate: an app's records are handler logs, the runtime's
    own stay `python_log` lines."""

    def emit(self, rec: logging.LogRecord) -> None:
        if rec.name.split(".", 1)[0] in _RUNTIME_LOGGERS:
            return super().emit(rec)
        try:
            message = rec.getMessage()
            if rec.exc_info:
                message += "\n" + logging.Formatter().formatException(rec.exc_info)
            scope = current()
            _line(scope, _scope_log(scope), _SEVERITY.get(rec.levelno, "log"), "logging", message, logger=rec.name)
        except Exception:  # a broken record must not break the caller
            self.handleError(rec)


class Console:
    """``console`` as in JavaScript: each call is one handler log record of its severity."""

    def _call(self, severity: str, args: tuple[Any, ...]) -> None:
        scope = current()
        _line(scope, _scope_log(scope), severity, "console", " ".join(map(str, args)))

    def log(self, *args: Any) -> None:
        self._call("log", args)

    def info(self, *args: Any) -> None:
        self._call("info", args)

    def warn(self, *args: Any) -> None:
        self._call("warn", args)

    def error(self, *args: Any) -> None:
        self._call("error", args)

    def debug(self, *args: Any) -> None:
        self._call("debug", args)


console = Console()


def install(sink: Sink, script: str) -> TextIO:
    """Capture this process's handler output from now on, records going to `sink`; returns the
    original stderr (for the runtime's own log lines)."""
    global _sink, _script, _loop, _loop_thread
    _sink, _script = sink, script
    _loop, _loop_thread = asyncio.get_running_loop(), threading.get_ident()
    original_err = _original(sys.stderr)
    sys.stdout = HandlerOutput("stdout", "log", _original(sys.stdout))
    sys.stderr = HandlerOutput("stderr", "error", original_err)
    root = logging.getLogger()
    for h in [h for h in root.handlers if type(h) is LogHandler]:
        root.removeHandler(h)
    root.addHandler(_HandlerLogging())
    root.setLevel(logging.DEBUG)
    for name in _RUNTIME_LOGGERS:  # what they would have shown with the default root level
        lg = logging.getLogger(name)
        if lg.level == logging.NOTSET:
            lg.setLevel(logging.WARNING)
    return original_err


def _original(stream: TextIO) -> TextIO:
    return stream._original if isinstance(stream, HandlerOutput) else stream


def loading(on: bool) -> None:
    """Whether the script's module is being imported (output without a scope is its import's)."""
    global _loading
    _loading = on
