"""The version store: immutable app bundles deployed to a running server.

Layout: ``<state_dir>/versions/<id>/app/`` holds the unpacked app dir and
``<state_dir>/versions/<id>/meta.json`` its `VersionMeta` (created time, who, message, source,
sha256 of every file). ``id`` is ``<first 12 hex of the content hash>-<UTC yyyymmddHHMMSS>``
(``-2``, ``-3``... on a collision), so the same content deployed twice gets two ids that share a
prefix. The content hash is the sha256 over the sorted ``path\\0sha256\\n`` lines.

A bundle is a gzipped tar of the app dir. `unpack_bundle` accepts only regular files and
directories with relative paths that stay inside the target (no ``..``, no absolute paths, no
links or devices), and stops at ``max_bytes`` of compressed input, ``max_unpacked_bytes`` of
file content and ``max_files`` entries; any violation raises `BundleError` and leaves nothing.
A name the filesystem refuses (too long, a file that is also a directory's parent, not UTF-8)
is a violation too; any other `OSError` (a full disk) is the store's and propagates.

Lifecycle: `stage(bundle)` unpacks into the version's final directory (its code must not move
once isolates import it) and returns a `StagedVersion`; the caller validates and loads it, then
`commit` writes ``meta.json`` (from then on the version is listed and never changes) or
`discard` removes the directory. A directory without ``meta.json`` is a failed or interrupted
stage and is never listed; it holds ``.pending`` with the pid of the process deploying it, and a
store opened later removes it (and ``.staging-<pid>-*`` dirs) once that process is gone, so a
kill -9 mid-deploy leaves nothing behind after the next start. `pack_dir` (defined in
`runtime.bundle`, re-exported here) builds a bundle from an app dir (what ``edgeworks deploy``
sends), skipping caches, VCS dirs, virtualenvs and state dirs.

Secrets: a bundle's ``.dev.vars`` (the app's secrets) never reaches the disk in clear. `stage`
keeps it in memory and writes it sealed with the data key (`runtime.datakey`, bound to the
version id) as ``app/.dev.vars.sealed``; `read_secrets` opens it when the version loads. Its
entry in ``files`` is a keyed digest (`DataKey.digest`), not a sha256 anyone could test guesses
against. Without a data key a deploy carrying ``.dev.vars`` is refused (`SecretsNeedKey`), and
the snapshot a server starts with leaves the file out (that version gets its secrets from the
app dir it was started on). A store opened with a key seals the clear ``.dev.vars`` that
versions written by older builds hold.

``<state_dir>/deployment.json`` records which versions were activated, the current one last, and the snapshot
of the app dir the server started from: a server restarted on an unchanged app dir resumes the
version that was current (see `runtime.admin.app`).
"""

from __future__ import annotations

import builtins
import errno
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import time
import uuid
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from runtime.bundle import pack_dir, secrets_file
from runtime.datakey import HOW_TO_SET, DataKey
from runtime.logs import log
from runtime.secrets import SEALED_SECRETS, SECRETS, secrets_context

__all__ = [
    "BundleError",
    "SecretsNeedKey",
    "StagedVersion",
    "VersionMeta",
    "VersionStore",
    "pack_dir",
    "unpack_bundle",
]

MAX_BUNDLE_BYTES = 64 * 1024 * 1024
MAX_UNPACKED_BYTES = 256 * 1024 * 1024
MAX_FILES = 10_000
NAME_MAX = 255  # bytes per path component on the filesystems we run on
# errors of open/mkdir that come from a member's name, not from the store's disk
_NAME_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.ENOTDIR, errno.EEXIST, errno.EISDIR, errno.EINVAL,
                          errno.EILSEQ, errno.ELOOP})


PENDING = ".pending"  # in an uncommitted version dir: the pid of the process deploying it


def _alive(pid: str) -> bool:
    """Whether `pid` (text) names a running process; an unreadable pid counts as gone."""
    if not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class BundleError(ValueError):
    """The bundle is not an acceptable app archive; the message says why."""


class SecretsNeedKey(BundleError):
    """The bundle carries secrets and there is no data key to seal them at rest."""


class VersionMeta(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    created: float
    created_by: str | None = None
    message: str | None = None
    source: Literal["upload", "initial"] = "upload"
    content_hash: str
    bytes: int
    files: dict[str, str]
    environment: str | None = None  # the manifest's [env.<name>] it is loaded with


@dataclass
class StagedVersion:
    id: str
    root: Path  # the app dir to load
    content_hash: str
    files: dict[str, str]
    size: int


def _hash_files(files: dict[str, str]) -> str:
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(f"{path}\0{files[path]}\n".encode())
    return h.hexdigest()


def _safe_name(name: str) -> PurePosixPath:
    if not name or "\\" in name or "\0" in name:
        raise BundleError(f"bad member name {name!r}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # tarfile hands undecodable bytes over as surrogates
        raise BundleError(f"member name {name!r} is not UTF-8") from None
    p = PurePosixPath(name)
    if p.is_absolute() or name.startswith("/"):
        raise BundleError(f"absolute path {name!r} in bundle")
    parts = [s for s in p.parts if s not in ("", ".")]
    if any(s == ".." for s in parts):
        raise BundleError(f"path {name!r} leaves the bundle")
    if not parts:
        raise BundleError(f"bad member name {name!r}")
    for part in parts:
        if len(part.encode()) > NAME_MAX:
            raise BundleError(f"{name!r}: the name {part[:40]!r}... is longer than {NAME_MAX} bytes")
    return PurePosixPath(*parts)


def _check_parents(dest: Path, rel: PurePosixPath) -> None:
    """Every parent of `rel` that exists must be a directory (one that is a file of the bundle
    would make the write fail with an OSError)."""
    for parent in list(rel.parents)[-2::-1]:
        p = dest.joinpath(*parent.parts)
        if p.exists() and not p.is_dir():
            raise BundleError(f"{rel}: {parent} is a file in this bundle, not a directory")


def unpack_bundle(data: bytes, dest: Path, *, max_bytes: int = MAX_BUNDLE_BYTES,
                  max_unpacked_bytes: int = MAX_UNPACKED_BYTES, max_files: int = MAX_FILES,
                  withhold: dict[str, bytes] | None = None) -> dict[str, str]:
    """Unpack a tar.gz into `dest` (which must not exist); return {path: sha256}. On any
    problem raise `BundleError` and remove whatever was written. With `withhold` (a dict), a
    top-level ``.dev.vars`` is not written: its bytes go into `withhold` (and not in the result)."""
    if len(data) > max_bytes:
        raise BundleError(f"bundle is {len(data)} bytes; the limit is {max_bytes}")
    if dest.exists():
        raise BundleError(f"{dest} already exists")
    files: dict[str, str] = {}
    total = 0
    try:
        dest.mkdir(parents=True)
        try:
            tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")
        except (tarfile.TarError, OSError, EOFError) as e:
            raise BundleError(f"not a gzipped tar archive: {e}") from None
        with tar:
            count = 0
            while True:
                try:
                    member = tar.next()
                except (tarfile.TarError, OSError, EOFError) as e:
                    raise BundleError(f"corrupt archive: {e}") from None
                if member is None:
                    break
                count += 1
                if count > max_files:
                    raise BundleError(f"bundle has more than {max_files} entries")
                rel = _safe_name(member.name)
                if withhold is not None and rel.parts[0] in withhold:
                    raise BundleError(f"{rel}: {rel.parts[0]} is a file in this bundle, not a directory")
                try:
                    _check_parents(dest, rel)
                    target = dest.joinpath(*rel.parts)
                    if member.isdir():
                        if target.exists() and not target.is_dir():
                            raise BundleError(f"{rel} is both a file and a directory")
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    if not member.isreg():
                        kind = "link" if member.issym() or member.islnk() else "special file"
                        raise BundleError(f"{rel} is a {kind}; bundles hold regular files only")
                    total += member.size
                    if total > max_unpacked_bytes:
                        raise BundleError(f"bundle unpacks to more than {max_unpacked_bytes} bytes")
                    key = rel.as_posix()
                    if key in files or target.exists():
                        raise BundleError(f"{rel} appears twice")
                    if withhold is not None and key == SECRETS:
                        withhold[key] = _read_member(tar, member, rel)
                        continue
                    files[key] = _extract(tar, member, rel, target)
                except OSError as e:
                    # A name the filesystem refuses is the bundle's problem; any other error
                    # (a full disk...) is the store's and propagates.
                    if e.errno in _NAME_ERRNOS:
                        raise BundleError(f"{str(rel)[:200]} cannot be unpacked: {e.strerror}") from None
                    raise
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    if not files and not withhold:
        shutil.rmtree(dest, ignore_errors=True)
        raise BundleError("bundle holds no files")
    return files


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, rel: PurePosixPath) -> bytes:
    """One regular file's bytes, kept in memory (its size counts against the unpacked limit)."""
    try:
        src = tar.extractfile(member)
        assert src is not None
        with src:
            return src.read()
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise BundleError(f"corrupt archive at {rel}: {e}") from None


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, rel: PurePosixPath, target: Path) -> str:
    """Write one regular file; return its sha256."""
    try:
        # Parents may not be links: only unpack_bundle writes under dest, and it never makes
        # one, so a plain mkdir is enough.
        target.parent.mkdir(parents=True, exist_ok=True)
        src = tar.extractfile(member)
        assert src is not None
        h = hashlib.sha256()
        with src, open(target, "xb") as out:
            while chunk := src.read(1 << 16):
                h.update(chunk)
                out.write(chunk)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise BundleError(f"corrupt archive at {rel}: {e}") from None
    return h.hexdigest()


def _write_new(path: Path, data: bytes) -> None:
    """Write `path` through a temp file and a rename, so it is never seen half written."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _shred(path: Path) -> None:
    """Overwrite a clear secrets file before unlinking it (no guarantee on journaling or
    copy-on-write filesystems, but the old bytes are no longer the file's)."""
    with open(path, "r+b") as f:
        f.write(b"\0" * os.fstat(f.fileno()).st_size)
        f.flush()
        os.fsync(f.fileno())
    path.unlink()


class VersionStore:
    """Immutable versions under ``<state_dir>/versions``; see the module docstring. `key` (the
    data key, None when none is configured) seals each version's secrets."""

    def __init__(self, state_dir: Path, clock: Callable[[], float] = time.time, *, key: DataKey | None = None):
        self.dir = Path(state_dir) / "versions"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._active = Path(state_dir) / "deployment.json"
        self._clock = clock
        self.key = key
        self._remove_interrupted()
        self._seal_clear_secrets()

    def _seal_clear_secrets(self) -> None:
        """Seal the clear ``.dev.vars`` of versions written by older builds (and give their
        ``files`` entry the keyed digest); without a key they stay as they are, readable."""
        for d in self.dir.iterdir():
            clear = d / "app" / SECRETS
            if d.name.startswith(".") or not clear.is_file() or not (d / "meta.json").exists():
                continue
            if self.key is None:
                log("version_secrets_in_clear", version=d.name,
                    reason=f"no data key to seal them with; {HOW_TO_SET}")
                continue
            data = clear.read_bytes()
            self._write_sealed(d / "app", d.name, data)
            meta = self.get(d.name)
            if meta is not None:
                files = {**meta.files, SECRETS: self._digest(data)}
                meta = meta.model_copy(update={"files": files, "content_hash": _hash_files(files)})
                _write_new(d / "meta.json", meta.model_dump_json(indent=1).encode())
            _shred(clear)
            log("version_secrets_sealed", version=d.name)

    def _write_sealed(self, app: Path, vid: str, secrets: bytes) -> None:
        """Version `vid`'s secrets, sealed, where `read_secrets` opens them."""
        assert self.key is not None
        _write_new(app / SEALED_SECRETS, self.key.seal(secrets, secrets_context(vid)))

    def _digest(self, data: bytes) -> str:
        assert self.key is not None
        return "keyed:" + self.key.digest(data, SECRETS)

    def _remove_interrupted(self) -> None:
        """Remove what a process killed mid-deploy left: staging dirs, version dirs that were
        never committed, unreplaced temp files. What a live process is still writing stays."""
        for d in self.dir.iterdir():
            if d.name.startswith(".staging-"):
                owner = d.name.split("-")[1]
            elif d.is_dir() and not (d / "meta.json").exists():
                try:
                    owner = (d / PENDING).read_text().strip()
                except OSError:
                    owner = ""  # no owner recorded: nobody can still be writing it
            else:
                continue
            if not _alive(owner):
                shutil.rmtree(d, ignore_errors=True)
                log("version_dir_removed", path=str(d), reason="an interrupted deploy left it uncommitted")
        for f in self._active.parent.glob(".deployment.*.tmp"):
            if not _alive(f.name.split(".")[2]):
                f.unlink(missing_ok=True)

    def stage(self, bundle: bytes, *, without_key: Literal["refuse", "leave_out"] = "refuse",
              **limits: int) -> StagedVersion:
        """Unpack `bundle` as a new, uncommitted version. Its ``.dev.vars`` is sealed; without a
        data key it is refused (`SecretsNeedKey`) or, with ``without_key="leave_out"``, left out."""
        tmp = self.dir / f".staging-{os.getpid()}-{uuid.uuid4().hex}"
        withheld: dict[str, bytes] = {}
        try:
            files = unpack_bundle(bundle, tmp / "app", withhold=withheld, **limits)
            secrets = withheld.get(SECRETS)
            if secrets is not None and self.key is None:
                if without_key == "refuse":
                    raise SecretsNeedKey(
                        f"the bundle carries {SECRETS} (secrets) and this server has no data key to seal "
                        f"them at rest, so it will not store them: {HOW_TO_SET}, and restart the server "
                        f"(or deploy without {SECRETS} and give the secrets through the environment)")
                log("version_secrets_left_out", reason=f"no data key to seal {SECRETS} with; {HOW_TO_SET}")
                secrets = None
            if secrets is not None:
                files[SECRETS] = self._digest(secrets)
            content_hash = _hash_files(files)
            vid = self._new_id(content_hash)
            if secrets is not None:
                self._write_sealed(tmp / "app", vid, secrets)
            # Until `commit` writes meta.json, the dir says who may still be deploying it.
            (tmp / PENDING).write_text(str(os.getpid()))
            os.rename(tmp, self.dir / vid)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        size = sum((self.dir / vid / "app" / p).stat().st_size for p in files if p != SECRETS)
        size += len(secrets or b"")
        return StagedVersion(vid, self.dir / vid / "app", content_hash, files, size)

    def _new_id(self, content_hash: str) -> str:
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(self._clock()))
        base = f"{content_hash[:12]}-{stamp}"
        vid, n = base, 1
        while (self.dir / vid).exists():
            n += 1
            vid = f"{base}-{n}"
        return vid

    def commit(self, staged: StagedVersion, *, by: str | None, message: str | None,
               source: Literal["upload", "initial"] = "upload", environment: str | None = None) -> VersionMeta:
        meta = VersionMeta(id=staged.id, created=round(self._clock(), 3), created_by=by, message=message,
                           source=source, content_hash=staged.content_hash, bytes=staged.size,
                           files=staged.files, environment=environment)
        final = self.dir / staged.id / "meta.json"
        tmp = final.with_suffix(".tmp")
        tmp.write_text(meta.model_dump_json(indent=1))
        os.replace(tmp, final)
        (final.parent / PENDING).unlink(missing_ok=True)
        return meta

    def discard(self, staged: StagedVersion) -> None:
        if not (self.dir / staged.id / "meta.json").exists():
            shutil.rmtree(self.dir / staged.id, ignore_errors=True)

    def get(self, vid: str) -> VersionMeta | None:
        if not vid or "/" in vid or vid.startswith("."):
            return None
        path = self.dir / vid / "meta.json"
        try:
            return VersionMeta.model_validate_json(path.read_text())
        except (OSError, ValueError):
            return None

    def app_dir(self, vid: str) -> Path:
        return self.dir / vid / "app"

    def list(self) -> list[VersionMeta]:
        out = []
        for d in self.dir.iterdir():
            if d.name.startswith("."):
                continue
            meta = self.get(d.name)
            if meta is not None:
                out.append(meta)
        return sorted(out, key=lambda m: (m.created, m.id))

    def read_active(self) -> dict[str, Any] | None:
        """What the last server of this state dir was serving (see `write_active`), if known."""
        try:
            state = json.loads(self._active.read_text())
        except (OSError, ValueError):
            return None
        history = state.get("history") if isinstance(state, dict) else None
        if not isinstance(history, list) or not all(isinstance(v, str) for v in history):
            return None
        return state

    def write_active(self, started_from: str, history: builtins.list[str]) -> None:
        """Record the activated versions (the current one last) and the snapshot of the app dir
        the server started from; written atomically."""
        final = self._active
        tmp = final.with_name(f".deployment.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"started_from": started_from, "history": history[-100:]}))
        os.replace(tmp, final)

    def record_dir(self, root: Path, *, by: str | None, message: str | None,
                   source: Literal["upload", "initial"] = "initial", skip: Iterable[Path] = (),
                   environment: str | None = None) -> VersionMeta:
        """Snapshot an app dir into the store (the version a server starts with), to be loaded
        with `environment`. An earlier snapshot of the same source, content and environment is
        reused instead of a new one."""
        bundle = pack_dir(root, skip=skip, secrets=secrets_file(root, environment))
        staged = self.stage(bundle, without_key="leave_out", max_bytes=1 << 62,
                            max_unpacked_bytes=1 << 62, max_files=1 << 30)
        for meta in reversed(self.list()):
            if (meta.source, meta.content_hash, meta.environment) == (source, staged.content_hash, environment):
                self.discard(staged)
                return meta
        return self.commit(staged, by=by, message=message, source=source, environment=environment)

    @staticmethod
    def describe(meta: VersionMeta) -> dict[str, object]:
        return json.loads(meta.model_dump_json(exclude={"files"})) | {"file_count": len(meta.files)}
