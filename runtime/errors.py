"""The JSON error body every failure on the request path uses, on both sides of the IPC."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["LoadError", "error_body", "error_json"]

# Cloudflare-style numeric codes beside our names: 1101 = the script threw, 1102 = resource limit.
CF_CODES = {"exception": 1101, "cpu_limit": 1102, "memory_limit": 1102, "wall_limit": 1102,
            "subrequest_limit": 1102, "binding_ops_limit": 1102}


def error_body(code: str, message: str, request_id: str, **extra: Any) -> dict[str, Any]:
    body = {"error": code, "message": message, "request_id": request_id, **extra}
    if code in CF_CODES:
        body.setdefault("cf_code", CF_CODES[code])
    return body


def error_json(code: str, message: str, request_id: str, **extra: Any) -> bytes:
    return json.dumps(error_body(code, message, request_id, **extra)).encode()


class LoadError(Exception):
    """A script version cannot serve (raised while an isolate loads it: importing the module,
    building env); `cause` is what the front reports (see `runtime.front.supervisor.LoadFailed`)."""

    def __init__(self, message: str, cause: str = "load_error"):
        super().__init__(message)
        self.cause = cause
