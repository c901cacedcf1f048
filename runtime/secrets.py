"""An app's secrets: which names it declares, where their values come from, and the sealed copy
a deployed version holds (sealed with the data key, see `runtime.datakey`; the version store in
`runtime/admin/versions.py` seals them, the front opens them when it loads the version).

Declared names: each script's ``secrets = [...]`` (wrangler's ``secrets.required``) and
``[auth] secret``; a missing one fails the start, a reload or a deploy with an error naming the
secret and every place it was looked for. The secrets ``[ai]`` providers name are looked up the
same way but are optional: a provider whose secret is missing fails its own calls only. Names
nobody declares are never read, so the process environment is not the app's env.

Where a declared secret is looked for, first found wins (`SecretSources.resolve`):
- ``dev``: the app's ``.dev.vars.<env>`` when ``--env`` names an environment and the file
  exists, else ``.dev.vars`` (as wrangler does); then the places ``serve`` looks;
- ``serve``: the environment variable ``NAME``; the file named by ``NAME_FILE`` (both set is an
  error); ``NAME`` in the secrets dir (``--secrets-dir`` or ``EDGEWORKS_SECRETS_DIR``: one file
  per secret, as Docker and Kubernetes mount them); a trailing newline of a file is not part of
  the value. Last, and with a warning, the app dir's ``.dev.vars``: production secrets belong in
  the places above;
- a deployed version: the secrets its bundle carried (sealed), then the places ``serve`` looks.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.config import ConfigError, parse_dev_vars, read_dev_vars
from runtime.datakey import HOW_TO_SET, DataKey, DataKeyError

if TYPE_CHECKING:
    from runtime.config import AppConfig

__all__ = ["SEALED_SECRETS", "SECRETS", "SECRETS_DIR_VAR", "ResolvedSecrets", "SecretSources",
           "declared_secrets", "read_secrets", "secrets_context"]

SECRETS = ".dev.vars"  # the app's secrets (see `runtime.config.read_dev_vars`)
SEALED_SECRETS = ".dev.vars.sealed"  # what a version dir holds instead
SECRETS_DIR_VAR = "EDGEWORKS_SECRETS_DIR"
MAX_SECRET_FILE_BYTES = 1024 * 1024


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


def declared_secrets(app: AppConfig) -> tuple[dict[str, str], dict[str, str]]:
    """(required, optional): secret name -> the key path that names it."""
    required: dict[str, str] = {}
    for s in app.scripts:
        for name in s.secrets:
            required.setdefault(name, f"scripts.{s.name}.secrets")
    if app.auth is not None and app.auth.secret:
        required.setdefault(app.auth.secret, "auth.secret")
    optional: dict[str, str] = {}
    if app.ai is not None:
        for pname, p in app.ai.providers.items():
            for field in ("api_key_secret", "account_id_secret", "api_token_secret"):
                if (name := getattr(p, field)) and name not in required:
                    optional.setdefault(name, f"ai.providers.{pname}.{field}")
    return required, optional


@dataclasses.dataclass(frozen=True)
class ResolvedSecrets:
    """The declared secrets found: their values, where each was found, and the names `serve`
    found only in the app dir's clear ``.dev.vars`` (worth a warning)."""

    values: dict[str, str]
    origins: dict[str, str]
    from_dev_vars: list[str]


def _app_files(app: AppConfig, key: DataKey | None, *, dev: bool) -> tuple[dict[str, str], str, bool]:
    """(values, origin, whether they come first) of the app dir's secrets file: a version's
    sealed copy and, in dev, ``.dev.vars.<env>`` or ``.dev.vars`` come first; serve reads the
    clear file last."""
    root = app.root
    if (root / SEALED_SECRETS).is_file():
        return read_secrets(root, key), f"version {root.parent.name}'s sealed secrets", True
    env_file = root / f"{SECRETS}.{app.environment}"
    if app.environment and env_file.is_file():
        return parse_dev_vars(_read_file(env_file, env_file.name)), str(env_file), dev
    return read_dev_vars(root), str(root / SECRETS), dev


def _read_file(path: Path, what: str) -> str:
    """A secret file's value (one trailing newline dropped); problems name `what`, never the value."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as e:
        raise ConfigError([f"{what}: cannot be read: {e.strerror}"]) from None
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise ConfigError([f"{what}: larger than {MAX_SECRET_FILE_BYTES} bytes: not a secret value"])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([f"{what}: not UTF-8 text ({e.reason} at byte {e.start})"]) from None
    return text.removesuffix("\n").removesuffix("\r")


@dataclasses.dataclass(frozen=True)
class SecretSources:
    """Where this process looks for an app's secrets (see the module docstring). `environ` is
    the process environment; `secrets_dir` holds one file per secret."""

    dev: bool
    environ: Mapping[str, str] = dataclasses.field(default_factory=lambda: os.environ)
    secrets_dir: Path | None = None

    @classmethod
    def of_process(cls, *, dev: bool, secrets_dir: str | None = None) -> SecretSources:
        """`secrets_dir` given on the command line, else ``EDGEWORKS_SECRETS_DIR``; a dir that
        does not exist is a ConfigError."""
        given = secrets_dir or os.environ.get(SECRETS_DIR_VAR) or None
        if given is not None and not Path(given).is_dir():
            flag = "--secrets-dir" if secrets_dir else SECRETS_DIR_VAR
            raise ConfigError([f"{flag} {given}: not a directory"])
        return cls(dev, os.environ, Path(given).resolve() if given is not None else None)

    def resolve(self, app: AppConfig, key: DataKey | None) -> ResolvedSecrets:
        """The declared secrets of `app` (`key` opens a version's sealed ones); raise
        ConfigError with one line per missing required secret, naming every place looked."""
        required, optional = declared_secrets(app)
        files, file_origin, files_first = _app_files(app, key, dev=self.dev)

        def from_files(name: str, places: list[str]) -> tuple[str, str] | None:
            places.append(file_origin)
            return (files[name], file_origin) if name in files else None

        lookups: list[Callable[[str, list[str]], tuple[str, str] | None]] = [
            self._from_env, self._from_env_file, self._from_dir]
        lookups.insert(0 if files_first else len(lookups), from_files)
        values: dict[str, str] = {}
        origins: dict[str, str] = {}
        problems: list[str] = []
        for name, declared_by in (required | optional).items():
            places: list[str] = []
            try:
                found = next((f for lookup in lookups if (f := lookup(name, places)) is not None), None)
            except ConfigError as e:
                problems += [f"secret {name!r} ({declared_by}): {p}" for p in e.problems]
                continue
            if found is not None:
                values[name], origins[name] = found
            elif name in required:
                problems.append(f"secret {name!r} ({declared_by}) is not set; looked in: {'; '.join(places)}")
        if problems:
            raise ConfigError(problems)
        late = [] if files_first else sorted(n for n, o in origins.items() if o == file_origin)
        return ResolvedSecrets(values, origins, late)

    def _from_env(self, name: str, places: list[str]) -> tuple[str, str] | None:
        places.append(f"the environment variable {name}")
        if name in self.environ and f"{name}_FILE" in self.environ:
            raise ConfigError([f"both {name} and {name}_FILE are set in the environment: set one"])
        return (self.environ[name], f"the environment variable {name}") if name in self.environ else None

    def _from_env_file(self, name: str, places: list[str]) -> tuple[str, str] | None:
        var = f"{name}_FILE"
        places.append(f"the file named by the environment variable {var}")
        path = self.environ.get(var)
        if not path:
            return None
        return _read_file(Path(path), f"{var}={path}"), f"the file {path} ({var})"

    def _from_dir(self, name: str, places: list[str]) -> tuple[str, str] | None:
        if self.secrets_dir is None:
            places.append(f"a secrets dir (none given: --secrets-dir or {SECRETS_DIR_VAR})")
            return None
        path = self.secrets_dir / name
        places.append(str(path))
        return (_read_file(path, str(path)), str(path)) if path.is_file() else None
