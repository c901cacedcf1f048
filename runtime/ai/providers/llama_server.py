"""The model process of a llama-cpp provider: ``python -m runtime.ai.providers.llama_server
MODEL_PATH N_CTX``. It loads the GGUF file with llama-cpp-python once and serves the front over its
stdin and stdout, one request at a time (a llama.cpp context runs one generation at a time).

Inference runs here and not in the front so a generation never blocks the front's event loop, and
one process per provider means every isolate shares one copy of the model.

Frames, both ways: a 4-byte big-endian length, then a msgpack map. The process answers its start
with ``{"ready": true, "pid": ...}`` (or ``{"error": ...}`` and exits). Requests:

* ``{"op": "text", "messages": [...], "max_tokens": n, "temperature": t, "stream": bool}`` ->
  ``{"chunk": str}`` per piece when streaming, then
  ``{"done": true, "text": str, "input_tokens": n, "output_tokens": n}``;
* ``{"op": "embed", "texts": [...]}`` -> ``{"done": true, "embeddings": [[...]], "input_tokens": n}``.

A failed request answers ``{"error": str}``. Embeddings use a second `Llama` in this process,
made on the first embeddings request with ``embedding=True`` and mean pooling; llama.cpp maps the
file, so both contexts share the weights' pages. End of stdin ends the process.
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Generator
from typing import IO, Any

import msgpack

__all__ = ["DEFAULT_MAX_TOKENS", "read_frame", "write_frame"]

DEFAULT_MAX_TOKENS = 256  # a random or chatty model would otherwise fill the whole context
_HEADER = struct.Struct(">I")


def write_frame(out: IO[bytes], message: dict[str, Any]) -> None:
    body = msgpack.packb(message, use_bin_type=True)
    out.write(_HEADER.pack(len(body)) + body)
    out.flush()


def read_frame(inp: IO[bytes]) -> dict[str, Any] | None:
    """The next message, None at the end of the stream."""
    header = inp.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    body = inp.read(size)
    if len(body) < size:
        return None
    message = msgpack.unpackb(body, raw=False)
    return message if isinstance(message, dict) else None


class _TokenCounter:
    """Counts what a streamed completion does not report, as llama-cpp-python counts a whole one:
    it wraps the model's `generate` (the prompt's tokens go in; each sampled token comes out; an
    end-of-generation token ends the completion without being part of it)."""

    def __init__(self, llm: Any) -> None:
        import llama_cpp

        self.prompt_tokens = 0
        self.output_tokens = 0
        generate = llm.generate
        vocab = llm._model.vocab

        def counted(tokens: Any, *args: Any, **kwargs: Any) -> Generator[int, Any, None]:
            self.prompt_tokens, self.output_tokens = len(tokens), 0
            for token in generate(tokens, *args, **kwargs):
                if not llama_cpp.llama_vocab_is_eog(vocab, token):
                    self.output_tokens += 1
                yield token

        llm.generate = counted


class ModelServer:
    """The loaded model and the requests it serves, one at a time."""

    def __init__(self, model_path: str, n_ctx: int) -> None:
        from llama_cpp import Llama

        self.model_path, self.n_ctx = model_path, n_ctx
        self.llm = Llama(model_path=model_path, n_ctx=n_ctx, verbose=False)
        self._embedder: Any = None
        self._counter = _TokenCounter(self.llm)

    def text(self, request: dict[str, Any], out: IO[bytes]) -> dict[str, Any]:
        settings: dict[str, Any] = {"max_tokens": int(request.get("max_tokens") or DEFAULT_MAX_TOKENS)}
        if request.get("temperature") is not None:
            settings["temperature"] = float(request["temperature"])
        messages = request["messages"]
        if not request.get("stream"):
            result: Any = self.llm.create_chat_completion(messages=messages, **settings)
            usage = result["usage"]
            return {"done": True, "text": result["choices"][0]["message"]["content"] or "",
                    "input_tokens": usage["prompt_tokens"],
                    "output_tokens": usage["completion_tokens"]}
        pieces: list[str] = []
        events: Any = self.llm.create_chat_completion(messages=messages, stream=True, **settings)
        for event in events:
            piece = event["choices"][0]["delta"].get("content") if event["choices"] else None
            if piece:
                pieces.append(piece)
                write_frame(out, {"chunk": piece})
        return {"done": True, "text": "".join(pieces), "input_tokens": self._counter.prompt_tokens,
                "output_tokens": self._counter.output_tokens}

    def embed(self, request: dict[str, Any]) -> dict[str, Any]:
        if self._embedder is None:
            from llama_cpp import LLAMA_POOLING_TYPE_MEAN, Llama

            self._embedder = Llama(model_path=self.model_path, n_ctx=self.n_ctx, embedding=True,
                                   pooling_type=LLAMA_POOLING_TYPE_MEAN, verbose=False)
        result = self._embedder.create_embedding(list(request["texts"]))
        vectors = [[float(x) for x in item["embedding"]] for item in result["data"]]
        return {"done": True, "embeddings": vectors,
                "input_tokens": result["usage"]["prompt_tokens"]}

    def serve(self, inp: IO[bytes], out: IO[bytes]) -> None:
        while (request := read_frame(inp)) is not None:
            try:
                if request.get("op") == "text":
                    answer = self.text(request, out)
                elif request.get("op") == "embed":
                    answer = self.embed(request)
                else:
                    answer = {"error": f"unknown op {request.get('op')!r}"}
            except Exception as exc:  # one bad request must not end the model process
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            write_frame(out, answer)


def main(argv: list[str]) -> int:
    # Frames go to a private copy of stdout; anything else printed (by Python or by llama.cpp)
    # goes to stderr, so nothing stray ever lands in the middle of a frame.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = sys.stdin.buffer
    try:
        model_path, n_ctx = argv[0], int(argv[1])
        server = ModelServer(model_path, n_ctx)
    except Exception as exc:
        write_frame(out, {"error": f"cannot load the model: {type(exc).__name__}: {exc}"})
        return 1
    write_frame(out, {"ready": True, "pid": os.getpid()})
    server.serve(inp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
