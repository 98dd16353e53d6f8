"""Export trained weights: GGUF (F32 / F16 / BF16 / Q8_0) with llama.cpp's Gemma conventions, or a HF directory.

GGUF layout follows llama.cpp's converter for the gemma, gemma2 and gemma3 architectures:
tensor names `token_embd`, `blk.N.attn_q` ..., norms stored as (1 + w), 1-D tensors always F32,
hyperparameters under `<arch>.*`, and the vocabulary as a SentencePiece-style ("llama") token list
with scores and token types, so the project's GGUF loader, llama.cpp and `transformers` read it.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

from codegemma.config import ModelConfig, gemma2_layer_types, gemma3_layer_types
from codegemma.data.atomic import file_target
from codegemma.errors import CodegemmaError
from codegemma.tokenizer import with_fim_sentinels

# module-name part -> GGUF block tensor name; the pre-MLP norm is `ffn_norm` in every family
_BLOCK = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "input_layernorm": "attn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
}
# SentencePiece token types (GGUF tokenizer.ggml.token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_BYTE = re.compile(r"^<0x[0-9A-F]{2}>$")


def gguf_name(name: str, family: str) -> str:
    if name == "embed_tokens.weight":
        return "token_embd.weight"
    if name == "norm.weight":
        return "output_norm.weight"
    m = re.fullmatch(r"layers\.(\d+)\.(.+)\.weight", name)
    if not m:
        raise CodegemmaError(f"no GGUF name for tensor {name!r}")
    layer, part = m.groups()
    if part == "post_attention_layernorm":
        # Gemma 1's post_attention_layernorm is its pre-MLP norm; Gemma 2/3 have a real post-attention norm
        target = "ffn_norm" if family == "gemma" else "post_attention_norm"
    elif part in _BLOCK:
        target = _BLOCK[part]
    else:
        raise CodegemmaError(f"no GGUF name for tensor {name!r}")
    return f"blk.{layer}.{target}.weight"


def _check_representable(config: ModelConfig) -> None:
    """GGUF (llama.cpp) has no key for some switches: readers take them from the architecture.
    Refuse configs they would silently change, naming every switch that differs."""
    family = config.family
    assumed: dict[str, object] = {}  # field -> the value readers assume
    if family == "gemma":
        assumed.update(layer_types=["global"] * config.n_layers, query_pre_attn_scalar=config.head_dim,
                       attn_softcap=None, final_softcap=None, post_norms=False, qk_norm=False)
    else:
        # 27B models scale queries by d_model / n_heads: readers tell them by their layer count
        # within the family (46 for Gemma 2, 62 for Gemma 3)
        big = config.n_layers == {"gemma2": 46, "gemma3": 62}[family]
        assumed.update(query_pre_attn_scalar=config.d_model // config.n_heads if big else config.head_dim,
                       post_norms=True)
    if family == "gemma2":
        assumed.update(layer_types=gemma2_layer_types(config.n_layers), rope_local_theta=config.rope_theta,
                       rope_scaling=1.0, qk_norm=False)
        # no cap would be read as llama.cpp's defaults (50 and 30), not as no cap
        if config.attn_softcap is None or config.final_softcap is None:
            raise CodegemmaError("a Gemma 2 model without soft-capping cannot be stored in GGUF (readers assume "
                                 "attn_softcap 50 and final_softcap 30 where the file has none)")
    if family == "gemma3":
        assumed.update(layer_types=gemma3_layer_types(config.n_layers), rope_local_theta=10000.0,
                       attn_softcap=None, final_softcap=None, qk_norm=True)
    values = {"query_pre_attn_scalar": config.query_pre_attn_scalar or config.head_dim}
    wrong = [f"{key}={values.get(key, getattr(config, key))!r} (readers assume {value!r})"
             for key, value in assumed.items() if values.get(key, getattr(config, key)) != value]
    if wrong:
        raise CodegemmaError(f"cannot be stored in GGUF for {family}, whose readers take these from the "
                             f"architecture: {'; '.join(wrong)}")


def vocabulary(tokenizer) -> tuple[list[str], list[float], list[int]]:
    """Pieces, scores and types of a BPE tokenizer in SentencePiece terms.

    A SentencePiece BPE model merges the pair whose result has the highest score, so a piece made
    by merge number r gets score -r: replaying the scores replays the merges in order.
    """
    data = json.loads(tokenizer.backend.to_str())
    model = data["model"]
    if model.get("type") != "BPE":
        raise CodegemmaError(f"GGUF export needs a BPE vocabulary, not {model.get('type')}")
    n = tokenizer.vocab_size
    pieces = [tokenizer.id_to_token(i) for i in range(n)]
    if any(p is None for p in pieces):
        raise CodegemmaError("the vocabulary has gaps in its ids; cannot export it to GGUF")
    scores = [0.0] * n
    for rank, merge in enumerate(model.get("merges", [])):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        token_id = tokenizer.token_to_id(left + right)
        if token_id is not None and scores[token_id] == 0.0:
            scores[token_id] = -float(rank + 1)
    added = {t["content"]: t for t in data.get("added_tokens", [])}
    unk = model.get("unk_token")
    types = []
    for i, piece in enumerate(pieces):
        if piece == unk:
            types.append(UNKNOWN)
        elif piece in added:
            types.append(CONTROL if added[piece]["special"] else USER_DEFINED)
            if added[piece].get("normalized"):  # a run of spaces: GGUF readers match it on the raw text
                pieces[i] = piece.replace("▁", " ")
        elif _BYTE.match(piece):
            types.append(BYTE)
        else:
            types.append(NORMAL)
    return pieces, scores, types


def _pad_vocabulary(pieces: list[str], scores: list[float], types: list[int], rows: int):
    """The token list as long as the embedding: readers take the vocabulary size from the list
    (llama.cpp and codegemma's loader refuse a `token_embd` of another length). Rows past the
    tokenizer become unused `[PADn]` pieces, as llama.cpp's converter pads them."""
    if len(pieces) > rows:
        raise CodegemmaError(f"the tokenizer has {len(pieces)} tokens, the model's embedding {rows} rows: "
                             "not the model's tokenizer (pass --tokenizer)")
    if len(pieces) == rows:
        return pieces, scores, types
    taken, pad, n = set(pieces), [], 0
    while len(pieces) + len(pad) < rows:
        n += 1
        if f"[PAD{n}]" not in taken:
            pad.append(f"[PAD{n}]")
    return pieces + pad, scores + [-1000.0] * len(pad), types + [UNUSED] * len(pad)


# export dtype -> the file type a GGUF declares for it (llama.cpp's `general.file_type`)
GGUF_FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}


def _encoded(name: str, array: np.ndarray, dtype: str):
    """(data, GGML type or None for a plain float array) of one float32 tensor in the export's type.
    1-D tensors (norms) stay F32, as llama.cpp's converter keeps them. Q8_0 blocks run along a
    row, 32 values each; a matrix whose rows are not a whole number of blocks goes in F16."""
    from gguf import GGMLQuantizationType, quants

    if array.ndim < 2 or dtype == "f32":
        return array, None
    if dtype == "bf16":  # float32's range: nothing can overflow
        return quants.quantize(array, GGMLQuantizationType.BF16), GGMLQuantizationType.BF16
    if dtype == "q8_0" and array.shape[-1] % 32 == 0:
        kind = GGMLQuantizationType.Q8_0
        with np.errstate(over="ignore", invalid="ignore"):  # a block scale past float16 is caught below
            data = quants.quantize(array, kind)
        finite = np.abs(array).max() / 127 <= np.finfo(np.float16).max  # the largest block's scale
    else:
        kind = None
        with np.errstate(over="ignore"):  # overflow is checked for just below, with the tensor's name
            data = array.astype(np.float16)
        finite = np.isfinite(data).all()
    if not finite and np.isfinite(array).all():
        held = "Q8_0's float16 block scales" if kind else "float16's range"
        raise CodegemmaError(f"{name} has values beyond {held} (largest {np.abs(array).max():.4g}): "
                             "export with --dtype f32 or bf16")
    return data, kind


def write_gguf(state: dict[str, torch.Tensor], config: ModelConfig, tokenizer, out_path: str | Path,
               dtype: str = "f16") -> Path:
    """Write weights and vocabulary as one GGUF file (atomically)."""
    import gguf

    if dtype not in GGUF_FILE_TYPES:
        raise CodegemmaError(f"GGUF export dtype must be one of {', '.join(GGUF_FILE_TYPES)}, not {dtype!r}")
    if tokenizer is None:
        raise CodegemmaError("GGUF export needs the model's tokenizer (pass --tokenizer)")
    _check_representable(config)
    out_path = gguf_target(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    os.close(fd)
    arch = config.family
    try:
        w = gguf.GGUFWriter(tmp, arch)
        w.add_name(out_path.stem)
        w.add_file_type(gguf.LlamaFileType[GGUF_FILE_TYPES[dtype]])
        w.add_context_length(config.max_seq_len)
        w.add_embedding_length(config.d_model)
        w.add_block_count(config.n_layers)
        w.add_feed_forward_length(config.d_ff)
        w.add_head_count(config.n_heads)
        w.add_head_count_kv(config.n_kv_heads)
        w.add_key_length(config.head_dim)
        w.add_value_length(config.head_dim)
        w.add_layer_norm_rms_eps(config.norm_eps)
        w.add_rope_freq_base(config.rope_theta)
        if config.sliding_window:
            w.add_sliding_window(config.sliding_window)
        if config.attn_softcap is not None:
            w.add_attn_logit_softcapping(config.attn_softcap)
        if config.final_softcap is not None:
            w.add_final_logit_softcapping(config.final_softcap)
        if config.rope_scaling != 1.0:
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(config.rope_scaling)
        pieces, scores, types = vocabulary(tokenizer)
        pieces, scores, types = _pad_vocabulary(pieces, scores, types, config.vocab_size)
        w.add_tokenizer_model("llama")
        w.add_token_list(pieces)
        w.add_token_scores(scores)
        w.add_token_types(types)
        for name, setter in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id), ("pad", w.add_pad_token_id),
                             ("unk", w.add_unk_token_id)):
            if tokenizer.special.get(name) is not None:
                setter(tokenizer.special[name])
        w.add_add_bos_token(bool(getattr(tokenizer, "add_bos_default", True)))
        w.add_add_eos_token(False)
        w.add_add_space_prefix(False)  # Gemma's SentencePiece adds no dummy "▁"; llama.cpp would by default
        for name, tensor in state.items():
            array = tensor.detach().float().cpu().numpy()
            if name.endswith("norm.weight"):
                array = array + 1.0  # llama.cpp's converter stores Gemma norms as (1 + w)
            array, kind = _encoded(name, array, dtype)
            w.add_tensor(gguf_name(name, arch), np.ascontiguousarray(array), raw_dtype=kind)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; an exported model is meant to be shared
        os.replace(tmp, out_path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):  # a full disk, say: name the file asked for, not the temporary (or none)
            reason = exc.strerror or f"{exc} (is the disk full?)"  # numpy's short write has no strerror
            raise CodegemmaError(f"cannot write {out_path}: {reason}") from None
        raise
    return out_path


def gguf_target(out_path: str | Path) -> Path:
    """`out_path` as a GGUF file to write, checked before the work. An existing file is replaced
    only when it is a GGUF (an earlier export), as an HF export replaces only a model directory."""
    if Path(out_path).is_dir():
        raise CodegemmaError(f"{out_path} is a directory: name a .gguf file to write (or --format hf)")
    out_path = file_target(out_path, ".gguf file")
    if out_path.exists():
        with open(out_path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise CodegemmaError(f"{out_path} exists and is not a GGUF file; it is left as it is: "
                                     "choose another output file")
    return out_path


def load_trained(source: str | Path, tokenizer_spec: str | None = None):
    """(state dict without adapters, config, tokenizer) from a training checkpoint, run dir or model."""
    from codegemma.train import build, checkpoint

    source = Path(source)
    ckpt_path = None
    if (source.is_file() and source.suffix == ".pt") or checkpoint.is_sharded(source):
        ckpt_path = source
    elif source.is_dir() and not (source / "config.json").exists() and any(
            (source / marker).exists() for marker in ("checkpoints", "final", ".lock", "metrics.jsonl")):
        # a run directory: its newest checkpoint, else the final model (checkpoints deleted to save space)
        ckpt_path = checkpoint.latest(source / "checkpoints") if (source / "checkpoints").is_dir() else None
        if ckpt_path is None:
            if not (source / "final" / "config.json").is_file():
                raise CodegemmaError(f"{source}: the run has no checkpoint and no final model yet")
            source = source / "final"
    if ckpt_path is None:
        from codegemma.checkpoints import load

        loaded = load(str(source))
        tokenizer = build.load_tokenizer(tokenizer_spec) if tokenizer_spec else loaded.tokenizer
        return loaded.model.state_dict(), loaded.config, tokenizer
    state = checkpoint.load(ckpt_path)
    if state.get("model_config") is None:
        raise CodegemmaError(f"{ckpt_path}: checkpoint has no model config")
    config = ModelConfig.from_dict(state["model_config"])
    recipe = state.get("recipe", {})
    weights = state["model"]
    if any("lora_" in k for k in weights):
        from codegemma.model import Gemma
        from codegemma.train.lora import apply_lora, merged_state
        from codegemma.train.recipe import LoraSection

        lora_cfg = LoraSection(**recipe.get("lora", {}))
        with torch.device("meta"):  # merging reads only the adapters' layout: no second copy of the weights
            shell = apply_lora(Gemma(config), lora_cfg)
        weights = merged_state(shell, weights)
    spec = tokenizer_spec or recipe.get("tokenizer") or ""
    if spec and not tokenizer_spec and spec != "default" and not Path(spec).exists():
        raise CodegemmaError(f"{ckpt_path}: the run's tokenizer {spec} is not found from here (a recipe's paths are "
                             "relative to the directory the run started in): run from there, or pass --tokenizer")
    tokenizer = build.load_tokenizer(spec) if spec else None
    if tokenizer is None and recipe.get("model", {}).get("init"):
        from codegemma.checkpoints import load

        tokenizer = load(recipe["model"]["init"]).tokenizer
    unused = recipe.get("model", {}).get("fim_sentinels_from")
    if tokenizer is not None and unused:  # the run trained these unused tokens as the FIM sentinels
        tokenizer = with_fim_sentinels(tokenizer, unused, "model.fim_sentinels_from")
    return weights, config, tokenizer


HF_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def export(source: str | Path, out: str | Path, fmt: str = "gguf", dtype: str | None = None,
           tokenizer_spec: str | None = None) -> Path:
    """`source` as a GGUF file (`dtype` of its matrices, default f16) or a HF directory (safetensors
    in `dtype`, default the weights' own)."""
    if fmt == "gguf":
        gguf_target(out)  # before the weights load
    elif dtype is not None and dtype not in HF_DTYPES:
        raise CodegemmaError(f"{dtype} is a GGUF type; HF safetensors take {', '.join(HF_DTYPES)}")
    state, config, tokenizer = load_trained(source, tokenizer_spec)
    if fmt == "gguf":
        return write_gguf(state, config, tokenizer, out, dtype or "f16")
    from codegemma.checkpoints import save_hf
    from codegemma.checkpoints.loading import empty_model, load_weights_into

    model = load_weights_into(empty_model(config), state.items(), str(source))
    out = Path(out)
    save_hf(model, config, tokenizer, out, dtype=HF_DTYPES.get(dtype), replace=True)
    return out
