"""Keys and values of the KV storage API: validation and msgpack encoding.

- Keys: non-empty ``str`` of at most ``max_key_bytes`` (default 2048) UTF-8 bytes.
- Values: anything msgpack can serialize (None, bool, int in the 64-bit range, float, str,
  bytes, list/tuple, dict); stored as msgpack bytes of at most ``max_value_bytes`` (default
  128 KiB). Tuples come back as lists. Every read returns a fresh copy.

Errors name the key and the limit: ``TypeError`` for a wrong type, ``ValueError`` for a size.
"""

from __future__ import annotations

from typing import Any

import msgpack

__all__ = ["DEFAULT_MAX_KEY_BYTES", "DEFAULT_MAX_VALUE_BYTES", "check_key", "decode", "encode"]

DEFAULT_MAX_KEY_BYTES = 2048
DEFAULT_MAX_VALUE_BYTES = 128 * 1024


def _short(key: str) -> str:
    return repr(key if len(key) <= 64 else key[:61] + "...")


def check_key(key: Any, max_key_bytes: int = DEFAULT_MAX_KEY_BYTES) -> str:
    if not isinstance(key, str):
        raise TypeError(f"storage key must be a str, got {type(key).__name__}: {key!r}")
    if not key:
        raise ValueError("storage key must not be empty")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"storage key {_short(key)} is not valid UTF-8 (lone surrogate)") from None
    if size > max_key_bytes:
        raise ValueError(
            f"storage key {_short(key)} is {size} bytes; the limit is {max_key_bytes} bytes"
        )
    return key


def encode(key: str, value: Any, max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES) -> bytes:
    try:
        data = msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(
            f"value for storage key {_short(key)} is not msgpack-serializable "
            f"({type(value).__name__}): {exc}"
        ) from None
    if len(data) > max_value_bytes:
        raise ValueError(
            f"value for storage key {_short(key)} is {len(data)} bytes serialized; "
            f"the limit is {max_value_bytes} bytes"
        )
    return data


def decode(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)
