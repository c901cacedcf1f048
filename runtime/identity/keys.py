"""One Ed25519 signing key per principal, kept in `<state_dir>/principals/`.

`script:app` signs with `script.app.key`, `workflow:app/Job` with `workflow.app.Job.key` (neither a
script nor a class name holds a dot, so two principals never share a file). A key is a PEM PKCS8
file, mode 0600 in a 0700 directory, created by `keyfile.create_once` in whichever process needs
it first (the front serving the JWKS, an isolate minting a token) and never replaced: every
process of the state dir signs a principal's tokens and assertions with the same key, and a key
once published in the JWKS keeps verifying. Its key id is the RFC 7638 thumbprint.

`PrincipalKeys` is the `sandbox.KeySource` the runtime gives the capability authority: a token's
`kid` names the principal whose key signed it, and the sandbox accepts it only for that issuer.
Keys of principals first used by another process are found by listing the directory again when a
`kid` is not known yet. Key material never leaves this module but as public JWKs.
"""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from runtime.keyfile import create_once
from runtime.principals import PRINCIPAL
from sandbox import key_id

__all__ = ["KEY_DIR", "PrincipalKeys", "public_jwk"]

KEY_DIR = "principals"
_SUFFIX = ".key"


class PrincipalKeys:
    """The signing keys of the principals of one state dir; safe to share between threads."""

    def __init__(self, state_dir: str | os.PathLike[str]):
        self.directory = Path(state_dir) / KEY_DIR
        self._lock = threading.Lock()
        self._private: dict[str, tuple[str, Ed25519PrivateKey]] = {}
        self._by_kid: dict[str, tuple[str, Ed25519PublicKey]] = {}
        self._seen_files: set[str] = set()

    def path(self, principal: str) -> Path:
        return self.directory / (principal.replace(":", ".").replace("/", ".") + _SUFFIX)

    def signing_key(self, issuer: str) -> tuple[str, Ed25519PrivateKey]:
        """(kid, key) of principal `issuer`, its key created on first use."""
        if not isinstance(issuer, str) or not PRINCIPAL.match(issuer):
            raise ValueError(f"{issuer!r} is not a principal (script:<script> or workflow:<script>/<Class>)")
        with self._lock:
            found = self._private.get(issuer)
            if found is None:
                path = self.path(issuer)
                if not path.exists():
                    create_once(path, _new_key_pem())
                key = _read_key(path)
                found = self._private[issuer] = (key_id(key.public_key()), key)
                self._by_kid[found[0]] = (issuer, key.public_key())
                self._seen_files.add(path.name)
            return found

    def public_key(self, kid: str | None) -> tuple[str | None, Ed25519PublicKey] | None:
        """(principal, public key) of the key `kid`; None for no kid or an unknown one."""
        if kid is None:
            return None
        with self._lock:
            found = self._by_kid.get(kid)
            if found is None and self._read_new_files():
                found = self._by_kid.get(kid)
            return found

    def jwks(self, principals: Iterable[str]) -> dict[str, Any]:
        """The JWK Set of `principals`' public keys (each created if it does not exist yet)."""
        keys = []
        for principal in sorted(set(principals)):
            kid, key = self.signing_key(principal)
            keys.append(public_jwk(kid, key.public_key()))
        return {"keys": keys}

    def _read_new_files(self) -> bool:
        """Index the key files other processes created since the last look; True if any."""
        try:
            names = {n for n in os.listdir(self.directory) if n.endswith(_SUFFIX)} - self._seen_files
        except FileNotFoundError:
            return False
        for name in names:
            principal = _principal_of(name)
            if principal is None:
                continue
            key = _read_key(self.directory / name).public_key()
            self._by_kid[key_id(key)] = (principal, key)
            self._seen_files.add(name)
        return bool(names)


def public_jwk(kid: str, key: Ed25519PublicKey) -> dict[str, str]:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode(),
            "kid": kid, "alg": "EdDSA", "use": "sig"}


def _principal_of(filename: str) -> str | None:
    parts = filename.removesuffix(_SUFFIX).split(".")
    if len(parts) == 2 and parts[0] == "script":
        name = f"script:{parts[1]}"
    elif len(parts) == 3 and parts[0] == "workflow":
        name = f"workflow:{parts[1]}/{parts[2]}"
    else:
        return None
    return name if PRINCIPAL.match(name) else None


def _new_key_pem() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _read_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise RuntimeError(f"{path} does not hold an Ed25519 private key")
    return key
