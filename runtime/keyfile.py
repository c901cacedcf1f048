"""Key files kept outside the state dir (the data key, the audit signing key): created once,
whoever gets there first."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["create_once"]


def create_once(path: Path, data: bytes) -> None:
    """Write `data` to `path` (mode 0600, parent dirs 0700) unless the file exists, also when
    another process creates it at the same moment: then its file wins and stays as it is. The
    data is written and fsynced under a unique temporary name and linked into place, so `path`
    is never seen half written and never replaced (what a key sealed or signed stays usable)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
