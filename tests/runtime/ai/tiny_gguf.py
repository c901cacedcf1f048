"""A tiny llama-architecture GGUF model with random weights, written with the `gguf` package, so the
llama-cpp provider's tests and benchmark load and run a real model file in milliseconds.

The vocabulary is a SentencePiece ("llama") one that llama.cpp accepts: <unk>, <s>, </s>, the 256
byte-fallback tokens and a few hundred word pieces. The output rows of the control and byte tokens
are zero while the word pieces' rows are random and large, so generation almost never ends early
on </s> and only emits printable pieces: every call yields some completion tokens.
"""

from __future__ import annotations

import string
from pathlib import Path

import gguf
import numpy as np

__all__ = ["write_tiny_gguf"]

N_EMBD = 64
N_HEAD = 4
N_LAYER = 2
N_FF = 128
N_CTX_TRAIN = 16384
WORDS = ["the", "and", "model", "edge", "works", "hello", "world", "token", "small", "fast",
         "answer", "question", "is", "a", "of", "to", "in", "it", "for", "on"]
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def _vocab() -> tuple[list[str], list[float], list[int], int]:
    """(tokens, scores, token types, index of the first word piece)."""
    types = gguf.TokenType
    tokens = ["<unk>", "<s>", "</s>"]
    kinds = [types.UNKNOWN, types.CONTROL, types.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    kinds += [types.BYTE] * 256
    first_piece = len(tokens)
    pieces = ["\u2581"] + list(string.ascii_lowercase + string.digits + ".,!?'|<>:-")
    pieces += ["\u2581" + c for c in string.ascii_lowercase]
    pieces += ["\u2581" + w for w in WORDS] + WORDS
    for piece in pieces:
        if piece not in tokens:
            tokens.append(piece)
            kinds.append(types.NORMAL)
    # SentencePiece merges the highest-scoring pieces first: longer pieces score higher.
    scores = [0.0] * first_piece + [float(len(t)) - 10.0 for t in tokens[first_piece:]]
    return tokens, scores, [int(k) for k in kinds], first_piece


def write_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """Write the tiny model to `path` (float32 weights, about 1 MB) and return `path`."""
    rng = np.random.default_rng(seed)
    tokens, scores, kinds, first_piece = _vocab()
    n_vocab = len(tokens)

    def weight(*shape: int, scale: float = 0.1) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("edgeworks-tiny-test")
    writer.add_context_length(N_CTX_TRAIN)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(kinds)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    writer.add_tensor("token_embd.weight", weight(n_vocab, N_EMBD, scale=1.0))
    for i in range(N_LAYER):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{i}.{name}.weight", weight(N_EMBD, N_EMBD))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(N_FF, N_EMBD))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(N_FF, N_EMBD))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(N_EMBD, N_FF))
    writer.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    output = weight(n_vocab, N_EMBD, scale=0.5)
    output[:first_piece] = 0.0  # control and byte tokens: never the likely next token
    writer.add_tensor("output.weight", output)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
