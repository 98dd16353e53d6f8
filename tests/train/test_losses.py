import pytest
import torch

from codegemma import head_loss
from codegemma.config import preset
from codegemma.model import Gemma
from codegemma.train import losses


def test_shift_trains_only_targets_inside_the_same_document():
    batch = {
        "tokens": torch.tensor([[10, 11, 12, 20, 21, 0]]),
        "segment_ids": torch.tensor([[1, 1, 1, 2, 2, 0]]),
        "loss_mask": torch.tensor([[True, True, True, True, True, False]]),
    }
    inputs, seg, targets, trained = losses.shift(batch)
    assert inputs.tolist() == [[10, 11, 12, 20, 21]]
    assert targets.tolist() == [[11, 12, 20, 21, 0]]
    # 12 -> 20 crosses documents, 21 -> pad is padding
    assert trained.tolist() == [[True, True, False, True, False]]


def test_loss_mask_excludes_prompt_tokens():
    batch = {
        "tokens": torch.tensor([[1, 2, 3, 4]]),
        "segment_ids": torch.tensor([[1, 1, 1, 1]]),
        "loss_mask": torch.tensor([[False, False, True, True]]),
    }
    assert losses.shift(batch)[3].tolist() == [[False, True, True]]


def test_one_document_rows_attend_without_a_mask(monkeypatch):
    # packed rows that each hold one document are plain causal attention: SDPA gets no mask tensor
    # (its faster causal kernels) and the loss is the masked path's; a packed or padded row keeps one
    cfg = preset("tiny-gemma")
    torch.manual_seed(0)
    model = Gemma(cfg)
    model.init_weights()
    masks = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, attn_mask=None, **kwargs):
        masks.append(attn_mask)
        return sdpa(*args, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    tokens = torch.randint(3, cfg.vocab_size, (2, 11))
    mask = torch.ones_like(tokens, dtype=torch.bool)
    one = {"tokens": tokens, "segment_ids": torch.tensor([[1] * 11, [4] * 11]), "loss_mask": mask}
    with torch.no_grad():
        total, count = losses.lm_loss_sum(model, one)
        assert masks and all(m is None for m in masks)
        masked, _ = model(tokens[:, :-1], segment_ids=one["segment_ids"][:, :-1], targets=tokens[:, 1:])
        assert count == 20 and torch.allclose(total, masked, atol=1e-5)
        for seg in ([[1] * 11, [1] * 4 + [2] * 7], [[1] * 11, [1] * 8 + [0] * 3]):
            masks.clear()
            losses.lm_loss_sum(model, {**one, "segment_ids": torch.tensor(seg)})
            assert masks and all(m is not None for m in masks)


def test_lm_loss_sum_matches_manual_cross_entropy():
    torch.manual_seed(0)
    vocab = 7
    table = torch.randn(vocab, vocab)

    def model(ids, segment_ids=None, targets=None, loss_weights=None):  # a bigram table as the model
        nll = torch.nn.functional.cross_entropy(table[ids].flatten(0, 1), targets.flatten(), reduction="none")
        return (nll * loss_weights.flatten()).sum(), nll.view(targets.shape)

    batch = {"tokens": torch.tensor([[1, 2, 3, 4]]), "segment_ids": torch.tensor([[1, 1, 2, 2]]),
             "loss_mask": torch.ones(1, 4, dtype=torch.bool)}
    total, count = losses.lm_loss_sum(model, batch)
    logp = torch.log_softmax(table, -1)
    assert count.item() == 2
    assert torch.allclose(total, -(logp[1, 2] + logp[3, 4]))


@pytest.mark.parametrize("name", ["tiny-gemma", "tiny-gemma2", "tiny-gemma3"])
def test_fused_head_loss_equals_cross_entropy_over_the_logits(name, monkeypatch):
    """lm_loss_sum goes through codegemma.head_loss: same loss and same gradients as the logits."""
    monkeypatch.setattr(head_loss, "CHUNK_ELEMENTS", 5 * preset(name).vocab_size)  # several chunks, one ragged
    monkeypatch.setattr(head_loss, "MIN_CHUNK_ROWS", 1)
    torch.manual_seed(0)
    model = Gemma(preset(name))
    model.init_weights(std=0.1)
    tokens = torch.randint(0, model.config.vocab_size, (3, 9))
    batch = {"tokens": tokens, "segment_ids": torch.tensor([[1] * 5 + [2] * 4, [1] * 9, [1] * 7 + [0] * 2]),
             "loss_mask": torch.rand(3, 9) > 0.3}
    total, count = losses.lm_loss_sum(model, batch)
    (total / count).backward()
    fused = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    inputs, seg, targets, trained = losses.shift(batch)
    reference = (losses.token_nll(model(inputs, segment_ids=seg), targets) * trained).sum()
    (reference / count).backward()
    assert torch.allclose(total, reference, rtol=1e-5)
    for n, p in model.named_parameters():
        assert torch.allclose(fused[n], p.grad, atol=1e-6, rtol=1e-4), n


def test_head_loss_is_exact_in_float64_with_and_without_softcap():
    torch.manual_seed(0)
    for cap in (None, 30.0):
        h = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
        w = torch.randn(40, 16, dtype=torch.float64, requires_grad=True)
        targets, weights = torch.randint(0, 40, (50,)), torch.rand(50, dtype=torch.float64)
        total, nll = head_loss.weighted_nll(h, w, targets, weights, cap)
        (2 * total).backward()
        got = (nll, h.grad, w.grad)
        h.grad = w.grad = None
        z = h @ w.t()
        z = z if cap is None else torch.tanh(z / cap) * cap
        ref = torch.nn.functional.cross_entropy(z, targets, reduction="none")
        (2 * (ref * weights).sum()).backward()
        for a, b in zip(got, (ref, h.grad, w.grad)):
            assert torch.allclose(a, b, atol=1e-12)
        with torch.no_grad():  # no gradient wanted: the same numbers, nothing saved
            assert torch.allclose(head_loss.weighted_nll(h, w, targets, weights, cap)[1], ref, atol=1e-12)


def test_head_loss_refuses_a_second_backward_instead_of_a_wrong_gradient():
    """Backward scales the saved gradients in place (no copy of the head's gradient); a second
    backward through a retained graph must then fail loudly, not return twice-scaled gradients."""
    torch.manual_seed(0)
    h, w = torch.randn(20, 8, requires_grad=True), torch.randn(30, 8, requires_grad=True)
    total, _ = head_loss.weighted_nll(h, w, torch.randint(0, 30, (20,)), torch.ones(20))
    (0.5 * total).backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (0.5 * total).backward()


def test_dpo_loss():
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-1.0, -3.0, -2.0, -2.0))
    loss, stats = losses.dpo_loss(pc, pr, rc, rr, beta=0.5)
    # margin = 0.5 * ((-1 + 2) - (-3 + 2)) = 1
    assert torch.allclose(loss, -torch.nn.functional.logsigmoid(torch.tensor([1.0])))
    assert stats["reward_accuracy"].item() == 1.0
    equal, _ = losses.dpo_loss(rc, rr, rc, rr, beta=0.5)
    assert torch.allclose(equal, torch.log(torch.tensor([2.0])))


def test_head_chunks_keep_enough_rows_to_reuse_a_large_vocabulary_head():
    """Every chunk reads the whole head weight: Gemma's 262k vocabulary must not shrink chunks to a few rows."""
    cpu = torch.device("cpu")
    assert head_loss.chunk_rows(262144, cpu) >= 256
    assert head_loss.chunk_rows(8192, cpu) * 8192 == head_loss.CHUNK_ELEMENTS  # small vocabularies: the cache budget


@pytest.mark.parametrize("name", ["tiny-gemma", "tiny-gemma2"])
def test_dpo_objective_equals_dpo_over_the_logits_without_making_them(name, monkeypatch):
    """The DPO step scores rows through the fused head (no [rows, tokens, vocab] logits, 17 GB at
    Gemma's vocabulary for the dpo-codegemma recipe's batch) and has the loss and the gradients of
    DPO computed from the materialised logits."""
    from codegemma.train.objectives import Preference

    torch.manual_seed(0)
    model, reference = Gemma(preset(name)), Gemma(preset(name))
    model.init_weights(std=0.1)
    reference.init_weights(std=0.1)

    def side(lengths):
        tokens = torch.randint(0, model.config.vocab_size, (2, 10))
        mask = torch.zeros(2, 10, dtype=torch.bool)
        seg = torch.zeros(2, 10, dtype=torch.long)
        for row, (prompt, total) in enumerate(lengths):
            mask[row, prompt:total], seg[row, :total] = True, 1
        return {"tokens": tokens, "segment_ids": seg, "loss_mask": mask}

    batch = {"chosen": side([(3, 10), (4, 8)]), "rejected": side([(3, 9), (4, 10)])}
    objective = Preference(beta=0.3, reference=reference)

    def logits_logp(m, b):
        inputs, seg, targets, trained = losses.shift(b)
        return -(losses.token_nll(m(inputs, segment_ids=seg), targets) * trained).sum(1)

    with torch.no_grad():
        ref = [logits_logp(reference, batch[k]) for k in ("chosen", "rejected")]
    want, _ = losses.dpo_loss(logits_logp(model, batch["chosen"]), logits_logp(model, batch["rejected"]), *ref, 0.3)
    want.sum().backward()
    want_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    def no_logits(*args, **kwargs):
        raise AssertionError("the DPO step made the full logits")

    monkeypatch.setattr(Gemma, "logits", no_logits)
    total, stats = objective.loss_sum(model, batch)
    total.backward()
    assert torch.allclose(total, want.sum(), rtol=1e-5)
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, want_grads[n], atol=1e-6, rtol=1e-4), n


def test_psm_middle_starts_marks_the_psm_middle_sentinel_only():
    """In packed FIM examples of both orders, only a PSM example's <|fim_middle|> predicts its
    middle's first token; an SPM example's is followed by the prefix."""
    from codegemma.fim import CODEGEMMA_SENTINELS as s, PSM, SPM, encode_pieces, fim_example

    class Chars:  # one id per character, above the sentinels
        def encode(self, text, add_bos=False):
            return [100 + ord(c) for c in text]

    ids = {s.prefix: 1, s.middle: 2, s.suffix: 3, s.file_separator: 4}
    pieces = (fim_example("def f(", "x", "):\n", SPM, "a.py") + [s.file_separator]
              + fim_example("y = ", "1", "\n", PSM, "b.py") + [s.file_separator] + ["plain text"]
              + fim_example("v", "z", "w", PSM))
    tokens = torch.tensor([encode_pieces(Chars(), pieces, ids)])
    starts = losses.psm_middle_starts(tokens, 1, 3, 2)
    marked = starts[0].nonzero().flatten().tolist()
    assert len(marked) == 2 and all(tokens[0, i] == 2 for i in marked)
    assert [chr(tokens[0, i + 1].item() - 100) for i in marked] == ["1", "z"]  # the PSM middles' first tokens


def test_language_modeling_weighs_the_psm_first_token_in_training_only():
    from codegemma.train.objectives import LanguageModeling

    torch.manual_seed(0)
    table = torch.randn(8, 8)

    def model(ids, segment_ids=None, targets=None, loss_weights=None):  # a bigram table as the model
        nll = torch.nn.functional.cross_entropy(table[ids].flatten(0, 1), targets.flatten(), reduction="none")
        return (nll * loss_weights.flatten()).sum(), nll.view(targets.shape)

    # PSM: <pre>=1 prefix 5 <suf>=3 suffix 6 <mid>=2 middle 7
    batch = {"tokens": torch.tensor([[1, 5, 3, 6, 2, 7]]), "segment_ids": torch.ones(1, 6, dtype=torch.long),
             "loss_mask": torch.ones(1, 6, dtype=torch.bool)}
    nll = -torch.log_softmax(table, -1)
    plain = sum(nll[a, b] for a, b in [(1, 5), (5, 3), (3, 6), (6, 2), (2, 7)])
    weighted, _ = LanguageModeling((20.0, (1, 3, 2))).loss_sum(model, batch)
    assert torch.allclose(weighted, plain + 19 * nll[2, 7])
    total, count, _ = LanguageModeling((20.0, (1, 3, 2))).held_out(model, batch)
    assert torch.allclose(total, plain) and count.item() == 5


def test_the_psm_options_need_the_fim_sentinels():
    from codegemma.errors import CodegemmaError
    from codegemma.train import recipe as recipes
    from codegemma.train.run import make_objective

    class NoSentinels:
        def token_to_id(self, text):
            return None

    r = recipes.Recipe()
    r.data.psm_first_token_weight = 20.0
    with pytest.raises(CodegemmaError, match="data.psm_first_token_weight: tokenizer has no FIM sentinel"):
        make_objective(r, None, NoSentinels())
    with pytest.raises(CodegemmaError, match="needs a tokenizer"):
        make_objective(r, None, None)
    r.data.psm_first_token_weight = 1.0
    assert make_objective(r, None, None).psm_first_token is None
    r.data.psm_prefix_distill_weight = 5.0
    with pytest.raises(CodegemmaError, match="data.psm_prefix_distill_weight: tokenizer has no FIM sentinel"):
        make_objective(r, None, NoSentinels())
    with pytest.raises(CodegemmaError, match="data.psm_prefix_distill_weight needs a tokenizer"):
        make_objective(r, None, None)
    r.distributed.strategy = "fsdp"
    with pytest.raises(CodegemmaError, match="does not run under FSDP"):
        make_objective(r, None, None)


def _packed_fim_rows():
    """Two rows of packed FIM examples (one id per character, above the sentinels 1-4): an SPM and
    two PSM examples, and a plain file between them."""
    from codegemma.fim import CODEGEMMA_SENTINELS as s, PSM, SPM, encode_pieces, fim_example

    class Chars:
        def encode(self, text, add_bos=False):
            return [10 + ord(c) % 50 for c in text]

    ids = {s.prefix: 1, s.middle: 2, s.suffix: 3, s.file_separator: 4}
    pieces = (fim_example("def f(", "x", "):\n", SPM, "a.py") + [s.file_separator]
              + fim_example("y = ", "1", "\n", PSM, "b.py") + [s.file_separator] + ["plain text"]
              + fim_example("v", "z", "w", PSM))
    tokens = torch.tensor([encode_pieces(Chars(), pieces, ids)] * 2)
    return {"tokens": tokens, "segment_ids": torch.ones_like(tokens), "loss_mask": torch.ones_like(tokens, dtype=torch.bool)}


def test_psm_prefix_ends_pairs_each_psm_middle_with_its_prefix_end():
    inputs = _packed_fim_rows()["tokens"][:, :-1]
    rows, starts, ends = losses.psm_prefix_ends(inputs, 1, 3, 2)
    assert rows.tolist() == [0, 0, 1, 1]
    assert torch.equal(starts, losses.psm_middle_starts(inputs, 1, 3, 2).nonzero()[:, 1])
    assert (inputs[rows, starts] == 2).all() and (inputs[rows, ends + 1] == 3).all()  # each end is followed by <suf>
    assert (inputs[rows, ends] != 1).all()  # and is prefix text, not the prefix sentinel


def test_prefix_distill_adds_the_kl_from_the_prefix_end_to_the_middle_start():
    """The loss is the plain loss plus weight x KL(prefix end without the sentinels || PSM middle
    start), summed over the PSM examples, against the KL computed over the full logits; the
    teacher side gets no gradient."""
    from codegemma.train.objectives import LanguageModeling

    torch.manual_seed(0)
    model = Gemma(preset("tiny-gemma"))
    model.init_weights()
    batch = _packed_fim_rows()
    plain, count = losses.lm_loss_sum(model, batch)
    total, stats = LanguageModeling(None, (3.0, (1, 3, 2), [1, 2, 3, 4], 1)).loss_sum(model, batch)
    inputs = batch["tokens"][:, :-1]
    rows, starts, ends = losses.psm_prefix_ends(inputs, 1, 3, 2)
    logits = model(inputs)
    teacher = logits[rows, ends].detach().index_fill(1, torch.tensor([1, 2, 3, 4]), float("-inf")).softmax(-1)
    kl = torch.nn.functional.kl_div(logits[rows, starts].log_softmax(-1), teacher, reduction="sum")
    assert torch.allclose(total, plain + 3.0 * kl, rtol=1e-5)
    assert torch.allclose(stats["psm_prefix_kl"], kl / count, rtol=1e-5)
    grad_total = torch.autograd.grad(total, model.embed_tokens.weight)[0]
    grad_plain = torch.autograd.grad(plain + 3.0 * kl, model.embed_tokens.weight)[0]
    assert torch.allclose(grad_total, grad_plain, atol=1e-5)


def test_prefix_distill_over_several_tokens_reads_each_middle_left_to_right():
    """With tokens > 1 the teacher for a PSM middle's first tokens is the model reading the same
    segment left to right: its text up to the prefix's end, then the middle. Checked against views
    built from the pieces themselves, in a row where the second PSM example starts a new segment."""
    from codegemma.fim import CODEGEMMA_SENTINELS as s, PSM, SPM, encode_pieces, fim_example

    class Chars:
        def encode(self, text, add_bos=False):
            return [10 + ord(c) % 50 for c in text]

    ids = {s.prefix: 1, s.middle: 2, s.suffix: 3, s.file_separator: 4}
    first = ["plain", s.file_separator] + fim_example("y = ", "123", "\n", PSM, "b.py") + [s.file_separator]
    spm = fim_example("def f(", "x", "):\n", SPM, "a.py") + [s.file_separator]
    second = fim_example("vw", "zq", "w", PSM, "c.py")
    row = encode_pieces(Chars(), first + spm + second, ids)
    split = len(encode_pieces(Chars(), first + spm, ids))
    tokens = torch.tensor([row, row])
    segments = torch.ones_like(tokens)
    segments[1, split:] = 2  # in row 1 the second PSM example is a document of its own
    batch = {"tokens": tokens, "segment_ids": segments, "loss_mask": torch.ones_like(tokens, dtype=torch.bool)}
    torch.manual_seed(0)
    model = Gemma(preset("tiny-gemma"))
    model.init_weights()
    excluded = [1, 2, 3, 4]
    plain, count = losses.lm_loss_sum(model, batch)
    total, _, kl_sum = losses.lm_loss_sum_with_prefix_distill(model, batch, 2.0, (1, 3, 2), excluded, tokens=3)

    def view(pieces_before, example):  # the segment left to right: up to the prefix, then the middle
        return encode_pieces(Chars(), pieces_before + example[:3] + [example[-1]], ids)

    expected, expected_first = torch.zeros(()), torch.zeros(())
    logits = model(tokens[:, :-1], segment_ids=segments[:, :-1])
    middle_starts = [len(encode_pieces(Chars(), first[:-1], ids)) - 4, len(row) - 3]  # each <|fim_middle|>
    cases = [(0, first[:2], first[2:-1], middle_starts[0], 3), (0, first + spm, second, middle_starts[1], 2),
             (1, first[:2], first[2:-1], middle_starts[0], 3), (1, [], second, middle_starts[1], 2)]
    for r, before, example, start, n in cases:
        assert tokens[r, start] == 2
        v = torch.tensor([view(before, example)])
        teacher = model(v)[0, -n - 1:-1].detach().index_fill(1, torch.tensor(excluded), float("-inf")).softmax(-1)
        student = logits[r, start:start + n].log_softmax(-1)
        expected = expected + torch.nn.functional.kl_div(student, teacher, reduction="sum")
        expected_first = expected_first + torch.nn.functional.kl_div(student[:1], teacher[:1], reduction="sum")
    assert torch.allclose(kl_sum, expected, rtol=1e-4)
    assert torch.allclose(total, plain + 2.0 * expected, rtol=1e-5)
    # one token takes its teacher from the same pass, where it equals the views' first one
    _, _, first_only = losses.lm_loss_sum_with_prefix_distill(model, batch, 2.0, (1, 3, 2), excluded, tokens=1)
    assert torch.allclose(first_only, expected_first, rtol=1e-4) and first_only < kl_sum
