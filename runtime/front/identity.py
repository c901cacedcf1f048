"""Identity and tenancy from a verified JWT at the edge.

`Verifier.verify(authorization)` turns an ``Authorization: Bearer <jwt>`` header value into an
`Identity` or raises `AuthError` with an HTTP status, a stable ``code``, a fixed message and the
``WWW-Authenticate`` value to send. `Verifier.authorize` then applies a route's policy (mode,
required scopes, tenant). `Verifier.authenticate` does both.

Rules, each rejection with its own code:

========================  ======  ======================================================
code                      status  when
========================  ======  ======================================================
``missing_token``         401     no Authorization header where a token is required
``malformed``             401     not ``Bearer <three base64url segments>`` (at most 8 KiB),
                                  an undecodable header or payload, claims of the wrong type
``alg_none``              401     the header says ``alg: none`` (any case)
``alg_not_allowed``       401     the algorithm is not pinned (e.g. HS256 against RSA keys)
``unknown_key``           401     the ``kid`` names no configured key
``bad_signature``         401     the signature does not verify
``expired``               401     ``exp`` is past, beyond the leeway (``leeway_s``, 5 s)
``not_yet_valid``         401     ``nbf`` or ``iat`` is in the future, beyond the leeway
``wrong_audience``        401     ``aud`` missing or not the configured audience
``wrong_issuer``          401     ``iss`` missing or not the configured issuer
``missing_claim``         401     ``exp`` (when required) or the subject has the wrong type
``invalid_token``         401     another claim pyjwt refuses (e.g. a non-string ``jti``)
``missing_tenant``        401     the route requires a tenant and the token has none
``insufficient_scope``    403     a required scope is not granted
========================  ======  ======================================================

Algorithms are pinned per key: a key only ever verifies the algorithms of its own type
(HMAC secrets: HS*, Ed25519: EdDSA, P-256: ES256, RSA: RS*/PS*), and by default only the one
natural algorithm of each configured key (HS256, EdDSA, ES256, RS256). So an HS256 token
"signed" with an RSA public key is refused before any signature check.

Time checks (``exp``, ``nbf``, ``iat``) use the injected clock, not pyjwt's, so tests can fake
time. A token never appears in an exception message, a ``WWW-Authenticate`` value or a log
line: messages are fixed strings and pyjwt's exceptions are not chained.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from runtime.config import _EC, _HMAC, _RSA, DEFAULT_LEEWAY_S, MAX_LEEWAY_S, AuthConfig
from runtime.protocol import Identity

__all__ = [
    "AuthConfig",
    "AuthConfigError",
    "AuthError",
    "AuthMode",
    "DEFAULT_LEEWAY_S",
    "MAX_LEEWAY_S",
    "Identity",
    "Verifier",
]

AuthMode = Literal["required", "optional", "none"]

_MIN_SECRET_BYTES = 32
_MAX_HEADER = 8192


class AuthConfigError(ValueError):
    """The auth configuration cannot be used; ``problems`` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid auth config: " + "; ".join(problems))
        self.problems = problems


class AuthError(Exception):
    """A request is not authorised; never carries the token."""

    def __init__(
        self, status: int, code: str, message: str, www_authenticate: str | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.www_authenticate = www_authenticate or _challenge(
            "insufficient_scope" if status == 403 else "invalid_token", message
        )

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": self.www_authenticate}


def _challenge(error: str, description: str, scope: Sequence[str] = ()) -> str:
    safe = description.replace("\\", "").replace('"', "'")
    value = f'Bearer realm="edgeworks", error="{error}", error_description="{safe}"'
    if scope:
        value += f', scope="{" ".join(scope)}"'
    return value


def _unauthorized(code: str, message: str) -> AuthError:
    return AuthError(401, code, message)


def _check_text(claims: Any) -> None:
    """Claims travel to isolates, logs and the audit log as UTF-8. A JSON escape such as
    "\\ud800" decodes to a lone surrogate, which UTF-8 cannot carry: such a token is malformed,
    refused here rather than failing the request later (iterative: claims may nest deeply)."""
    stack = [claims]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise _unauthorized("malformed", "the token's claims are not valid Unicode text") from None
        elif isinstance(value, dict):
            stack.extend(value)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


@dataclasses.dataclass(frozen=True, slots=True)
class _Key:
    kid: str | None
    key: Any
    algorithms: frozenset[str]  # what this key type may verify
    default: str  # its natural algorithm


def _public_key_algorithms(key: Any) -> tuple[frozenset[str], str] | None:
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return frozenset({"EdDSA"}), "EdDSA"
    if isinstance(key, ec.EllipticCurvePublicKey):
        alg = _EC.get(key.curve.name)
        return (frozenset({alg}), alg) if alg else None
    if isinstance(key, rsa.RSAPublicKey):
        return _RSA, "RS256"
    return None


class Verifier:
    """Verifies bearer tokens against one `AuthConfig`; see the module docstring."""

    def __init__(
        self,
        config: AuthConfig,
        secrets: Mapping[str, str] | None = None,
        base_dir: str | Path = ".",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._clock = clock
        problems: list[str] = []
        self._keys = self._load_keys(config, secrets or {}, Path(base_dir), problems)
        if config.algorithms is not None:
            pinned = frozenset(config.algorithms)
            usable = (
                frozenset().union(*(k.algorithms for k in self._keys)) if self._keys else pinned
            )
            for alg in sorted(pinned - usable):
                problems.append(f"algorithm {alg} does not fit any configured key")
        else:
            pinned = frozenset(k.default for k in self._keys)
        if problems:
            raise AuthConfigError(problems)
        self.algorithms = pinned
        aud = config.audience
        self._audience = [aud] if isinstance(aud, str) else aud

    @staticmethod
    def _load_keys(
        config: AuthConfig, secrets: Mapping[str, str], base_dir: Path, problems: list[str]
    ) -> list[_Key]:
        if config.secret:
            value = secrets.get(config.secret)
            if value is None:
                problems.append(f"secret {config.secret!r} is not defined")
                return []
            if len(value.encode()) < _MIN_SECRET_BYTES:
                problems.append(
                    f"secret {config.secret!r} is shorter than {_MIN_SECRET_BYTES} bytes"
                )
                return []
            return [_Key(None, value.encode(), _HMAC, "HS256")]
        if config.public_key_file:
            path = base_dir / config.public_key_file
            try:
                key = serialization.load_pem_public_key(path.read_bytes())
            except (OSError, ValueError) as exc:
                problems.append(f"public_key_file {str(path)!r}: {type(exc).__name__}")
                return []
            algs = _public_key_algorithms(key)
            if algs is None:
                problems.append(f"public_key_file {str(path)!r}: unsupported key type")
                return []
            return [_Key(None, key, *algs)]
        path = base_dir / str(config.jwks_file)
        try:
            jwks = json.loads(path.read_text())
            entries = jwks["keys"]
            if not isinstance(entries, list):
                raise TypeError
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problems.append(f"jwks_file {str(path)!r}: not a JWKS ({type(exc).__name__})")
            return []
        keys = []
        for i, jwk in enumerate(entries):
            if not isinstance(jwk, dict) or jwk.get("kty") == "oct":
                problems.append(f"jwks_file key {i}: only public keys (RSA, EC, OKP) belong here")
                continue
            try:
                parsed = jwt.PyJWK(jwk)
            except jwt.PyJWTError as exc:
                problems.append(f"jwks_file key {i}: {type(exc).__name__}")
                continue
            algs = _public_key_algorithms(parsed.key)
            if algs is None:
                problems.append(f"jwks_file key {i}: unsupported key type")
                continue
            if "alg" in jwk:  # a key that names its algorithm verifies only that one
                if jwk["alg"] not in algs[0]:
                    problems.append(f"jwks_file key {i}: alg {jwk['alg']!r} does not fit the key")
                    continue
                algs = (frozenset({jwk["alg"]}), jwk["alg"])
            keys.append(_Key(jwk.get("kid"), parsed.key, *algs))
        if not keys and not problems:
            problems.append(f"jwks_file {str(path)!r} holds no keys")
        return keys

    # -- verification --------------------------------------------------------------------

    def verify(self, authorization: str | None) -> Identity:
        """The identity in an ``Authorization`` header value, or `AuthError` (401)."""
        if not authorization or not authorization.strip():
            raise _unauthorized("missing_token", "a bearer token is required")
        if len(authorization) > _MAX_HEADER:
            raise _unauthorized("malformed", "the Authorization header is too long")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or token.count(".") != 2:
            raise _unauthorized("malformed", "the Authorization header is not a bearer JWT")
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, RecursionError):  # JSON nested past the parser's depth
            raise _unauthorized("malformed", "the token header cannot be decoded") from None
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise _unauthorized("malformed", "the token header names no algorithm")
        if alg.lower() == "none":
            raise _unauthorized("alg_none", "unsigned tokens are not accepted")
        if alg not in self.algorithms:
            raise _unauthorized("alg_not_allowed", "the token's algorithm is not allowed")
        kid = header.get("kid")
        candidates = [k for k in self._keys if alg in k.algorithms]
        if kid is not None and any(k.kid is not None for k in candidates):
            candidates = [k for k in candidates if k.kid == kid]
            if not candidates:
                raise _unauthorized("unknown_key", "the token's key id is not known")
        claims = self._decode(token, alg, candidates)
        self._check_times(claims)
        return self._identity(claims)

    def _decode(self, token: str, alg: str, keys: list[_Key]) -> dict[str, Any]:
        cfg = self.config
        options = {
            "verify_signature": True,
            "verify_exp": False,  # times are checked against the injected clock
            "verify_nbf": False,
            "verify_iat": False,
            "verify_aud": self._audience is not None,
            "verify_iss": cfg.issuer is not None,
        }
        error: AuthError | None = None
        for key in keys:
            try:
                return jwt.decode(
                    token,
                    key.key,
                    algorithms=[alg],
                    audience=self._audience,
                    issuer=cfg.issuer,
                    options=options,  # type: ignore[arg-type]
                )
            except jwt.InvalidSignatureError:
                error = _unauthorized("bad_signature", "the token signature is invalid")
            except jwt.MissingRequiredClaimError as exc:
                error = _claim_error(exc.claim)
                break
            except jwt.InvalidAudienceError:
                error = _unauthorized("wrong_audience", "the token is not for this audience")
                break
            except jwt.InvalidIssuerError:
                error = _unauthorized("wrong_issuer", "the token is not from the trusted issuer")
                break
            except jwt.InvalidAlgorithmError:
                error = _unauthorized("alg_not_allowed", "the token's algorithm is not allowed")
                break
            except (jwt.DecodeError, RecursionError):  # RecursionError: JSON nested past the parser's depth
                error = _unauthorized("malformed", "the token cannot be decoded")
                break
            except jwt.PyJWTError:
                error = _unauthorized("invalid_token", "the token is invalid")
                break
        raise error or _unauthorized("bad_signature", "no key verifies the token")

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now, leeway = self._clock(), self.config.leeway_s
        times = {}
        for name in ("exp", "nbf", "iat"):
            value = claims.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _unauthorized("malformed", f"the {name} claim is not a number")
            times[name] = float(value)
        if "exp" not in times and self.config.require_exp:
            raise _unauthorized("missing_claim", "the token has no expiry (exp)")
        if "exp" in times and now >= times["exp"] + leeway:
            raise _unauthorized("expired", "the token has expired")
        for name in ("nbf", "iat"):
            if name in times and times[name] > now + leeway:
                raise _unauthorized("not_yet_valid", f"the token is not valid yet ({name})")

    def _identity(self, claims: dict[str, Any]) -> Identity:
        _check_text(claims)
        cfg = self.config
        subject = claims.get(cfg.subject_claim)
        if subject is not None and not isinstance(subject, str):
            raise _unauthorized("missing_claim", "the subject claim is not a string")
        tenant = claims.get(cfg.tenant_claim)
        if tenant is not None and not isinstance(tenant, str | int):
            raise _unauthorized("malformed", "the tenant claim is not a string")
        raw = claims.get(cfg.scopes_claim)
        if raw is None:
            scopes: tuple[str, ...] = ()
        elif isinstance(raw, str):
            scopes = tuple(raw.split())
        elif isinstance(raw, list) and all(isinstance(s, str) for s in raw):
            scopes = tuple(raw)
        else:
            raise _unauthorized("malformed", "the scopes claim is neither a string nor a list")
        return Identity(
            subject=subject,
            tenant=None if tenant in (None, "") else str(tenant),
            scopes=scopes,
            claims=claims,
        )

    # -- policy --------------------------------------------------------------------------

    def authorize(
        self,
        identity: Identity | None,
        mode: AuthMode = "required",
        scopes: Sequence[str] = (),
        require_tenant: bool = False,
    ) -> Identity | None:
        """Apply a route's policy to an already verified identity (or its absence)."""
        if mode == "none":
            return identity
        if identity is None:
            if mode == "optional":
                return None
            raise _unauthorized("missing_token", "a bearer token is required")
        if require_tenant and not identity.tenant:
            raise _unauthorized("missing_tenant", "the token names no tenant")
        missing = [s for s in scopes if s not in identity.scopes]
        if missing:
            message = "the token lacks a required scope"
            raise AuthError(
                403,
                "insufficient_scope",
                message,
                _challenge("insufficient_scope", message, scopes),
            )
        return identity

    def authenticate(
        self,
        authorization: str | None,
        mode: AuthMode = "required",
        scopes: Sequence[str] = (),
        require_tenant: bool = False,
    ) -> Identity | None:
        """`verify` (when a token is sent and the mode is not ``none``) then `authorize`.

        In ``optional`` mode a missing token is fine but an invalid one is still refused."""
        if mode == "none":
            return None
        identity = self.verify(authorization) if authorization else None
        return self.authorize(identity, mode, scopes, require_tenant)


def _claim_error(claim: str) -> AuthError:
    if claim == "aud":
        return _unauthorized("wrong_audience", "the token names no audience")
    if claim == "iss":
        return _unauthorized("wrong_issuer", "the token names no issuer")
    return _unauthorized("missing_claim", "the token lacks a required claim")
