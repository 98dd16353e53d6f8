"""Reading GGUF files (architectures gemma, gemma2, gemma3) through the `gguf` package.

Every tensor type `gguf.quants.dequantize` supports is accepted. llama.cpp's converter stores
Gemma norm weights as (1 + w); they are shifted back to this project's zero-centred weights.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from codegemma.config import ModelConfig, gemma2_layer_types, gemma3_layer_types
from codegemma.errors import CodegemmaError

ARCHITECTURES = ("gemma", "gemma2", "gemma3")

# GGUF per-block tensor names -> module names; the norm after attention differs by family
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}


def open_gguf(path: str | os.PathLike):
    import gguf

    path = Path(path)
    if not path.is_file():
        raise CodegemmaError(f"model file not found: {path}")
    try:
        return gguf.GGUFReader(str(path))
    except Exception as exc:  # the reader raises ValueError/IndexError/struct errors on damaged files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CodegemmaError(f"{path}: not a readable GGUF file (truncated or corrupt: {reason})") from None


def _field(reader, key, default=None):
    field = reader.fields.get(key)
    if field is None:
        return default
    value = field.contents()
    return value


def architecture(reader, path) -> str:
    arch = _field(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise CodegemmaError(f"{path}: unknown architecture {arch!r}; supported: {', '.join(ARCHITECTURES)}")
    return arch


def config_from_gguf(reader, path) -> ModelConfig:
    arch = architecture(reader, path)
    f = lambda key, default=None: _field(reader, f"{arch}.{key}", default)  # noqa: E731
    try:
        n_layers = int(f("block_count"))
        d_model = int(f("embedding_length"))
        n_heads = int(f("attention.head_count"))
        head_dim = int(f("attention.key_length", d_model // n_heads))
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
        common = dict(
            family=arch, vocab_size=vocab, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
            n_kv_heads=int(f("attention.head_count_kv", n_heads)), head_dim=head_dim,
            d_ff=int(f("feed_forward_length")), max_seq_len=int(f("context_length", 8192)),
            norm_eps=float(f("attention.layer_norm_rms_epsilon", 1e-6)),
            bos_id=int(_field(reader, "tokenizer.ggml.bos_token_id", 2)),
            eos_id=int(_field(reader, "tokenizer.ggml.eos_token_id", 1)),
            pad_id=int(_field(reader, "tokenizer.ggml.padding_token_id", 0)),
        )
    except (TypeError, KeyError) as exc:
        raise CodegemmaError(f"{path}: GGUF metadata is incomplete ({exc})") from None
    theta = float(f("rope.freq_base", 10000.0))
    # a linear RoPE scaling the file names, applied as llama.cpp does: to every layer of Gemma 1, to
    # the global layers of Gemma 3 (the project's Gemma 2 exports have none)
    scaling = float(f("rope.scaling.factor", 1.0)) if f("rope.scaling.type", "none") == "linear" else 1.0
    if arch == "gemma":
        return ModelConfig(rope_theta=theta, rope_local_theta=theta, rope_scaling=scaling, **common)
    # 27B models scale queries by d_model / n_heads instead of head_dim (Gemma 2 and 3 reports);
    # readers tell them by their layer count within the family, as llama.cpp does
    scalar = d_model // n_heads if n_layers == {"gemma2": 46, "gemma3": 62}[arch] else head_dim
    window = int(f("attention.sliding_window", 4096))
    if arch == "gemma2":
        return ModelConfig(rope_theta=theta, rope_local_theta=theta, sliding_window=window,
                           layer_types=gemma2_layer_types(n_layers), query_pre_attn_scalar=scalar,
                           attn_softcap=f("attn_logit_softcapping", 50.0), final_softcap=f("final_logit_softcapping", 30.0),
                           post_norms=True, **common)
    return ModelConfig(rope_theta=theta, rope_local_theta=10000.0, rope_scaling=scaling, sliding_window=window,
                       layer_types=gemma3_layer_types(n_layers), query_pre_attn_scalar=scalar,
                       post_norms=True, qk_norm=True, **common)


def module_name(gguf_name: str, family: str) -> str | None:
    if gguf_name == "token_embd.weight":
        return "embed_tokens.weight"
    if gguf_name == "output_norm.weight":
        return "norm.weight"
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", gguf_name)
    if not m:
        return None
    layer, part = m.groups()
    if part == "ffn_norm":  # the pre-MLP norm: named post_attention_layernorm in Gemma 1
        target = "post_attention_layernorm" if family == "gemma" else "pre_feedforward_layernorm"
    else:
        target = _BLOCK_NAMES.get(part)
    return f"layers.{layer}.{target}.weight" if target else None


def dequantize(tensor, path) -> np.ndarray:
    """A GGUF tensor as a float32 array in PyTorch's [rows, cols] layout."""
    from gguf import GGMLQuantizationType, quants

    kind = GGMLQuantizationType(tensor.tensor_type)
    shape = tuple(int(x) for x in reversed(tensor.shape))
    try:
        if kind == GGMLQuantizationType.F32:
            data = np.asarray(tensor.data, dtype=np.float32)
        elif kind == GGMLQuantizationType.F16:
            data = np.asarray(tensor.data).view(np.float16).astype(np.float32)
        else:
            data = quants.dequantize(tensor.data, kind).astype(np.float32, copy=False)
    except NotImplementedError:
        raise CodegemmaError(f"{path}: tensor {tensor.name} has type {kind.name}, which cannot be dequantized") from None
    return data.reshape(shape)


def read_gguf_tokenizer(path, reader=None) -> tuple[list[str], list[int], bool]:
    reader = reader or open_gguf(path)
    model = _field(reader, "tokenizer.ggml.model")
    if model != "llama":
        raise CodegemmaError(f"{path}: tokenizer model {model!r} is not a SentencePiece ('llama') vocabulary")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    if tokens is None or types is None:
        raise CodegemmaError(f"{path}: the GGUF file has no tokenizer (tokens and token types)")
    return list(tokens), [int(t) for t in types], bool(_field(reader, "tokenizer.ggml.add_bos_token", True))
