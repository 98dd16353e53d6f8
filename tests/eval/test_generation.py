import pytest

from codegemma.eval.runner import GenerationSettings, run_eval
from codegemma.eval.task import ModelCannotInfill, get_task


@pytest.fixture(scope="module")
def default_generator():
    from codegemma.eval.generation import model_generator

    return model_generator(None)


@pytest.mark.slow
@pytest.mark.real_weights
def test_default_model_prompts_follow_its_profile(default_generator):
    profile = default_generator.profile
    task = get_task("humaneval")
    problem = task.problems(1)[0]
    ids = default_generator.encode(task.prompt(problem, profile))
    assert ids[0] == profile.bos_id and ids.count(profile.bos_id) == 1
    texts = default_generator.generate([ids], GenerationSettings(max_new_tokens=8, stop_strings=("\ndef ",)))
    assert len(texts) == 1 and isinstance(texts[0], str)


@pytest.mark.slow
@pytest.mark.real_weights
def test_default_model_runs_end_to_end_and_cannot_infill(default_generator, tmp_path, infilling_dir):
    summary = run_eval(get_task("humaneval"), default_generator, GenerationSettings(max_new_tokens=24), tmp_path,
                       limit=1, progress=False)
    assert summary["samples"] == 1 and 0.0 <= summary["scores"]["pass@1"] <= 1.0
    with pytest.raises(ModelCannotInfill):
        run_eval(get_task("humaneval-infill-single-line", data_path=infilling_dir), default_generator,
                 GenerationSettings(), tmp_path / "infill", limit=1, progress=False)


@pytest.mark.slow
@pytest.mark.real_weights
def test_left_to_right_infilling_within_a_prompt_budget_runs_end_to_end(default_generator, tmp_path, infilling_dir,
                                                                      capsys):
    """A model without FIM takes the left-to-right single-line task, its prompts trimmed to the budget
    by its own tokenizer; the checks run the whole untrimmed program."""
    import json

    from codegemma.cli import main

    out = tmp_path / "run"
    assert main(["eval", "humaneval-infill-single-line", "--data", infilling_dir, "--fim-order", "l2r",
                 "--max-prompt-tokens", "48", "--max-new-tokens", "16", "--limit", "3", "--out", str(out),
                 "--no-progress"]) == 0
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    problems = get_task("humaneval-infill-single-line", data_path=infilling_dir).problems(3)
    assert len(samples) == 3
    for sample, problem in zip(samples, problems):
        assert default_generator.count_tokens(sample["prompt"]) <= 47
        assert problem.data["prompt"].endswith(sample["prompt"]) and sample["prompt"] != problem.data["prompt"]
    assert json.loads((out / "run.json").read_text())["generator"]["fim_order"] == "l2r"
    assert main(["eval", "humaneval", "--max-prompt-tokens", "48", "--validate-only"]) == 1
    assert "apply to the humaneval-infill tasks" in capsys.readouterr().err
