"""The AI providers against real loopback HTTP servers that answer in the OpenAI and Cloudflare
Workers AI shapes (streams included), plus the scripted and replay providers. Nothing here
talks to anything but 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from runtime.ai.providers import Answer, ProviderError, Usage, build_provider
from runtime.ai.providers.replay import cassette_key
from tests.support import free_port

TOKEN = "cf-token-123"
ACCOUNT = "acct42"
KEY = "sk-test-abc"


class Fake:
    """What the fake APIs received, and state for the answers that change between calls."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.busy_calls = 0
        self.closing = False


def sse(events: list[Any]) -> StreamingResponse:
    async def body() -> Any:
        for event in events:
            yield f"data: {json.dumps(event)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream")


def build_app(fake: Fake) -> Starlette:
    async def record(request: Request) -> dict[str, Any]:
        body = await request.json()
        fake.requests.append({"path": request.url.path, "headers": dict(request.headers),
                              "json": body})
        return body

    async def common(model: str) -> Response | None:
        """The failure answers shared by both APIs, chosen by model name."""
        if model.endswith("busy"):
            fake.busy_calls += 1
            if fake.busy_calls == 1:
                return JSONResponse({"error": {"message": "Rate limit reached"}}, 429)
        if model.endswith("boom"):
            return Response("upstream exploded", 500)
        if model.endswith("slow"):
            while not fake.closing:
                await asyncio.sleep(0.05)
            return Response("too late", 200)
        return None

    async def chat(request: Request) -> Response:
        body = await record(request)
        if body["model"] == "bad":
            return JSONResponse({"error": {"message": "Invalid value for 'temperature'",
                                           "type": "invalid_request_error"}}, 400)
        failed = await common(body["model"])
        if failed is not None:
            return failed
        if body.get("stream"):
            events: list[Any] = [
                {"choices": [{"index": 0, "delta": {"role": "assistant"}}], "usage": None},
                {"choices": [{"index": 0, "delta": {"content": "Hello"}}], "usage": None},
                {"choices": [{"index": 0, "delta": {"content": " there"}}], "usage": None},
                {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": None},
            ]
            if body.get("stream_options", {}).get("include_usage"):
                events.append({"choices": [], "usage": {"prompt_tokens": 7,
                                                        "completion_tokens": 2,
                                                        "total_tokens": 9}})
            return sse(events)
        return JSONResponse({
            "id": "chatcmpl-1", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "Hello there"}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
        })

    async def embeddings(request: Request) -> Response:
        body = await record(request)
        data = [{"object": "embedding", "index": i, "embedding": [float(i), 0.5]}
                for i, _ in enumerate(body["input"])]
        return JSONResponse({"object": "list", "model": body["model"], "data": data[::-1],
                             "usage": {"prompt_tokens": 4, "total_tokens": 4}})

    async def workers(request: Request) -> Response:
        body = await record(request)
        model = request.path_params["model"]
        failed = await common(model)
        if failed is not None:
            return failed
        if model == "@cf/nope":
            return JSONResponse({"result": None, "success": False, "messages": [],
                                 "errors": [{"code": 5007, "message": "No such model"}]}, 400)
        if model == "@cf/odd":
            return JSONResponse({"result": None, "success": False, "messages": [],
                                 "errors": [{"code": 3010, "message": "Invalid input"}]})
        if model.startswith("@cf/baai/"):
            rows = [[0.1, 0.2, 0.3] for _ in body["text"]]
            result: Any = {"shape": [len(rows), 3], "data": rows}
        elif model.startswith("@cf/huggingface/"):
            result = [{"label": "NEGATIVE", "score": 0.1}, {"label": "POSITIVE", "score": 0.9}]
        elif body.get("stream"):
            return sse([{"response": "New"}, {"response": " York"},
                        {"response": "", "usage": {"prompt_tokens": 5, "completion_tokens": 2,
                                                   "total_tokens": 7}}])
        else:
            result = {"response": "New York", "usage": {"prompt_tokens": 5,
                                                        "completion_tokens": 2,
                                                        "total_tokens": 7}}
        return JSONResponse({"result": result, "success": True, "errors": [], "messages": []})

    return Starlette(routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/client/v4/accounts/{account}/ai/run/{model:path}", workers, methods=["POST"]),
    ])


@pytest.fixture
def server() -> Iterator[tuple[str, Fake]]:
    """A real HTTP server on a free loopback port, run by uvicorn in a thread and always
    stopped."""
    fake = Fake()
    port = free_port()
    config = uvicorn.Config(build_app(fake), host="127.0.0.1", port=port, log_level="warning",
                            lifespan="off", ws="none")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        while not srv.started:
            if not thread.is_alive():
                raise RuntimeError("the fake API server did not start")
            threading.Event().wait(0.01)
        yield f"http://127.0.0.1:{port}", fake
    finally:
        fake.closing = True
        srv.should_exit = True
        thread.join(10)


def openai_cfg(base_url: str, **extra: Any) -> SimpleNamespace:
    return SimpleNamespace(kind="openai", base_url=base_url, api_key_secret="OPENAI_KEY",
                           account_id_secret=None, api_token_secret=None, answers=[],
                           cassette=None, record=None, **extra)


def workers_cfg(base_url: str) -> SimpleNamespace:
    return SimpleNamespace(kind="workers-ai", base_url=base_url, api_key_secret=None,
                           account_id_secret="CF_ACCOUNT", api_token_secret="CF_TOKEN",
                           answers=[], cassette=None, record=None)


def scripted_cfg(answers: list[dict[str, Any]]) -> SimpleNamespace:
    full = [SimpleNamespace(**{"model": None, "match": None, "response": None,
                               "embedding": None, "labels": None, **a}) for a in answers]
    return SimpleNamespace(kind="scripted", base_url=None, api_key_secret=None,
                           account_id_secret=None, api_token_secret=None, answers=full,
                           cassette=None, record=None)


def replay_cfg(cassette: str, record: str | None) -> SimpleNamespace:
    return SimpleNamespace(kind="replay", base_url=None, api_key_secret=None,
                           account_id_secret=None, api_token_secret=None, answers=[],
                           cassette=cassette, record=record)


SECRETS = {"OPENAI_KEY": KEY, "CF_ACCOUNT": ACCOUNT, "CF_TOKEN": TOKEN}
CHAT = {"messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Say hello"}], "max_tokens": 20}


# --- openai -------------------------------------------------------------------------------------


async def test_openai_chat_sends_the_documented_request_and_reads_text_and_usage(server, tmp_path):
    base, fake = server
    provider = build_provider("oa", openai_cfg(base + "/v1"), SECRETS, tmp_path)
    try:
        answer = await provider.run("gpt-x", "text", CHAT, {}, stream=False, timeout_s=10)
    finally:
        await provider.aclose()
    assert answer == Answer(task="text", usage=Usage(7, 2), text="Hello there")
    [req] = fake.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["authorization"] == f"Bearer {KEY}"
    assert req["json"] == {"model": "gpt-x", "messages": CHAT["messages"], "max_tokens": 20}


async def test_openai_stream_asks_for_usage_and_joins_the_deltas(server, tmp_path):
    base, fake = server
    provider = build_provider("oa", openai_cfg(base + "/v1"), SECRETS, tmp_path)
    try:
        answer = await provider.run("gpt-x", "text", {"prompt": "Say hello"}, {}, stream=True,
                                    timeout_s=10)
    finally:
        await provider.aclose()
    assert answer.chunks == ["Hello", " there"]
    assert answer.text == "Hello there"
    assert answer.usage == Usage(7, 2)
    assert fake.requests[0]["json"] == {
        "model": "gpt-x", "messages": [{"role": "user", "content": "Say hello"}],
        "stream": True, "stream_options": {"include_usage": True}}


async def test_openai_embeddings_in_input_order_and_no_key_without_a_secret(server, tmp_path):
    base, fake = server
    cfg = openai_cfg(base + "/v1")
    cfg.api_key_secret = None
    provider = build_provider("oa", cfg, {}, tmp_path)
    try:
        answer = await provider.run("emb", "embeddings", {"text": ["a", "b"]}, {}, stream=False,
                                    timeout_s=10)
    finally:
        await provider.aclose()
    assert answer.embeddings == [[0.0, 0.5], [1.0, 0.5]]
    assert answer.usage == Usage(4, 0)
    assert fake.requests[0]["json"] == {"model": "emb", "input": ["a", "b"]}
    assert "authorization" not in fake.requests[0]["headers"]


async def test_openai_errors_say_whether_to_retry(server, tmp_path):
    base, fake = server
    provider = build_provider("oa", openai_cfg(base + "/v1"), SECRETS, tmp_path)
    try:
        with pytest.raises(ProviderError) as busy:
            await provider.run("busy", "text", CHAT, {}, stream=False, timeout_s=10)
        assert (busy.value.retryable, busy.value.status) == (True, 429)
        assert "Rate limit reached" in busy.value.message
        again = await provider.run("busy", "text", CHAT, {}, stream=False, timeout_s=10)
        assert again.text == "Hello there"  # the provider does not retry: the second call does

        with pytest.raises(ProviderError) as boom:
            await provider.run("boom", "text", CHAT, {}, stream=True, timeout_s=10)
        assert (boom.value.retryable, boom.value.status) == (True, 500)
        assert "upstream exploded" in boom.value.message

        with pytest.raises(ProviderError) as bad:
            await provider.run("bad", "text", CHAT, {}, stream=False, timeout_s=10)
        assert (bad.value.retryable, bad.value.status) == (False, 400)
        assert "Invalid value for 'temperature'" in bad.value.message

        with pytest.raises(ProviderError) as slow:
            await provider.run("slow", "text", CHAT, {}, stream=False, timeout_s=0.3)
        assert slow.value.retryable and slow.value.status is None

        with pytest.raises(ProviderError) as unsupported:
            await provider.run("gpt-x", "classification", {"text": "x"}, {}, stream=False,
                               timeout_s=10)
        assert not unsupported.value.retryable
    finally:
        await provider.aclose()
    assert fake.busy_calls == 2


async def test_an_unreachable_server_is_retryable_and_named(tmp_path):
    base = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    provider = build_provider("oa", openai_cfg(base), SECRETS, tmp_path)
    try:
        with pytest.raises(ProviderError) as exc:
            await provider.run("gpt-x", "text", CHAT, {}, stream=False, timeout_s=5)
    finally:
        await provider.aclose()
    assert exc.value.retryable
    assert "'oa'" in exc.value.message and base in exc.value.message


def test_a_missing_secret_is_named(tmp_path):
    with pytest.raises(ProviderError) as exc:
        build_provider("oa", openai_cfg("http://127.0.0.1:9/v1"), {}, tmp_path)
    assert not exc.value.retryable and "OPENAI_KEY" in exc.value.message


# --- workers ai ---------------------------------------------------------------------------------


async def test_workers_ai_text_embeddings_and_classification(server, tmp_path):
    base, fake = server
    provider = build_provider("cf", workers_cfg(base + "/client/v4"), SECRETS, tmp_path)
    try:
        text = await provider.run("@cf/meta/llama-3.1-8b-instruct", "text",
                                  {"prompt": "where is new york?"}, {}, stream=False, timeout_s=10)
        emb = await provider.run("@cf/baai/bge-small-en-v1.5", "embeddings", {"text": "hi there"},
                                 {}, stream=False, timeout_s=10)
        cls = await provider.run("@cf/huggingface/distilbert-sst-2-int8", "classification",
                                 {"text": "great stuff"}, {}, stream=False, timeout_s=10)
    finally:
        await provider.aclose()
    assert text == Answer(task="text", usage=Usage(5, 2), text="New York")
    assert emb.embeddings == [[0.1, 0.2, 0.3]]
    assert emb.usage == Usage(2, 0)  # no usage reported: estimated in words
    assert cls.labels == [{"label": "NEGATIVE", "score": 0.1},
                          {"label": "POSITIVE", "score": 0.9}]
    paths = [r["path"] for r in fake.requests]
    assert paths == [f"/client/v4/accounts/{ACCOUNT}/ai/run/@cf/meta/llama-3.1-8b-instruct",
                     f"/client/v4/accounts/{ACCOUNT}/ai/run/@cf/baai/bge-small-en-v1.5",
                     f"/client/v4/accounts/{ACCOUNT}/ai/run/@cf/huggingface/distilbert-sst-2-int8"]
    assert all(r["headers"]["authorization"] == f"Bearer {TOKEN}" for r in fake.requests)
    assert [r["json"] for r in fake.requests] == [
        {"prompt": "where is new york?"}, {"text": ["hi there"]}, {"text": "great stuff"}]


async def test_workers_ai_stream_and_messages(server, tmp_path):
    base, fake = server
    provider = build_provider("cf", workers_cfg(base + "/client/v4"), SECRETS, tmp_path)
    try:
        answer = await provider.run("@cf/meta/llama", "text", CHAT, {}, stream=True,
                                    timeout_s=10)
    finally:
        await provider.aclose()
    assert answer.chunks == ["New", " York"] and answer.text == "New York"
    assert answer.usage == Usage(5, 2)
    assert fake.requests[0]["json"] == {**CHAT, "stream": True}


async def test_workers_ai_errors(server, tmp_path):
    base, _ = server
    provider = build_provider("cf", workers_cfg(base + "/client/v4"), SECRETS, tmp_path)
    try:
        with pytest.raises(ProviderError) as missing:
            await provider.run("@cf/nope", "text", CHAT, {}, stream=False, timeout_s=10)
        assert (missing.value.retryable, missing.value.status) == (False, 400)
        assert "No such model" in missing.value.message

        with pytest.raises(ProviderError) as refused:
            await provider.run("@cf/odd", "text", CHAT, {}, stream=False, timeout_s=10)
        assert not refused.value.retryable and "Invalid input" in refused.value.message

        with pytest.raises(ProviderError) as busy:
            await provider.run("@cf/busy", "text", CHAT, {}, stream=False, timeout_s=10)
        assert (busy.value.retryable, busy.value.status) == (True, 429)

        with pytest.raises(ProviderError) as slow:
            await provider.run("@cf/slow", "text", CHAT, {}, stream=True, timeout_s=0.3)
        assert slow.value.retryable
    finally:
        await provider.aclose()


# --- scripted -----------------------------------------------------------------------------------


async def test_scripted_answers_by_model_and_match():
    cfg = scripted_cfg([
        {"model": "big", "response": "big answer"},
        {"match": r"weather\b", "response": "It is  sunny today "},
        {"embedding": [1.0, 2.0], "match": "cat"},
        {"embedding": [3.0, 4.0]},
        {"labels": [{"label": "POSITIVE", "score": 1.0}]},
    ])
    provider = build_provider("local", cfg, {}, Path("."))
    big = await provider.run("big", "text", {"prompt": "what is the weather"}, {}, stream=False,
                             timeout_s=1)
    assert big.text == "big answer" and big.usage == Usage(4, 2)

    weather = await provider.run("small", "text",
                                 {"messages": [{"role": "user", "content": "the weather?"}]},
                                 {}, stream=True, timeout_s=1)
    assert weather.chunks == ["It ", "is  ", "sunny ", "today "]
    assert "".join(weather.chunks) == weather.text == "It is  sunny today "
    assert weather.usage == Usage(2, 4)  # word counts, not tokens

    emb = await provider.run("e", "embeddings", {"text": ["a cat", "a dog"]}, {}, stream=False,
                             timeout_s=1)
    assert emb.embeddings == [[1.0, 2.0], [3.0, 4.0]] and emb.usage == Usage(4, 0)
    cls = await provider.run("c", "classification", {"text": "nice"}, {}, stream=False,
                             timeout_s=1)
    assert cls.labels == [{"label": "POSITIVE", "score": 1.0}]

    with pytest.raises(ProviderError) as miss:
        await provider.run("small", "text", {"prompt": "hello"}, {}, stream=False, timeout_s=1)
    assert (miss.value.retryable, miss.value.status) == (False, 404)
    assert "no scripted answer matches" in miss.value.message and "'small'" in miss.value.message


# --- replay -------------------------------------------------------------------------------------


async def test_replay_records_a_miss_then_plays_it_back_without_the_server(server, tmp_path):
    base, fake = server
    upstream = build_provider("oa", openai_cfg(base + "/v1"), SECRETS, tmp_path)
    recorder = build_provider("rec", replay_cfg("cassettes/ai.jsonl", "oa"), {}, tmp_path,
                              {"oa": upstream})
    options = {"cache": False}
    try:
        first = await recorder.run("gpt-x", "text", CHAT, options, stream=True, timeout_s=10)
        again = await recorder.run("gpt-x", "text", CHAT, {"cache": True}, stream=True,
                                   timeout_s=10)
    finally:
        await recorder.aclose()
        await upstream.aclose()
    assert len(fake.requests) == 1
    assert first == again and first.chunks == ["Hello", " there"]

    [line] = (tmp_path / "cassettes/ai.jsonl").read_text().splitlines()
    entry = json.loads(line)
    assert entry["key"] == cassette_key("gpt-x", "text", CHAT, {})
    assert (entry["model"], entry["task"]) == ("gpt-x", "text")

    player = build_provider("play", replay_cfg("cassettes/ai.jsonl", None), {}, tmp_path)
    played = await player.run("gpt-x", "text", CHAT, {}, stream=True, timeout_s=10)
    assert played == first
    whole = await player.run("gpt-x", "text", CHAT, {}, stream=False, timeout_s=10)
    assert whole.text == "Hello there" and whole.chunks is None
    assert len(fake.requests) == 1
    with pytest.raises(ProviderError) as miss:
        await player.run("gpt-x", "text", {"prompt": "other"}, {}, stream=False, timeout_s=10)
    assert (miss.value.retryable, miss.value.status) == (False, 404)
    assert "no recorded answer" in miss.value.message


def test_replay_records_only_from_a_known_provider(tmp_path):
    with pytest.raises(ProviderError) as exc:
        build_provider("rec", replay_cfg("ai.jsonl", "ghost"), {}, tmp_path, {})
    assert "'ghost'" in exc.value.message
