"""The head screen must give exactly the float32 argmax, whatever the hidden state."""

import pytest
import torch

from codegemma.engine import Engine, SamplingParams
from codegemma.head_screen import HeadScreen, supports
from codegemma.model import Gemma
from codegemma.config import preset


def near_tie_weight(rows=512, cols=64, seed=0):
    """Random rows plus pairs that differ by less than the 8-bit quantization step (yet by more
    than float32 rounding, so that the float32 argmax is well defined)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.05
    w[1::2] = w[0::2] + torch.randn(rows // 2, cols, generator=g) * 1e-4  # the 8-bit step is ~8e-4
    return w


@pytest.mark.parametrize("scale", [1.0, 30.0, 300.0])
def test_argmax_equals_the_float32_argmax(scale):
    w = near_tie_weight()
    screen = HeadScreen.from_weight(w)
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(400, 64, generator=g) * scale
    # hidden states aimed at a near-tie pair make the coarse logits useless for the choice
    hidden[:200] += w[torch.arange(0, 400, 2)] * scale * 40
    exact = hidden @ w.T
    for start in range(0, len(hidden), 8):
        got = screen(hidden[start:start + 8], w)
        assert torch.equal(got.argmax(-1), exact[start:start + 8].argmax(-1))
        # the rows it did not recompute stay below the winner's exact logit (up to float32
        # rounding: the winner is recomputed in another summation order)
        best = exact[start:start + 8].amax(-1)
        assert bool((got.amax(-1) <= best + 1e-6 * best.abs() + 1e-5).all())


def test_supports_only_the_kernel_layout():
    assert supports(torch.zeros(512, 64))
    assert not supports(torch.zeros(500, 64))
    assert not supports(torch.zeros(512, 48))
    assert not supports(torch.zeros(512, 64, dtype=torch.bfloat16))


def tiny_model():
    torch.manual_seed(0)
    model = Gemma(preset("tiny-gemma3")).eval()
    model.init_weights(std=0.2)
    return model


def test_greedy_generation_is_unchanged():
    model = tiny_model()
    prompts = [[2, 5, 9, 14, 3], [2, 100, 7]]
    params = SamplingParams(max_new_tokens=24)
    plain = [Engine(model).generate(p, params).ids for p in prompts]
    plain_batch = [r.ids for r in Engine(model).generate_batch(prompts, params)]
    model.attach_head_screen(HeadScreen.from_weight(model.embed_tokens.weight.detach()))
    assert [Engine(model).generate(p, params).ids for p in prompts] == plain
    assert [r.ids for r in Engine(model).generate_batch(prompts, params)] == plain_batch == plain


def test_a_changed_head_drops_the_screen():
    model = tiny_model()
    model.attach_head_screen(HeadScreen.from_weight(model.embed_tokens.weight.detach()))
    hidden = torch.randn(1, 64)
    with torch.no_grad():
        model.embed_tokens.weight.mul_(-1.0)  # e.g. an optimizer step
    assert torch.equal(model.argmax_logits(hidden), model.logits(hidden))
    assert model.attached_head_screen is None
