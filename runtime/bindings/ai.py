"""The AI binding (`env.AI`): model inference as Workers AI shapes it, governed by the front's
gateway (`runtime/ai/gateway.py`: routing by inference class and grade, classification levels,
budgets, rate limits, cache, retries, fallback, cost, audit).

    answer = await env.AI.run("@cf/meta/llama-3.1-8b-instruct", {"prompt": "Hello"})
    answer["response"], answer["usage"], answer["meta"]        # meta: model, provider, cache, cost...
    vectors = await env.AI.run("embed", {"text": ["a", "b"]})   # {"shape": [2, d], "data": [...]}
    labels = await env.AI.run("sentiment", {"text": "great"})   # [{"label", "score"}]
    plan = await env.AI.route("triage", {"messages": [...]}, grade="basic")
    stream = await env.AI.run(model, {"prompt": "Hi", "stream": True})
    return Response(stream, headers={"content-type": "text/event-stream"})

`run` may name only the models (or aliases) the script lists in ``ai.models``; `route` picks the
model from ``[ai.classes]``. Every call counts as a subrequest of the request, carries its
identity, risk, route and classification level, and ends by the request's wall time. A refusal
or failure raises a `CodedError` with the gateway's code and status (``ai_budget_exhausted``,
``ai_classification_refused``...). Inside a workflow step, the call is accounted to the workflow
class, instance and step. `last_meta` holds the meta of the last call made through this binding
in the current task (classification results are a list, so their meta is only there).
"""

from __future__ import annotations

import contextvars
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import SpanKind, Status, StatusCode

from objects import CodedError
from objects.workflows.step import CURRENT_STEP
from runtime import tracing
from runtime.ai.config import AIBinding
from runtime.bindings import BindingHost, BindingKind, RelayPort
from runtime.bindings.services import call_deadline, relay
from runtime.ipc import Channel
from runtime.isolate.context import current
from runtime.protocol import Message, message

if TYPE_CHECKING:
    from runtime.config import AppConfig, ScriptConfig

__all__ = ["KIND", "AiCall", "AiError", "AiStub"]

_LAST_META: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("ai_last_meta", default=None)


@message("ai")
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AiCall(Message):
    """A model call for the front's AI gateway; answered with the result or an error."""

    kind: str  # "run" | "route"
    target: str
    inputs: dict[str, Any]
    options: dict[str, Any] | None = None
    grade: str | None = None
    rid: str | None = None
    script: str | None = None
    identity: dict[str, Any] | None = None
    risk: str = "low"
    route: str | None = None
    level: str = "internal"
    deadline: float | None = None
    workflow: list[Any] | None = None  # [class, instance, step] inside a workflow step


class AiError(CodedError):
    """A call the gateway refused or could not serve; `code` and `status` say why."""


class AiStub:
    """`env.AI`."""

    def __init__(self, channel: Channel, script: str, deadline_s: float):
        self._channel = channel
        self._script = script
        self._deadline_s = deadline_s

    @property
    def last_meta(self) -> dict[str, Any] | None:
        return _LAST_META.get()

    async def run(self, model: str, inputs: dict[str, Any], options: dict[str, Any] | None = None) -> Any:
        return await self._call("run", model, inputs, options, None)

    async def route(self, inference_class: str, inputs: dict[str, Any], grade: str | None = None,
                    options: dict[str, Any] | None = None) -> Any:
        return await self._call("route", inference_class, inputs, options, grade)

    async def _call(self, kind: str, target: str, inputs: dict[str, Any], options: dict[str, Any] | None,
                    grade: str | None) -> Any:
        if not isinstance(inputs, dict):
            raise TypeError(f"env.AI.{kind}: inputs is a dict (e.g. {{'prompt': ...}}), not {type(inputs).__name__}")
        scope = current()
        scope.count_subrequest()
        step = CURRENT_STEP.get()
        msg = AiCall(kind=kind, target=target, inputs=inputs, options=dict(options or {}), grade=grade,
                     rid=scope.request_id, script=self._script,
                     identity=scope.identity.to_wire() if scope.identity else None, risk=scope.risk,
                     route=scope.route, level=scope.level, deadline=scope.deadline,
                     workflow=list(step) if step is not None else None)
        wait = self._deadline_s if scope.deadline is None else max(0.0, scope.deadline - time.time()) + 1.0
        if tracing.TRACER is None:
            reply = await relay(self._channel, msg, wait)
        else:
            reply = await _traced_call(self._channel, msg, wait)
        err = reply.get("error")
        if err is not None:
            raise AiError(str(err.get("type", "AIError")), str(err.get("message", "")), err.get("code"), err.get("status"))
        _LAST_META.set(reply.get("meta"))
        if "sse" in reply:
            return _events(reply["sse"])
        if "labels" in reply:
            return reply["labels"]
        return {k: v for k, v in reply.items() if k != "re"}


def _operation(inputs: dict[str, Any]) -> str:
    """The GenAI operation name a call's inputs stand for."""
    if "messages" in inputs:
        return "chat"
    if "prompt" in inputs:
        return "text_completion"
    return "generate_content"


async def _traced_call(channel: Channel, msg: AiCall, wait: float) -> dict[str, Any]:
    """The call under a CLIENT span with the OpenTelemetry GenAI attributes: the operation, the
    model asked for, and from the answer the provider, the model that answered and the tokens."""
    operation = _operation(msg.inputs)
    attributes: dict[str, Any] = {"gen_ai.operation.name": operation}
    if msg.kind == "run":
        attributes["gen_ai.request.model"] = msg.target
    else:
        attributes["edgeworks.ai.class"] = msg.target
    with tracing.span(f"{operation} {msg.target}", attributes, SpanKind.CLIENT) as span:
        reply = await relay(channel, msg, wait)
        if span is not None:
            meta, usage, err = reply.get("meta") or {}, reply.get("usage") or {}, reply.get("error")
            if "data" in reply:
                span.set_attribute("gen_ai.operation.name", "embeddings")
                span.update_name(f"embeddings {msg.target}")
            for key, value in (("gen_ai.provider.name", meta.get("provider")),
                               ("gen_ai.response.model", meta.get("model")),
                               ("gen_ai.usage.input_tokens", usage.get("prompt_tokens")),
                               ("gen_ai.usage.output_tokens", usage.get("completion_tokens")),
                               ("edgeworks.ai.cache", meta.get("cache")),
                               ("edgeworks.ai.cost_usd", meta.get("cost_usd"))):
                if value is not None:
                    span.set_attribute(key, value)
            if err is not None:
                span.set_attribute("error.type", str(err.get("code") or err.get("type") or "error"))
                span.set_status(Status(StatusCode.ERROR, str(err.get("message", ""))[:200]))
        return reply


async def _events(events: list[str]) -> AsyncIterator[bytes]:
    """A text/event-stream body, one event at a time (a `Response` body)."""
    for event in events:
        yield event.encode()


# -- the front's side --------------------------------------------------------------------------


async def _relay(port: RelayPort, msg: AiCall) -> dict[str, Any]:
    from runtime.ai.gateway import AiRequest

    identity = msg.identity or {}
    workflow = msg.workflow or [None, None, None]
    req = AiRequest(kind=msg.kind, target=msg.target, inputs=msg.inputs, options=msg.options or {},
                    grade=msg.grade, rid=msg.rid, script=msg.script, tenant=identity.get("tenant"),
                    subject=identity.get("subject"), scopes=list(identity.get("scopes") or []), risk=msg.risk,
                    route=msg.route, level=msg.level, deadline=msg.deadline,
                    workflow_class=workflow[0], instance=workflow[1], step=workflow[2])
    result: dict[str, Any] = await port.service("ai").call(req)  # plain data: msgpack carries it as is
    return result


# -- the kind ----------------------------------------------------------------------------------


def _names(script: ScriptConfig) -> list[tuple[str, str]]:
    return [("ai.binding", script.ai.binding)] if script.ai is not None else []


def _check(script: ScriptConfig, app: AppConfig) -> list[tuple[str, str]]:
    if script.ai is None:
        return []
    if app.ai is None:
        return [("ai", "needs an [ai] section (providers, models) in the manifest")]
    out = []
    for i, name in enumerate(script.ai.models):
        try:
            app.ai.resolve(name)
        except KeyError:
            out.append((f"ai.models[{i}]", f"no model or alias named {name!r} in [ai.models] / [ai.aliases]"))
    return out


def _build(host: BindingHost) -> dict[str, Any]:
    ai = host.script.ai
    if ai is None:
        return {}
    return {ai.binding: AiStub(host.channel, host.script.name, call_deadline(host))}


KIND = BindingKind(
    name="ai",
    fields={"ai": (AIBinding | None, None)},
    env_names=_names,
    check=_check,
    build=_build,
    relays={AiCall: _relay},
)
