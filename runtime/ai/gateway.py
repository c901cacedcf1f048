"""The AI gateway: every model call of every isolate goes through it, in the front process.

A call (`AiRequest`, sent by `env.AI.run` / `env.AI.route`, see `runtime/bindings/ai.py`) is
resolved, checked and served in this order; each refusal is a coded error the handler sees
(`CodedError` with code and status) and an audit entry:

1. **Resolve.** `run(model)`: the model (or alias) must be listed in the script's ``ai.models``
   (403 ``ai_model_not_allowed``). `route(class, grade)`: the class must exist (404
   ``ai_unknown_class``); the grade asked for (default ``[ai] default_grade``) is capped at the
   request's ceiling, the highest grade a matching ``[[ai.grants]]`` rule gives (else the
   default grade); the result's ``meta`` says ``grade``, ``ceiling`` and ``capped``.
2. **Budget and the tenant's rate.** A ``[[ai.budgets]]`` of the tenant or the workflow class that is spent for its
   period refuses (402 ``ai_budget_exhausted``) or, with ``on_exhaust = "downgrade"``, serves one
   grade lower (audited ``ai.budget_downgrade``); a direct `run` has no lower grade and is refused.
   ``[ai.limits] tenant_per_minute`` counts the tenant's calls, hits of the cache included (429
   ``ai_rate_limited``); callers without a tenant share one count.
3. **Each model of the chain**, in order, until one answers: kill switch kind ``ai`` on the model
   or its provider (skipped: 503 ``killed`` if none is left); classification: a request whose
   level is above the provider's ``max_level`` is never sent there (audited
   ``ai.policy_violation``; 403 ``ai_classification_refused`` if no model may take it); the
   exact-match cache (per tenant; ``options["cache"] = False`` bypasses it); the model's calls
   per minute (``[ai.limits] model_per_minute``, counting calls that reach the provider; a model
   over it is skipped, 429 ``ai_rate_limited`` if no model is left); the provider, under its concurrency cap, with a
   timeout of ``min(timeout_s, the request's remaining wall time)``, retried with backoff on
   retryable errors; a provider that still fails hands over to the next model (``meta.fallbacks``).
   An HTTP provider calls out through the egress client (`runtime.egress`) as the call's principal
   (its workflow class, else its script) at the request's level; a model whose provider the
   egress policy refuses is skipped like a failed one (403 ``egress_denied`` if none is left).
4. **Account.** Tokens from the provider's usage, cost from the model's price, one ledger row
   (`ledger.py`) and one ``ai.call`` audit entry: request id, identity, tenant, inference class,
   grade, model, provider, tokens, cost, latency, cache status, level, and the workflow instance
   and step. No prompt or output is audited; the ledger keeps them only with
   ``[ai.persist] prompts = true``, redacted.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.ai.config import AIBinding, AIConfig
from runtime.ai.ledger import Call, Ledger, period_start
from runtime.ai.providers.base import (
    CALLER,
    Answer,
    Caller,
    Provider,
    ProviderError,
    Usage,
    build_provider,
)
from runtime.egress import RUNTIME_PRINCIPAL, EgressClient
from runtime.logs import log
from runtime.principals import script_principal, workflow_principal
from runtime.redact import Redactor

__all__ = ["AiRequest", "Gateway", "GatewayError"]


class GatewayError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def reply(self) -> dict[str, Any]:
        return {"error": {"type": "AIError", "code": self.code, "status": self.status, "message": self.message}}


@dataclass(slots=True)
class AiRequest:
    kind: str  # "run" | "route"
    target: str  # a model (run) or an inference class (route)
    inputs: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)
    grade: str | None = None
    rid: str | None = None
    script: str | None = None
    tenant: str | None = None
    subject: str | None = None
    scopes: list[str] = field(default_factory=list)
    risk: str = "low"
    route: str | None = None
    level: str = "internal"
    deadline: float | None = None  # epoch seconds when the request's wall time runs out
    workflow_class: str | None = None
    instance: str | None = None
    step: str | None = None


def _classified(cfg: AIConfig | None, req: AiRequest) -> dict[str, str]:
    """The classification of an entry about `req`: its data's level, when that is a level."""
    return {"classification": req.level} if cfg is not None and req.level in cfg.levels else {}


def _principal(req: AiRequest) -> str:
    """The principal a call is made for: its workflow class, else its script."""
    if req.script is None:
        return RUNTIME_PRINCIPAL
    return workflow_principal(req.script, req.workflow_class) if req.workflow_class else script_principal(req.script)


class _ModelLimited(Exception):
    """A model is over its calls per minute; the chain goes on to the next model."""


class _Window:
    """Calls per key in the last minute (a sliding window of timestamps)."""

    def __init__(self) -> None:
        self._calls: dict[str, collections.deque[float]] = {}

    def take(self, key: str, limit: int, now: float) -> bool:
        q = self._calls.setdefault(key, collections.deque())
        while q and q[0] <= now - 60:
            q.popleft()
        if len(q) >= limit:
            return False
        q.append(now)
        return True


class Gateway:
    def __init__(self, state_dir: Path, audit: Any, kills: Any, *, clock: Any = time.time):
        self.state_dir = Path(state_dir)
        self._audit = audit  # .append(kind, **fields)
        self._kills = kills  # .check(kind, name) -> reason | None
        self._clock = clock
        self.config: AIConfig | None = None
        self._bindings: dict[str, AIBinding] = {}
        self._providers: dict[str, Provider] = {}
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._cache: collections.OrderedDict[str, tuple[float, dict[str, Any]]] = collections.OrderedDict()
        self._windows = _Window()
        self._ledger: Ledger | None = None
        self._redactor = Redactor()
        self._closing: set[asyncio.Future[None]] = set()  # providers of a replaced config, closing
        self._egress: EgressClient | None = None

    # -- configuration ---------------------------------------------------------------------
    def configure(self, config: AIConfig | None, bindings: dict[str, AIBinding], secrets: dict[str, str],
                  app_root: Path, egress: EgressClient | None = None) -> None:
        """Serve `config` (a newly promoted version's); providers are rebuilt (their HTTP calls go
        through `egress`, the version's egress client, which the gateway closes with them), the
        cache and the ledger stay."""
        old = self._providers
        old_egress, self._egress = self._egress, egress
        self.config, self._bindings = config, bindings
        self._providers, self._semaphores = {}, {}
        if config is not None:
            for name in sorted(config.providers, key=lambda n: config.providers[n].kind == "replay"):
                cfg = config.providers[name]
                try:
                    self._providers[name] = build_provider(name, cfg, secrets, app_root, self._providers,
                                                           egress=egress)
                except ProviderError as e:  # e.g. a secret it names is not set: the app still serves
                    log("ai_provider_unavailable", provider=name, error=e.message)
                    self._providers[name] = _Unavailable(name, cfg.kind, e)
                self._semaphores[name] = asyncio.Semaphore(cfg.concurrency)
            if self._ledger is None:
                self._ledger = Ledger(self.state_dir)
        closing = [provider.aclose() for provider in old.values()]
        if old_egress is not None and old_egress is not egress:
            closing.append(old_egress.aclose())
        for aw in closing:  # held until closed (a task nobody holds may be collected)
            task = asyncio.ensure_future(aw)
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        await asyncio.gather(*(p.aclose() for p in self._providers.values()), return_exceptions=True)
        if self._egress is not None:
            await self._egress.aclose()
        if self._ledger is not None:
            self._ledger.close()

    # -- a call ------------------------------------------------------------------------------
    async def call(self, req: AiRequest) -> dict[str, Any]:
        """The reply for one call: the result, or ``{"error": ...}``."""
        try:
            return await self._call(req)
        except GatewayError as e:
            self._audit.append("ai.refused", request_id=req.rid, tenant=req.tenant, subject=req.subject,
                               script=req.script, code=e.code, target=req.target, call=req.kind,
                               principal=_principal(req), **_classified(self.config, req))
            return e.reply()

    async def _call(self, req: AiRequest) -> dict[str, Any]:
        cfg = self.config
        if cfg is None:
            raise GatewayError(503, "ai_not_configured", "this app has no [ai] section")
        chain, meta = self._resolve(cfg, req)
        meta, chain = self._budget(cfg, req, meta, chain)
        started = self._clock()
        lim = cfg.limits  # the tenant's limit counts calls (one per call, whatever the chain does)
        if lim.tenant_per_minute is not None and not self._windows.take(f"t:{req.tenant}", lim.tenant_per_minute, started):
            raise GatewayError(429, "ai_rate_limited", f"tenant {req.tenant!r} is over {lim.tenant_per_minute} AI calls a minute")
        errors: list[str] = []
        refused_level = killed = limited = egress_denied = 0
        for i, name in enumerate(chain):
            model = cfg.models[name]
            provider = cfg.providers[model.provider]
            reason = self._kills.check("ai", name) or self._kills.check("ai", model.provider)
            if reason is not None:
                killed += 1
                errors.append(f"{name}: killed ({reason})")
                continue
            if cfg.level(req.level) > cfg.level(provider.max_level):
                refused_level += 1
                self._audit.append("ai.policy_violation", request_id=req.rid, tenant=req.tenant, script=req.script,
                                   model=name, provider=model.provider, level=req.level,
                                   max_level=provider.max_level, principal=_principal(req),
                                   classification=req.level)
                errors.append(f"{name}: provider {model.provider!r} may not receive {req.level!r} data")
                continue
            try:
                result = await self._serve(cfg, req, name, meta)
            except _ModelLimited as e:  # over its own limit: the next model of the chain may serve
                limited += 1
                errors.append(f"{name}: {e}")
                continue
            except Exception as e:  # ProviderError, or a provider that broke on what its server sent
                message = e.message if isinstance(e, ProviderError) else f"provider {model.provider!r} failed: {type(e).__name__}: {e}"
                egress_denied += isinstance(e, ProviderError) and e.egress is not None
                errors.append(f"{name}: {message}")
                log("ai_fallback" if i + 1 < len(chain) else "ai_failed", request_id=req.rid, model=name,
                    provider=model.provider, error=message, level=req.level)
                continue
            result["meta"] = {**meta, "model": name, "provider": model.provider, "fallbacks": i,
                              "latency_ms": round((self._clock() - started) * 1000, 3), **result.get("meta", {})}
            return result
        if killed == len(chain):
            raise GatewayError(503, "killed", f"every model for this call is stopped by the kill switch: {'; '.join(errors)}")
        if refused_level + killed == len(chain):
            raise GatewayError(403, "ai_classification_refused",
                               f"no model may receive {req.level!r} data: {'; '.join(errors)}")
        if egress_denied and egress_denied + refused_level + killed == len(chain):
            raise GatewayError(403, "egress_denied", "the egress policy refused every model's provider: "
                               + "; ".join(errors))
        if limited and limited + refused_level + killed == len(chain):
            raise GatewayError(429, "ai_rate_limited", "; ".join(errors))
        raise GatewayError(502, "ai_provider_unavailable", "every model failed: " + "; ".join(errors))

    def _resolve(self, cfg: AIConfig, req: AiRequest) -> tuple[list[str], dict[str, Any]]:
        if req.level not in cfg.levels:
            raise GatewayError(400, "ai_bad_level", f"unknown classification level {req.level!r} (levels: {cfg.levels})")
        if req.kind == "run":
            binding = self._bindings.get(req.script or "")
            allowed = binding.models if binding is not None else []
            try:
                model = cfg.resolve(req.target)
            except KeyError:
                raise GatewayError(404, "ai_unknown_model", f"no model or alias named {req.target!r} in [ai.models]") from None
            if req.target not in allowed and model not in allowed:
                raise GatewayError(403, "ai_model_not_allowed", f"script {req.script!r} may not run {req.target!r} directly:"
                                   " list it in the script's ai.models, or use env.AI.route")
            return [model], {"inference_class": None, "grade": None}
        by_grade = cfg.classes.get(req.target)
        if by_grade is None:
            raise GatewayError(404, "ai_unknown_class", f"no inference class {req.target!r} in [ai.classes]"
                               f" (classes: {', '.join(cfg.classes)})")
        asked = req.grade or cfg.default_grade
        if asked not in cfg.grades:
            raise GatewayError(400, "ai_bad_grade", f"unknown grade {asked!r} (grades: {cfg.grades})")
        ceiling = self._ceiling(cfg, req)
        grade = asked if cfg.grade(asked) <= cfg.grade(ceiling) else ceiling
        chain = self._chain(cfg, req.target, grade)
        return chain, {"inference_class": req.target, "grade": grade, "asked_grade": asked, "ceiling": ceiling,
                       "capped": grade != asked}

    @staticmethod
    def _chain(cfg: AIConfig, cls: str, grade: str) -> list[str]:
        """The models for `grade`, else for the nearest lower grade the class lists."""
        by_grade = cfg.classes[cls]
        for g in reversed(cfg.grades[: cfg.grade(grade) + 1]):
            if g in by_grade:
                return [cfg.resolve(m) for m in by_grade[g]]
        raise GatewayError(404, "ai_no_model", f"inference class {cls!r} lists no model at grade {grade!r} or below")

    @staticmethod
    def _ceiling(cfg: AIConfig, req: AiRequest) -> str:
        best = cfg.grade(cfg.default_grade)
        for g in cfg.grants:
            if ((g.tenant is None or g.tenant == req.tenant) and (g.scope is None or g.scope in req.scopes)
                    and (g.risk is None or g.risk == req.risk) and (g.route is None or g.route == req.route)
                    and (g.workflow_class is None or g.workflow_class == req.workflow_class)):
                best = max(best, cfg.grade(g.grade))
        return cfg.grades[best]

    def _budget(self, cfg: AIConfig, req: AiRequest, meta: dict[str, Any],
                chain: list[str]) -> tuple[dict[str, Any], list[str]]:
        assert self._ledger is not None
        for b in cfg.budgets:
            if b.tenant is not None and b.tenant != req.tenant:
                continue
            if b.workflow_class is not None and b.workflow_class != req.workflow_class:
                continue
            spent = self._ledger.spent(since=period_start(b.period, self._clock()), tenant=b.tenant,
                                       workflow_class=b.workflow_class)
            if spent < b.limit_usd:
                continue
            subject = f"tenant {b.tenant!r}" if b.tenant is not None else f"workflow class {b.workflow_class!r}"
            grade = meta.get("grade")
            if b.on_exhaust == "downgrade" and grade is not None and cfg.grade(grade) > 0:
                lower = cfg.grades[cfg.grade(grade) - 1]
                self._audit.append("ai.budget_downgrade", request_id=req.rid, tenant=req.tenant, script=req.script,
                                   budget=subject, spent_usd=round(spent, 6), limit_usd=b.limit_usd,
                                   grade=grade, served_grade=lower)
                meta = {**meta, "grade": lower, "budget_downgraded": True}
                chain = self._chain(cfg, req.target, lower)
                continue
            raise GatewayError(402, "ai_budget_exhausted", f"the AI budget of {subject} is spent for this {b.period}"
                               f" ({spent:.4f} of {b.limit_usd} USD)")
        return meta, chain

    async def _serve(self, cfg: AIConfig, req: AiRequest, name: str, meta: dict[str, Any]) -> dict[str, Any]:
        model = cfg.models[name]
        provider_cfg = cfg.providers[model.provider]
        stream = bool(req.options.get("stream") or req.inputs.get("stream"))
        use_cache = cfg.cache.ttl_s > 0 and cfg.cache.max_entries > 0 and not stream and req.options.get("cache", True)
        key = self._cache_key(req, name) if use_cache else None
        started = self._clock()
        if key is not None:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > started:
                self._cache.move_to_end(key)
                result = dict(hit[1])  # only "meta" is set on it below, never changed inside
                self._account(cfg, req, name, meta, Answer(task=model.task, usage=Usage(0, 0)), 0.0, "hit", started)
                result["meta"] = {"cache": "hit", "cost_usd": 0.0}
                return result
        per_minute = cfg.limits.model_per_minute  # calls that reach the provider (not cache hits)
        if per_minute is not None and not self._windows.take(f"m:{name}", per_minute, started):
            raise _ModelLimited(f"model {name!r} is over {per_minute} calls a minute")
        answer = await self._attempts(req, name, model.provider, provider_cfg, model.model or name, model.task, stream)
        cost = (answer.usage.input_tokens * model.price.input + answer.usage.output_tokens * model.price.output) / 1e6
        status = "miss" if key is not None else "bypass"
        result = _shape(answer, stream)
        self._account(cfg, req, name, meta, answer, cost, status, started)
        if key is not None:
            self._cache[key] = (started + cfg.cache.ttl_s, result)
            while len(self._cache) > cfg.cache.max_entries:
                self._cache.popitem(last=False)
        result["meta"] = {"cache": status, "cost_usd": round(cost, 8)}
        return result

    async def _attempts(self, req: AiRequest, name: str, provider_name: str, cfg: Any, model_id: str, task: str,
                        stream: bool) -> Answer:
        provider = self._providers[provider_name]
        CALLER.set(Caller(_principal(req), req.level, req.rid))  # whom its HTTP calls are made for (egress)
        delay = 0.1
        for attempt in range(cfg.retries + 1):
            timeout = cfg.timeout_s
            if req.deadline is not None:
                timeout = min(timeout, req.deadline - self._clock())
                if timeout <= 0:
                    raise ProviderError(f"the request's wall time is spent before calling {name!r}", retryable=False)
            try:
                async with self._semaphores[provider_name]:
                    return await asyncio.wait_for(
                        provider.run(model_id, task, req.inputs, {k: v for k, v in req.options.items()
                                                                  if k not in ("cache", "stream")},
                                     stream=stream, timeout_s=timeout), timeout + 1)
            except TimeoutError:
                err = ProviderError(f"provider {provider_name!r} did not answer within {timeout:.1f} s", retryable=True)
            except ProviderError as e:
                err = e
            if not err.retryable or attempt == cfg.retries:
                raise err
            await asyncio.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def _cache_key(self, req: AiRequest, model: str) -> str:
        body = json.dumps([req.tenant, model, req.inputs, {k: v for k, v in req.options.items() if k != "cache"}],
                          sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(body.encode()).hexdigest()

    def _account(self, cfg: AIConfig, req: AiRequest, name: str, meta: dict[str, Any], answer: Answer, cost: float,
                 cache: str, started: float) -> None:
        model = cfg.models[name]
        latency = round((self._clock() - started) * 1000, 3)
        fields = {"request_id": req.rid, "tenant": req.tenant, "subject": req.subject, "script": req.script,
                  "risk": req.risk, "inference_class": meta.get("inference_class"), "grade": meta.get("grade"),
                  "model": name, "provider": model.provider, "tokens_in": answer.usage.input_tokens,
                  "tokens_out": answer.usage.output_tokens, "cost_usd": round(cost, 8), "latency_ms": latency,
                  "cache": cache, "level": req.level, "classification": req.level, "workflow_class": req.workflow_class,
                  "instance": req.instance, "step": req.step}
        self._audit.append("ai.call", **fields)
        prompt = output = None
        if cfg.persist.prompts:
            prompt = self._redactor.redact_text(json.dumps(req.inputs, default=str))
            output = self._redactor.redact_text(answer.text or "")
        call = Call(self._clock(), req.rid, req.tenant, req.script, meta.get("inference_class"), meta.get("grade"),
                    name, model.provider, answer.usage.input_tokens, answer.usage.output_tokens, cost, latency,
                    cache, req.workflow_class, req.instance, req.step, True, None, prompt, output)
        ledger = self._ledger
        assert ledger is not None
        if ledger.record(call):
            asyncio.get_running_loop().call_later(ledger.flush_s, ledger.flush)


class _Unavailable:
    """A provider that could not be built: every call fails with the reason, so the rest of the
    app (and every other provider) still serves and the handler sees why."""

    def __init__(self, name: str, kind: str, error: ProviderError):
        self.name, self.kind, self._error = name, kind, error

    async def run(self, model: str, task: str, inputs: dict[str, Any], options: dict[str, Any], *,
                  stream: bool, timeout_s: float) -> Answer:
        raise ProviderError(self._error.message, retryable=False)

    async def aclose(self) -> None:
        """Nothing to release."""


def _shape(answer: Answer, stream: bool) -> dict[str, Any]:
    """The result in Workers AI's shapes."""
    usage = {"prompt_tokens": answer.usage.input_tokens, "completion_tokens": answer.usage.output_tokens,
             "total_tokens": answer.usage.input_tokens + answer.usage.output_tokens}
    if answer.task == "embeddings":
        data = answer.embeddings or []
        return {"shape": [len(data), len(data[0]) if data else 0], "data": data, "usage": usage}
    if answer.task == "classification":
        return {"labels": answer.labels or [], "usage": usage}
    if stream:
        pieces = answer.chunks if answer.chunks is not None else [answer.text or ""]
        events = [f"data: {json.dumps({'response': p})}\n\n" for p in pieces]
        events.append(f"data: {json.dumps({'response': '', 'usage': usage})}\n\n")
        events.append("data: [DONE]\n\n")
        return {"sse": events, "usage": usage}  # the events of a text/event-stream body, in order
    return {"response": answer.text or "", "usage": usage}
