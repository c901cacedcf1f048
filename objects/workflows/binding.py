"""The workflow binding (``env.REFUND``) and instance handles.

Every call goes through durable-object stubs, so it works the same from any isolate. Illegal
calls raise ``WorkflowError`` with a stable ``code``: ``invalid_id``, ``duplicate_id``,
``not_found``, ``instance_finished``, ``not_paused``, ``already_paused``, ``invalid_event``,
``invalid_payload``, ``invalid_status``, ``invalid_options``, ``invalid_batch``, ``killed``,
``max_payload_bytes``. Cloudflare's forms are accepted too: ``create({"id", "params"})``,
``createBatch``, ``instance.sendEvent({"type", "payload"})``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

from ._objects import ScanningTransport
from .definition import WorkflowDefinition
from .errors import WorkflowError, WorkflowLimitError
from .step import _ResultError, normalize_value
from .types import APPROVAL_EVENT, STATUSES

__all__ = ["WorkflowBinding", "WorkflowInstance", "make_workflow_binding"]

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_LIMIT_CODES = {"max_payload_bytes", "max_step_result_bytes", "max_steps"}
_AS_PROPOSED: Any = object()  # `approve` without an amended payload


def _unwrap(response: dict[str, Any]) -> Any:
    if response.get("ok"):
        return response.get("value")
    error = response["error"]
    cls = WorkflowLimitError if error["code"] in _LIMIT_CODES else WorkflowError
    raise cls(error["code"], error["message"])


def validate_id(instance_id: Any) -> str:
    if not isinstance(instance_id, str) or not _ID.match(instance_id):
        raise WorkflowError(
            "invalid_id",
            f"instance id must be 1-64 characters of [A-Za-z0-9_-], got {instance_id!r}",
        )
    return instance_id


class WorkflowInstance:
    """A handle on one instance; every method is one RPC to the instance's object."""

    def __init__(self, binding: WorkflowBinding, instance_id: str) -> None:
        self._binding = binding
        self.id = instance_id

    def __repr__(self) -> str:
        return f"WorkflowInstance({self._binding.definition.class_name}, {self.id!r})"

    def _stub(self) -> Any:
        return self._binding._instance_stub(self.id)

    async def status(self) -> dict[str, Any]:
        return _unwrap(await self._stub().status())

    async def pause(self) -> None:
        _unwrap(await self._stub().pause())

    async def resume(self) -> None:
        _unwrap(await self._stub().resume())

    async def terminate(self) -> None:
        _unwrap(await self._stub().terminate())

    async def restart(self) -> None:
        _unwrap(await self._stub().restart())

    async def send_event(self, type: str, payload: Any = None) -> None:
        self._binding.definition.codec.check()
        payload = self._binding._params(payload, "event payload")
        _unwrap(await self._stub().send_event(type, payload))

    async def sendEvent(self, event: dict[str, Any]) -> None:  # noqa: N802 - Cloudflare's name
        """Cloudflare's form: ``sendEvent({"type": ..., "payload": ...})``."""
        if not isinstance(event, dict) or "type" not in event or set(event) - {"type", "payload"}:
            raise WorkflowError("invalid_event", f"sendEvent takes {{type, payload}}, got {event!r}")
        await self.send_event(event["type"], event.get("payload"))

    async def approve(self, by: str, reason: str | None = None, payload: Any = _AS_PROPOSED) -> None:
        """Deliver a positive human approval (event type ``"approval"``). An amended `payload`
        is what the task goes on with: `wait_for_approval` returns it as ``["payload"]`` (and
        the approval is audited as ``amended``)."""
        decision: dict[str, Any] = {"approved": True, "by": by, "reason": reason}
        if payload is not _AS_PROPOSED:
            decision["payload"] = payload
        await self.send_event(APPROVAL_EVENT, decision)

    async def reject(self, by: str, reason: str | None = None) -> None:
        """Deliver a rejection; the waiting step raises ``ApprovalRejected``."""
        await self.send_event(APPROVAL_EVENT, {"approved": False, "by": by, "reason": reason})


class WorkflowBinding:
    """What a script's env exposes for one workflow class (``env.REFUND``)."""

    def __init__(
        self,
        definition: WorkflowDefinition,
        script: str,
        transport: ScanningTransport,
        tenant_provider: Callable[[], str | None] | None = None,
        tenant_scoped: bool = False,
        secret: bytes | None = None,
        level_provider: Callable[[], str | None] | None = None,
    ) -> None:
        self.definition = definition
        self._tenant_provider = tenant_provider or (lambda: None)
        # The classification level of the caller's data: an instance's params are recorded at it.
        self._level_provider = level_provider or (lambda: None)
        definition.bind(script, transport, tenant_scoped, secret)

    def _tenant(self) -> str | None:
        return self._tenant_provider()

    def _instance_stub(self, instance_id: str) -> Any:
        return self.definition.instance_stub(self._tenant(), instance_id)

    def _params(self, params: Any, what: str = "workflow params") -> Any:
        try:
            return normalize_value(what, params,
                                   self.definition.limits.max_payload_bytes, "max_payload_bytes")
        except _ResultError as exc:
            raise WorkflowError("invalid_payload", str(exc)) from None

    async def create(self, id: str | dict[str, Any] | None = None, params: Any = None) -> WorkflowInstance:
        """``create(id=, params=)``, or Cloudflare's form ``create({"id": ..., "params": ...})``."""
        if isinstance(id, dict):
            options = id
            if params is not None or set(options) - {"id", "params"}:
                raise WorkflowError("invalid_options",
                                    f"create takes {{id, params}}, got {options!r}")
            id, params = options.get("id"), options.get("params")
        self.definition.codec.check()  # nothing is stored that could not be sealed
        instance_id = validate_id(id) if id is not None else uuid.uuid4().hex
        params = self._params(params)
        _unwrap(await self._instance_stub(instance_id).create(instance_id, params, self._tenant(),
                                                              self._level_provider()))
        return WorkflowInstance(self, instance_id)

    async def create_batch(self, items: list[dict[str, Any]]) -> list[WorkflowInstance]:
        """Create several instances; every item is validated before any is created."""
        prepared: list[tuple[str | None, Any]] = []
        seen: set[str] = set()
        for item in items:
            if not isinstance(item, dict) or set(item) - {"id", "params"}:
                raise WorkflowError("invalid_batch", f"batch items are {{id, params}}, got {item!r}")
            instance_id = item.get("id")
            if instance_id is not None:
                validate_id(instance_id)
                if instance_id in seen:
                    raise WorkflowError("duplicate_id", f"id {instance_id!r} twice in the batch")
                seen.add(instance_id)
            prepared.append((instance_id, self._params(item.get("params"))))
        return [await self.create(id=i, params=p) for i, p in prepared]

    createBatch = create_batch  # noqa: N815 - Cloudflare's name

    async def get(self, id: str) -> WorkflowInstance:
        instance = WorkflowInstance(self, validate_id(id))
        await instance.status()
        return instance

    async def list(self, status: str | None = None) -> list[dict[str, Any]]:
        """``[{id, status, created}]`` of this class's instances, oldest first.

        Read from the instances' committed records, in one query: an instance that has just
        started running may still show the status it had before (``queued``)."""
        if status is not None and status not in STATUSES:
            raise WorkflowError("invalid_status", f"status must be one of {STATUSES}, got {status!r}")
        return [{"id": meta["id"], "status": meta["status"], "created": meta["created"]}
                for meta in await self.definition.list_instances(self._tenant())
                if status is None or meta["status"] == status]


def make_workflow_binding(
    script: str,
    class_name: str,
    transport: ScanningTransport,
    tenant_provider: Callable[[], str | None] | None = None,
    *,
    definition: WorkflowDefinition,
    tenant_scoped: bool = False,
    secret: bytes | None = None,
    level_provider: Callable[[], str | None] | None = None,
) -> WorkflowBinding:
    """The env binding for manifest ``workflows = [{binding, class_name}]``."""
    if definition.class_name != class_name:
        raise ValueError(f"definition is for {definition.class_name!r}, not {class_name!r}")
    return WorkflowBinding(definition, script, transport, tenant_provider, tenant_scoped, secret, level_provider)
