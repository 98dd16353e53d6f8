"""Numerical parity with Hugging Face transformers (GemmaForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM)."""

from __future__ import annotations

import pytest
import torch

from codegemma.checkpoints.hf_config import config_to_hf
from codegemma.checkpoints.hf_weights import from_hf_state_dict
from codegemma.config import preset
from codegemma.kv_cache import KVCache
from codegemma.model import Gemma

transformers = pytest.importorskip("transformers")

TINY = ["tiny-gemma", "tiny-gemma-mha", "tiny-gemma2", "tiny-gemma3"]
TOL = 1e-4


def hf_model(cfg):
    hf_cfg = transformers.AutoConfig.for_model(**config_to_hf(cfg))
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(hf_cfg).eval()
    with torch.no_grad():  # random norm weights too, so (1 + w) is exercised
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.5)
    return model


def ours_from(hf, cfg):
    model = Gemma(cfg).eval()
    model.load_state_dict(from_hf_state_dict(hf.state_dict()))
    return model


@pytest.mark.parametrize("name", TINY)
def test_full_forward_matches_transformers(name):
    cfg = preset(name)
    hf = hf_model(cfg)
    ours = ours_from(hf, cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 40))  # longer than the tiny sliding window (8)
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours(ids)
    assert (ref - got).abs().max().item() <= TOL


@pytest.mark.parametrize("name", TINY)
def test_cached_decoding_matches_transformers(name):
    cfg = preset(name)
    hf = hf_model(cfg)
    ours = ours_from(hf, cfg)
    ids = torch.randint(0, cfg.vocab_size, (1, 30))
    with torch.no_grad():
        ref = hf(ids).logits
        cache = KVCache(cfg, batch_size=1, max_len=64)
        steps = [ours(ids[:, :5], cache=cache)]  # prefill, then one token at a time
        for t in range(5, ids.shape[1]):
            steps.append(ours(ids[:, t:t + 1], cache=cache))
    got = torch.cat(steps, dim=1)
    assert (ref - got).abs().max().item() <= TOL


@pytest.mark.parametrize("name", TINY)
def test_last_only_prefill_matches_the_full_forward_and_fills_the_cache(name):
    """`last_only` skips the last layer's work for all but the last position: the last logits, and
    every later decoding step through the cache, are those of a full prefill (left padding too)."""
    cfg = preset(name)
    hf = hf_model(cfg)
    ours = ours_from(hf, cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 30))
    valid = torch.ones(2, 30, dtype=torch.bool)
    valid[1, :4] = False  # a left-padded row
    with torch.no_grad():
        assert (ours(ids, last_only=True) - hf(ids).logits[:, -1:]).abs().max().item() <= TOL
        results = []
        for last_only in (False, True):
            cache = KVCache(cfg, batch_size=2, max_len=64)
            positions = (valid.cumsum(-1) - 1).clamp(min=0)
            positions[~valid] = -1
            first = ours(ids[:, :20], positions=positions[:, :20], cache=cache, last_only=last_only)[:, -1:]
            steps = [first] + [ours(ids[:, t:t + 1], cache=cache) for t in range(20, 30)]
            results.append(torch.cat(steps, dim=1))
    assert (results[0] - results[1]).abs().max().item() <= TOL


@pytest.mark.parametrize("name", TINY)
def test_chunked_prefill_through_ring_buffer(name):
    """Chunks longer than the window, through a ring-bounded cache, give the full-forward logits,
    whole or (`last_only`) at each chunk's end, and the cache then decodes as after a full forward."""
    cfg = preset(name)
    torch.manual_seed(1)
    model = Gemma(cfg).eval()
    model.init_weights()
    ids = torch.randint(0, cfg.vocab_size, (1, 45))
    with torch.no_grad():
        ref = model(ids)
        cache = KVCache(cfg, batch_size=1, max_len=64, slack=2)
        got = torch.cat([model(ids[:, a:a + 11], cache=cache) for a in range(0, 45, 11)], dim=1)
        # the same chunks with `last_only`, each extending the cached prefix (the server's prefix reuse)
        cache = KVCache(cfg, batch_size=1, max_len=64, slack=2)
        lasts = torch.cat([model(ids[:, a:a + 11], cache=cache, last_only=True) for a in range(0, 44, 11)], dim=1)
        step = model(ids[:, 44:], cache=cache)
    assert (ref - got).abs().max().item() <= TOL
    assert (ref[:, 10:44:11] - lasts).abs().max().item() <= TOL and (ref[:, 44:] - step).abs().max().item() <= TOL


def test_segment_ids_isolate_documents():
    cfg = preset("tiny-gemma3")
    torch.manual_seed(2)
    model = Gemma(cfg).eval()
    model.init_weights()
    a = torch.randint(0, cfg.vocab_size, (1, 12))
    b = torch.randint(0, cfg.vocab_size, (1, 9))
    packed = torch.cat([a, b], dim=1)
    seg = torch.tensor([[1] * 12 + [2] * 9])
    with torch.no_grad():
        got = model(packed, segment_ids=seg)
        assert (got[:, :12] - model(a)).abs().max() <= TOL
        assert (got[:, 12:] - model(b)).abs().max() <= TOL
        # beside a one-document row, and with padding (segment 0) after a document
        c = torch.randint(0, cfg.vocab_size, (1, 21))
        pair = model(torch.cat([packed, c]), segment_ids=torch.cat([seg, torch.ones_like(c)]))
        assert (pair[:1] - got).abs().max() <= TOL and (pair[1:] - model(c)).abs().max() <= TOL
        padded = model(c, segment_ids=torch.tensor([[1] * 15 + [0] * 6]))
        assert (padded[:, :15] - model(c[:, :15])).abs().max() <= TOL


def test_model_trains():
    cfg = preset("tiny-gemma2")
    model = Gemma(cfg)
    model.init_weights()
    ids = torch.randint(0, cfg.vocab_size, (2, 16))
    loss = torch.nn.functional.cross_entropy(model(ids)[:, :-1].reshape(-1, cfg.vocab_size), ids[:, 1:].reshape(-1))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
def test_bf16_cpu_attention_by_hand_matches_sdpa(n_kv_heads):
    """bfloat16 prompts on a CPU attend by hand (faster than SDPA's flash kernel there); the
    result must be SDPA's, computed in float32, up to bfloat16 rounding."""
    import dataclasses

    import torch.nn.functional as F

    from codegemma.model import Attention

    cfg = dataclasses.replace(preset("tiny-gemma3"), n_kv_heads=n_kv_heads)
    attn = Attention(cfg, "local")
    g = torch.Generator().manual_seed(0)
    T = 40
    q = torch.randn(2, cfg.n_heads, T, cfg.head_dim, generator=g).bfloat16()
    k = torch.randn(2, n_kv_heads, T, cfg.head_dim, generator=g).bfloat16()
    v = torch.randn(2, n_kv_heads, T, cfg.head_dim, generator=g).bfloat16()
    pos = torch.arange(T)[None].expand(2, T)
    mask = attn._mask(pos, pos, None, None, None, None)  # causal with the sliding window of 8
    assert Attention._by_hand_on_cpu(q, k, mask)
    got = attn._attend(q, k, v, mask)
    groups = cfg.n_heads // n_kv_heads
    want = F.scaled_dot_product_attention(q.float(), k.float().repeat_interleave(groups, 1),
                                          v.float().repeat_interleave(groups, 1), attn_mask=mask, scale=cfg.query_scale)
    assert got.dtype == torch.bfloat16 and got.shape == want.shape
    assert (got.float() - want).abs().max() <= 2e-2 * want.abs().max()
