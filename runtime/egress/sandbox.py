"""The sandbox's `http.fetch` through the egress client: the `HttpFetch` the runtime injects into
`sandbox.Sandbox` (the sandbox keeps its own capability check first and imports no runtime
code). Not re-exported by `runtime.egress`, so processes that never run tools do not load the
sandbox."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from runtime.egress.client import EgressClient
from runtime.egress.errors import EgressDenied, EgressError, EgressTimeout, ResponseTooLarge
from sandbox import ErrorCode, HttpCall, HttpFetch, ToolError

__all__ = ["sandbox_http"]


def sandbox_http(client: EgressClient, caller: Callable[[], tuple[str, str]]) -> HttpFetch:
    """`http.fetch` through `client`; `caller()` names the (principal, level) of each call, read
    on the thread running the guest (in the context of whoever called `Sandbox.run`)."""

    def fetch(call: HttpCall) -> dict[str, Any]:
        principal, level = caller()
        try:
            answer = client.request_sync(call.method, call.url, principal=principal, level=level,
                                         request_id=call.request_id, headers=call.headers, content=call.body,
                                         timeout=call.timeout_s, max_bytes=call.max_bytes)
        except EgressDenied as e:
            raise ToolError(ErrorCode.EGRESS_DENIED, e.message, {"reason": e.reason}) from None
        except EgressTimeout as e:
            raise ToolError(ErrorCode.TIMEOUT, f"http.fetch timed out: {e}") from None
        except ResponseTooLarge:
            raise ToolError(ErrorCode.OUTPUT_LIMIT, f"response larger than {call.max_bytes} bytes") from None
        except EgressError as e:
            raise ToolError(ErrorCode.HTTP_ERROR, str(e)) from None
        return {"status": answer.status_code, "headers": dict(answer.headers), "body": answer.text}

    return fetch
