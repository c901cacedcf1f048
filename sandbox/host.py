"""Capability-scoped host functions and the per-call context they run in.

Host functions, by name, with the capability each needs (payloads and results are JSON):

| name           | capability          | payload                                   | value |
|----------------|---------------------|-------------------------------------------|-------|
| `log`          | `log`               | `{"message": str, "level"?: str}`         | `null` |
| `clock.now`    | `clock`             | `{}`                                      | `{"now": float seconds}` |
| `random.bytes` | `random`            | `{"n": int <= 1024}`                      | hex string |
| `kv.get`       | `kv.read:<prefix>`  | `{"key": str}`                            | value or `null` |
| `kv.list`      | `kv.read:<prefix>`  | `{"prefix": str, "limit"?: int <= 1000}`  | list of keys |
| `kv.put`       | `kv.write:<prefix>` | `{"key": str, "value": JSON}`             | `null` |
| `kv.delete`    | `kv.write:<prefix>` | `{"key": str}`                            | bool (existed) |
| `http.fetch`   | `http.fetch:<host>` | `{"url", "method"?, "headers"?, "body"?}` | `{"status", "headers", "body"}` |

A call is answered only when both the call's token and the tool's declared capabilities allow
it. Every answer is `{"ok": true, "value": ...}` or
`{"ok": false, "error": {"code": ..., "message": ..., "capability"?: ...}}`; a denial has code
`capability_denied`, names the capability that would be needed, is recorded in the context
(`denied`) and audited at once as a `sandbox.denied` entry.

`http.fetch` checks the URL against the grant *before* any connection is made, then hands the
request to the injected `HttpFetch` (`Sandbox(http=...)`): in the runtime, its egress client,
which checks the app's ``[egress]`` rules on the URL and on the address it connects to and
answers `egress_denied` when they refuse. Without one (the sandbox on its own), httpx sends it
directly. Either way no proxy/environment configuration is used, no redirect is followed (a
redirect answer is returned as is), and response size and time are capped (the smaller of the
configured timeout and what is left of the call's wall-clock budget).

Host functions never raise into wasmtime (wasmtime-py hands a raised exception over through a
process-wide slot that concurrent calls would race on). A violation that must stop the guest
(too many host calls) is recorded in `abort` and the guest's fuel is set to zero through the
`Caller`, so it traps at its next instruction; the caller reports `abort` instead of the trap.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .capabilities import CapabilitySet
from .errors import ErrorCode, ToolError
from .kv import SandboxKV
from .limits import Limits
from .spec import SandboxConfig
from .types import AuditHook, Clock, HttpCall, HttpFetch

__all__ = ["HOST_FUNCTIONS", "HostContext", "direct_fetch", "dispatch"]

# host function name -> capability kind that must be present to link/answer it
HOST_FUNCTIONS: dict[str, str] = {
    "log": "log",
    "clock.now": "clock",
    "random.bytes": "random",
    "kv.get": "kv.read",
    "kv.list": "kv.read",
    "kv.put": "kv.write",
    "kv.delete": "kv.write",
    "http.fetch": "http.fetch",
}


@dataclass
class HostContext:
    tool: str
    request_id: str
    tenant: str | None
    jti: str
    issuer: str
    token_caps: CapabilitySet
    tool_caps: CapabilitySet
    limits: Limits
    config: SandboxConfig
    kv: SandboxKV
    audit: AuditHook
    clock: Clock
    deadline: float  # time.monotonic() value after which host waits are cut short
    host_calls: int = 0
    used: list[str] = field(default_factory=list)
    denied: list[str] = field(default_factory=list)
    logs: list[dict[str, Any]] = field(default_factory=list)
    abort: ToolError | None = None
    # MicroPython guests: answers `host.call` (reserved names first, then `dispatch`)
    bridge: Callable[[str, bytes], dict[str, Any] | bytes] | None = None
    http: HttpFetch | None = None  # sends an allowed http.fetch (None: `direct_fetch`)

    def allows_kind(self, kind: str) -> bool:
        return self.token_caps.has_kind(kind) and self.tool_caps.has_kind(kind)

    def deny(self, capability: str, function: str) -> dict[str, Any]:
        self.denied.append(capability)
        self.audit(
            "sandbox.denied",
            {
                "request_id": self.request_id,
                "tool": self.tool,
                "jti": self.jti,
                "issuer": self.issuer,
                "tenant": self.tenant,
                "function": function,
                "capability": capability,
            },
        )
        return _error(
            ErrorCode.CAPABILITY_DENIED,
            f"{function} needs capability {capability!r}, which this call was not granted",
            capability=capability,
        )

    def use(self, capability: str) -> None:
        if capability not in self.used:
            self.used.append(capability)


def dispatch(ctx: HostContext, name: str, payload: Any) -> dict[str, Any]:
    """Answer one host call. Never raises."""
    try:
        ctx.host_calls += 1
        if ctx.host_calls > ctx.limits.host_calls:
            if ctx.abort is None:
                ctx.abort = ToolError(
                    ErrorCode.HOST_CALL_LIMIT,
                    f"more than {ctx.limits.host_calls} host calls",
                    {"limit": ctx.limits.host_calls},
                )
            return _error(ErrorCode.HOST_CALL_LIMIT, "host call limit reached")
        kind = HOST_FUNCTIONS.get(name)
        if kind is None:
            return _error(ErrorCode.BAD_INPUT, f"no host function {name!r}")
        if not isinstance(payload, dict):
            payload = {} if payload is None else {"value": payload}
        return _HANDLERS[name](ctx, payload)
    except ToolError as e:
        return _error(e.code, e.message)
    except Exception as e:  # a host bug must not escape into wasmtime
        return _error(ErrorCode.TRAP, f"host function {name} failed: {type(e).__name__}: {e}")


def _ok(value: Any) -> dict[str, Any]:
    return {"ok": True, "value": value}


def _error(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"ok": False, "error": {"code": str(code), "message": message, **extra}}


def _simple(ctx: HostContext, cap: str, name: str) -> dict[str, Any] | None:
    if not (ctx.token_caps.has_kind(cap) and ctx.tool_caps.has_kind(cap)):
        return ctx.deny(cap, name)
    ctx.use(cap)
    return None


def _log(ctx: HostContext, p: dict[str, Any]) -> dict[str, Any]:
    if (denied := _simple(ctx, "log", "log")) is not None:
        return denied
    message = str(p.get("message", ""))[: ctx.config.log_max_bytes]
    entry = {"level": str(p.get("level", "info"))[:16], "message": message}
    if len(ctx.logs) < 100:
        ctx.logs.append(entry)
    ctx.audit("sandbox.log", {"request_id": ctx.request_id, "tool": ctx.tool, **entry})
    return _ok(None)


def _clock_now(ctx: HostContext, p: dict[str, Any]) -> dict[str, Any]:
    if (denied := _simple(ctx, "clock", "clock.now")) is not None:
        return denied
    return _ok({"now": ctx.clock()})


def _random_bytes(ctx: HostContext, p: dict[str, Any]) -> dict[str, Any]:
    if (denied := _simple(ctx, "random", "random.bytes")) is not None:
        return denied
    n = p.get("n", 16)
    if not isinstance(n, int) or not 0 < n <= 1024:
        return _error(ErrorCode.BAD_INPUT, "n must be an integer in 1..1024")
    return _ok(os.urandom(n).hex())


def _key(p: dict[str, Any], field_name: str = "key") -> str:
    key = p.get(field_name)
    if not isinstance(key, str) or not key or len(key) > 512:
        raise ToolError(ErrorCode.BAD_INPUT, f"{field_name} must be a non-empty string (<= 512)")
    return key


def _kv_check(ctx: HostContext, kind: str, key: str, fn: str) -> dict[str, Any] | None:
    cap = f"{kind}:{key}"
    if not (ctx.token_caps.allows_key(kind, key) and ctx.tool_caps.allows_key(kind, key)):
        return ctx.deny(cap, fn)
    ctx.use(cap)
    return None


def _tenant(ctx: HostContext) -> str:
    return ctx.tenant or ""


def _kv_get(ctx: HostContext, p: dict[str, Any]) -> dict[str, Any]:
    key = _key(p)
    if (denied := _kv_check(ctx, "kv.read", key, "kv.get")) is not None:
        return denied
    return _ok(ctx.kv.get(_tenant(ctx), key))


def _kv_list(ctx: HostContext, p: dict[str, Any]) -> dict[str, Any]:
    prefix = _key(p, "prefix")
    limit = p.get("limit", 100)
    if not isinstance(limit, int) or not 0 < limit <= 1000:
        return _error(ErrorCode.BAD_INPUT, "limit must be an integer in 1..1000")
    if (denied := _kv_check(ctx, "kv.read", prefix, "kv.list")) is not None:
        return denied
    return _ok(ctx.kv.list(_tenant(ctx), prefix, limit))


def _kv_put(ctx: HostContext, p: dict[str, Any]) -> dict[str, Any]:
    key = _key(p)
    if (denied := _kv_check(ctx, "kv.write", key, "kv.put")) is not None:
        return denied
    value = json.dumps(p.get("value"), separators=(",", ":"))
    if len(value) > ctx.config.kv_max_value_bytes:
        return _error(ErrorCode.BAD_INPUT, f"value exceeds {ctx.config.kv_max_value_bytes} bytes")
    ctx.kv.put(_tenant(ctx), key, value)
    return _ok(None)


def _kv_delete(ctx: HostContext, p: dict[str, Any]) -> dict[str, Any]:
    key = _key(p)
    if (denied := _kv_check(ctx, "kv.write", key, "kv.delete")) is not None:
        return denied
    return _ok(ctx.kv.delete(_tenant(ctx), key))


def _http_fetch(ctx: HostContext, p: dict[str, Any]) -> dict[str, Any]:
    url = p.get("url")
    if not isinstance(url, str):
        return _error(ErrorCode.BAD_INPUT, "url must be a string")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        return _error(ErrorCode.BAD_INPUT, "bad port in url")
    host = (parts.hostname or "").lower()
    if scheme not in ("http", "https") or not host or parts.username or parts.password:
        return _error(ErrorCode.BAD_INPUT, "url must be http(s)://host[:port]/... without userinfo")
    port = port or (443 if scheme == "https" else 80)
    hostport = host if ":" not in host else f"[{host}]"
    cap = f"http.fetch:{hostport}:{port}"
    if not (ctx.token_caps.allows_host(host, port, scheme) and ctx.tool_caps.allows_host(host, port, scheme)):
        return ctx.deny(cap, "http.fetch")
    ctx.use(cap)
    method = str(p.get("method", "GET")).upper()
    if method not in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
        return _error(ErrorCode.BAD_INPUT, f"method {method} not allowed")
    headers = p.get("headers") or {}
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        return _error(ErrorCode.BAD_INPUT, "headers must map strings to strings")
    body = p.get("body")
    if body is not None and not isinstance(body, str):
        body = json.dumps(body)
    content = body.encode() if body is not None else None
    if content is not None and len(content) > ctx.config.http_max_request_bytes:
        return _error(ErrorCode.BAD_INPUT, "request body too large")
    remaining = ctx.deadline - time.monotonic()
    if remaining <= 0:
        return _error(ErrorCode.TIMEOUT, "no wall-clock budget left for http.fetch")
    timeout = min(ctx.config.http_timeout_s, remaining)
    call = HttpCall(method=method, url=url, headers=headers, body=content, timeout_s=timeout,
                    max_bytes=ctx.config.http_max_response_bytes, request_id=ctx.request_id, tool=ctx.tool)
    try:
        return _ok((ctx.http or direct_fetch)(call))
    except ToolError as e:
        return _error(e.code, e.message, **e.details)


def direct_fetch(call: HttpCall) -> dict[str, Any]:
    """Send `call` with httpx, no redirects followed, the answer capped at `call.max_bytes`."""
    import httpx  # imported on first use: it costs ~100 ms at process start

    deadline = time.monotonic() + call.timeout_s
    try:
        with httpx.Client(timeout=call.timeout_s, follow_redirects=False, trust_env=False) as client:
            with client.stream(call.method, call.url, headers=call.headers, content=call.body) as resp:
                chunks: list[bytes] = []
                size = 0
                for chunk in resp.iter_bytes():
                    size += len(chunk)
                    if size > call.max_bytes:
                        raise ToolError(ErrorCode.OUTPUT_LIMIT, f"response larger than {call.max_bytes} bytes")
                    if time.monotonic() > deadline:
                        raise ToolError(ErrorCode.TIMEOUT, "http.fetch ran past the call deadline")
                    chunks.append(chunk)
                return {"status": resp.status_code, "headers": dict(resp.headers),
                        "body": b"".join(chunks).decode("utf-8", "replace")}
    except httpx.TimeoutException:
        raise ToolError(ErrorCode.TIMEOUT, "http.fetch timed out") from None
    except httpx.HTTPError as e:
        raise ToolError(ErrorCode.HTTP_ERROR, f"{type(e).__name__}: {e}") from None


_HANDLERS = {
    "log": _log,
    "clock.now": _clock_now,
    "random.bytes": _random_bytes,
    "kv.get": _kv_get,
    "kv.list": _kv_list,
    "kv.put": _kv_put,
    "kv.delete": _kv_delete,
    "http.fetch": _http_fetch,
}
