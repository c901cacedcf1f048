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

__all__ = ["SKIP_DIRS", "SKIP_SUFFIXES", "pack_dir"]

SKIP_DIRS = frozenset({"__pycache__", ".git", ".hg", ".svn", ".venv", "venv", "node_modules",
                       ".edgeworks", ".mypy_cache", ".pytest_cache", ".ruff_cache"})
SKIP_SUFFIXES = (".pyc", ".pyo")


def _walk(root: Path, skip: Iterable[Path]) -> list[tuple[Path, str]]:
    """The regular files under `root` to pack, as (path, archive name), in a stable order."""
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
            out.append((p, p.relative_to(root).as_posix()))
    return out


def pack_dir(root: str | Path, *, skip: Iterable[Path] = ()) -> bytes:
    """A tar.gz of the app dir `root` (links followed to regular files; caches, VCS dirs,
    virtualenvs, ``.edgeworks`` and the dirs in `skip` left out)."""
    root = Path(root).resolve()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path, arcname in _walk(root, skip):
            data = path.read_bytes()
            info = tarfile.TarInfo(arcname)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
