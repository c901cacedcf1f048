"""The manifest's ``[redaction]`` section: how copies of data meant for people are redacted, per
classification level of the data.

    [redaction.confidential]
    mode = "hash"          # mask (default) | hash | drop

    [redaction.restricted]
    mode = "drop"

Copies meant for people are log lines (stderr and ``edgeworks tail``), audit entries, the admin
API's workflow views (and so ``edgeworks workflows``) and the error messages stored with workflow
records. Each goes through the redactor of its data's level: a log line's ``level`` field, an
audit entry's ``classification``, a workflow instance's ``level``. What each mode does is
`runtime.redact`'s: ``mask`` replaces each finding by ``[redacted:<label>]`` (the default at
every level: what edgeworks always did), ``hash`` by ``[hash:<12 hex>]`` (an HMAC-SHA256 under a
key derived from the data key: equal values stay linkable, so a subject can be followed across
entries without being named), ``drop`` by ``[dropped]``. At the highest level (``restricted`` by
default) a hash or drop mode replaces every string value whole, not only what the patterns find:
data of that level may be personal anywhere; ids, names and statuses the runtime chooses are kept
(`runtime.redact.IDENTIFIER_FIELDS`).

A copy with no level (a log line outside any request) is redacted as ``internal`` data (the
audit log's default classification; the lowest level when the levels have no ``internal``); a
level name the app does not define, as its highest level. Records the runtime replays are not
redacted but sealed (`runtime.datakey`); user object storage is the user's and untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, RootModel

from runtime.ai.config import DEFAULT_LEVELS
from runtime.datakey import HOW_TO_SET, DataKey
from runtime.redact import RedactionMode, Redactor

__all__ = ["LevelRedaction", "RedactionConfig", "RedactionPolicy", "hash_key_of", "policy_from_wire", "policy_of",
           "redaction_wire"]

_DEFAULT_LEVEL = "internal"


class LevelRedaction(BaseModel):
    """``[redaction.<level>]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: RedactionMode = "mask"


class RedactionConfig(RootModel[dict[str, LevelRedaction]]):
    """``[redaction]``: a table per classification level."""

    root: dict[str, LevelRedaction] = {}

    def problems(self, levels: Sequence[str], where: str = "redaction") -> list[tuple[str, str]]:
        """(key path, problem) for each table that names no level."""
        return [(f"{where}.{name}", f"{name!r} is not one of levels {list(levels)}")
                for name in self.root if name not in levels]

    def needs_hash_key(self) -> bool:
        return any(rule.mode == "hash" for rule in self.root.values())


def hash_key_of(key: DataKey) -> bytes:
    """The HMAC key of the hash mode, derived from the data key (never the data key itself), so
    every process of the runtime hashes a value alike and nobody without the key can test a guess."""
    return bytes.fromhex(key.digest(b"hash mode", "redaction"))


class RedactionPolicy:
    """The redactor of each level (levels with the same treatment share one, and its caches)."""

    def __init__(self, config: RedactionConfig | None = None, levels: Sequence[str] = DEFAULT_LEVELS,
                 *, patterns: Iterable[str] = (), hash_key: bytes | None = None) -> None:
        """Raises `RedactionPatternError` for a bad pattern and ValueError when a level asks for
        the hash mode and there is no key (no data key configured)."""
        rules = (config or RedactionConfig()).root
        patterns = tuple(patterns)
        if hash_key is None and any(rule.mode == "hash" for rule in rules.values()):
            raise ValueError(f"[redaction] mode = \"hash\" needs the data key (its HMAC key is derived "
                             f"from it) and none is configured: {HOW_TO_SET}")
        levels = tuple(levels) or tuple(DEFAULT_LEVELS)
        shared: dict[tuple[str, bool], Redactor] = {}
        self._by_level: dict[str, Redactor] = {}
        for i, level in enumerate(levels):
            mode = rules[level].mode if level in rules else "mask"
            whole = mode != "mask" and i == len(levels) - 1
            if (mode, whole) not in shared:
                shared[mode, whole] = Redactor(patterns, mode=mode, hash_key=hash_key, whole_values=whole)
            self._by_level[level] = shared[mode, whole]
        self.highest = self._by_level[levels[-1]]  # also for data whose level is not known
        self.default = self._by_level.get(_DEFAULT_LEVEL, self._by_level[levels[0]])

    def for_level(self, level: str | None) -> Redactor:
        """The redactor for data of `level` (see the module docstring for None and unknown names)."""
        if level is None:
            return self.default
        return self._by_level.get(level, self.highest)


class _App(Protocol):
    """What `policy_of` reads of a `runtime.config.AppConfig` (not imported: the audit log, which
    redacts with a policy, must not pull in the manifest models and every binding)."""

    @property
    def redaction(self) -> RedactionConfig: ...
    @property
    def ai(self) -> Any: ...
    @property
    def audit(self) -> Any: ...


def policy_of(app: _App, key: DataKey | None) -> RedactionPolicy:
    """The policy of `app`'s manifest (its levels, `[redaction]` and `[audit] redact_patterns`)."""
    levels = app.ai.levels if app.ai is not None else DEFAULT_LEVELS
    return RedactionPolicy(app.redaction, levels, patterns=app.audit.redact_patterns,
                           hash_key=hash_key_of(key) if key is not None else None)


def redaction_wire(app: _App) -> dict[str, Any]:
    """What an isolate needs to redact its log lines as the front does (`policy_from_wire`)."""
    return {"modes": {level: rule.mode for level, rule in app.redaction.root.items()},
            "patterns": list(app.audit.redact_patterns)}


def policy_from_wire(wire: dict[str, Any] | None, levels: Sequence[str], key: DataKey | None) -> RedactionPolicy:
    """The policy `redaction_wire` describes (the default policy for None)."""
    if wire is None:
        return RedactionPolicy(levels=levels)
    config = RedactionConfig({level: LevelRedaction(mode=mode) for level, mode in wire["modes"].items()})
    return RedactionPolicy(config, levels, patterns=wire["patterns"],
                           hash_key=hash_key_of(key) if key is not None else None)
