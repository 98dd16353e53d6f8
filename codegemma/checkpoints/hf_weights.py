"""Hugging Face tensor names <-> this project's module names (the same names, without `model.`)."""

from __future__ import annotations

import torch


def from_hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if key == "lm_head.weight":
            continue  # tied to the embedding
        out[key.removeprefix("model.")] = value
    return out


def to_hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"model.{key}": value for key, value in state.items()}
