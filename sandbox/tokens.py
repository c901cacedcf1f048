"""Capability tokens: short-lived Ed25519-signed JWTs that say what one tool call may do.

Claims: `iss` (service identity of the caller, e.g. `workflow:app/Refund`, `script:app`, `cli`),
`aud` = `sandbox`, `iat`, `nbf`, `exp`, `jti` (unique id), `tenant`, `rid` (request id),
`caps` (capability strings, see `sandbox.capabilities`) and `chain` (jtis of the tokens this one
was attenuated from, oldest first; empty for a minted token).

`CapabilityAuthority.verify` accepts a token only when all of these hold, and otherwise raises
`TokenError` whose `reason` is the first failing check, in this order:

1. `malformed`: not three base64url JSON parts, or claims of the wrong type/missing.
2. `bad_algorithm`: header `alg` is anything but `EdDSA` (so `none` and HS256 forged with the
   public key as HMAC secret are refused before any signature check; decode pins algorithms).
3. `unknown_key`: the header's `kid` names no key of the authority's `KeySource`.
4. `bad_signature`: the signature does not verify with the key `kid` names.
5. `wrong_key`: the key belongs to another issuer than the token's `iss` (a principal's key
   signs only its own tokens).
6. `wrong_audience`, `unknown_issuer` (issuer not in `issuers` when that is configured),
   `lifetime_too_long` (`exp - iat` beyond `max_ttl`), `not_yet_valid` (`nbf` in the
   future), `expired` (`exp` not after now), `widened_capabilities` (a capability outside the
   issuer's ceiling when `issuers` maps issuers to ceilings), `revoked` (its `jti` or any
   ancestor's `jti` in `chain` is revoked).

Time comes from the injected `clock`; there is no leeway. A verified signature is cached per
exact token string (the bytes cannot change), but the time, issuer and revocation checks run on
every `verify`.

Keys: a `KeySource` gives the key each issuer signs with and the public key a token's `kid`
names. The runtime injects one key per principal (`runtime.identity.PrincipalKeys`), so each
issuer signs with its own key; without one, `AuthorityKey` signs every issuer's tokens with the
single key `<state_dir>/keys/sandbox-ed25519.pem` (what `edgeworks tool run` uses, issuer `cli`).
Either way keys are created 0600 by whichever process gets there first, published with an
atomic link so all processes read the same key. Minting for an issuer beyond its ceiling raises
`TokenError("beyond_ceiling")` naming the capabilities its ceiling does not cover.

Revocations are shared by every process using the same state dir: they live in
`<state_dir>/sandbox/revocations.sqlite` and are read on every `verify`, so a `revoke` in
one process takes effect at the next `verify` in every process.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from ._sqlite import PerThreadConnection
from .capabilities import CapabilityError, CapabilitySet
from .types import Clock, system_clock

__all__ = ["ANY_TENANT", "AUDIENCE", "AuthorityKey", "CapabilityAuthority", "CapabilityToken", "KeySource",
           "TokenError", "key_id"]

AUDIENCE = "sandbox"
ALGORITHM = "EdDSA"
_KEY_FILE = "sandbox-ed25519.pem"
_VERIFIED_CACHE_SIZE = 4096


class _AnyTenant:
    def __repr__(self) -> str:
        return "ANY_TENANT"


# `tenant=` default: the caller does not act for a tenant it can name (the CLI, tests), so the
# token's tenant is taken as is. The runtime always passes the calling request's tenant.
ANY_TENANT: Any = _AnyTenant()


class TokenError(Exception):
    """A token was refused; `reason` is one of the codes in the module docstring."""

    def __init__(self, reason: str, message: str = ""):
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason
        self.message = message or reason


class KeySource(Protocol):
    """Where an authority's keys come from. Called from any thread (tools run on a pool)."""

    def signing_key(self, issuer: str) -> tuple[str, Ed25519PrivateKey]:
        """(kid, private key) that `issuer` signs with; ValueError for an issuer it has none for."""

    def public_key(self, kid: str | None) -> tuple[str | None, Ed25519PublicKey] | None:
        """(the issuer the key belongs to, None when any; the public key) for the `kid` of a
        token's header; None when no key has that id."""


def key_id(public: Ed25519PublicKey) -> str:
    """The RFC 7638 JWK thumbprint of `public`: a key id any holder of the key can recompute."""
    x = base64.urlsafe_b64encode(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    jwk = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x.rstrip(b"=").decode()}, separators=(",", ":"),
                     sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(jwk.encode()).digest()).rstrip(b"=").decode()


class AuthorityKey:
    """One key for every issuer, `<key_dir>/sandbox-ed25519.pem`: for callers without principal
    keys (`edgeworks tool run`, tests). A token without `kid` is taken as signed by it."""

    def __init__(self, key_dir: Path):
        self._private = _load_or_create_key(key_dir)
        self._public = self._private.public_key()
        self.kid = key_id(self._public)

    def signing_key(self, issuer: str) -> tuple[str, Ed25519PrivateKey]:
        return self.kid, self._private

    def public_key(self, kid: str | None) -> tuple[str | None, Ed25519PublicKey] | None:
        return (None, self._public) if kid is None or kid == self.kid else None


@dataclass(frozen=True)
class CapabilityToken:
    issuer: str
    tenant: str | None
    request_id: str | None
    caps: tuple[str, ...]
    jti: str
    issued_at: int
    not_before: int
    expires_at: int
    chain: tuple[str, ...] = ()
    raw: str = field(default="", repr=False)
    # `caps` already parsed (verification has it at hand); parsed from `caps` when omitted
    parsed_caps: InitVar[CapabilitySet | None] = None
    capabilities: CapabilitySet = field(init=False, repr=False, compare=False)

    def __post_init__(self, parsed_caps: CapabilitySet | None) -> None:
        object.__setattr__(self, "capabilities",
                           parsed_caps if parsed_caps is not None else CapabilitySet(self.caps))


class CapabilityAuthority:
    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        clock: Clock = system_clock,
        default_ttl: int = 300,
        max_ttl: int = 900,
        issuers: Iterable[str] | Mapping[str, Iterable[str] | None] | None = None,
        keys: KeySource | None = None,
    ):
        if not 0 < default_ttl <= max_ttl:
            raise ValueError("need 0 < default_ttl <= max_ttl")
        if max_ttl > 3600:
            raise ValueError("max_ttl is capped at one hour; capability tokens are short-lived")
        self.state_dir = Path(state_dir)
        self.clock = clock
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl
        self._ceilings: dict[str, CapabilitySet | None] | None
        if issuers is None:
            self._ceilings = None
        elif isinstance(issuers, Mapping):
            self._ceilings = {k: None if v is None else CapabilitySet(v) for k, v in issuers.items()}
        else:
            self._ceilings = dict.fromkeys(issuers)
        self._keys: KeySource = keys if keys is not None else AuthorityKey(self.state_dir / "keys")
        self._revocations = _RevocationStore(self.state_dir / "sandbox" / "revocations.sqlite")
        self._verified: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._verified_lock = threading.Lock()

    # -- minting ---------------------------------------------------------------------------

    def mint(
        self,
        issuer: str,
        caps: Iterable[str],
        *,
        tenant: str | None = None,
        request_id: str | None = None,
        ttl: int | None = None,
    ) -> str:
        ttl = self.default_ttl if ttl is None else _whole_seconds("ttl", ttl)
        if not 0 < ttl <= self.max_ttl:
            raise ValueError(f"ttl must be in (0, {self.max_ttl}] seconds, got {ttl}")
        if not isinstance(issuer, str) or not issuer:
            raise ValueError("issuer must be a non-empty string")
        capset = self._parse_caps(_cap_list(caps))
        self._check_issuer(issuer, capset)
        now = int(self.clock())
        return self._sign(
            issuer,
            {
                "iss": issuer,
                "aud": AUDIENCE,
                "iat": now,
                "nbf": now,
                "exp": now + ttl,
                "jti": uuid.uuid4().hex,
                "tenant": tenant,
                "rid": request_id,
                "caps": capset.strings(),
                "chain": [],
            }
        )

    def attenuate(
        self,
        token: str,
        caps: Iterable[str] | None = None,
        expires_at: float | None = None,
        *,
        tenant: str | None = ANY_TENANT,
    ) -> str:
        """A new token with a subset of `token`'s capabilities and no later expiry.

        Raises `TokenError("widened_capabilities")` / `TokenError("widened_expiry")` when asked
        for more, `TokenError("wrong_tenant")` when the caller acts for another `tenant` than
        the token's, and whatever `verify` raises when `token` itself is not valid."""
        parent = self.verify(token)
        if tenant is not ANY_TENANT and parent.tenant != tenant:
            raise TokenError("wrong_tenant", "the capability token was minted for another tenant than this call's")
        capset = parent.capabilities if caps is None else self._parse_caps(_cap_list(caps))
        missing = parent.capabilities.uncovered(capset)
        if missing:
            raise TokenError("widened_capabilities", f"not in the parent token: {missing}")
        exp = parent.expires_at if expires_at is None else _whole_seconds("expires_at", expires_at)
        if exp > parent.expires_at:
            raise TokenError("widened_expiry", "attenuation cannot extend the expiry")
        now = int(self.clock())
        if exp <= now:
            raise ValueError("expires_at must be in the future")
        return self._sign(
            parent.issuer,
            {
                "iss": parent.issuer,
                "aud": AUDIENCE,
                "iat": now,
                "nbf": now,
                "exp": exp,
                "jti": uuid.uuid4().hex,
                "tenant": parent.tenant,
                "rid": parent.request_id,
                "caps": capset.strings(),
                "chain": [*parent.chain, parent.jti],
            }
        )

    def revoke(self, jti: str, expires_at: float | None = None) -> None:
        """Revoke `jti` (and every token attenuated from it) in all processes sharing the state
        dir. `expires_at` lets the entry be pruned once the token would have expired anyway."""
        if not isinstance(jti, str) or not jti:
            raise ValueError(f"jti must be a non-empty string, got {type(jti).__name__}")
        keep_until = int(expires_at if expires_at is not None else self.clock() + self.max_ttl)
        self._revocations.add(jti, keep_until, int(self.clock()))

    # -- verification ----------------------------------------------------------------------

    def verify(self, token: str) -> CapabilityToken:
        claims = self._verified_claims(token)
        iss = claims["iss"]
        if claims["aud"] != AUDIENCE:
            raise TokenError("wrong_audience", f"audience {claims['aud']!r}")
        capset = claims.get("_capset")
        if capset is None:
            capset = claims["_capset"] = self._parse_caps(claims["caps"], reason="malformed")
        if self._ceilings is not None and iss not in self._ceilings:
            raise TokenError("unknown_issuer", f"issuer {iss!r} is not accepted")
        if claims["exp"] - claims["iat"] > self.max_ttl:
            raise TokenError("lifetime_too_long", f"lifetime exceeds {self.max_ttl}s")
        now = self.clock()
        if claims["nbf"] > now:
            raise TokenError("not_yet_valid", "nbf is in the future")
        if claims["exp"] <= now:
            raise TokenError("expired", "token has expired")
        ceiling = self._ceilings.get(iss) if self._ceilings is not None else None
        if ceiling is not None:
            missing = ceiling.uncovered(capset)
            if missing:
                raise TokenError("widened_capabilities", f"beyond issuer ceiling: {missing}")
        chain = tuple(claims["chain"])
        if self._revocations.any_revoked((claims["jti"], *chain)):
            raise TokenError("revoked", "token has been revoked")
        return CapabilityToken(
            issuer=iss,
            tenant=claims["tenant"],
            request_id=claims["rid"],
            caps=tuple(capset.strings()),
            jti=claims["jti"],
            issued_at=claims["iat"],
            not_before=claims["nbf"],
            expires_at=claims["exp"],
            chain=chain,
            raw=token,
            parsed_caps=capset,
        )

    def _verified_claims(self, token: str) -> dict[str, Any]:
        if not isinstance(token, str):  # checked first: a list or dict cannot even be looked up
            raise TokenError("malformed", f"a token is a JWT string, not {type(token).__name__}")
        with self._verified_lock:
            cached = self._verified.get(token)
            if cached is not None:
                self._verified.move_to_end(token)
                return cached
        if token.count(".") != 2:
            raise TokenError("malformed", "not a JWT")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise TokenError("malformed", str(e)) from None
        if header.get("alg") != ALGORITHM:
            raise TokenError("bad_algorithm", f"algorithm {header.get('alg')!r} is not accepted")
        kid = header.get("kid")
        key = self._keys.public_key(kid) if kid is None or isinstance(kid, str) else None
        if key is None:
            raise TokenError("unknown_key", f"no key with id {kid!r}")
        owner, public_key = key
        try:
            claims = jwt.decode(
                token,
                public_key,
                algorithms=[ALGORITHM],
                options={
                    "verify_aud": False,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_iss": False,
                },
            )
        except jwt.InvalidSignatureError:
            raise TokenError("bad_signature", "signature does not verify") from None
        except jwt.InvalidAlgorithmError as e:
            raise TokenError("bad_algorithm", str(e)) from None
        except jwt.PyJWTError as e:
            raise TokenError("malformed", str(e)) from None
        _check_claim_types(claims)
        if owner is not None and claims["iss"] != owner:
            raise TokenError("wrong_key", f"signed with the key of {owner!r}, not of its issuer {claims['iss']!r}")
        with self._verified_lock:
            self._verified[token] = claims
            if len(self._verified) > _VERIFIED_CACHE_SIZE:
                self._verified.popitem(last=False)
        return claims

    # -- helpers ---------------------------------------------------------------------------

    def _sign(self, issuer: str, claims: dict[str, Any]) -> str:
        kid, key = self._keys.signing_key(issuer)
        return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": kid})

    def _parse_caps(self, caps: Any, reason: str | None = None) -> CapabilitySet:
        try:
            if not isinstance(caps, list):
                raise CapabilityError("caps must be a list")
            return CapabilitySet(caps)
        except CapabilityError as e:
            if reason:
                raise TokenError(reason, str(e)) from None
            raise ValueError(str(e)) from None

    def _check_issuer(self, issuer: str, capset: CapabilitySet) -> None:
        if self._ceilings is None:
            return
        if issuer not in self._ceilings:
            raise ValueError(f"issuer {issuer!r} is not configured")
        ceiling = self._ceilings[issuer]
        missing = ceiling.uncovered(capset) if ceiling is not None else []
        if ceiling is not None and missing:
            raise TokenError("beyond_ceiling", f"{issuer} may not grant {', '.join(missing)}: beyond its"
                                               f" capability ceiling {ceiling.strings()}")


def _cap_list(caps: Any) -> list[Any]:
    """`caps` as a list; a bare string would otherwise become a list of its characters."""
    if isinstance(caps, str | bytes) or not isinstance(caps, Iterable):
        raise ValueError(f"capabilities must be a list of strings, got {type(caps).__name__}")
    return list(caps)


def _whole_seconds(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number of seconds, got {type(value).__name__}")
    return int(value)


def _check_claim_types(claims: dict[str, Any]) -> None:
    expect = {
        "iss": str,
        "aud": str,
        "iat": int,
        "nbf": int,
        "exp": int,
        "jti": str,
        "caps": list,
        "chain": list,
    }
    for name, typ in expect.items():
        value = claims.get(name)
        if not isinstance(value, typ) or isinstance(value, bool):
            raise TokenError("malformed", f"claim {name!r} missing or not {typ.__name__}")
    for name in ("tenant", "rid"):
        if claims.get(name) is not None and not isinstance(claims[name], str):
            raise TokenError("malformed", f"claim {name!r} must be a string or null")
    claims.setdefault("tenant", None)
    claims.setdefault("rid", None)
    if not all(isinstance(j, str) for j in claims["chain"]):
        raise TokenError("malformed", "claim 'chain' must list strings")


def _load_or_create_key(key_dir: Path) -> Ed25519PrivateKey:
    path = key_dir / _KEY_FILE
    if not path.exists():
        key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        tmp = key_dir / f".{_KEY_FILE}.{os.getpid()}.{uuid.uuid4().hex}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)  # fails if another process published first: use theirs
            except FileExistsError:
                pass
        finally:
            tmp.unlink(missing_ok=True)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise RuntimeError(f"{path} does not hold an Ed25519 private key")
    return key


class _RevocationStore:
    """Revoked jtis in SQLite; one connection per thread (sqlite3 objects are thread-bound)."""

    def __init__(self, path: Path):
        self.path = path
        self._conn = PerThreadConnection(
            path,
            "CREATE TABLE IF NOT EXISTS revoked ("
            " jti TEXT PRIMARY KEY, keep_until INTEGER NOT NULL, revoked_at INTEGER NOT NULL)",
        )

    def add(self, jti: str, keep_until: int, now: int) -> None:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "INSERT OR REPLACE INTO revoked (jti, keep_until, revoked_at) VALUES (?, ?, ?)",
                (jti, keep_until, now),
            )
            conn.execute("DELETE FROM revoked WHERE keep_until < ?", (now - 60,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def any_revoked(self, jtis: tuple[str, ...]) -> bool:
        if len(jtis) == 1:
            row = self._conn().execute("SELECT 1 FROM revoked WHERE jti = ?", jtis).fetchone()
        else:
            marks = ",".join("?" * len(jtis))
            row = (
                self._conn()
                .execute(f"SELECT 1 FROM revoked WHERE jti IN ({marks}) LIMIT 1", jtis)
                .fetchone()
            )
        return row is not None


