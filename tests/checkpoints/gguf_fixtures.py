"""Small GGUF files written with the `gguf` package, in llama.cpp's conventions, for loader tests."""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFWriter, quants

from codegemma.config import ModelConfig, gemma3_layer_types

# d_model and d_ff of 256 so that k-quant blocks (256 values) fit the rows of most matrices
CONFIG = ModelConfig(family="gemma3", vocab_size=300, d_model=256, n_layers=2, n_heads=4, n_kv_heads=1, head_dim=64,
                     d_ff=256, max_seq_len=128, sliding_window=8, layer_types=gemma3_layer_types(2),
                     rope_theta=1_000_000.0, rope_local_theta=10_000.0, post_norms=True, qk_norm=True,
                     query_pre_attn_scalar=64)

GGUF_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "input_layernorm": "attn_norm", "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def gguf_name(name: str) -> str:
    if name == "embed_tokens.weight":
        return "token_embd.weight"
    if name == "norm.weight":
        return "output_norm.weight"
    _, layer, rest = name.split(".", 2)
    return f"blk.{layer}.{GGUF_NAMES[rest.removesuffix('.weight')]}.weight"


def vocabulary(size: int):
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    types = [3, 3, 3, 2, 3]
    pieces = specials + [f"<0x{b:02X}>" for b in range(256)]
    types += [6] * 256
    normal = ["▁", "de", "def", "▁def", "in", "▁in", "se", "self", "ret", "return", "▁return", "ur", "urn",
              "re", "et", "lf", "el", "ef"]
    for p in normal:
        if len(pieces) < size:
            pieces.append(p)
            types.append(1)
    while len(pieces) < size:
        pieces.append(f"<unused{len(pieces)}>")
        types.append(5)
    scores = [0.0 if t != 1 else -float(i) for i, t in enumerate(types)]
    return pieces, scores, types


def random_block_bytes(kind: GGMLQuantizationType, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Valid-looking raw blocks for types the gguf package cannot quantize: bytes below 0x3C keep
    every embedded float16 scale finite and small."""
    from gguf import GGML_QUANT_SIZES

    block, size = GGML_QUANT_SIZES[kind]
    return rng.integers(0, 0x3C, size=(shape[0], shape[1] // block * size), dtype=np.uint8)


def write_gguf(path, state: dict[str, torch.Tensor], config: ModelConfig = CONFIG, arch: str = "gemma3",
               types: dict[str, GGMLQuantizationType] | None = None, skip: set[str] = frozenset(),
               reshape: dict[str, tuple] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Write the state dict as GGUF (norms stored as 1 + w, as llama.cpp does); returns the float32
    arrays each tensor dequantizes to, keyed by module name."""
    rng = np.random.default_rng(seed)
    types, reshape = types or {}, reshape or {}
    w = GGUFWriter(str(path), arch)
    w.add_block_count(config.n_layers)
    w.add_context_length(config.max_seq_len)
    w.add_embedding_length(config.d_model)
    w.add_feed_forward_length(config.d_ff)
    w.add_head_count(config.n_heads)
    w.add_head_count_kv(config.n_kv_heads)
    w.add_key_length(config.head_dim)
    w.add_value_length(config.head_dim)
    w.add_layer_norm_rms_eps(config.norm_eps)
    w.add_rope_freq_base(config.rope_theta)
    if config.sliding_window:
        w.add_sliding_window(config.sliding_window)
    pieces, scores, ttypes = vocabulary(config.vocab_size)
    w.add_tokenizer_model("llama")
    w.add_token_list(pieces)
    w.add_token_scores(scores)
    w.add_token_types(ttypes)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    expected = {}
    for name, tensor in state.items():
        if name in skip:
            continue
        data = tensor.detach().float().numpy()
        if name.endswith("norm.weight"):
            data = data + 1.0
        data = data.reshape(reshape.get(name, data.shape))
        kind = types.get(name, GGMLQuantizationType.F32)
        if kind == GGMLQuantizationType.F32:
            raw, value = data, data
        else:
            try:
                raw = quants.quantize(data, kind)
            except NotImplementedError:
                raw = random_block_bytes(kind, data.shape, rng)
            value = quants.dequantize(raw, kind) if kind != GGMLQuantizationType.F16 else raw.astype(np.float32)
        # quantized data goes in as raw bytes; the writer derives the logical shape from them
        w.add_tensor(gguf_name(name), raw, raw_dtype=kind if kind != GGMLQuantizationType.F32 else None)
        expected[name] = value - 1.0 if name.endswith("norm.weight") else value
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected
