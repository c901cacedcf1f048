"""``WorkflowDefinition``: one workflow class made hostable (its two durable-object classes).

The host is given ``definition.object_classes()``; the binding factory calls
``definition.bind(script, transport, tenant_scoped)`` so instances can reach their registry.
"""

from __future__ import annotations

import weakref
from typing import Any

from ._objects import DEFAULT_SECRET, DurableObjectNamespace, ScanningTransport
from .engine import InstanceEngine
from .entrypoint import WorkflowEntrypoint
from .instance import WorkflowInstanceObject
from .options import StepConfig, WorkflowLimits
from .registry import WorkflowRegistryObject
from .sealing import RecordCodec
from .types import WorkflowHooks

__all__ = ["WorkflowDefinition"]


class WorkflowDefinition:
    """A ``WorkflowEntrypoint`` subclass plus its options and hooks."""

    def __init__(
        self,
        entrypoint: type[WorkflowEntrypoint],
        *,
        class_name: str | None = None,
        hooks: WorkflowHooks | None = None,
        limits: WorkflowLimits | None = None,
        step_defaults: StepConfig | None = None,
        codec: RecordCodec | None = None,
    ) -> None:
        if not (isinstance(entrypoint, type) and issubclass(entrypoint, WorkflowEntrypoint)):
            raise TypeError(f"{entrypoint!r} is not a WorkflowEntrypoint subclass")
        self.entrypoint = entrypoint
        self.class_name = class_name or entrypoint.__name__
        self.hooks = hooks or WorkflowHooks()
        self.limits = limits or entrypoint.limits
        self.step_defaults = step_defaults or entrypoint.step_defaults
        self.codec = codec or RecordCodec()  # how instance records are sealed at rest
        self.instance_class_name = f"{self.class_name}.__workflow__"
        self.registry_class_name = f"{self.class_name}.__workflows__"
        self._script: str | None = None
        self._transport: ScanningTransport | None = None
        self._tenant_scoped = False
        self._secret: bytes | None = None
        self._namespaces: dict[tuple[str, str | None], DurableObjectNamespace] = {}
        self._registry_stubs: dict[str | None, Any] = {}
        self._live: weakref.WeakSet[InstanceEngine] = weakref.WeakSet()
        self._instance_cls = type(f"{self.class_name}Instance", (WorkflowInstanceObject,),
                                  {"definition": self})
        self._registries: weakref.WeakSet[WorkflowRegistryObject] = weakref.WeakSet()
        self._registry_cls = type(f"{self.class_name}Registry", (WorkflowRegistryObject,),
                                  {"definition": self})

    def object_classes(self) -> dict[str, type]:
        """The durable-object classes to register with the ``ObjectHost``."""
        return {self.instance_class_name: self._instance_cls,
                self.registry_class_name: self._registry_cls}

    def bind(self, script: str, transport: ScanningTransport, tenant_scoped: bool = False,
             secret: bytes | None = None) -> None:
        """``secret``: the key the host's other namespaces derive ids with (the host checks the
        names callers send against it)."""
        self._script = script
        self._transport = transport
        self._tenant_scoped = tenant_scoped
        self._secret = secret
        self._namespaces.clear()
        self._registry_stubs.clear()

    def namespace(self, class_name: str, tenant: str | None) -> DurableObjectNamespace | None:
        if self._transport is None or self._script is None:
            return None
        key = (class_name, tenant)
        namespace = self._namespaces.get(key)
        if namespace is None:
            namespace = DurableObjectNamespace(self._script, class_name, self._transport,
                                               tenant_provider=lambda: tenant,
                                               tenant_scoped=self._tenant_scoped,
                                               secret=self._secret or DEFAULT_SECRET)
            self._namespaces[key] = namespace
        return namespace

    def registry_stub(self, tenant: str | None) -> Any:
        stub = self._registry_stubs.get(tenant)
        if stub is None:
            namespace = self.namespace(self.registry_class_name, tenant)
            if namespace is None:
                return None
            stub = self._registry_stubs[tenant] = namespace.get_by_name("registry")
        return stub

    def instance_stub(self, tenant: str | None, instance_id: str) -> Any:
        namespace = self.namespace(self.instance_class_name, tenant)
        return None if namespace is None else namespace.get_by_name(instance_id)

    async def list_instances(self, tenant: str | None, *, every_tenant: bool = False) -> list[dict[str, Any]]:
        """The clear part of the ``meta`` record of every instance (of ``tenant`` if
        tenant-scoped, unless ``every_tenant``: the admin plane's global view), oldest first:
        id, tenant, status and times, not the sealed params, output and error.

        Records are read as committed, then overlaid with the live state of the instances this
        process runs: an instance that has just started running commits that status with its
        first step, so another process lists it as ``queued`` until then."""
        if self._transport is None:
            return []
        rows = await self._transport.scan(self.instance_class_name, "meta")
        clear = self.codec.clear_part
        metas = {(meta["tenant"], meta["id"]): clear("meta", meta)
                 for _, meta in rows if isinstance(meta, dict)}
        for instance in list(self._live):
            meta = instance.meta
            if meta is not None and (meta["tenant"], meta["id"]) in metas:
                metas[meta["tenant"], meta["id"]] = clear("meta", meta)
        listed = [meta for meta in metas.values()
                  if every_tenant or not self._tenant_scoped or meta.get("tenant") == tenant]
        return sorted(listed, key=lambda meta: (meta["created"], meta.get("order", 0), meta["id"]))

    def track(self, instance: InstanceEngine) -> None:
        self._live.add(instance)

    def track_registry(self, registry: WorkflowRegistryObject) -> None:
        self._registries.add(registry)

    async def close(self) -> None:
        """Abandon every in-process run task (call before closing the host)."""
        for instance in list(self._live):
            await instance.shutdown()
        for registry in list(self._registries):
            registry.forget_slots()
