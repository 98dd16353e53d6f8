import pytest

from codegemma.errors import CodegemmaError
from codegemma.eval.infilling import FILES
from codegemma.eval.runner import validate
from codegemma.eval.task import ModelCannotInfill, get_task

from .fakes import FakeProfile

SIZES = {"single-line": 1033, "multi-line": 5815, "random-span": 1640, "random-span-light": 164}


@pytest.mark.parametrize("variant", list(FILES))
def test_official_files_load_with_their_published_sizes(variant, infilling_dir):
    task = get_task(f"humaneval-infill-{variant}", data_path=infilling_dir)
    assert len(task.problems()) == SIZES[variant]


def test_prompt_is_the_profiles_psm_fim_prompt(infilling_dir):
    task = get_task("humaneval-infill-multi-line", data_path=infilling_dir)
    p = task.problems(1)[0]
    pieces = task.prompt(p, FakeProfile())
    assert pieces == ["<|fim_prefix|>", p.data["prompt"], "<|fim_suffix|>", p.data["suffix"], "<|fim_middle|>"]
    spm = get_task("humaneval-infill-multi-line", data_path=infilling_dir, fim_order="spm")
    assert spm.prompt(p, FakeProfile())[1] == "<|fim_suffix|>"


def test_non_fim_model_is_refused_clearly(infilling_dir):
    task = get_task("humaneval-infill-single-line", data_path=infilling_dir)
    with pytest.raises(ModelCannotInfill, match="gemma3"):
        task.prompt(task.problems(1)[0], FakeProfile(name="gemma3", fim_supported=False, sentinels=None))


def test_left_to_right_prompt_is_the_prefix_for_any_model(infilling_dir):
    task = get_task("humaneval-infill-single-line", data_path=infilling_dir, fim_order="l2r")
    p = task.problems(1)[0]
    assert task.prompt(p, FakeProfile(name="gemma3", fim_supported=False, sentinels=None)) == p.data["prompt"]
    with pytest.raises(CodegemmaError, match="single-line"):
        get_task("humaneval-infill-multi-line", data_path=infilling_dir, fim_order="l2r")


def _words(text: str) -> int:
    return len(text.split())


@pytest.mark.parametrize("order", ["psm", "spm", "l2r"])
def test_prompt_budget_keeps_the_text_next_to_the_hole_whole_lines_within_the_budget(infilling_dir, order):
    task = get_task("humaneval-infill-single-line", data_path=infilling_dir, fim_order=order, max_prompt_tokens=40)
    task.count_tokens = _words  # a stand-in tokenizer: one token per word
    long = max(task.problems(), key=lambda p: _words(p.data["prompt"] + p.data["suffix"]))
    prompt = task.prompt(long, FakeProfile())
    if order == "l2r":
        prefix, suffix = prompt, ""
    else:
        prefix, suffix = (prompt[1], prompt[3]) if order == "psm" else (prompt[4], prompt[2])
    assert long.data["prompt"].endswith(prefix) and long.data["suffix"].startswith(suffix)
    assert 0 < _words(prefix) and _words(prefix) + _words(suffix) <= 40 - 1 - (0 if order == "l2r" else 3)
    assert prefix == long.data["prompt"] or long.data["prompt"][-len(prefix) - 1] == "\n"  # cut at a line start
    short = min(task.problems(), key=lambda p: _words(p.data["prompt"] + p.data["suffix"]))
    assert _words(short.data["prompt"] + short.data["suffix"]) < 36  # fits: left as it is
    assert (task.prompt(short, FakeProfile()) == short.data["prompt"] if order == "l2r"
            else short.data["prompt"] in task.prompt(short, FakeProfile()))
    unbound = get_task("humaneval-infill-single-line", data_path=infilling_dir, max_prompt_tokens=40)
    with pytest.raises(CodegemmaError, match="tokenizer"):
        unbound.prompt(long, FakeProfile())


def test_single_line_completion_keeps_one_line(infilling_dir):
    task = get_task("humaneval-infill-single-line", data_path=infilling_dir)
    p = task.problems(1)[0]
    assert task.postprocess(p, "        x = 1\n        y = 2\n") == "        x = 1\n"
    assert task.postprocess(p, "        x = 1") == "        x = 1\n"


def test_wrong_middles_fail_where_upstream_would_pass_everything(infilling_dir):
    for variant in FILES:
        task = get_task(f"humaneval-infill-{variant}", data_path=infilling_dir)
        report = validate(task, task.problems(3), workers=2)
        assert report["canonical_passed"] == 3 and report["wrong_passed"] == [], variant


@pytest.mark.slow
@pytest.mark.parametrize("variant", [pytest.param(v, marks=pytest.mark.exhaustive) if v == "multi-line" else v
                                     for v in FILES])
def test_all_canonical_middles_pass(variant, infilling_dir):
    task = get_task(f"humaneval-infill-{variant}", data_path=infilling_dir)
    report = validate(task, task.problems(), workers=4)
    assert report["canonical_failed"] == [] and report["wrong_passed"] == []
    assert report["canonical_passed"] == SIZES[variant]
