"""The llama-cpp provider's overhead: generation speed through the provider (its model process,
msgpack frames over a pipe) against llama-cpp-python called directly in this process, on the
same GGUF file in the same run, and the resident memory of the model process.

Each round generates `--max-tokens` tokens from the same chat messages both ways (the direct
call first, then the provider's, so neither always runs on a warmer cache); prints the median
tokens per second of each over the rounds. Without `--model`, a tiny random-weight llama model is
written to a temp dir (then the numbers measure the plumbing more than the model).

    .venv/bin/python loadtests/bench_llama.py [--model PATH.gguf] [--rounds 5] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from runtime.ai.providers.llama_cpp import LlamaCppProvider  # noqa: E402
from tests.runtime.ai.tiny_gguf import write_tiny_gguf  # noqa: E402

MESSAGES = [{"role": "user", "content": "Write a short story about a small fast model."}]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def bench(model: Path, n_ctx: int, rounds: int, max_tokens: int) -> None:
    from llama_cpp import Llama

    direct = Llama(model_path=str(model), n_ctx=n_ctx, verbose=False)
    provider = LlamaCppProvider("bench", model, n_ctx)
    inputs: dict[str, Any] = {"messages": MESSAGES, "max_tokens": max_tokens, "temperature": 0.0}
    await provider.run("m", "text", inputs, {}, stream=False, timeout_s=600)  # load it
    speeds: dict[str, list[float]] = {"direct": [], "provider": []}
    try:
        for _ in range(rounds):
            t = time.perf_counter()
            out: Any = direct.create_chat_completion(messages=MESSAGES, max_tokens=max_tokens,
                                                     temperature=0.0)
            speeds["direct"].append(out["usage"]["completion_tokens"] / (time.perf_counter() - t))
            t = time.perf_counter()
            answer = await provider.run("m", "text", inputs, {}, stream=False, timeout_s=600)
            speeds["provider"].append(answer.usage.output_tokens / (time.perf_counter() - t))
        assert provider.pid is not None
        model_rss = rss_mb(provider.pid)
    finally:
        await provider.aclose()
    d, p = statistics.median(speeds["direct"]), statistics.median(speeds["provider"])
    print(f"model {model} ({model.stat().st_size / 1e6:.1f} MB), {max_tokens} tokens, "
          f"{rounds} rounds")
    print(f"direct llama-cpp-python : {d:10.1f} tokens/s (median)")
    print(f"llama-cpp provider      : {p:10.1f} tokens/s (median), {p / d:.1%} of direct")
    print(f"model process RSS       : {model_rss:10.1f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="a GGUF file (default: a tiny one)")
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=128)
    args = ap.parse_args()
    model = args.model
    if model is None:
        model = write_tiny_gguf(Path(tempfile.mkdtemp(prefix="bench-llama-")) / "tiny.gguf")
    asyncio.run(bench(model, args.n_ctx, args.rounds, args.max_tokens))


if __name__ == "__main__":
    main()
