"""Outbound assertions: a short-lived JWT that tells a receiving service which principal calls it.

An egress rule with `assert_identity = true` makes the outbound client send
`Edgeworks-Principal-Assertion: <jwt>` (see `runtime.egress`), minted here:

    header  {"alg": "EdDSA", "typ": "JWT", "kid": <the principal's key id>}
    claims  {"iss": <principal>, "sub": <principal>, "aud": <target origin>,
             "iat": now, "nbf": now, "exp": now + 60, "jti": <unique>}

signed with the principal's own key (`keys.PrincipalKeys`). The shape is that of an RFC 7523
client assertion: the principal is both issuer and subject, the audience is the origin the
request goes to (`https://api.example.com`, default port left out), so an assertion captured by
one service is refused by every other. A receiver fetches the JWKS at
`/__edgeworks/.well-known/jwks.json`, picks the key by `kid`, pins `EdDSA`, and checks `aud` is
its own origin, `exp`, and `iss` the principal it trusts (keeping seen `jti`s for 60 s if it
must refuse replays within that window).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

import jwt

from runtime.identity.keys import PrincipalKeys
from runtime.principals import PRINCIPAL

__all__ = ["ASSERTION_HEADER", "ASSERTION_TTL_S", "Assertions", "audience_origin"]

ASSERTION_HEADER = "Edgeworks-Principal-Assertion"
ASSERTION_TTL_S = 60
_DEFAULT_PORTS = {"http": 80, "https": 443}


def audience_origin(url: str) -> str:
    """The origin of `url` as an assertion's audience: lowercase scheme and host, the port only
    when it is not the scheme's default (`https://API.example.com:443/x` -> `https://api.example.com`)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"{url!r} has no http(s) origin")
    host = parts.hostname.lower()
    host = f"[{host}]" if ":" in host else host
    port = parts.port
    return f"{scheme}://{host}" if port in (None, _DEFAULT_PORTS[scheme]) else f"{scheme}://{host}:{port}"


class Assertions:
    """The egress client's `identity` callable: `(principal, audience) -> assertion`, or None
    for a caller that is not a principal (the runtime's own calls). Usable in any process given
    the state dir (the front, isolates); keys are created on first use."""

    def __init__(self, keys: PrincipalKeys | str | os.PathLike[str], *, ttl: int = ASSERTION_TTL_S,
                 clock: Callable[[], float] = time.time):
        self.keys = keys if isinstance(keys, PrincipalKeys) else PrincipalKeys(keys)
        self.ttl = ttl
        self.clock = clock

    def __call__(self, principal: str, audience: str) -> str | None:
        if not isinstance(principal, str) or not PRINCIPAL.match(principal):
            return None
        return self.mint(principal, audience)

    def mint(self, principal: str, audience: str) -> str:
        """An assertion of `principal` for the origin of `audience` (an origin or any URL of it)."""
        kid, key = self.keys.signing_key(principal)
        now = int(self.clock())
        claims = {"iss": principal, "sub": principal, "aud": audience_origin(audience), "iat": now, "nbf": now,
                  "exp": now + self.ttl, "jti": uuid.uuid4().hex}
        return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid, "typ": "JWT"})
