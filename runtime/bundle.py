"""App bundles: the gzipped tar of an app dir that ``edgeworks deploy`` sends to a server.

Standard library only, so the CLI packs a bundle without importing the server side (config,
pydantic, the object store); `runtime.admin.versions` unpacks and stores what this module packs.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterable
from pathlib import Path

__all__ = ["SECRETS_FILE", "SKIP_DIRS", "SKIP_SUFFIXES", "pack_dir", "secrets_file"]

SKIP_DIRS = frozenset({"__pycache__", ".git", ".hg", ".svn", ".venv", "venv", "node_modules",
                       ".edgeworks", ".mypy_cache", ".pytest_cache", ".ruff_cache"})
SKIP_SUFFIXES = (".pyc", ".pyo")
SECRETS_FILE = ".dev.vars"  # the one secrets file a bundle carries (sealed by the server)


def secrets_file(root: Path, environment: str | None) -> str:
    """The app dir's file that goes into a bundle as its secrets: ``.dev.vars.<environment>``
    when it exists (the file `dev --env` reads), else ``.dev.vars``."""
    if environment and (Path(root) / f"{SECRETS_FILE}.{environment}").is_file():
        return f"{SECRETS_FILE}.{environment}"
    return SECRETS_FILE


def _walk(root: Path, skip: Iterable[Path], secrets: str) -> list[tuple[Path, str]]:
    """The regular files under `root` to pack, as (path, archive name), in a stable order; of
    the app's secrets files only `secrets`, named ``.dev.vars``."""
    skip_resolved = {p.resolve() for p in skip}
    out: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = sorted(n for n in dirnames if n not in SKIP_DIRS and not (d / n).is_symlink()
                             and (d / n).resolve() not in skip_resolved)
        for name in sorted(filenames):
            p = d / name
            if name.endswith(SKIP_SUFFIXES) or not p.is_file():
                continue
            if d == root and name.startswith(SECRETS_FILE):
                if name == secrets:
                    out.append((p, SECRETS_FILE))
                continue
            out.append((p, p.relative_to(root).as_posix()))
    return out


def pack_dir(root: str | Path, *, skip: Iterable[Path] = (), secrets: str = SECRETS_FILE) -> bytes:
    """A tar.gz of the app dir `root` (links followed to regular files; caches, VCS dirs,
    virtualenvs, ``.edgeworks`` and the dirs in `skip` left out). Its secrets travel as
    ``.dev.vars`` from the file `secrets` names (see `secrets_file`); other ``.dev.vars.*``
    files (another environment's secrets) never leave the app dir."""
    root = Path(root).resolve()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path, arcname in _walk(root, skip, secrets):
            data = path.read_bytes()
            info = tarfile.TarInfo(arcname)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
