"""The data key: encrypts at rest the records the runtime must replay (held requests, workflow
instance records), and lives outside the state dir, so a copy of the state dir reveals none of
them. The front loads it and hands it to each isolate process in its init message, over the
isolate's private pipe (isolates seal their workflows' records with it).

Where the key comes from (the first that is set):

1. ``EDGEWORKS_DATA_KEY``: the key itself, 32 bytes in base64 (standard or URL-safe alphabet);
   for a secret manager or a container's environment.
2. ``EDGEWORKS_DATA_KEY_FILE``: the path of a file holding the key in that form. In ``dev`` a
   missing file is created with a new key; in ``serve`` it must exist.
3. ``dev`` only: ``$XDG_CONFIG_HOME/edgeworks/data-key`` (``~/.config/edgeworks/data-key``),
   created with a new key on first use (file mode 0600, directory 0700). It is the user's, out
   of every app tree: never inside the app directory (which holds the state dir by default, is
   committed, copied and packed into deploy bundles), so copying either carries no key.

``serve`` with neither variable set has no key and never makes one up: a key generated where
nobody chose would either sit beside the state it protects or vanish with a container, and held
requests would be lost without a word. So, there, holding a request for approval is refused
(503 ``approvals_unavailable``, naming the variables) until the operator configures a key; the
rest of the runtime runs. A key file inside the state dir is refused outright.

Sealing: AES-256-GCM with a random 96-bit nonce per record. A sealed blob is ``b"ewk1"``, the
key id (the first 8 bytes of SHA-256 of the key, to tell "another key" from "damaged"), the
nonce, then ciphertext and tag. The associated data names the record (e.g. the approval id and
field), so a blob moved to another row or field does not open. Opening a blob sealed with
another key, or altered, raises `DataKeyError` naming the key ids; nothing is returned unverified.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from runtime.keyfile import create_once

__all__ = ["ENV_KEY", "ENV_KEY_FILE", "MAGIC", "DataKey", "DataKeyError", "default_dev_key_path",
           "load_data_key"]

ENV_KEY = "EDGEWORKS_DATA_KEY"
ENV_KEY_FILE = "EDGEWORKS_DATA_KEY_FILE"
MAGIC = b"ewk1"
_KEY_BYTES = 32
_NONCE_BYTES = 12
_ID_BYTES = 8
HOW_TO_SET = (f"set {ENV_KEY_FILE} to a file holding 32 random bytes in base64 (or {ENV_KEY} to "
              "the key itself), outside the state dir")


class DataKeyError(Exception):
    """The data key is missing, malformed, misplaced, or does not open a record."""


class DataKey:
    def __init__(self, key: bytes, source: str):
        if len(key) != _KEY_BYTES:
            raise DataKeyError(f"{source}: expected {_KEY_BYTES} bytes, got {len(key)}")
        self._key = key
        self._aead = AESGCM(key)
        self._id = hashlib.sha256(key).digest()[:_ID_BYTES]
        self._mac_key = hashlib.sha256(b"edgeworks digest\0" + key).digest()  # never the sealing key itself
        self.source = source

    @property
    def key_id(self) -> str:
        return self._id.hex()

    def export(self) -> bytes:
        """The key itself, for the isolate processes the front starts: it travels in their init
        message over their private pipe and is never written anywhere."""
        return self._key

    @staticmethod
    def is_sealed(blob: bytes) -> bool:
        return bytes(blob[: len(MAGIC)]) == MAGIC

    def seal(self, plaintext: bytes, context: str) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return MAGIC + self._id + nonce + self._aead.encrypt(nonce, plaintext, context.encode())

    def digest(self, data: bytes, context: str) -> str:
        """A keyed fingerprint of `data` (HMAC-SHA256): equal for equal data under one key, and,
        unlike a plain hash, no help to whoever guesses at a short secret without the key."""
        return hmac.new(self._mac_key, context.encode() + b"\0" + data, hashlib.sha256).hexdigest()

    def open(self, blob: bytes, context: str) -> bytes:
        blob = bytes(blob)
        if not self.is_sealed(blob):
            raise DataKeyError(f"{context}: not a sealed record")
        head = len(MAGIC)
        key_id, nonce = blob[head : head + _ID_BYTES], blob[head + _ID_BYTES : head + _ID_BYTES + _NONCE_BYTES]
        if key_id != self._id:
            raise DataKeyError(f"{context} was sealed with data key {key_id.hex()}, but the configured "
                               f"key ({self.source}) is {self.key_id}")
        try:
            return self._aead.decrypt(nonce, blob[head + _ID_BYTES + _NONCE_BYTES :], context.encode())
        except InvalidTag:
            raise DataKeyError(f"{context} does not verify under data key {self.key_id}: "
                               "it was altered or belongs to another record") from None


def default_dev_key_path(environ: Mapping[str, str] = os.environ) -> Path:
    config = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "edgeworks" / "data-key"


def load_data_key(state_dir: Path, *, dev: bool,
                  environ: Mapping[str, str] = os.environ) -> DataKey | None:
    """The configured key (see the module docstring), None in serve without one; raises
    `DataKeyError` naming the variable or file when the configuration is wrong."""
    if environ.get(ENV_KEY):
        return DataKey(_decode(environ[ENV_KEY], ENV_KEY), ENV_KEY)
    if environ.get(ENV_KEY_FILE):
        path, source = Path(environ[ENV_KEY_FILE]).expanduser(), ENV_KEY_FILE
    elif dev:
        path, source = default_dev_key_path(environ), "the dev data key"
    else:
        return None
    path = path.resolve()
    if path.is_relative_to(Path(state_dir).resolve()):
        raise DataKeyError(f"{source} {path} is inside the state dir {state_dir}: a copy of the "
                           "state dir would carry the key; keep it elsewhere")
    if not path.exists():
        if not dev:
            raise DataKeyError(f"{source} {path} does not exist ({HOW_TO_SET})")
        try:
            _create(path)
        except OSError as exc:
            raise DataKeyError(f"{source} {path} cannot be created: {exc} ({HOW_TO_SET})") from None
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataKeyError(f"{source} {path} cannot be read: {exc}") from None
    return DataKey(_decode(text, f"{source} {path}"), f"{source} {path}")


def _decode(text: str, source: str) -> bytes:
    s = text.strip().replace("+", "-").replace("/", "_").rstrip("=")
    try:
        key = base64.b64decode(s + "=" * (-len(s) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise DataKeyError(f"{source}: not base64 ({HOW_TO_SET})") from None
    if len(key) != _KEY_BYTES:
        raise DataKeyError(f"{source}: expected {_KEY_BYTES} bytes in base64, got {len(key)} "
                           f"({HOW_TO_SET})")
    return key


def _create(path: Path) -> None:
    """Write a new key to `path` unless another process just did (then its key wins)."""
    create_once(path, base64.urlsafe_b64encode(os.urandom(_KEY_BYTES)) + b"\n")
