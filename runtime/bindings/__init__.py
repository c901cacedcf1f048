"""Env bindings: every kind is one module that declares a `BindingKind`, listed once in `KINDS`.

A kind declares, in one place:
- `fields`: the keys it owns in a script's manifest table (`[[scripts.durable_objects]]`...),
  each with its pydantic type and default; `runtime.config.ScriptConfig` is built from them.
- `env_names(script)`: the env names it defines, each with the key path that defines it; one
  check (`env_name_problems`) refuses any name defined twice, whichever kinds define it.
- `check(script, app)`: its own cross-script checks (a service names a script that exists...).
- `build(host)`: inside the isolate, once per load, the env entries it provides; `finish(host)`
  runs after every kind's `build` (a kind that needs what others registered, like the object
  host built from every durable-object class, does its work there: no order between kinds).
- `ops`: isolate-side handlers of protocol messages the front sends for it (`runtime.protocol`).
- `relays`: front-side handlers of protocol messages its isolate objects send (calls the front
  forwards to another isolate), given a `RelayPort`.

Adding a binding kind is one new module and one line in `_load_kinds`. A kind may also live outside
this package: `EDGEWORKS_BINDINGS=package.module[,...]` (read when this package is imported, in
the front and in every isolate) appends each module's `KIND`.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from runtime.classification import Levels

if TYPE_CHECKING:
    from runtime.config import AppConfig, ScriptConfig
    from runtime.datakey import DataKey
    from runtime.ipc import Channel
    from runtime.isolate.context import RequestScope
    from runtime.killswitch import KillSwitch
    from runtime.protocol import Message

__all__ = ["KINDS", "BindingHost", "BindingKind", "Env", "IsolateAPI", "RelayPort", "build_env",
           "env_name_problems", "isolate_ops", "kind_fields", "relays"]

AuditHook = Callable[[str, dict[str, Any]], None]


class IsolateAPI(Protocol):
    """What an isolate-side op handler may use of the isolate serving it."""

    env: Env
    hosts: dict[str, Any]

    def scope(self, rid: str | None, identity: dict[str, Any] | None, risk: str = "low",
              level: str | None = None, task_class: str | None = None) -> RequestScope: ...

    async def run_limited(self, rid: str | None, work: Awaitable[Any],
                          local: bool = True) -> tuple[Any, dict[str, Any] | None, float]: ...


class RelayPort(Protocol):
    """What a front-side relay may use: forward a message to an isolate of a script of the
    current deployment (any isolate, or the one in `slot`), waiting boundedly for it to be
    ready and at most the target's wall time for the answer. Raises `LookupError` for a
    script the deployment does not have; isolate deaths and limits become error replies."""

    async def forward(self, script: str, msg: Message, *, slot: Callable[[int], int] | None = None) -> dict[str, Any]: ...

    def service(self, name: str) -> Any:
        """A front-wide service a kind's relays use (``"ai"``: the AI gateway)."""


IsolateOp = Callable[["IsolateAPI", Any], Awaitable[Any]]  # (isolate, message) -> reply
FrontRelay = Callable[["RelayPort", Any], Awaitable[dict[str, Any]]]  # (port, message) -> reply map


def _no_entries(host: BindingHost) -> dict[str, Any]:
    return {}


@dataclasses.dataclass(frozen=True)
class BindingKind:
    name: str
    fields: Mapping[str, tuple[Any, Any]]  # manifest key -> (annotation, default)
    env_names: Callable[[ScriptConfig], list[tuple[str, str]]]  # -> [(key path, env name)]
    build: Callable[[BindingHost], dict[str, Any] | Awaitable[dict[str, Any]]] = _no_entries
    finish: Callable[[BindingHost], Awaitable[None]] | None = None
    check: Callable[[ScriptConfig, AppConfig], list[tuple[str, str]]] | None = None  # -> [(key path, problem)]
    ops: Mapping[type[Message], IsolateOp] = dataclasses.field(default_factory=dict)
    relays: Mapping[type[Message], FrontRelay] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class BindingHost:
    """What a binding kind may use inside the isolate while the script loads."""

    script: ScriptConfig
    app_root: Path
    state_dir: Path
    channel: Channel
    module: Any  # the script's loaded main module
    pool_index: int = 0
    pool_size: int = 1
    dev: bool = False
    secrets: dict[str, str] = dataclasses.field(default_factory=dict)
    audit: AuditHook | None = None
    kills: KillSwitch | None = None  # this process's kill switch on the state dir
    env: Env | None = None  # the Env being built, for bindings that hand it to user classes
    hosts: dict[str, Any] = dataclasses.field(default_factory=dict)  # per-kind hosts the isolate serves
    object_classes: dict[str, Any] = dataclasses.field(default_factory=dict)  # durable-object classes, by name
    levels: Levels = dataclasses.field(default_factory=Levels)  # the app's classification levels, in order
    data_key: DataKey | None = None  # seals the records the runtime replays (None: serve without a key)
    principals: dict[str, list[str] | None] | None = None  # the app's principals and their ceilings (None: unchecked)
    egress: Any = None  # the isolate's EgressClient (runtime.egress): every outbound call goes through it


class Env:
    """`env`: bindings as attributes (`env.GREETING`, `env.COUNTER`) and as items."""

    def __init__(self, entries: dict[str, Any]):
        self.__dict__.update(entries)

    def __getitem__(self, name: str) -> Any:
        try:
            return self.__dict__[name]
        except KeyError:
            raise KeyError(f"no binding named {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.__dict__

    def get(self, name: str, default: Any = None) -> Any:
        return self.__dict__.get(name, default)

    def __repr__(self) -> str:
        return f"Env({', '.join(sorted(self.__dict__))})"


def _load_kinds() -> list[BindingKind]:
    from runtime.bindings import (
        ai,
        d1,
        durable_objects,
        kv,
        r2,
        services,
        tools,
        variables,
        workflows,
    )

    kinds = [variables.KIND, services.KIND, workflows.KIND, durable_objects.KIND, tools.KIND, ai.KIND,
             kv.KIND, d1.KIND, r2.KIND]
    for name in filter(None, (m.strip() for m in os.environ.get("EDGEWORKS_BINDINGS", "").split(","))):
        kinds.append(importlib.import_module(name).KIND)
    seen: dict[str, str] = {}
    for kind in kinds:
        for key in kind.fields:
            if key in seen:
                raise ValueError(f"manifest key {key!r} is claimed by binding kinds {seen[key]!r} and {kind.name!r}")
            seen[key] = kind.name
    return kinds


KINDS: list[BindingKind] = _load_kinds()


def kind_fields() -> dict[str, tuple[Any, Any]]:
    """Every manifest key a binding kind owns, for `ScriptConfig`."""
    return {key: spec for kind in KINDS for key, spec in kind.fields.items()}


def env_name_problems(script: ScriptConfig, where: str = "") -> list[tuple[str, str]]:
    """(key path, problem) for every env name defined twice in `script`, by any kinds; the
    problem names the other definition's key path, prefixed with `where` (the script's own)."""
    defined: dict[str, str] = {}
    problems = []
    for kind in KINDS:
        for path, name in kind.env_names(script):
            if name in defined:
                problems.append((path, f"binding name {name!r} is used twice (also defined by {where}{defined[name]})"))
            defined.setdefault(name, path)
    return problems


def isolate_ops() -> dict[type[Message], IsolateOp]:
    return {cls: op for kind in KINDS for cls, op in kind.ops.items()}


def relays() -> dict[type[Message], FrontRelay]:
    return {cls: relay for kind in KINDS for cls, relay in kind.relays.items()}


async def build_env(host: BindingHost) -> Env:
    """Every kind's entries in one `Env`; a name two kinds define is an error (the manifest
    check refuses it first: one binding never silently replaces another)."""
    env = Env({})
    host.env = env
    for kind in KINDS:
        entries = kind.build(host)
        if not isinstance(entries, dict):
            entries = await entries
        clash = entries.keys() & env.__dict__.keys()
        if clash:
            raise ValueError(f"env name {sorted(clash)[0]!r} is defined by two bindings")
        env.__dict__.update(entries)
    for kind in KINDS:
        if kind.finish is not None:
            await kind.finish(host)
    return env
