"""The engine against plain full forward passes on tiny random models."""

from __future__ import annotations

import pytest
import torch

from codegemma.config import preset
from codegemma.engine import Engine, SamplingParams
from codegemma.errors import CodegemmaError
from codegemma.model import Gemma


def tiny(name="tiny-gemma3", seed=0):
    torch.manual_seed(seed)
    model = Gemma(preset(name))
    model.init_weights(std=0.2)  # peaked distributions, so greedy paths are not all one token
    return model.eval()


def reference_greedy(model, prompt, n):
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


@pytest.mark.parametrize("name", ["tiny-gemma", "tiny-gemma2", "tiny-gemma3"])
def test_greedy_matches_full_recompute(name):
    model = tiny(name)
    prompt = torch.randint(0, 512, (20,)).tolist()
    out = Engine(model).generate(prompt, SamplingParams(max_new_tokens=24))
    assert out.ids == reference_greedy(model, prompt, 24)
    assert out.finish_reason == "length"


def test_stop_ids_and_stop_strings():
    model = tiny()
    prompt = [5, 6, 7, 8]
    free = Engine(model).generate(prompt, SamplingParams(max_new_tokens=10)).ids
    stopped = Engine(model).generate(prompt, SamplingParams(max_new_tokens=10, stop_ids={free[3]}))
    assert stopped.ids == free[:free.index(free[3])] and stopped.finish_reason == "stop"
    assert stopped.stop_id == free[3]
    detok = lambda ids: "".join(f"<{i}>" for i in ids)  # noqa: E731
    by_string = Engine(model, detokenize=detok).generate(prompt, SamplingParams(max_new_tokens=10,
                                                                                 stop_strings=(f"<{free[2]}>",)))
    assert by_string.ids == free[:free.index(free[2]) + 1] and by_string.stop_string == f"<{free[2]}>"


def test_prefix_reuse_gives_identical_output_and_reports_cached_tokens():
    model = tiny()
    engine = Engine(model, cache_slack=64)
    base = torch.randint(0, 512, (40,)).tolist()
    first = engine.generate(base, SamplingParams(max_new_tokens=6))
    assert first.cached_tokens == 0
    grown = base + [11, 12, 13]
    second = engine.generate(grown, SamplingParams(max_new_tokens=6))
    assert second.cached_tokens == 40 and second.evaluated_tokens == 3
    assert second.ids == Engine(model, reuse_prefix=False).generate(grown, SamplingParams(max_new_tokens=6)).ids
    edited = base[:30] + [99, 98]  # an edit in the middle: roll back to the common prefix
    third = engine.generate(edited, SamplingParams(max_new_tokens=6))
    assert third.cached_tokens == 30
    assert third.ids == reference_greedy(model, edited, 6)
    small_ring = Engine(model, cache_slack=2)  # too little slack to roll back: recompute, same answer
    small_ring.generate(base, SamplingParams(max_new_tokens=6))
    fourth = small_ring.generate(edited, SamplingParams(max_new_tokens=6))
    assert fourth.cached_tokens == 0 and fourth.ids == third.ids


def test_batched_greedy_equals_one_at_a_time():
    model = tiny("tiny-gemma2")
    prompts = [torch.randint(0, 512, (n,)).tolist() for n in (3, 17, 9)]
    params = SamplingParams(max_new_tokens=12)
    batch = Engine(model).generate_batch(prompts, params)
    single = [Engine(model).generate(p, params).ids for p in prompts]
    assert [r.ids for r in batch] == single


@pytest.mark.parametrize("name", ["tiny-gemma", "tiny-gemma3"])
def test_batch_rows_that_finish_early_leave_it_and_the_rest_are_unchanged(name):
    model = tiny(name, seed=1)
    prompts = [torch.randint(0, 512, (n,)).tolist() for n in (5, 23, 11, 30)]
    free = [Engine(model).generate(p, SamplingParams(max_new_tokens=40)).ids for p in prompts]
    stop = free[1][6]  # row 1 stops at its 7th token; the others stop later, at it, or not at all
    params = SamplingParams(max_new_tokens=40, stop_ids={stop})
    single = [Engine(model).generate(p, params) for p in prompts]
    batch = Engine(model).generate_batch(prompts, params)
    assert [r.ids for r in batch] == [r.ids for r in single]
    assert [r.finish_reason for r in batch] == [r.finish_reason for r in single]
    lengths = sorted(len(r.ids) for r in batch)
    assert lengths[0] < lengths[-1]  # rows really left the batch at different steps


def test_seeded_sampling_is_reproducible_and_varies_with_seed():
    model = tiny()
    params = lambda seed: SamplingParams(max_new_tokens=16, temperature=1.0, top_k=50, top_p=0.9, min_p=0.01,  # noqa: E731
                                         repetition_penalty=1.1, seed=seed)
    a = Engine(model).generate([1, 2, 3], params(7)).ids
    b = Engine(model).generate([1, 2, 3], params(7)).ids
    c = Engine(model).generate([1, 2, 3], params(8)).ids
    assert a == b and a != c


def test_stream_yields_the_same_tokens_and_can_be_cancelled():
    model = tiny()
    engine = Engine(model)
    full = engine.generate([4, 5, 6], SamplingParams(max_new_tokens=8)).ids
    stream = engine.stream([4, 5, 6], SamplingParams(max_new_tokens=8))
    got = [next(stream) for _ in range(3)]
    stream.close()
    assert got == full[:3]
    cancelled = engine.generate([4, 5, 6], SamplingParams(max_new_tokens=8), cancel=lambda: True)
    assert cancelled.finish_reason == "cancelled" and cancelled.ids == []


def test_bad_prompts_are_clear_errors():
    engine = Engine(tiny())
    with pytest.raises(CodegemmaError, match="empty"):
        engine.generate([], SamplingParams())
    with pytest.raises(CodegemmaError, match="outside the vocabulary"):
        engine.generate([100000], SamplingParams())
    with pytest.raises(CodegemmaError, match="exceeds"):
        engine.generate([1] * 250, SamplingParams(max_new_tokens=10))
    with pytest.raises(CodegemmaError, match="top_p"):
        SamplingParams(top_p=0)
