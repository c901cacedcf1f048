"""The gateway's limits on its own (no server): the tenant's calls per minute count calls, once
each; a model over its own limit hands over to the next model of the chain, and only a chain
with every model over its limit is refused."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from runtime.ai.config import AIConfig
from runtime.ai.gateway import AiRequest, Gateway


class Audit:
    def __init__(self) -> None:
        self.entries: list[tuple[str, dict[str, Any]]] = []

    def append(self, kind: str, **fields: Any) -> None:
        self.entries.append((kind, fields))


class NoKills:
    def check(self, kind: str, name: str) -> None:
        return None


def gateway(tmp_path: Path, limits: dict[str, int]) -> tuple[Gateway, Audit]:
    cfg = AIConfig.model_validate({
        "providers": {"local": {"kind": "scripted", "answers": [{"response": "ok"}]}},
        "models": {"a": {"provider": "local", "price": {"input": 1, "output": 1}},
                   "b": {"provider": "local", "price": {"input": 1, "output": 1}}},
        "classes": {"triage": {"standard": ["a", "b"]}},
        "limits": limits, "cache": {"ttl_s": 0},
    })
    audit = Audit()
    g = Gateway(tmp_path, audit, NoKills())
    g.configure(cfg, {}, {}, tmp_path)
    return g, audit


def call(tenant: str = "acme") -> AiRequest:
    return AiRequest(kind="route", target="triage", inputs={"prompt": "hi"}, tenant=tenant, rid="r")


async def test_a_model_over_its_limit_hands_over_to_the_next_model(tmp_path: Path):
    g, _ = gateway(tmp_path, {"model_per_minute": 1})
    try:
        first, second, third = [await g.call(call()) for _ in range(3)]
        assert first["meta"]["model"] == "a" and first["meta"]["fallbacks"] == 0
        assert second["meta"]["model"] == "b" and second["meta"]["fallbacks"] == 1
        assert third["error"]["code"] == "ai_rate_limited" and third["error"]["status"] == 429
    finally:
        await g.aclose()


async def test_the_tenant_limit_counts_each_call_once_whatever_the_chain_does(tmp_path: Path):
    g, audit = gateway(tmp_path, {"tenant_per_minute": 2, "model_per_minute": 1})
    try:
        answers = [await g.call(call()) for _ in range(3)]
        assert [a.get("meta", {}).get("model") for a in answers[:2]] == ["a", "b"]  # the 2nd fell back: 1 call
        assert answers[2]["error"]["code"] == "ai_rate_limited" and "tenant 'acme'" in answers[2]["error"]["message"]
        assert "model 'a' is over" in (await g.call(call("other")))["error"]["message"]  # own count; models spent
        assert [k for k, _ in audit.entries].count("ai.call") == 2
    finally:
        await g.aclose()


class SlowProvider:
    """Counts how many calls it serves at once."""

    name, kind = "local", "scripted"

    def __init__(self) -> None:
        self.now = self.most = 0

    async def run(self, model: str, task: str, inputs: dict[str, Any], options: dict[str, Any], *, stream: bool,
                  timeout_s: float) -> Any:
        from runtime.ai.providers.base import Answer, Usage

        self.now += 1
        self.most = max(self.most, self.now)
        await asyncio.sleep(0.02)
        self.now -= 1
        return Answer(task="text", usage=Usage(1, 1), text="ok")

    async def aclose(self) -> None:
        pass


async def test_a_provider_serves_at_most_its_concurrency_at_once(tmp_path: Path):
    cfg = AIConfig.model_validate({
        "providers": {"local": {"kind": "scripted", "concurrency": 2}},
        "models": {"a": {"provider": "local", "price": {"input": 1, "output": 1}}},
        "classes": {"triage": {"standard": ["a"]}}, "cache": {"ttl_s": 0},
    })
    g = Gateway(tmp_path, Audit(), NoKills())
    g.configure(cfg, {}, {}, tmp_path)
    slow = SlowProvider()
    g._providers["local"] = slow
    try:
        answers = await asyncio.gather(*(g.call(call(f"t{i}")) for i in range(8)))
        assert all(a["response"] == "ok" for a in answers)
        assert slow.most == 2
    finally:
        await g.aclose()


class BrokenProvider(SlowProvider):
    """Fails as a provider does when its server sends what it does not expect."""

    async def run(self, *args: Any, **kwargs: Any) -> Any:
        raise KeyError("choices")


async def test_a_provider_that_breaks_hands_over_to_the_next_model_and_is_named(tmp_path: Path):
    cfg = AIConfig.model_validate({
        "providers": {"bad": {"kind": "scripted"}, "good": {"kind": "scripted", "answers": [{"response": "ok"}]}},
        "models": {"a": {"provider": "bad", "price": {"input": 1, "output": 1}},
                   "b": {"provider": "good", "price": {"input": 1, "output": 1}}},
        "classes": {"triage": {"standard": ["a", "b"]}, "only_bad": {"standard": ["a"]}},
    })
    g = Gateway(tmp_path, Audit(), NoKills())
    g.configure(cfg, {}, {}, tmp_path)
    g._providers["bad"] = BrokenProvider()
    try:
        answer = await g.call(call())
        assert answer["response"] == "ok" and answer["meta"]["fallbacks"] == 1
        failed = await g.call(AiRequest(kind="route", target="only_bad", inputs={"prompt": "hi"}, rid="r"))
        assert failed["error"]["code"] == "ai_provider_unavailable" and failed["error"]["status"] == 502
        assert "provider 'bad' failed: KeyError" in failed["error"]["message"]
    finally:
        await g.aclose()
