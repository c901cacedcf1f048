"""Env bindings. Every kind is a plugin with the same contract, listed once in `PLUGINS`.

A plugin module has `build(host: BindingHost) -> dict[str, Any]`: it reads its part of the
script's manifest entry from `host.script` and returns the env entries it provides. It runs inside
the isolate process, once, when the script is loaded. Adding a binding kind is one new module and
one line here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.bindings import durable_objects, services, tools, variables, workflows
from runtime.config import ScriptConfig
from runtime.ipc import Channel

__all__ = ["PLUGINS", "BindingHost", "Env", "build_env"]

# Order matters once: workflows register their internal object classes before the
# durable-object host is created from all of them.
PLUGINS = [variables, services, workflows, durable_objects, tools]


@dataclass
class BindingHost:
    """What a binding factory may use inside the isolate."""

    script: ScriptConfig
    app_root: Path
    state_dir: Path
    channel: Channel
    module: Any  # the script's loaded main module
    pool_index: int = 0
    pool_size: int = 1
    dev: bool = False
    secrets: dict[str, str] = field(default_factory=dict)
    audit: Any = None  # callable(kind, fields) or None
    kills: Any = None  # this process's KillSwitch on the state dir
    env: Any = None  # the Env being built, for bindings that hand it to user classes
    hosts: dict[str, Any] = field(default_factory=dict)  # per-kind hosts the isolate serves
    object_classes: dict[str, Any] = field(default_factory=dict)  # internal durable-object classes


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


async def build_env(host: BindingHost) -> Env:
    env = Env({})
    host.env = env
    for plugin in PLUGINS:
        entries = plugin.build(host)
        if hasattr(entries, "__await__"):
            entries = await entries
        clash = entries.keys() & env.__dict__.keys()
        if clash:  # the manifest check should have said so; never let one binding replace another
            raise ValueError(f"env name {sorted(clash)[0]!r} is defined by two bindings")
        env.__dict__.update(entries)
    return env
