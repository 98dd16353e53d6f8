"""Decode steps of one sequence through the C decoder layer (codegemma/kernels/decode_step.c).

With block weights attached (codegemma.block_weights), the matrix products of a decode step take
about half of its time; the other half is ~60 small PyTorch calls per layer (norms, RoPE, cache
writes, attention over one query). For a decode step, one new token in each row of the batch,
`Gemma.forward` hands each layer to one C call instead, which does the same float32 arithmetic on
the same weights and the same KV cache. Every other call (prompts, training, a changed weight)
runs the PyTorch layers.
"""

from __future__ import annotations

import ctypes

import torch

from codegemma import kernels
from codegemma.block_weights import BlockLinear, FusedBlocks


def _blocks(codes, scale, offset) -> kernels.Blocks:
    n, k = codes.shape
    return kernels.Blocks(codes.data_ptr(), scale.data_ptr(), None if offset is None else offset.data_ptr(),
                          n, k, k // scale.shape[1])


class DecodeStep:
    """Pointers to every layer's weights for decode_step.c, and the checks that they still hold."""

    def __init__(self, model):
        cfg = model.config
        self.model = model
        self.structs: list[kernels.Layer] = []
        self.watched: list[torch.Tensor] = []  # every tensor the C layers read through a pointer
        self.modules: list[tuple] = []  # (parent, name, layer): a replaced layer (LoRA) has other outputs
        for block in model.layers:
            attn, mlp = block.self_attn, block.mlp
            norms = {"input_norm": block.input_layernorm, "q_norm": getattr(attn, "q_norm", None),
                     "k_norm": getattr(attn, "k_norm", None)}
            if cfg.post_norms:
                norms.update(post_attn_norm=block.post_attention_layernorm, pre_ff_norm=block.pre_feedforward_layernorm,
                             post_ff_norm=block.post_feedforward_layernorm)
            else:  # Gemma 1: post_attention_layernorm is the norm before the MLP
                norms.update(pre_ff_norm=block.post_attention_layernorm)
            layer = kernels.Layer(
                d_model=cfg.d_model, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
                d_ff=cfg.d_ff, qk_norm=int(cfg.qk_norm), post_norms=int(cfg.post_norms),
                window=cfg.sliding_window if block.layer_type == "local" and cfg.sliding_window else 0,
                eps=cfg.norm_eps, query_scale=cfg.query_scale, softcap=cfg.attn_softcap or 0.0,
                qkv=_blocks(attn.qkv_proj.codes, attn.qkv_proj.scale, attn.qkv_proj.offset),
                o=_blocks(attn.o_proj.blocks.codes, attn.o_proj.blocks.scale, attn.o_proj.blocks.offset),
                gate_up=_blocks(mlp.gate_up_proj.codes, mlp.gate_up_proj.scale, mlp.gate_up_proj.offset),
                down=_blocks(mlp.down_proj.blocks.codes, mlp.down_proj.blocks.scale, mlp.down_proj.blocks.offset))
            for name, norm in norms.items():
                if norm is not None:
                    setattr(layer, name, norm.weight.data_ptr())
                    self.watched.append(norm.weight)
            self.structs.append(layer)
            self.watched += [attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight, attn.o_proj.weight,
                             mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight]
            self.modules += [(attn, name, getattr(attn, name)) for name in ("q_proj", "k_proj", "v_proj", "o_proj")]
            self.modules += [(mlp, name, getattr(mlp, name)) for name in ("gate_proj", "up_proj", "down_proj")]
        self.stamps = [self._stamp(t) for t in self.watched]
        self.scratch = torch.empty(0)

    def __deepcopy__(self, memo):
        return None  # its pointers belong to the original; a copy (a DPO reference model) runs in PyTorch

    def __reduce__(self):
        return _no_step, ()

    @staticmethod
    def build(model) -> "DecodeStep | None":
        """A decode step for a float32 model whose every layer has its block form, else None."""
        for block in model.layers:
            attn, mlp = block.self_attn, block.mlp
            if not (isinstance(attn.qkv_proj, FusedBlocks) and isinstance(mlp.gate_up_proj, FusedBlocks)
                    and all(isinstance(m, BlockLinear) and m.blocks is not None for m in (attn.o_proj, mlp.down_proj))):
                return None
        if model.config.head_dim % 2 or model.config.n_heads % model.config.n_kv_heads:
            return None
        return DecodeStep(model)

    @staticmethod
    def _stamp(t: torch.Tensor):
        return t.data_ptr(), t._version, t.dtype, t.device

    def usable(self, input_ids, positions, cache, attn_mask, segment_ids) -> bool:
        if cache is None or attn_mask is not None or segment_ids is not None:
            return False
        B, T = input_ids.shape
        if T != 1 or B != cache.batch_size or B > kernels.MAX_ROWS:
            return False
        if positions is not None and (positions.shape != (B, 1) or bool((positions < 0).any())):
            return False  # a padding query (position -1) attends by the PyTorch layers' rule
        if cache.k[0].dtype != torch.float32 or input_ids.device.type != "cpu" or not kernels.available():
            return False
        if torch.is_grad_enabled() and any(t.requires_grad for t in self.watched):
            return False  # training: autograd needs the PyTorch layers
        if not all(getattr(parent, name) is layer for parent, name, layer in self.modules):
            return False
        return all(self._stamp(t) == s for t, s in zip(self.watched, self.stamps))

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, cache) -> torch.Tensor:
        """The residual stream [B, 1, d_model] after every layer (before the final norm); writes
        this step's keys and values into `cache`, like the PyTorch layers."""
        model, cfg = self.model, self.model.config
        lib = kernels.library()
        x = model.embed(input_ids).contiguous()
        rope = {kind: [t.contiguous() for t in tables] for kind, tables in model.rope_tables(positions, x.dtype).items()}
        B = input_ids.shape[0]
        need = B * ((cfg.n_heads * 2 + cfg.n_kv_heads * 2) * cfg.head_dim + 2 * cfg.d_model + 2 * cfg.d_ff
                    + cfg.n_heads * cache.max_len + max(cfg.d_ff, cfg.d_model, cfg.n_heads * cfg.head_dim) // 16) + 16
        if self.scratch.numel() < need:
            self.scratch = torch.empty(need, dtype=torch.float32)
        q_pos = positions[:, 0].contiguous()
        threads = torch.get_num_threads()
        for i, (block, layer) in enumerate(zip(model.layers, self.structs)):
            slot, used, key_pos = cache.decode_slot(i, positions)
            cos, sin = rope[block.layer_type]
            lib.decode_layer(ctypes.byref(layer), B, x.data_ptr(), cos.data_ptr(), sin.data_ptr(), cache.k[i].data_ptr(),
                             cache.v[i].data_ptr(), cache.sizes[i], slot, used, key_pos.contiguous().data_ptr(),
                             q_pos.data_ptr(), self.scratch.data_ptr(), threads)
        cache.advance(positions)
        return x


def _no_step():
    return None
