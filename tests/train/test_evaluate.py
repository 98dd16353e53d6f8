import math

import numpy as np
import pytest
import torch

from codegemma.complete.budget import Budget
from codegemma.complete.prompt import FIM, build_prompt
from codegemma.config import ModelConfig, preset
from codegemma.data.shards import ShardWriter
from codegemma.errors import CodegemmaError
from codegemma.fim import (
    CODEGEMMA_SENTINELS,
    PSM,
    SPM,
    encode_pieces,
    fim_prompt,
    sentinel_ids,
)
from codegemma.model import Gemma
from codegemma.profiles import resolve_profile
from codegemma.train.distributed import DistEnv
from codegemma.train.evaluate import (
    L2R,
    CopyProbe,
    Evaluator,
    InfillExample,
    InfillScorer,
    check_fits_context,
    infill_scorers,
    read_files,
    single_line_examples,
    suffix_only_identifiers,
    unigram_baseline,
)

FILES = [("pkg/a.py", "import os\n\n\ndef f(x):\n    return x + 1\n"), ("b.py", "x = 1\ny = 2\n")]


def test_examples_mask_whole_non_blank_lines():
    examples = single_line_examples(FILES, 20, seed=0)
    assert len(examples) == 20
    for ex in examples:
        text = dict(FILES)[ex.path]
        assert ex.prefix + ex.middle + ex.suffix == text
        assert ex.middle.strip() and ex.middle.endswith("\n") and ex.prefix.endswith(("\n", ""))
    assert examples == single_line_examples(FILES, 20, seed=0)


def test_files_without_a_line_to_mask_give_no_examples(small_tokenizer, tmp_path):
    """Lines of one character are never masked: files with nothing else give no examples (the draw
    used to loop for ever), and the evaluation says so."""
    assert single_line_examples([("a.py", "}\n\n)\n"), ("b.py", "\n")], 4) == []
    (tmp_path / "a.py").write_text("}\n)\n")
    with pytest.raises(CodegemmaError, match="no line of two or more characters"):
        infill_scorers(small_tokenizer, tmp_path, 4, 64, [PSM])


@pytest.mark.parametrize("order", [PSM, SPM])
def test_prompt_is_the_served_layout(small_tokenizer, order):
    tok = small_tokenizer
    ex = single_line_examples(FILES, 1, seed=3)[0]
    scorer = InfillScorer(tok, [ex], max_prompt_tokens=512, order=order)
    pieces = fim_prompt(ex.prefix, ex.suffix, order, ex.path)
    assert scorer.prompt(ex) == [tok.bos_id] + encode_pieces(tok, pieces, sentinel_ids(tok))


def test_spm_prompt_trimmed_keeps_the_prefix_last(small_tokenizer):
    tok = small_tokenizer
    long = "".join(f"line_{i} = {i}\n" for i in range(200))
    ex = single_line_examples([("big.py", long)], 1, seed=1)[0]
    ids = InfillScorer(tok, [ex], max_prompt_tokens=64, order=SPM).prompt(ex)
    assert len(ids) <= 64
    text = tok.decode(ids)
    assert "<|fim_prefix|><|fim_suffix|>" in text and text.endswith(ex.prefix[-12:])
    with pytest.raises(ValueError):
        InfillScorer(tok, [ex], max_prompt_tokens=64, order="pms")


def test_prompt_is_trimmed_around_the_hole(small_tokenizer):
    tok = small_tokenizer
    long = "".join(f"line_{i} = {i}\n" for i in range(200))
    ex = single_line_examples([("big.py", long)], 1, seed=1)[0]
    ids = InfillScorer(tok, [ex], max_prompt_tokens=64).prompt(ex)
    assert len(ids) <= 64
    text = tok.decode(ids)
    assert "<|fim_prefix|>" in text and text.endswith("<|fim_middle|>")


@pytest.mark.parametrize("order", [PSM, SPM])
def test_trimmed_prompt_is_what_the_completion_server_sends(small_tokenizer, order):
    """Scores must be of the prompts users get: the server's budget split (3:1, prefix first) and
    its cuts at line starts, not a split of the evaluation's own."""
    tok = small_tokenizer
    long = "".join(f"value_{i} = compute({i}, {i * 7})\n" for i in range(300))
    ex = single_line_examples([("big.py", long)], 1, seed=5)[0]
    ids = InfillScorer(tok, [ex], max_prompt_tokens=160, order=order).prompt(ex)
    served = build_prompt(tok, resolve_profile(tok), ex.prefix, ex.suffix, path="big.py",
                          budget=Budget(max_prompt_tokens=160), mode=FIM, order=order)
    assert ids == served.ids and len(ids) <= 160
    cut = len(ex.prefix) - len(served.prefix)
    assert ex.prefix.endswith(served.prefix) and cut > 0 and ex.prefix[cut - 1] == "\n"  # cut at a line start
    assert served.suffix.endswith("\n") and ex.suffix.startswith(served.suffix)
    kept_prefix, kept_suffix = len(tok.encode(served.prefix)), len(tok.encode(served.suffix))
    assert kept_prefix > 2 * kept_suffix  # most of the budget goes to the text before the hole


class _NoSentinels:
    """A tokenizer whose vocabulary lacks the FIM sentinels (a model never trained to infill)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def token_to_id(self, text):
        return None if text in CODEGEMMA_SENTINELS.all() else self.tokenizer.token_to_id(text)


def test_l2r_prompt_is_the_prefix_alone(small_tokenizer):
    tok = small_tokenizer
    long = "".join(f"line_{i} = {i}\n" for i in range(200))
    ex = single_line_examples([("big.py", long)], 1, seed=1)[0]
    head = [tok.bos_id] + tok.encode("big.py\n")
    whole = InfillScorer(tok, [ex], max_prompt_tokens=10**6, order=L2R).prompt(ex)
    assert whole == head + tok.encode(ex.prefix)
    trimmed = InfillScorer(tok, [ex], max_prompt_tokens=64, order=L2R).prompt(ex)
    assert len(trimmed) == 64 and trimmed[:len(head)] == head
    assert trimmed[len(head):] == whole[len(whole) - (64 - len(head)):]  # the end of the prefix
    assert not set(whole) & set(sentinel_ids(tok).values())
    # a model without sentinels is scored left to right, and only so
    plain = _NoSentinels(tok)
    assert InfillScorer(plain, [ex], max_prompt_tokens=64, order=L2R).prompt(ex) == trimmed
    with pytest.raises(ValueError, match="no FIM sentinel"):
        InfillScorer(plain, [ex], max_prompt_tokens=64, order=PSM)


def test_prompt_and_answer_must_fit_the_context():
    check_fits_context(224, 32, 256, "eval")
    with pytest.raises(CodegemmaError, match="eval: a prompt of 256 tokens and an answer of 32 exceed .* 256"):
        check_fits_context(256, 32, 256, "eval")


def test_scores_run_on_a_model(small_tokenizer):
    cfg = ModelConfig.from_dict({**preset("tiny-gemma").to_dict(), "vocab_size": small_tokenizer.vocab_size})
    torch.manual_seed(0)
    model = Gemma(cfg).eval()
    model.init_weights()
    scorer = InfillScorer(small_tokenizer, single_line_examples(FILES, 3), max_prompt_tokens=128)
    total, count = scorer.middle_loss(model, torch.device("cpu"))
    assert count > 0 and abs(total / count - math.log(cfg.vocab_size)) < 1.0  # near-uniform random model
    hits, n = scorer.exact_match(model, torch.device("cpu"), max_new_tokens=4)
    assert n == 3 and hits == 0


def test_line_scores_need_the_indentation_for_a_match_but_not_for_similarity(small_tokenizer):
    examples = [InfillExample("a.py", "def f(x):\n", "    return x + 1\n", ""),
                InfillExample("a.py", "", "import os\n", "\n"),
                InfillExample("a.py", "", "x = 1\n", "")]
    answers = ["return x + 1", "import os  ", "y = 2"]  # wrong indentation, trailing spaces, a miss
    scorer = InfillScorer(small_tokenizer, examples, max_prompt_tokens=64)
    hits, similarity = scorer.line_scores(answers)
    assert hits == 1
    assert similarity == pytest.approx(1.0 + 1.0 + 3 / 5)  # "y = 2" against "x = 1": 2 edits in 5


def test_suffix_identifier_recall_counts_what_only_the_suffix_holds(small_tokenizer):
    far = "# " + "x" * 600 + "\n"  # `count` before this is out of the near prefix
    examples = [InfillExample("a.py", "count = 0\n" + far + "def f(items):\n", "    total = count + len(items)\n",
                              "    return total\n"),
                InfillExample("a.py", "import os\n", "path = os.getcwd()\n", "print(path)\n" + far + "cwd = 1\n")]
    assert suffix_only_identifiers(examples[0]) == {"total"}  # items: just before; count, len: nowhere near
    assert suffix_only_identifiers(examples[1]) == {"path"}  # os: before; getcwd: not after
    scorer = InfillScorer(small_tokenizer, examples, max_prompt_tokens=64)
    assert scorer.suffix_identifier_recall(["    total = 0", "cwd = os.getcwd()"]) == 0.5
    assert scorer.suffix_identifier_recall(["    totals = 0", "path"]) == 0.5  # whole identifiers only
    assert scorer.suffix_identifier_recall(["", ""]) == 0.0
    none = InfillScorer(small_tokenizer, [InfillExample("a.py", "", "x = 1\n", "")], max_prompt_tokens=64)
    assert none.suffix_identifier_recall(["x = 1"]) == 0.0  # no suffix-only identifier at all


@pytest.mark.parametrize("order", [PSM, SPM, L2R])
def test_batched_scoring_equals_one_example_at_a_time(small_tokenizer, order):
    cfg = ModelConfig.from_dict({**preset("tiny-gemma").to_dict(), "vocab_size": small_tokenizer.vocab_size})
    torch.manual_seed(0)
    model = Gemma(cfg).eval()
    model.init_weights(std=0.5)  # large weights: continuations that differ from prompt to prompt
    cpu = torch.device("cpu")
    scorer = InfillScorer(small_tokenizer, single_line_examples(FILES + SUFFIX_FILES, 7, seed=3),
                          max_prompt_tokens=128, order=order)
    prompts = [scorer.prompt(ex) for ex in scorer.examples]
    assert len({len(p) for p in prompts}) > 1  # the batch is ragged: left padding is exercised
    batched = scorer.middle_loss(model, cpu, batch_size=4)
    single = scorer.middle_loss(model, cpu, batch_size=1)
    assert batched[1] == single[1] and batched[0] == pytest.approx(single[0], rel=1e-5)
    # each example's first middle token: the NLL of the prompt's next-token distribution
    for ex, row in zip(scorer.examples, scorer.middle_nlls(model, cpu, batch_size=4), strict=True):
        middle = small_tokenizer.encode(ex.middle)
        logits = model(torch.tensor([scorer.prompt(ex)]))[0, -1]
        assert len(row) == len(middle)
        assert row[0] == pytest.approx(-torch.log_softmax(logits, -1)[middle[0]].item(), rel=1e-5)
    lines = scorer._greedy_lines(model, cpu, prompts, max_new_tokens=12)
    assert lines == [scorer._greedy_lines(model, cpu, [p], max_new_tokens=12)[0] for p in prompts]
    assert len(set(lines)) > 1
    assert scorer.exact_match(model, cpu, 12, batch_size=3) == scorer.exact_match(model, cpu, 12, batch_size=1)


def test_middle_loss_batches_within_the_logits_budget(small_tokenizer, monkeypatch):
    from codegemma.train import evaluate

    cfg = ModelConfig.from_dict({**preset("tiny-gemma").to_dict(), "vocab_size": small_tokenizer.vocab_size})
    torch.manual_seed(0)
    model = Gemma(cfg).eval()
    model.init_weights(std=0.5)
    scorer = InfillScorer(small_tokenizer, single_line_examples(FILES + SUFFIX_FILES, 7, seed=3), max_prompt_tokens=128)
    width = max(len(scorer.prompt(ex)) + len(small_tokenizer.encode(ex.middle)) for ex in scorer.examples)
    monkeypatch.setattr(evaluate, "LOGITS_BUDGET", 2 * width * cfg.vocab_size)  # room for two rows
    rows = []
    model.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    total, count = scorer.middle_loss(model, torch.device("cpu"))
    assert max(rows) == 2 and sum(rows) == 7
    single = scorer.middle_loss(model, torch.device("cpu"), batch_size=1)
    assert count == single[1] and total == pytest.approx(single[0], rel=1e-5)


class _Bigram(torch.nn.Module):
    """Logits from the previous token alone: it cannot use a suffix."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.table = torch.nn.Embedding(vocab_size, vocab_size)

    def forward(self, ids):
        return self.table(ids)


SUFFIX_FILES = [("a.py", "def area(w, h):\n    return w * h\n\n\nprint(area(2, 3))\n"),
                ("b.py", "import sys\n\nfor arg in sys.argv:\n    print(arg.upper())\n")]


def test_suffix_gain_is_zero_for_a_model_that_cannot_see_the_suffix(small_tokenizer):
    torch.manual_seed(0)
    scorer = InfillScorer(small_tokenizer, single_line_examples(SUFFIX_FILES, 6, seed=2), max_prompt_tokens=128)
    assert len({ex.suffix for ex in scorer.examples}) > 1  # the swap changes something
    assert scorer.suffix_gain(_Bigram(small_tokenizer.vocab_size), torch.device("cpu")) == pytest.approx(0, abs=1e-9)
    cfg = ModelConfig.from_dict({**preset("tiny-gemma").to_dict(), "vocab_size": small_tokenizer.vocab_size})
    model = Gemma(cfg).eval()
    model.init_weights(std=0.5)  # large weights: attention that varies with what it sees
    true_sum, count = scorer.middle_loss(model, torch.device("cpu"))
    gain = scorer.suffix_gain(model, torch.device("cpu"))
    assert gain != 0 and scorer.suffix_gain(model, torch.device("cpu"), (true_sum, count)) == gain
    n = len(scorer.examples)
    swapped = [type(ex)(ex.path, ex.prefix, ex.middle, scorer.examples[(i + 1) % n].suffix)
               for i, ex in enumerate(scorer.examples)]
    assert gain == pytest.approx((scorer.middle_loss(model, torch.device("cpu"), swapped)[0] - true_sum) / count)


class _Copier(torch.nn.Module):
    """Predicts the token that followed the last earlier occurrence of the current one: induction."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, ids):
        logits = torch.zeros(*ids.shape, self.vocab_size)
        for b, row in enumerate(ids.tolist()):
            seen = {}
            for t, token in enumerate(row):
                if token in seen:
                    logits[b, t, row[seen[token] + 1]] = 30.0
                seen[token] = t
        return logits


def test_copy_gain_tells_a_copying_model_from_one_that_cannot_copy(small_tokenizer):
    probe = CopyProbe(small_tokenizer, SUFFIX_FILES, spans=4, span=12)
    assert len(probe.rows) == 4 and all(len(r) == 12 for r in probe.rows)
    assert probe.rows == CopyProbe(small_tokenizer, SUFFIX_FILES, spans=4, span=12).rows  # fixed seed
    cpu = torch.device("cpu")
    # a bigram model sees the same previous token for every target of both copies: exactly 0
    assert probe.copy_gain(_Bigram(small_tokenizer.vocab_size), cpu) == pytest.approx(0, abs=1e-6)
    assert probe.copy_gain(_Copier(small_tokenizer.vocab_size), cpu) > 5.0


def test_copy_probe_spans_shrink_to_short_files_and_need_two_tokens(small_tokenizer):
    assert CopyProbe(small_tokenizer, [("a.py", "x = 1\n")], span=500).span == len(small_tokenizer.encode("x = 1\n"))
    with pytest.raises(CodegemmaError, match="too few tokens"):
        CopyProbe(small_tokenizer, [("a.py", "")])


def test_evaluator_reports_the_copy_gain(small_tokenizer, tmp_path):
    for path, text in SUFFIX_FILES:
        (tmp_path / path).write_text(text)
    scorers, probe = infill_scorers(small_tokenizer, tmp_path, 2, max_prompt_tokens=64, orders=["psm"])
    assert probe.span == min(31, len(small_tokenizer.encode("".join(t for _, t in sorted(SUFFIX_FILES)))))
    cfg = ModelConfig.from_dict({**preset("tiny-gemma").to_dict(), "vocab_size": small_tokenizer.vocab_size})
    model = Gemma(cfg).eval()
    model.init_weights()
    result = Evaluator(DistEnv(), None, 0, scorers, 4, probe)(model)
    assert set(result) == {"fim_middle_loss", "fim_first_token_loss", "fim_suffix_gain", "infill_exact_match",
                           "infill_edit_similarity", "infill_suffix_identifier_recall", "copy_gain"}
    assert math.isfinite(result["copy_gain"])
    firsts = [row[0] for row in scorers[0].middle_nlls(model, torch.device("cpu"))]
    assert result["fim_first_token_loss"] == pytest.approx(sum(firsts) / len(firsts), rel=1e-9)
    # the evaluator's suffix gain (summed over processes' shares) is the scorer's
    assert result["fim_suffix_gain"] == pytest.approx(scorers[0].suffix_gain(model, torch.device("cpu")), abs=1e-9)
    # left to right: the same lines, no suffix and so no suffix gain
    scorers, _ = infill_scorers(small_tokenizer, tmp_path, 2, max_prompt_tokens=64, orders=["psm", "l2r"])
    result = Evaluator(DistEnv(), None, 0, scorers, 4)(model)
    assert set(result) == {"fim_middle_loss", "fim_first_token_loss", "fim_suffix_gain", "infill_exact_match",
                           "infill_edit_similarity", "infill_suffix_identifier_recall", "fim_middle_loss_l2r",
                           "fim_first_token_loss_l2r", "infill_exact_match_l2r", "infill_edit_similarity_l2r",
                           "infill_suffix_identifier_recall_l2r"}
    assert scorers[0].examples == scorers[1].examples and math.isfinite(result["fim_middle_loss_l2r"])


def test_unigram_baseline(tmp_path):
    for split, rows in (("train", [[5, 5, 5, 6]] * 3), ("eval", [[5, 6, 5, 5]])):
        w = ShardWriter(tmp_path / split, 4)
        for r in rows:
            w.add(r, [1, 1, 1, 1], [True] * 4)
        w.close()
    # train targets: 5, 5, 6 (x3) -> counts 6+1, 3+1 over a vocabulary of 8 (add-one)
    p5, p6 = 7 / 17, 4 / 17
    expected = -(math.log(p6) + 2 * math.log(p5)) / 3
    assert np.isclose(unigram_baseline(tmp_path / "train", tmp_path / "eval", 8), expected)


def test_read_files_keeps_source_files(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "notes.bin").write_bytes(b"\x00\x01")
    assert read_files(tmp_path) == [("a.py", "x = 1\n")]


def test_read_files_names_held_out_files_as_training_did(tmp_path):
    # a pipeline's held-out directory: one folder per repository; training's path lines are
    # relative to the repository, so the infilling prompts must be too
    (tmp_path / "repo-a1b2" / "pkg").mkdir(parents=True)
    (tmp_path / "repo-a1b2" / "pkg" / "m.py").write_text("y = 2\n")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "n.py").write_text("z = 3\n")
    assert [p for p, _ in read_files(tmp_path)] == ["other/n.py", "repo-a1b2/pkg/m.py"]
    (tmp_path / "repositories.json").write_text('["repo-a1b2"]\n')
    assert read_files(tmp_path) == [("other/n.py", "z = 3\n"), ("pkg/m.py", "y = 2\n")]
    (tmp_path / "repositories.json").write_text('{"repo-a1b2": 1')
    with pytest.raises(CodegemmaError, match="repositories.json: not a JSON list"):
        read_files(tmp_path)


def test_processes_of_a_ddp_run_share_the_infilling_examples():
    """Each DDP process scores every world_size-th example; an FSDP-sharded model (share off) and a
    single process score them all."""
    examples = list(range(7))
    assert Evaluator(DistEnv(rank=1, world_size=2), share_examples=True)._share(examples) == [1, 3, 5]
    assert Evaluator(DistEnv(rank=0, world_size=2), share_examples=True)._share(examples) == [0, 2, 4, 6]
    assert Evaluator(DistEnv(rank=1, world_size=2), share_examples=False)._share(examples) == examples
    assert Evaluator(DistEnv(), share_examples=True)._share(examples) == examples
