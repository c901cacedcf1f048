"""The llama-cpp provider on a real (tiny, random-weight) GGUF model written by the test: text,
streaming and embeddings through the model process, usage counted by the model's tokenizer, one
model process shared by concurrent calls and by every isolate of a real server, restarted when it
dies and ended by `aclose()`."""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from runtime.ai.config import ProviderConfig
from runtime.ai.providers.base import ProviderError, build_provider
from runtime.ai.providers.llama_cpp import LlamaCppProvider
from tests.runtime.ai.tiny_gguf import N_EMBD, write_tiny_gguf
from tests.support import Server, descendants, wait_until, write_app


def model_processes(parent: int) -> set[int]:
    """The processes below `parent` whose command line runs the model server."""
    found = set()
    for pid in descendants(parent):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"llama_server" in f.read():
                    found.add(pid)
        except OSError:
            continue
    return found


def own_model_processes() -> set[int]:
    """The model processes this test process started itself (not those of a test server)."""
    own = set()
    for pid in model_processes(os.getpid()):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if int(f.read().rsplit(")", 1)[-1].split()[1]) == os.getpid():
                    own.add(pid)
        except (OSError, ValueError):
            continue
    return own


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("llama")
    write_tiny_gguf(root / "tiny.gguf")
    return root


def provider(app_dir: Path, n_ctx: int = 512) -> LlamaCppProvider:
    cfg = ProviderConfig(kind="llama-cpp", model_path="tiny.gguf", n_ctx=n_ctx)
    built = build_provider("local", cfg, {}, app_dir)
    assert isinstance(built, LlamaCppProvider)
    return built


def test_the_tiny_model_loads_and_generates_with_llama_cpp_directly(app_dir):
    from llama_cpp import Llama

    llm = Llama(model_path=str(app_dir / "tiny.gguf"), n_ctx=256, verbose=False)
    out: Any = llm.create_completion("hello world", max_tokens=8, temperature=0.0)
    assert out["usage"]["prompt_tokens"] > 0 and out["usage"]["completion_tokens"] > 0
    assert out["choices"][0]["text"]


async def test_text_stream_and_embeddings_in_the_model_process(app_dir):
    p = provider(app_dir)
    try:
        text = await p.run("tiny", "text", {"prompt": "hello world", "max_tokens": 12},
                           {}, stream=False, timeout_s=60)
        assert text.text and text.usage.input_tokens > 0
        assert 0 < text.usage.output_tokens <= 12
        assert p.pid is not None and own_model_processes() == {p.pid}

        inputs = {"messages": [{"role": "system", "content": "be brief"},
                               {"role": "user", "content": "the model works"}],
                  "max_tokens": 10, "temperature": 0.0}
        whole = await p.run("tiny", "text", inputs, {}, stream=False, timeout_s=60)
        streamed = await p.run("tiny", "text", inputs, {}, stream=True, timeout_s=60)
        assert streamed.chunks and "".join(streamed.chunks) == streamed.text == whole.text
        assert streamed.usage == whole.usage  # counted by the tokenizer, streamed or not

        emb = await p.run("tiny", "embeddings", {"text": ["hello world", "edge works"]}, {},
                          stream=False, timeout_s=60)
        assert emb.embeddings is not None and [len(v) for v in emb.embeddings] == [N_EMBD, N_EMBD]
        assert emb.embeddings[0] != emb.embeddings[1] and emb.usage.input_tokens > 0
        assert own_model_processes() == {p.pid}  # embeddings: the same process

        with pytest.raises(ProviderError) as refused:
            await p.run("tiny", "classification", {"text": "x"}, {}, stream=False, timeout_s=5)
        assert not refused.value.retryable
    finally:
        pid = p.pid
        await p.aclose()
    assert pid is not None
    wait_until(lambda: not own_model_processes(), timeout=10)


async def test_concurrent_calls_share_one_model_process_which_restarts_when_it_dies(app_dir):
    p = provider(app_dir)
    try:
        seen: set[int] = set()

        async def call(word: str) -> int:
            answer = await p.run("tiny", "text", {"prompt": word, "max_tokens": 6}, {},
                                 stream=False, timeout_s=60)
            assert answer.usage.output_tokens > 0
            assert p.pid is not None
            seen.add(p.pid)
            return p.pid

        await asyncio.gather(*(call(w) for w in ("hello", "world", "edge", "token")))
        assert len(seen) == 1 and own_model_processes() == seen

        (first,) = seen
        os.kill(first, signal.SIGKILL)  # the model process this test's provider started
        wait_until(lambda: first not in own_model_processes(), timeout=10)
        with pytest.raises(ProviderError) as died:
            await call("again")
        assert died.value.retryable  # the gateway retries, and the retry starts a new process
        assert await call("again") != first
    finally:
        await p.aclose()


async def test_a_timeout_mid_generation_ends_the_process_and_the_next_call_reloads(app_dir):
    p = provider(app_dir, n_ctx=12_000)  # filling it takes the tiny model seconds
    try:
        await p.run("tiny", "text", {"prompt": "hi", "max_tokens": 2}, {}, stream=False,
                    timeout_s=60)
        first = p.pid
        with pytest.raises(ProviderError) as slow:
            await p.run("tiny", "text", {"prompt": "hi", "max_tokens": 100_000}, {},
                        stream=True, timeout_s=0.2)
        assert slow.value.retryable
        again = await p.run("tiny", "text", {"prompt": "hi", "max_tokens": 2}, {},
                            stream=False, timeout_s=60)
        assert again.text and p.pid != first
    finally:
        await p.aclose()


def test_config_and_build_errors(app_dir, monkeypatch):
    with pytest.raises(ValidationError, match="model_path"):
        ProviderConfig(kind="llama-cpp")
    missing = ProviderConfig(kind="llama-cpp", model_path="absent.gguf")
    with pytest.raises(ProviderError, match="does not exist"):
        build_provider("local", missing, {}, app_dir)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llama_cpp" else real_find_spec(name, *a))
    with pytest.raises(ProviderError, match=r"pip install 'edgeworks\[llama\]'") as absent:
        provider(app_dir)
    assert not absent.value.retryable


MANIFEST = """
[[scripts]]
name = "app"
main = "app.py"
pool_size = 4
routes = ["/call"]
ai = { binding = "AI", models = ["tiny", "tiny-embed"] }

[ai.providers.local]
kind = "llama-cpp"
model_path = "tiny.gguf"
n_ctx = 512
concurrency = 2

[ai.models.tiny]
provider = "local"
price = { input = 0.0, output = 0.0 }

[ai.models.tiny-embed]
provider = "local"
price = { input = 0.0, output = 0.0 }
task = "embeddings"
"""

HANDLER = '''
import os
from workers import Response


async def fetch(request, env, ctx):
    body = await request.json()
    result = await env.AI.run(body["model"], body["inputs"])
    return Response.json({"pid": os.getpid(), "result": result})
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    app = write_app(tmp_path_factory.mktemp("llama-e2e") / "app", MANIFEST, {"app.py": HANDLER})
    write_tiny_gguf(app / "tiny.gguf")
    with Server(app) as s:
        yield s


def test_every_isolate_calls_the_one_model_process_of_the_front(server):
    assert server.proc is not None
    assert not model_processes(server.proc.pid)  # started on the first call, not before

    def call(i: int) -> dict[str, Any]:
        with server.client(timeout=120) as c:
            r = c.post("/call", json={"model": "tiny",
                                      "inputs": {"prompt": f"hello {i}", "max_tokens": 8}})
            assert r.status_code == 200, r.text
            return r.json()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, range(8)))
    assert len({a["pid"] for a in answers}) == 4  # all four isolates of the pool called
    for a in answers:
        assert a["result"]["response"] and a["result"]["usage"]["completion_tokens"] > 0
    assert len(model_processes(server.proc.pid)) == 1  # one model in memory, not four

    with server.client(timeout=120) as c:
        r = c.post("/call", json={"model": "tiny-embed", "inputs": {"text": ["a", "b"]}})
    assert r.status_code == 200, r.text
    assert r.json()["result"]["shape"] == [2, N_EMBD]
    assert len(model_processes(server.proc.pid)) == 1
