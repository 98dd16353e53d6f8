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
