"""Service identity: who a script or a workflow class is to the tools it calls and to the services
it reaches.

- `keys`: each principal's own Ed25519 signing key (capability tokens, assertions) and the JWKS.
- `config`: the manifest's `[principals."<principal>"]` tables (a principal's capability ceiling).
- `assertion`: the short-lived signed assertion an outbound request may carry.

The JWKS is served at `/__edgeworks/.well-known/jwks.json` (runtime.admin), open to anyone.
"""

from runtime.identity.assertion import (
    ASSERTION_HEADER,
    ASSERTION_TTL_S,
    Assertions,
    audience_origin,
)
from runtime.identity.config import (
    PrincipalOptions,
    deployment_principals,
    principal_ceilings,
    principals_problems,
)
from runtime.identity.keys import KEY_DIR, PrincipalKeys, public_jwk

__all__ = [
    "ASSERTION_HEADER",
    "ASSERTION_TTL_S",
    "KEY_DIR",
    "Assertions",
    "PrincipalKeys",
    "PrincipalOptions",
    "audience_origin",
    "deployment_principals",
    "principal_ceilings",
    "principals_problems",
    "public_jwk",
]
