"""An app's secrets: the clear ``.dev.vars`` of an app dir, or the sealed copy a deployed
version holds instead (sealed with the data key, see `runtime.datakey`; the version store in
`runtime/admin/versions.py` seals them, the front opens them when it loads the version)."""

from __future__ import annotations

from pathlib import Path

from runtime.config import ConfigError, parse_dev_vars, read_dev_vars
from runtime.datakey import HOW_TO_SET, DataKey, DataKeyError

__all__ = ["SEALED_SECRETS", "SECRETS", "read_secrets", "secrets_context"]

SECRETS = ".dev.vars"  # the app's secrets (see `runtime.config.read_dev_vars`)
SEALED_SECRETS = ".dev.vars.sealed"  # what a version dir holds instead


def secrets_context(vid: str) -> str:
    return f"version/{vid}/{SECRETS}"


def read_secrets(root: Path, key: DataKey | None) -> dict[str, str]:
    """The secrets of the app at `root`: a version's sealed ``.dev.vars`` opened with `key`, else
    the clear ``.dev.vars`` of an app dir (or of a version no key has sealed yet). A problem is
    a ConfigError naming the file."""
    sealed = root / SEALED_SECRETS
    if not sealed.is_file():
        return read_dev_vars(root)
    vid = root.parent.name  # <versions>/<id>/app
    if key is None:
        raise ConfigError([f"{SEALED_SECRETS}: version {vid}'s secrets are sealed and no data key is "
                           f"configured ({HOW_TO_SET})"])
    try:
        data = key.open(sealed.read_bytes(), secrets_context(vid))
    except OSError as e:
        raise ConfigError([f"{SEALED_SECRETS}: cannot be read: {e.strerror}"]) from None
    except DataKeyError as e:
        raise ConfigError([f"{SEALED_SECRETS}: {e}"]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([f"{SECRETS}: not UTF-8 text ({e.reason} at byte {e.start})"]) from None
    return parse_dev_vars(text)
