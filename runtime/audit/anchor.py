"""Signed checkpoints of the audit log's Merkle tree head, kept outside the state dir, so that
someone who rewrites the state dir consistently (every hash recomputed) is still caught: the
rewritten head does not match a checkpoint signed earlier with a key they do not hold.

The signing key (the first that is set):

1. the manifest's ``[audit] signing_key_file`` (passed as ``configured``);
2. ``EDGEWORKS_AUDIT_SIGNING_KEY_FILE``;
3. ``$XDG_CONFIG_HOME/edgeworks/audit-signing.key`` (``~/.config/edgeworks/audit-signing.key``).

The file holds an Ed25519 private key as PEM (PKCS#8, unencrypted). A missing file is created
with a new key (file mode 0600, new directories 0700); when two processes create it at once,
both end with the one key that won (``os.link`` never replaces an existing file). A key file
inside the state dir is refused: whoever copies or rewrites the state dir would hold the key.
The key id is the first 16 hex characters of SHA-256 of the raw 32-byte public key.

A checkpoint signs these bytes (UTF-8), a text like a Certificate Transparency signed note::

    edgeworks-audit-checkpoint/v1\\n{origin}\\n{size}\\n{root_hex}\\n{ts:.6f}\\n

``origin`` names the log (no newline), ``size`` is the tree size (entries, >= 0), ``root_hex``
the lowercase hex of the tree root, ``ts`` the signing time in epoch seconds. On the wire a
checkpoint is one canonical JSON object (sorted keys, no whitespace) with exactly the fields
``key_id`` (16 lowercase hex), ``origin`` (string), ``root`` (lowercase hex, even length),
``signature`` (standard base64 of the 64-byte Ed25519 signature), ``size`` (integer >= 0) and
``ts`` (finite number).

The anchor sink: an append-only JSONL file, one checkpoint per line, each line written by a
single ``write`` on an ``O_APPEND`` descriptor then fsynced (default
``$XDG_STATE_HOME/edgeworks/anchors/<first 16 hex of sha256(resolved state dir)>.jsonl``,
``~/.local/state`` when unset), and/or a webhook that receives the same JSON in a POST
(``Content-Type: application/json``; any 2xx is success). A sink never raises on a failed
write: it returns the problems, so the audit writer keeps going and reports them.

The webhook is called through the runtime's egress client (`runtime.egress`) as principal
``runtime``, under a policy the operator's own setting makes: it allows exactly the origin of
``[audit] anchor_url`` (scheme, host, port), so an IP literal there (loopback or private
included) is named explicitly, while a host name must resolve to public addresses; the kill
switch kind ``egress`` applies. Each call is logged as an ``egress.request`` (or
``egress.denied``) log line rather than audited: an audit entry per anchor would change the
head it anchors, so every interval would anchor a new head.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from runtime.egress import (
    RUNTIME_PRINCIPAL,
    EgressClient,
    EgressDenied,
    EgressError,
    EgressPolicy,
    EgressRule,
)
from runtime.keyfile import create_once
from runtime.killswitch import KillSwitch
from runtime.logs import log

__all__ = ["ENV_SIGNING_KEY_FILE", "HOW_TO_SET", "MESSAGE_HEADER", "AnchorError", "AnchorSink",
           "Checkpoint", "Signer", "Verifier", "checkpoint_message", "default_anchor_path",
           "default_signing_key_path", "load_public_key", "load_signing_key", "public_verifier",
           "read_anchor"]

ENV_SIGNING_KEY_FILE = "EDGEWORKS_AUDIT_SIGNING_KEY_FILE"
MESSAGE_HEADER = "edgeworks-audit-checkpoint/v1"
HOW_TO_SET = (f"set [audit] signing_key_file in the manifest or {ENV_SIGNING_KEY_FILE} to a file "
              "holding an Ed25519 private key in PEM (PKCS#8), outside the state dir; a missing "
              "file is created with a new key")
_FIELDS = frozenset({"origin", "size", "root", "ts", "key_id", "signature"})
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_HEX = re.compile(r"(?:[0-9a-f]{2})+")
_SIGNATURE_BYTES = 64


class AnchorError(Exception):
    """A signing key, public key, checkpoint, anchor file or sink is missing, malformed or
    misplaced; the message names the file, variable, field or line."""


def _key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def checkpoint_message(origin: str, size: int, root_hex: str, ts: float) -> bytes:
    """The bytes a checkpoint's signature covers (see the module docstring)."""
    return f"{MESSAGE_HEADER}\n{origin}\n{size}\n{root_hex}\n{ts:.6f}\n".encode()


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: str
    ts: float
    key_id: str
    signature: str

    def to_json(self) -> str:
        """One canonical JSON line (sorted keys, no whitespace), without the newline."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> Checkpoint:
        """Parse and check one checkpoint; `AnchorError` names the first bad field."""
        try:
            obj = json.loads(text, parse_constant=_refuse_constant)
        except (ValueError, TypeError) as exc:
            raise AnchorError(f"checkpoint: not JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise AnchorError(f"checkpoint: expected a JSON object, got {type(obj).__name__}")
        missing, extra = sorted(_FIELDS - obj.keys()), sorted(obj.keys() - _FIELDS)
        if missing:
            raise AnchorError(f"checkpoint: missing field {', '.join(missing)}")
        if extra:
            raise AnchorError(f"checkpoint: unexpected field {', '.join(extra)}")
        origin, size, root, ts = obj["origin"], obj["size"], obj["root"], obj["ts"]
        key_id, signature = obj["key_id"], obj["signature"]
        if not isinstance(origin, str) or "\n" in origin:
            raise AnchorError("checkpoint field origin: expected a string without newlines")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise AnchorError(f"checkpoint field size: expected an integer >= 0, got {size!r}")
        if not isinstance(root, str) or not _HEX.fullmatch(root):
            raise AnchorError("checkpoint field root: expected lowercase hex of even length")
        if (not isinstance(ts, int | float) or isinstance(ts, bool)
                or not math.isfinite(ts)):
            raise AnchorError(f"checkpoint field ts: expected a finite number, got {ts!r}")
        if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
            raise AnchorError("checkpoint field key_id: expected 16 lowercase hex characters")
        if not isinstance(signature, str) or _decode_signature(signature) is None:
            raise AnchorError(f"checkpoint field signature: expected base64 of "
                              f"{_SIGNATURE_BYTES} bytes")
        return cls(origin=origin, size=size, root=root, ts=float(ts), key_id=key_id,
                   signature=signature)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _decode_signature(text: str) -> bytes | None:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == _SIGNATURE_BYTES else None


class Signer:
    """Signs checkpoints with the audit signing key (see `load_signing_key`)."""

    def __init__(self, private_key: Ed25519PrivateKey, source: str):
        self._key = private_key
        self.source = source
        self.key_id = _key_id(private_key.public_key())
        self.public_key_pem = private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def sign_checkpoint(self, size: int, root: bytes, *, ts: float, origin: str) -> Checkpoint:
        if size < 0:
            raise AnchorError(f"checkpoint size: expected >= 0, got {size}")
        if "\n" in origin:
            raise AnchorError(f"checkpoint origin {origin!r}: must not contain a newline")
        if not math.isfinite(ts):
            raise AnchorError(f"checkpoint ts: expected a finite number, got {ts!r}")
        root_hex = bytes(root).hex()
        signature = self._key.sign(checkpoint_message(origin, size, root_hex, ts))
        return Checkpoint(origin=origin, size=size, root=root_hex, ts=float(ts),
                          key_id=self.key_id, signature=base64.b64encode(signature).decode())


class Verifier:
    """Checks checkpoints against one public key."""

    def __init__(self, public_key: Ed25519PublicKey):
        self._key = public_key
        self.key_id = _key_id(public_key)

    def verify(self, cp: Checkpoint) -> bool:
        """True only for a checkpoint signed by this key over exactly its fields."""
        if cp.key_id != self.key_id:
            return False
        signature = _decode_signature(cp.signature) if isinstance(cp.signature, str) else None
        if signature is None:
            return False
        try:
            self._key.verify(signature, checkpoint_message(cp.origin, cp.size, cp.root, cp.ts))
        except (InvalidSignature, TypeError, ValueError):
            return False
        return True


def public_verifier(signer: Signer) -> Verifier:
    return Verifier(signer._key.public_key())


def default_signing_key_path(environ: Mapping[str, str] = os.environ) -> Path:
    config = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "edgeworks" / "audit-signing.key"


def load_signing_key(state_dir: Path, *, configured: str | None = None,
                     environ: Mapping[str, str] = os.environ) -> Signer:
    """The audit signing key (see the module docstring), created on first use; raises
    `AnchorError` naming the setting and the file when it is misplaced or unreadable."""
    if configured:
        path, source = Path(configured).expanduser(), "[audit] signing_key_file"
    elif environ.get(ENV_SIGNING_KEY_FILE):
        path, source = Path(environ[ENV_SIGNING_KEY_FILE]).expanduser(), ENV_SIGNING_KEY_FILE
    else:
        path, source = default_signing_key_path(environ), "the audit signing key"
    path = path.resolve()
    if path.is_relative_to(Path(state_dir).resolve()):
        raise AnchorError(f"{source} {path} is inside the state dir {state_dir}: whoever can "
                          "rewrite the state dir could then sign the rewrite; keep it elsewhere")
    if not path.exists():
        try:
            _create_key(path)
        except OSError as exc:
            raise AnchorError(f"{source} {path} cannot be created: {exc} ({HOW_TO_SET})") from None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AnchorError(f"{source} {path} cannot be read: {exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise AnchorError(f"{source} {path} is not an unencrypted PEM private key ({exc}); "
                          f"{HOW_TO_SET}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AnchorError(f"{source} {path} holds a {type(key).__name__}, not an Ed25519 key "
                          f"({HOW_TO_SET})")
    return Signer(key, f"{source} {path}")


def _create_key(path: Path) -> None:
    """Write a new key to `path` unless another process just did (then its key wins)."""
    create_once(path, Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def load_public_key(path: Path) -> Verifier:
    """A verifier from a PEM file holding an Ed25519 public key, or the private key itself
    (its public half is used)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise AnchorError(f"public key file {path} cannot be read: {exc}") from None
    key: object
    try:
        if b"PRIVATE KEY" in data:
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise AnchorError(f"public key file {path} is not a PEM public key or unencrypted "
                          f"private key ({exc})") from None
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise AnchorError(f"public key file {path} holds a {type(key).__name__}, "
                          "not an Ed25519 key")
    return Verifier(key)


def default_anchor_path(state_dir: Path, environ: Mapping[str, str] = os.environ) -> Path:
    state_home = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    log_id = hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:16]
    return Path(state_home) / "edgeworks" / "anchors" / f"{log_id}.jsonl"


def _display_url(url: str) -> str:
    """The URL without credentials or query (which may carry a token), for problem messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class AnchorSink:
    """Where signed checkpoints go: an append-only JSONL file and/or a webhook."""

    def __init__(self, *, path: Path | None, url: str | None, state_dir: Path,
                 timeout_s: float = 5.0):
        if path is None and not url:
            raise AnchorError("anchor sink: neither a file nor a webhook url is set")
        if url and urlsplit(url).scheme not in ("http", "https"):
            raise AnchorError(f"anchor webhook {_display_url(url)}: expected an http(s) URL")
        if path is not None:
            path = Path(path).expanduser().resolve()
            if path.is_relative_to(Path(state_dir).resolve()):
                raise AnchorError(f"anchor file {path} is inside the state dir {state_dir}: a "
                                  "rewrite of the state dir would rewrite it too; keep it elsewhere")
            try:
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise AnchorError(f"anchor file {path}: its directory cannot be created: "
                                  f"{exc}") from None
        self.path = path
        self.url = url or None
        self.timeout_s = timeout_s
        self.state_dir = Path(state_dir)
        self._egress: EgressClient | None = None  # made on the first post

    def write(self, cp: Checkpoint) -> list[str]:
        """Append to the file, then POST to the webhook; the problems, never an exception."""
        line = cp.to_json()
        problems: list[str] = []
        if self.path is not None:
            problem = _append(self.path, line + "\n")
            if problem:
                problems.append(problem)
        if self.url is not None:
            problem = self._post(self.url, line)
            if problem:
                problems.append(problem)
        return problems

    def _post(self, url: str, body: str) -> str | None:
        shown = _display_url(url)
        if self._egress is None:
            self._egress = anchor_egress(url, self.state_dir)
        try:
            response = self._egress.request_sync("POST", url, principal=RUNTIME_PRINCIPAL, level="public",
                                                 headers={"content-type": "application/json"},
                                                 content=body.encode(), timeout=self.timeout_s)
        except EgressDenied as exc:
            return f"webhook {shown}: refused by the egress policy: {exc.message}"
        except EgressError as exc:
            return f"webhook {shown}: {exc}"
        if not response.is_success:
            return f"webhook {shown}: HTTP {response.status_code}"
        return None


def anchor_egress(url: str, state_dir: Path) -> EgressClient:
    """The webhook's outbound path (see the module docstring): one rule, the URL's origin."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    rule = EgressRule(principals=[RUNTIME_PRINCIPAL], schemes=[scheme], hosts=[parts.hostname or ""],
                      ports=[parts.port or (443 if scheme == "https" else 80)])

    def logged(kind: str, fields: dict[str, Any]) -> None:
        log(kind, **fields)

    return EgressClient(EgressPolicy([rule], open=False), audit=logged, kills=KillSwitch(state_dir))


def _append(path: Path, line: str) -> str | None:
    """One write on an O_APPEND descriptor, then fsync: the problem, if any."""
    data = line.encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            written = os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        return f"anchor file {path}: {exc}"
    if written != len(data):
        return f"anchor file {path}: short write ({written} of {len(data)} bytes)"
    return None


def read_anchor(path: Path) -> list[Checkpoint]:
    """Every checkpoint in an anchor file, in order. A torn last line (no newline, not JSON:
    the writer stopped mid-line) is skipped; any other bad line raises naming its number."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise AnchorError(f"anchor file {path} cannot be read: {exc}") from None
    lines = data.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline
    checkpoints = [_parse_line(path, number, raw) for number, raw in enumerate(lines, 1)]
    if torn:
        try:
            json.loads(torn)
        except ValueError:  # also covers bytes that are not UTF-8
            return checkpoints
        checkpoints.append(_parse_line(path, len(lines) + 1, torn))
    return checkpoints


def _parse_line(path: Path, number: int, raw: bytes) -> Checkpoint:
    try:
        return Checkpoint.from_json(raw.decode())
    except UnicodeDecodeError:
        raise AnchorError(f"anchor file {path} line {number}: not UTF-8") from None
    except AnchorError as exc:
        raise AnchorError(f"anchor file {path} line {number}: {exc}") from None
