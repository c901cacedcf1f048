"""Who may call the admin plane, and within which tenant.

`authorize` turns a request into an `AdminCaller` or raises `AccessDenied` (status, stable code,
a message that says how to fix it). The rules:

- With an ``[auth]`` section: a bearer JWT with the scope ``edgeworks:admin``. A token with a
  tenant claim makes a *tenant admin*: it acts only within its tenant, and everything of other
  tenants is invisible to it (404, as if it did not exist). A token without one is a *global
  admin*: it sees every tenant. What is not any tenant's (deployments, versions, scheduled
  runs, the tail, script/route/tool/workflow-class kills, workflow bindings that are not
  tenant-scoped, process details) needs a global admin: 403 ``global_admin_required``.
- Without ``[auth]``, in ``dev``: the caller is a global admin *if it connects from loopback*;
  any other client address gets 403 ``admin_loopback_only``. The address is the socket peer
  (``scope["client"]``); the server runs uvicorn without proxy headers, so ``X-Forwarded-For``
  can never make a remote client look local.
- Without ``[auth]``, in ``serve``: 403 ``admin_disabled``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from runtime.addresses import is_loopback_client
from runtime.front.identity import AuthError

__all__ = ["ADMIN_BODY_BYTES", "ADMIN_SCOPE", "AccessDenied", "AdminCaller", "BodyTooLarge", "authorize",
           "read_admin_body"]

ADMIN_SCOPE = "edgeworks:admin"
# What an admin caller may send as a JSON body (kill, decision, event...); a deploy bundle has
# its own, larger limit. Even an authenticated caller must not make the front buffer without end.
ADMIN_BODY_BYTES = 1 << 20


class BodyTooLarge(ValueError):
    def __init__(self, limit: int = ADMIN_BODY_BYTES):
        super().__init__(f"admin request bodies are limited to {limit} bytes")
        self.limit = limit


async def read_admin_body(request: Any, limit: int = ADMIN_BODY_BYTES) -> bytes:
    """The body of an admin request (a starlette Request), or BodyTooLarge past `limit` bytes,
    refused by its declared length before any of it is read."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


class AccessDenied(Exception):
    def __init__(self, status: int, code: str, message: str, www_authenticate: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.www_authenticate = www_authenticate


@dataclasses.dataclass(frozen=True, slots=True)
class AdminCaller:
    subject: str | None
    tenant: str | None  # None: a global admin

    @property
    def is_global(self) -> bool:
        return self.tenant is None

    def sees(self, tenant: str | None) -> bool:
        """Whether something belonging to `tenant` (None: to no tenant) exists for this caller."""
        return self.tenant is None or tenant == self.tenant

    def require_global(self, what: str) -> None:
        if self.tenant is not None:
            raise AccessDenied(403, "global_admin_required",
                               f"{what} needs a global admin token (one without a tenant claim); "
                               f"this token acts only within tenant {self.tenant!r}")


def authorize(verifier: Any, dev: bool, scope: Mapping[str, Any], authorization: str | None) -> AdminCaller:
    """The admin caller of a request; raises `AccessDenied` when it may not call the admin plane."""
    if verifier is None:
        if not dev:
            raise AccessDenied(403, "admin_disabled",
                               "the admin API needs an [auth] section in the manifest when serving")
        if not is_loopback_client(scope):
            raise AccessDenied(403, "admin_loopback_only",
                               "without an [auth] section the admin API answers loopback clients only; "
                               "add [auth] to the manifest to use it from other hosts")
        return AdminCaller(None, None)
    try:
        identity = verifier.authenticate(authorization, "required", [ADMIN_SCOPE])
    except AuthError as e:
        raise AccessDenied(e.status, e.code, e.message, e.www_authenticate) from None
    assert identity is not None
    return AdminCaller(identity.subject, identity.tenant)
