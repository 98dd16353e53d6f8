"""The Gemma transformer (Gemma 1 / CodeGemma, Gemma 2, Gemma 3) in plain, trainable PyTorch.

The module holds weights only. Inference state lives in a `KVCache` passed to `forward`, so the
same module trains (no gradients are disabled inside) and generates.

Facts that matter for exactness (spec: codegemma.md section 6):
- RMSNorm scales by (1 + w), computed in float32 and cast back.
- The embedding is multiplied by sqrt(d_model) rounded to the activation dtype.
- RoPE uses the rotate-half layout; Gemma 3 has its own base for local layers, and linear scaling
  applies to global layers only.
- Gemma 2 soft-caps attention scores and final logits; Gemma 3 normalises q and k per head instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from codegemma import fused_ops, head_loss, head_screen
from codegemma.config import ModelConfig
from codegemma.kv_cache import KVCache


BY_HAND_MAX_SCORES = 1 << 22  # attention scores (heads x queries x keys) a bf16 CPU prompt may hold: 16 MB


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))  # zero-centred: the scale is (1 + w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_ops.rms_norm(x, self.weight, self.eps)


def rope_inv_freq(head_dim: int, theta: float, scaling: float = 1.0) -> torch.Tensor:
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    return inv / scaling


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape [B, 1, T, head_dim] in float32 for integer positions [B, T]."""
    freqs = positions[..., None].float() * inv_freq.to(positions.device)
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]
    return emb.cos(), emb.sin()


def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """sin with its first half negated, for codegemma.fused_ops.apply_rope."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_type: str):
        super().__init__()
        self.cfg = cfg
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.window = cfg.sliding_window if layer_type == "local" else None
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
        self.qkv_proj = None  # set by codegemma.quant: q, k and v in one quantized projection

    def _project(self, x, last_query: bool):
        if self.qkv_proj is None:
            return self.q_proj(x[:, -1:] if last_query else x), self.k_proj(x), self.v_proj(x)
        kv = self.n_kv_heads * self.head_dim
        q, k, v = self.qkv_proj(x).split((self.n_heads * self.head_dim, kv, kv), dim=-1)
        return (q[:, -1:] if last_query else q), k, v

    def forward(self, x, cos, sin, positions, segment_ids, cache: KVCache | None, layer: int, key_valid, masks: dict,
                last_query: bool = False):
        """Attention output [B, T, d_model]; with `last_query`, [B, 1, d_model] for the last position
        only, while keys and values of all T positions still enter the cache."""
        B, T, _ = x.shape
        q, k, v = self._project(x, last_query)
        Tq = q.shape[1]
        q = q.view(B, Tq, self.n_heads, self.head_dim)
        k = k.view(B, T, self.n_kv_heads, self.head_dim)
        v = v.view(B, T, self.n_kv_heads, self.head_dim)
        if self.cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        # The mask depends only on the layer type, so it is built once per forward and shared.
        key = "local" if self.window is not None else "global"
        if cache is None:
            if key not in masks:
                masks[key] = self._mask(positions, positions, segment_ids, segment_ids, key_valid, key_valid)
            mask = masks[key]
            kernel = f"{key}:attention kernel"  # decided once per forward: every layer of the type agrees
            if kernel not in masks:
                masks[kernel] = self.cfg.attn_softcap is None and fused_ops.causal_attention_applies(q, k, mask)
            if masks[kernel]:
                # training on a CPU: the query heads of each key head attend as one matrix
                groups = self.n_heads // self.n_kv_heads
                q, k = fused_ops.rope(q, cos, sin, groups), fused_ops.rope(k, cos, sin)
                y = fused_ops.causal_attention(q, k, v.transpose(1, 2), mask, self.cfg.query_scale)
                y = y.view(B, self.n_kv_heads, T, groups, self.head_dim).transpose(1, 2)
                return self.o_proj(y.reshape(B, T, self.n_heads * self.head_dim))

        # [B, T, heads, head_dim] -> [B, heads, T, head_dim]; sin: signed_sin of the table
        q, k = fused_ops.rope(q, cos[:, :, T - Tq:], sin[:, :, T - Tq:]), fused_ops.rope(k, cos, sin)
        v = v.transpose(1, 2)
        if cache is not None:
            k, v, key_pos = cache.update(layer, k, v, positions)
            if key not in masks:
                masks[key] = self._mask(positions, key_pos, None, None, key_pos >= 0, positions >= 0)
        mask = masks[key]
        if last_query:  # the mask's last row; plain causal (None) lets the last query see every key
            mask = mask[:, :, -1:] if mask is not None else torch.ones(1, 1, 1, k.shape[-2], dtype=torch.bool,
                                                                         device=q.device)
        y = self._attend(q, k, v, mask)
        return self.o_proj(y.transpose(1, 2).reshape(B, Tq, self.n_heads * self.head_dim))

    def _mask(self, q_pos, k_pos, q_seg, k_seg, k_valid, q_valid) -> torch.Tensor:
        """Boolean [B, 1, Tq, Tk]: True where a query may attend to a key.

        Padding queries (q_valid False) may see padding keys, so no row is empty (an empty
        softmax row is NaN, and NaN values would leak through zero weights into real rows).
        """
        qp, kp = q_pos[:, :, None], k_pos[:, None, :]
        mask = kp <= qp
        if self.window is not None:
            mask = mask & (qp - kp < self.window)
        if q_seg is not None:
            mask = mask & (q_seg[:, :, None] == k_seg[:, None, :])
        if k_valid is not None:
            mask = mask & (k_valid[:, None, :] | ~q_valid[:, :, None])
        return mask[:, None]

    def _attend(self, q, k, v, mask):
        """Attention of q over k, v; `mask` None means plain causal (query i sees keys 0..i)."""
        groups = self.n_heads // self.n_kv_heads
        scale = self.cfg.query_scale
        if self.cfg.attn_softcap is None and self._by_hand_on_cpu(q, k, mask):
            return self._attend_bf16_cpu(q, k, v, mask, groups, scale)
        if self.cfg.attn_softcap is None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale,
                                                  enable_gqa=groups > 1)
        if mask is None:
            mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        # Soft-capping acts on the raw scores, which SDPA does not expose: attend by hand.
        cap = self.cfg.attn_softcap
        scores = (q @ k.transpose(-1, -2)) * scale
        scores = torch.tanh(scores / cap) * cap
        scores = scores.masked_fill(~mask, float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        return probs @ v

    @staticmethod
    def _by_hand_on_cpu(q, k, mask) -> bool:
        """bfloat16 prompts on a CPU: two bf16 GEMMs and a float32 softmax take ~5 ms a layer where
        SDPA's CPU flash kernel takes ~7.5 (512 tokens, 4 heads of 256), while the scores stay small."""
        return (q.dtype == torch.bfloat16 and q.device.type == "cpu" and mask is not None and q.shape[-2] > 1
                and q.shape[1] * q.shape[-2] * k.shape[-2] <= BY_HAND_MAX_SCORES)

    def _attend_bf16_cpu(self, q, k, v, mask, groups, scale):
        B, H, T, D = q.shape
        scores = (q.reshape(B, self.n_kv_heads, groups * T, D) @ k.transpose(-1, -2)).view(B, H, T, -1) * scale
        scores = scores.masked_fill(~mask, float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        return (probs.view(B, self.n_kv_heads, groups * T, -1) @ v).view(B, H, T, D)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.gate_up_proj = None  # set by codegemma.quant: gate and up in one quantized projection

    def forward(self, x):
        if self.gate_up_proj is None:
            gate, up = self.gate_proj(x), self.up_proj(x)
        else:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(fused_ops.geglu(gate, up))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_type: str):
        super().__init__()
        self.layer_type = layer_type
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = Attention(cfg, layer_type)
        # In Gemma 1 this is the pre-MLP norm; Gemma 2/3 add norms after attention and MLP.
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.post_norms = cfg.post_norms
        if cfg.post_norms:
            self.pre_feedforward_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
            self.post_feedforward_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, positions, segment_ids, cache, layer, key_valid, masks, last_query=False):
        h = self.self_attn(self.input_layernorm(x), cos, sin, positions, segment_ids, cache, layer, key_valid, masks,
                           last_query)
        if last_query:
            x = x[:, -1:]
        if self.post_norms and fused_ops.residual_norms_train(x, h):
            # training on a CPU: each residual add goes with the norms around it, one pass through memory
            eps = self.post_attention_layernorm.eps
            x, normed = fused_ops.residual_rms_norm(x, h, self.post_attention_layernorm.weight,
                                                    self.pre_feedforward_layernorm.weight, eps)
            return fused_ops.residual_rms_norm(x, self.mlp(normed), self.post_feedforward_layernorm.weight, None, eps)
        if self.post_norms:
            x = x + self.post_attention_layernorm(h)
            return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x))


class Gemma(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        if torch.empty(0).is_meta:  # a shell for loading: normal_ on meta imports the compiler (seconds)
            self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model,
                                             _weight=torch.empty(config.vocab_size, config.d_model))
        else:
            self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config, t) for t in config.layer_types)
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.register_buffer("inv_freq_global", torch.empty(config.head_dim // 2), persistent=False)
        self.register_buffer("inv_freq_local", torch.empty(config.head_dim // 2), persistent=False)
        self.reset_buffers()
        self.gradient_checkpointing = False
        self.lm_head = None  # set by codegemma.quant; None: the tied float embedding
        self._head_screen = None  # (screen, weight data_ptr, weight version) from attach_head_screen
        self._head_blocks = None  # codegemma.block_weights.BlockWeight of the tied head, if attached
        self._decode_step = None  # codegemma.decode_step.DecodeStep, set with the block weights
        self.quantized: str | None = None  # "int8" | "int4" once quantized (inference only)

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype of activations and of the KV cache (float32 for quantized weights)."""
        return torch.float32 if self.quantized else self.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.norm.weight.device

    @property
    def dtype_name(self) -> str:
        return self.quantized or str(self.embed_tokens.weight.dtype).removeprefix("torch.")

    def reset_buffers(self):
        """(Re)compute the RoPE tables, e.g. after building the module on the meta device."""
        device = self.norm.weight.device
        if device.type == "meta":
            return  # computed once real weights are assigned
        cfg = self.config
        self.inv_freq_global = rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling).to(device)
        self.inv_freq_local = rope_inv_freq(cfg.head_dim, cfg.rope_local_theta).to(device)

    def init_weights(self, std: float = 0.02, generator: torch.Generator | None = None):
        """Random init for training from scratch: normal linears/embedding, zero norm weights (scale 1)."""
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, mean=0.0, std=std, generator=generator)
            else:
                nn.init.zeros_(p)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None, cache: KVCache | None = None,
                attn_mask: torch.Tensor | None = None, segment_ids: torch.Tensor | None = None,
                last_only: bool = False, return_hidden: bool = False, targets: torch.Tensor | None = None,
                loss_weights: torch.Tensor | None = None):
        """Logits [B, T, V] (float32), or [B, 1, V] with `last_only`.

        With `targets` [B, T] (and `loss_weights` [B, T], default 1) it returns the training loss
        instead: (sum of weight x NLL of each target, per-position NLL [B, T]), computed by
        codegemma.head_loss without materialising the logits. It is computed here, inside
        forward, so that wrappers which gather weights around forward (FSDP) see the head's use.

        positions: [B, T] absolute positions (default: 0..T-1, restarting per segment when
            `segment_ids` is given; after the cached length when a cache is given).
        attn_mask: [B, T] bool, False for padding tokens that no query may attend to (no cache).
        segment_ids: [B, T] document ids of packed sequences; attention stays inside a document.
        """
        step = self._decode_step
        if step is not None and step.usable(input_ids, positions, cache, attn_mask, segment_ids):
            if positions is None:
                positions = self._default_positions(input_ids, cache, None)
            x = step(input_ids, positions, cache)  # one token per row: the C decoder layers
        else:
            x = self._layers(input_ids, positions, cache, attn_mask, segment_ids, last_only)
        if last_only:
            x = x[:, -1:]
        x = self.norm(x)
        if targets is not None:
            return self._loss(x, targets, loss_weights)
        if return_hidden:
            return x
        return self.logits(x)

    def _loss(self, hidden: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None):
        if self.lm_head is not None:
            raise ValueError(f"a {self.quantized} model is for inference; train the float weights")
        if weights is None:
            weights = torch.ones_like(targets, dtype=torch.float32)
        total, nll = head_loss.weighted_nll(hidden.flatten(0, 1), self.embed_tokens.weight, targets.flatten(),
                                            weights.flatten(), self.config.final_softcap)
        return total, nll.view(targets.shape)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings scaled by sqrt(d_model) in the activation dtype."""
        x = self.embed_tokens(input_ids)
        return x * torch.tensor(math.sqrt(self.config.d_model), dtype=x.dtype)

    def rope_tables(self, positions: torch.Tensor, dtype: torch.dtype) -> dict:
        """{layer type: [cos, sin]}, computed in float32, used in the activation dtype (see
        codegemma.fused_ops.apply_rope)."""
        return {"global": [t.to(dtype) for t in rope_cos_sin(positions, self.inv_freq_global)],
                "local": [t.to(dtype) for t in rope_cos_sin(positions, self.inv_freq_local)]}

    def _layers(self, input_ids, positions, cache, attn_mask, segment_ids, last_only: bool = False) -> torch.Tensor:
        """The residual stream after every layer (before the final norm); with `last_only`, of the
        last position only. The last layer then computes only what the cache needs of the other
        positions, their keys and values (a 512-token prompt of the default model: ~5% less work)."""
        B, T = input_ids.shape
        positions_default = positions is None
        if positions_default:
            positions = self._default_positions(input_ids, cache, segment_ids)
        x = self.embed(input_ids)
        rope = {kind: (cos, signed_sin(sin)) for kind, (cos, sin) in self.rope_tables(positions, x.dtype).items()}
        masks: dict = {}
        if positions_default and cache is None and segment_ids is None and attn_mask is None:
            # Plain causal attention: no mask tensor, so SDPA may take its fused causal kernels
            # (flash attention on GPUs); a sliding window narrower than the sequence still needs one.
            masks["global"] = None
            window = self.config.sliding_window
            if window is None or T <= window:
                masks["local"] = None
        last = len(self.layers) - 1
        for i, block in enumerate(self.layers):
            cos, sin = rope[block.layer_type]
            args = (x, cos, sin, positions, segment_ids, cache, i, attn_mask, masks, last_only and i == last)
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
            else:
                x = block(*args)
        if cache is not None:
            cache.advance(positions)
        return x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.lm_head is not None:
            logits = self.lm_head(hidden)
        elif self._head_blocks is not None and self._head_blocks.usable(hidden, self.embed_tokens.weight):
            logits = self._head_blocks.matmul(hidden)  # the same float32 head, read as GGUF blocks
        else:
            logits = F.linear(hidden, self.embed_tokens.weight).float()  # tied embeddings
        cap = self.config.final_softcap
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def attach_head_screen(self, screen):
        """Use `screen` (codegemma.head_screen) for `argmax_logits` while the head's weight stays as it is now."""
        weight = self.embed_tokens.weight
        self._head_screen = (screen, weight.data_ptr(), weight._version)

    def attach_head_blocks(self, blocks):
        """Compute the tied head's logits from its block form (codegemma.block_weights) when decoding."""
        self._head_blocks = blocks

    @property
    def attached_head_blocks(self):
        return self._head_blocks

    @property
    def attached_head_screen(self):
        """The head screen `argmax_logits` uses, or None."""
        return None if self._head_screen is None else self._head_screen[0]

    def argmax_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits whose argmax is exactly that of `logits(hidden)`; for greedy decoding only.

        With a head screen attached (float32 default model), only the rows that could win are
        computed in float32 and the other entries hold lower estimates: a third of the bytes read
        per token."""
        if self._head_screen is None or self.lm_head is not None:
            return self.logits(hidden)
        if self._head_blocks is not None and self._head_blocks.usable(hidden, self.embed_tokens.weight):
            return self.logits(hidden)  # exact logits, fewer bytes read than the screen's
        screen, ptr, version = self._head_screen
        weight = self.embed_tokens.weight
        if weight.data_ptr() != ptr or weight._version != version or weight.dtype != torch.float32:
            self._head_screen = None  # trained, moved or cast since: the screen no longer matches
            return self.logits(hidden)
        if hidden.numel() // hidden.shape[-1] > head_screen.MAX_ROWS:
            return self.logits(hidden)
        logits = screen(hidden, weight)
        cap = self.config.final_softcap
        return logits if cap is None else torch.tanh(logits / cap) * cap  # monotonic: the argmax stays

    @staticmethod
    def _default_positions(input_ids, cache, segment_ids):
        B, T = input_ids.shape
        if segment_ids is not None:
            # position within each document: index minus the index where its segment starts
            idx = torch.arange(T, device=input_ids.device).expand(B, T)
            starts = torch.ones_like(segment_ids, dtype=torch.bool)
            starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
            start_idx = torch.cummax(torch.where(starts, idx, torch.zeros_like(idx)), dim=1).values
            return idx - start_idx
        start = cache.next_position if cache is not None else torch.zeros(B, dtype=torch.long, device=input_ids.device)
        return start[:, None] + torch.arange(T, device=input_ids.device)[None]

    def num_params(self, include_embedding: bool = True) -> int:
        if self.quantized:
            return self.config.num_params(include_embedding)
        n = sum(p.numel() for p in self.parameters())
        return n if include_embedding else n - self.embed_tokens.weight.numel()
