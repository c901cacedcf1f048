"""The loaded versions of the app and which one gets traffic.

A `Deployment` is one loaded version: its config, router, contract and a pool of isolates per
script. `Deployments` holds the current one and, during a gradual rollout, a second one with the
fraction of requests it gets (`split`). It loads versions in fresh isolates, moves traffic to
them and drains what they replace; the admin plane decides when (see `runtime/admin/app.py`),
this module only carries it out.

Alarms move with the traffic: a loaded version fires no durable-object alarms until it is
promoted, and the version it replaces stops firing them before it starts (one owner per object).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.config import AppConfig, ConfigError, ScriptConfig
from runtime.egress import EgressPolicy
from runtime.front.contract import Contract
from runtime.front.identity import AuthConfigError
from runtime.front.routing import Router
from runtime.front.supervisor import IsolatePool, LoadFailed
from runtime.identity import principal_ceilings
from runtime.logs import log
from runtime.redact import MIN_SECRET_CHARS, mask_secret_values
from runtime.redaction import redaction_wire
from runtime.secrets import ResolvedSecrets, SecretSources

if TYPE_CHECKING:
    from runtime.datakey import DataKey
    from runtime.front.auditd import AuditJournal
    from runtime.killswitch import KillSwitch

__all__ = ["Deployment", "Deployments"]


class Deployment:
    """One loaded app version: its config, router and a pool per script."""

    def __init__(self, app: AppConfig, version: str, pools: dict[str, IsolatePool], contract: Contract,
                 secrets: dict[str, str] | None = None):
        self.app = app
        self.secrets = secrets or {}
        self.version = version
        self.pools = pools
        self.contract = contract
        self.router = Router(app)
        self.scripts: dict[str, ScriptConfig] = {s.name: s for s in app.scripts}

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop every isolate; running requests get `grace_s` (None: the pool's drain time)."""
        await asyncio.gather(*(p.stop() if grace_s is None else p.stop(grace_s) for p in self.pools.values()))


class Deployments:
    """The current deployment, an optional split, and loading and promoting versions.

    `router` receives what isolates send the front (`Front.on_isolate_message`); `data_key`
    opens a deployed version's sealed secrets; `secrets` says where declared secrets are looked
    for (default: this process's environment, see `runtime.secrets`)."""

    def __init__(self, initial: AppConfig, *, state_dir: Path, dev: bool, kills: KillSwitch,
                 audit_log: AuditJournal, data_key: DataKey | None, router: Any,
                 on_promote: Callable[[Deployment], None] | None = None,
                 secrets: SecretSources | None = None):
        self.initial = initial  # what `start` loads (the admin plane may resume another version)
        self.current: Deployment | None = None
        # A gradual rollout: (other deployment, fraction of requests it gets), or None.
        self.split: tuple[Deployment, float] | None = None
        self._state_dir, self._dev, self._kills, self._audit_log = state_dir, dev, kills, audit_log
        self._data_key, self._router, self._on_promote = data_key, router, on_promote
        self._secrets = secrets or SecretSources(dev)
        self._versions = 0
        self._lock = asyncio.Lock()  # one `swap` at a time
        self._handover = asyncio.Lock()  # see `_hand_over`
        self._deployed = asyncio.Event()  # set once `current` is first loaded (see `ready`)
        self._background: set[asyncio.Future[Any]] = set()
        self._stopped = False

    async def load(self, app: AppConfig, version: str | None = None) -> Deployment:
        """Start fresh pools for every script of `app`; raise LoadFailed if any fails to load.
        They fire no durable-object alarms until `promote` (see `IsolatePool.set_active`)."""
        self._versions += 1
        version = version or f"v{self._versions}"
        try:
            found = self._secrets.resolve(app, self._data_key)  # a deployed version's are sealed
        except ConfigError as e:
            raise LoadFailed(str(e), "config") from None
        _note_secrets(found, version, app)
        secrets = found.values
        try:
            contract = Contract(app, secrets, self._kills, self._audit_log)
        except AuthConfigError as e:
            raise LoadFailed(f"[auth]: {e}", "config") from None
        pools: dict[str, IsolatePool] = {}
        dep = Deployment(app, version, pools, contract, secrets)
        for s in app.scripts:
            pools[s.name] = IsolatePool(s, root=app.root, state_dir=self._state_dir, version=version,
                                        dev=self._dev, secrets=secrets, router=self._router, active=False,
                                        levels=app.ai.levels if app.ai is not None else None,
                                        principals=principal_ceilings(app),
                                        data_key=self._data_key.export() if self._data_key else None,
                                        redaction=redaction_wire(app),
                                        egress=EgressPolicy.from_app(app, dev=self._dev).to_wire())
        results = await asyncio.gather(*(p.start() for p in pools.values()), return_exceptions=True)
        failed = [(name, r) for name, r in zip(pools, results, strict=True) if isinstance(r, BaseException)]
        if failed:
            await dep.stop(1)
            name, err = failed[0]
            raise LoadFailed(f"script {name!r}: {err}", getattr(err, "cause", "load_error"))
        return dep

    async def swap(self, app: AppConfig, version: str | None = None) -> str:
        """Load `app` in new isolates, move traffic to them, then drain the old ones.

        Requests already running on the old version finish there; nothing is dropped. Raises
        LoadFailed (old version keeps serving) when the new version does not load."""
        async with self._lock:
            new = await self.load(app, version)
            self.promote(new)
        return new.version

    def promote(self, new: Deployment) -> None:
        """Move traffic to a loaded deployment and drain the one it replaces (the admin plane
        promotes only after `probe.probe`)."""
        old, self.current = self.current, new
        if old is not None:
            log("reloaded", version=new.version)
        if self._on_promote is not None:
            self._on_promote(new)
        self._deployed.set()
        self._background_task(self._hand_over(old, new))

    async def _hand_over(self, old: Deployment | None, new: Deployment) -> None:
        """Alarms move with the traffic: the old version stops firing them before the new one
        starts (one owner per object), then the old one drains. Hand-overs run one at a time,
        so a version replaced before its activation ran stays inactive."""
        async with self._handover:
            if old is not None:
                await asyncio.gather(*(p.set_active(False) for p in old.pools.values()))
            if self.current is new and not self._stopped:
                await asyncio.gather(*(p.set_active(True) for p in new.pools.values()))
        if old is not None:
            await old.stop()

    async def unload(self, dep: Deployment) -> None:
        """Stop a deployment that never got traffic (it failed its probe)."""
        await dep.stop(1)

    def set_split(self, dep: Deployment, fraction: float) -> None:
        """Send `fraction` of requests to `dep`; a different deployment split before is drained."""
        if self.split is not None and self.split[0] is not dep:
            self.clear_split()
        self.split = (dep, fraction)

    def clear_split(self) -> None:
        """End a split, draining the deployment it sent requests to."""
        split, self.split = self.split, None
        if split is not None:
            self._background_task(split[0].stop())

    def pick(self) -> Deployment:
        """The deployment a new request goes to (the split's share goes to the split)."""
        split = self.split
        if split is not None and random.random() < split[1]:
            return split[0]
        assert self.current is not None
        return self.current

    async def ready(self, timeout_s: float) -> Deployment | None:
        """The current deployment, waiting up to `timeout_s` for the first one; None if none yet."""
        if self.current is None:
            try:
                await asyncio.wait_for(self._deployed.wait(), timeout_s)
            except TimeoutError:
                return None
        return self.current

    async def stop(self, grace_s: float) -> None:
        self._stopped = True
        deps = [d for d in (self.current, self.split[0] if self.split else None) if d is not None]
        await asyncio.gather(*(d.stop(grace_s) for d in deps))

    def pids(self) -> list[int]:
        return [pid for p in (self.current.pools.values() if self.current else ()) for pid in p.pids()]

    def _background_task(self, coro: Any) -> None:
        fut = asyncio.ensure_future(coro)
        self._background.add(fut)
        fut.add_done_callback(self._background.discard)


def _note_secrets(found: ResolvedSecrets, version: str, app: AppConfig) -> None:
    """Make every log line, audit entry and error message of this process mask the secrets'
    values, and log where each was found (names and places, never values)."""
    short = set(mask_secret_values(found.values.values()))
    log("secrets_loaded", version=version, environment=app.environment,
        found=[f"{name} from {origin}" for name, origin in sorted(found.origins.items())])
    if found.from_dev_vars:
        log("secrets_from_dev_vars", names=found.from_dev_vars,
            hint="serve read these from the app's .dev.vars; give production secrets through the environment, "
                 "NAME_FILE or --secrets-dir")
    if short:
        log("secrets_not_masked", names=sorted(n for n, v in found.values.items() if v in short),
            reason=f"shorter than {MIN_SECRET_CHARS} characters: log lines are not searched for such values")
