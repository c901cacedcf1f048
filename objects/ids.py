"""Durable object ids: deterministic from a name, or random; both bound to their namespace.

An id is 32 bytes shown as 64 lowercase hex characters: a 16-byte body and a 16-byte tag.

- The namespace key is ``HMAC-SHA256(secret, "edgeworks/do-namespace\\0" script \\0 class \\0
  tenant)``; ``tenant`` is the empty string unless the namespace is tenant-scoped.
- ``id_from_name(name)``: body = ``HMAC(namespace key, "name\\0" + name)[:16]``: the same name in
  the same namespace (and tenant) always gives the same id, in every process.
- ``new_unique_id()``: body = 16 random bytes.
- tag = ``HMAC(namespace key, "tag\\0" + body)[:16]``. ``id_from_string`` recomputes the tag,
  so an id minted by another namespace, or for another tenant of a tenant-scoped namespace, is
  rejected with ``InvalidIdError``.

``owner_index(id, n)`` maps an id to one of ``n`` owners with SHA-256, so every process agrees.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from objects.errors import InvalidIdError

__all__ = ["DurableObjectId", "IdFactory", "owner_index"]

_BODY = 16
_HEX_LEN = 64
_HEX_DIGITS = frozenset("0123456789abcdef")


class DurableObjectId:
    """An object id. ``str(id)`` is its 64-hex form; ``.name`` is set when derived from a name."""

    __slots__ = ("_hex", "name")

    def __init__(self, hex_id: str, name: str | None = None) -> None:
        _check_hex(hex_id)
        self._hex = hex_id
        self.name = name

    @property
    def hex(self) -> str:
        return self._hex

    def __str__(self) -> str:
        return self._hex

    def __repr__(self) -> str:
        extra = f", name={self.name!r}" if self.name is not None else ""
        return f"DurableObjectId({self._hex!r}{extra})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DurableObjectId):
            return self._hex == other._hex
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._hex)

    def toString(self) -> str:  # noqa: N802 - Cloudflare's name
        return self._hex

    def equals(self, other: object) -> bool:
        return self == other


def _check_hex(s: object) -> None:
    if not isinstance(s, str) or len(s) != _HEX_LEN or not _HEX_DIGITS.issuperset(s):
        raise InvalidIdError(
            f"invalid durable object id {s!r}: expected {_HEX_LEN} lowercase hex characters"
        )


class IdFactory:
    """Mints and checks ids for one namespace (script, class) and, if scoped, one tenant."""

    def __init__(self, script: str, class_name: str, tenant: str | None, secret: bytes) -> None:
        self.script = script
        self.class_name = class_name
        self.tenant = tenant
        material = b"\0".join(
            [b"edgeworks/do-namespace", script.encode(), class_name.encode(), (tenant or "").encode()]
        )
        self._key = hmac.new(secret, material, hashlib.sha256).digest()

    def _tag(self, body: bytes) -> bytes:
        return hmac.new(self._key, b"tag\0" + body, hashlib.sha256).digest()[:_BODY]

    def from_name(self, name: str) -> DurableObjectId:
        if not isinstance(name, str) or not name:
            raise ValueError(f"durable object name must be a non-empty str, got {name!r}")
        body = hmac.new(self._key, b"name\0" + name.encode(), hashlib.sha256).digest()[:_BODY]
        return DurableObjectId((body + self._tag(body)).hex(), name=name)

    def new_unique(self) -> DurableObjectId:
        body = os.urandom(_BODY)
        return DurableObjectId((body + self._tag(body)).hex())

    def from_string(self, s: str) -> DurableObjectId:
        _check_hex(s)
        raw = bytes.fromhex(s)
        if not hmac.compare_digest(raw[_BODY:], self._tag(raw[:_BODY])):
            where = f"{self.script}/{self.class_name}"
            if self.tenant is not None:
                where += f" for tenant {self.tenant!r}"
            raise InvalidIdError(
                f"durable object id {s!r} does not belong to namespace {where} "
                "(it was minted by another namespace or tenant)"
            )
        return DurableObjectId(s)

    def check(self, id: DurableObjectId) -> DurableObjectId:
        checked = self.from_string(str(id))
        checked.name = id.name
        return checked


def owner_index(id: DurableObjectId | str, n: int) -> int:
    """Index in ``range(n)`` of the owner of ``id``; identical in every process and run."""
    if n < 1:
        raise ValueError(f"owner_index needs n >= 1, got {n}")
    hex_id = str(id)
    _check_hex(hex_id)
    digest = hashlib.sha256(bytes.fromhex(hex_id)).digest()
    return int.from_bytes(digest[:8], "big") % n
