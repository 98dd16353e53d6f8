"""Hugging Face config.json <-> ModelConfig, for Gemma, Gemma 2 and Gemma 3 (text) checkpoints.

Reads both the transformers 4.x keys (rope_theta, rope_local_base_freq, rope_scaling) and the 5.x
`rope_parameters`; writes both, so every transformers version loads what this project saves.
"""

from __future__ import annotations

from codegemma.config import ModelConfig, gemma2_layer_types
from codegemma.errors import CodegemmaError

MODEL_TYPES = {"gemma": "gemma", "gemma2": "gemma2", "gemma3_text": "gemma3", "gemma3": "gemma3"}
ARCHITECTURES = {"gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM", "gemma3": "Gemma3ForCausalLM"}
HF_MODEL_TYPE = {"gemma": "gemma", "gemma2": "gemma2", "gemma3": "gemma3_text"}


def _layer_types(hf: dict, family: str, n_layers: int) -> list[str]:
    if hf.get("layer_types"):
        return ["local" if t == "sliding_attention" else "global" for t in hf["layer_types"]]
    if family == "gemma2":
        return gemma2_layer_types(n_layers)
    if family == "gemma3":
        pattern = hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern") or 6
        return ["global" if (i + 1) % pattern == 0 else "local" for i in range(n_layers)]
    return ["global"] * n_layers


def _rope(hf: dict, family: str) -> tuple[float, float, float]:
    """(global theta, local theta, global linear scaling factor)."""
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and ("full_attention" in params or "sliding_attention" in params):
        full = params.get("full_attention") or {}
        local = params.get("sliding_attention") or full
        scale = full.get("factor", 1.0) if full.get("rope_type", "default") == "linear" else 1.0
        return float(full.get("rope_theta", 10000.0)), float(local.get("rope_theta", 10000.0)), float(scale)
    if isinstance(params, dict) and "rope_theta" in params:
        scale = params.get("factor", 1.0) if params.get("rope_type") == "linear" else 1.0
        return float(params["rope_theta"]), float(params["rope_theta"]), float(scale)
    theta = float(hf.get("rope_theta", 10000.0))
    local = float(hf.get("rope_local_base_freq", theta if family != "gemma3" else 10000.0))
    scaling = hf.get("rope_scaling") or {}
    factor = float(scaling.get("factor", 1.0)) if scaling.get("rope_type", scaling.get("type")) == "linear" else 1.0
    return theta, local, factor


def config_from_hf(hf: dict, where: str = "config.json") -> ModelConfig:
    if not isinstance(hf, dict):
        raise CodegemmaError(f"{where}: expected a JSON object, got {type(hf).__name__}")
    model_type = hf.get("model_type")
    if model_type == "gemma3" and "text_config" in hf:
        hf = {**hf["text_config"], "model_type": "gemma3_text"}
    if model_type not in MODEL_TYPES:
        raise CodegemmaError(f"unknown architecture {model_type!r} in {where}; supported: gemma, gemma2, gemma3_text")
    family = MODEL_TYPES[model_type]
    try:
        n_layers = int(hf["num_hidden_layers"])
        theta, local_theta, scaling = _rope(hf, family)
        act = hf.get("hidden_activation") or "gelu_pytorch_tanh"
        if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
            raise CodegemmaError(f"{where}: hidden_activation {act!r} is not the tanh GELU Gemma uses")
        return ModelConfig(
            family=family,
            vocab_size=int(hf["vocab_size"]),
            d_model=int(hf["hidden_size"]),
            n_layers=n_layers,
            n_heads=int(hf["num_attention_heads"]),
            n_kv_heads=int(hf.get("num_key_value_heads", hf["num_attention_heads"])),
            head_dim=int(hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]),
            d_ff=int(hf["intermediate_size"]),
            max_seq_len=int(hf.get("max_position_embeddings", 8192)),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_local_theta=local_theta,
            rope_scaling=scaling,
            sliding_window=hf.get("sliding_window") if family != "gemma" else None,
            layer_types=_layer_types(hf, family, n_layers),
            query_pre_attn_scalar=hf.get("query_pre_attn_scalar") if family != "gemma" else None,
            attn_softcap=hf.get("attn_logit_softcapping") if family != "gemma" else None,
            final_softcap=hf.get("final_logit_softcapping") if family != "gemma" else None,
            post_norms=family != "gemma",
            qk_norm=family == "gemma3",
            bos_id=int(hf.get("bos_token_id") or 2),
            eos_id=int(_first(hf.get("eos_token_id"), 1)),
            pad_id=int(hf.get("pad_token_id") or 0),
        )
    except KeyError as exc:
        raise CodegemmaError(f"{where} is missing the key {exc.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError) as exc:  # "hidden_size": "abc", a list for a table
        raise CodegemmaError(f"{where}: a setting has the wrong type ({exc})") from None


def _first(value, default):
    if isinstance(value, list):
        return value[0] if value else default
    return default if value is None else value


def config_to_hf(cfg: ModelConfig) -> dict:
    hf = {
        "architectures": [ARCHITECTURES[cfg.family]],
        "model_type": HF_MODEL_TYPE[cfg.family],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "attention_bias": False,
        "tie_word_embeddings": True,
        "bos_token_id": cfg.bos_id,
        "eos_token_id": cfg.eos_id,
        "pad_token_id": cfg.pad_id,
        "torch_dtype": "float32",
    }
    global_rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling != 1.0:
        global_rope = {"rope_type": "linear", "rope_theta": cfg.rope_theta, "factor": cfg.rope_scaling}
        hf["rope_scaling"] = {"rope_type": "linear", "factor": cfg.rope_scaling}
    if cfg.family == "gemma":
        hf["rope_parameters"] = global_rope
        return hf
    hf.update(
        query_pre_attn_scalar=cfg.query_pre_attn_scalar or cfg.head_dim,
        sliding_window=cfg.sliding_window,
        attn_logit_softcapping=cfg.attn_softcap,
        final_logit_softcapping=cfg.final_softcap,
        layer_types=["sliding_attention" if t == "local" else "full_attention" for t in cfg.layer_types],
    )
    if cfg.family == "gemma2":
        hf["rope_parameters"] = global_rope
    else:
        hf["rope_local_base_freq"] = cfg.rope_local_theta
        hf["rope_parameters"] = {
            "full_attention": global_rope,
            "sliding_attention": {"rope_type": "default", "rope_theta": cfg.rope_local_theta},
        }
    return hf
