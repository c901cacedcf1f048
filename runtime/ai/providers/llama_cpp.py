"""Embedded inference of a GGUF model with llama-cpp-python (the ``edgeworks[llama]`` extra).

The model is loaded in one child process of the front per provider (`llama_server.py`), never in
the front itself, where a generation would block the event loop; the gateway lives in the front,
so every isolate's calls share that one process and one copy of the model. The process starts on
the first call, is started again when it has died, and is ended by `aclose()`.

The process serves one request at a time (one llama.cpp context runs one generation at a time);
further calls wait here, behind the gateway's per-provider concurrency cap. A call that times out
or is cancelled while its request is in the process ends the process (a llama.cpp generation
cannot be interrupted from outside): the next call loads the model again.

Text takes ``messages`` or ``prompt`` (formatted with the model's chat template), ``max_tokens``
(default 256) and ``temperature``; tokens are counted by the model's own tokenizer. Embeddings are
mean-pooled. Classification is not supported.
"""

from __future__ import annotations

import asyncio
import importlib.util
import struct
import sys
from pathlib import Path
from typing import Any

import msgpack

from runtime.ai.providers.base import (
    Answer,
    ProviderError,
    Usage,
    embedding_texts,
    text_messages,
    text_options,
)

__all__ = ["LOAD_TIMEOUT_S", "LlamaCppProvider", "check_installed"]

LOAD_TIMEOUT_S = 600.0  # loading a large GGUF from a cold disk takes a while; calls wait for it
_STOP_GRACE_S = 5.0
_HEADER = struct.Struct(">I")


def check_installed(name: str) -> None:
    """Raise a ProviderError naming the extra to install when llama-cpp-python is missing."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise ProviderError(f"AI provider {name!r} (llama-cpp) needs llama-cpp-python: "
                            f"pip install 'edgeworks[llama]'", retryable=False)


class LlamaCppProvider:
    """Talks to its model process over the process's stdin and stdout (msgpack frames)."""

    kind = "llama-cpp"

    def __init__(self, name: str, model_path: Path, n_ctx: int) -> None:
        self.name = name
        self.model_path = model_path
        self.n_ctx = n_ctx
        self._proc: asyncio.subprocess.Process | None = None
        self._starting: asyncio.Task[asyncio.subprocess.Process] | None = None
        self._lock = asyncio.Lock()

    @property
    def pid(self) -> int | None:
        """The model process's pid while it runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    async def run(self, model: str, task: str, inputs: dict[str, Any], options: dict[str, Any],
                  *, stream: bool, timeout_s: float) -> Answer:
        if task == "text":
            messages = [{"role": str(m.get("role", "user")), "content": m["content"]}
                        for m in text_messages(inputs)]
            request = {"op": "text", "messages": messages, "stream": stream, **text_options(inputs)}
            chunks: list[str] = []
            done = await self._exchange(request, chunks, timeout_s)
            return Answer(task="text", usage=self._usage(done), text=str(done.get("text", "")),
                          chunks=chunks if stream else None)
        if task == "embeddings":
            done = await self._exchange({"op": "embed", "texts": embedding_texts(inputs)}, [],
                                        timeout_s)
            return Answer(task="embeddings", usage=self._usage(done),
                          embeddings=[[float(x) for x in v] for v in done.get("embeddings", [])])
        raise ProviderError(f"AI provider {self.name!r} (llama-cpp) does not support the task "
                            f"{task!r}", retryable=False, status=400)

    async def aclose(self) -> None:
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
        self._starting = None
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # end of stdin: the process exits by itself
        try:
            await asyncio.wait_for(proc.wait(), _STOP_GRACE_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    # -- the model process ------------------------------------------------------------------

    async def _process(self) -> asyncio.subprocess.Process:
        """The running model process, started (once, shared by concurrent callers) if needed.
        A caller that gives up waiting does not abort the load: the next call finds it done."""
        if self._proc is not None and self._proc.returncode is None:
            return self._proc
        if self._starting is None or self._starting.done():
            self._starting = asyncio.ensure_future(self._start())
        starting = self._starting
        try:
            proc = await asyncio.shield(starting)
        except ProviderError:
            if self._starting is starting:
                self._starting = None
            raise
        self._proc = proc
        return proc

    async def _start(self) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "runtime.ai.providers.llama_server", str(self.model_path),
            str(self.n_ctx), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        try:
            async with asyncio.timeout(LOAD_TIMEOUT_S):
                hello = await self._read(proc)
        except (TimeoutError, asyncio.CancelledError):
            proc.kill()
            await proc.wait()
            raise
        except ProviderError:
            await proc.wait()
            raise
        if not hello.get("ready"):
            await proc.wait()
            raise ProviderError(f"AI provider {self.name!r} (llama-cpp) cannot load "
                                f"{self.model_path}: {hello.get('error')}", retryable=False)
        return proc

    async def _exchange(self, request: dict[str, Any], chunks: list[str],
                        timeout_s: float) -> dict[str, Any]:
        """Send `request` and read its answer: chunk frames into `chunks`, then the final one."""
        try:
            async with asyncio.timeout(timeout_s):
                async with self._lock:  # then the process: the previous call may have ended it
                    return await self._request(await self._process(), request, chunks)
        except TimeoutError:
            raise ProviderError(f"AI provider {self.name!r} (llama-cpp) did not answer within "
                                f"{timeout_s}s", retryable=True) from None

    async def _request(self, proc: asyncio.subprocess.Process, request: dict[str, Any],
                       chunks: list[str]) -> dict[str, Any]:
        assert proc.stdin is not None
        completed = False
        try:
            body = msgpack.packb(request, use_bin_type=True)
            proc.stdin.write(_HEADER.pack(len(body)) + body)
            await proc.stdin.drain()
            while True:
                frame = await self._read(proc)
                if "chunk" in frame:
                    chunks.append(str(frame["chunk"]))
                    continue
                completed = True
                break
        except (ConnectionError, BrokenPipeError):
            raise self._died(proc) from None
        finally:
            if not completed and proc.returncode is None:
                proc.kill()  # its answer is half read: the stream cannot be used again
                if self._proc is proc:
                    self._proc = None
        if "error" in frame:
            raise ProviderError(f"AI provider {self.name!r} (llama-cpp): {frame['error']}",
                                retryable=False)
        return frame

    async def _read(self, proc: asyncio.subprocess.Process) -> dict[str, Any]:
        assert proc.stdout is not None
        try:
            (size,) = _HEADER.unpack(await proc.stdout.readexactly(_HEADER.size))
            frame = msgpack.unpackb(await proc.stdout.readexactly(size), raw=False)
        except asyncio.IncompleteReadError:
            raise self._died(proc) from None
        if not isinstance(frame, dict):
            raise ProviderError(f"AI provider {self.name!r} (llama-cpp): the model process sent "
                                f"a frame that is not a map", retryable=True)
        return frame

    def _died(self, proc: asyncio.subprocess.Process) -> ProviderError:
        if self._proc is proc:
            self._proc = None
        return ProviderError(f"AI provider {self.name!r} (llama-cpp): the model process "
                             f"(pid {proc.pid}) ended", retryable=True)

    @staticmethod
    def _usage(done: dict[str, Any]) -> Usage:
        return Usage(int(done.get("input_tokens") or 0), int(done.get("output_tokens") or 0))
