import json

import pytest

from codegemma.cli import main
from codegemma.eval.runner import GenerationSettings, prompt_text, run_eval
from codegemma.eval.task import get_task

from .fakes import FakeProfile, fake_generator


def test_validate_only_checks_canonical_and_wrong(capsys):
    assert main(["eval", "humaneval", "--validate-only", "--limit", "3", "--workers", "2"]) == 0
    assert "3/3 canonical solutions pass, 0/3 wrong ones pass" in capsys.readouterr().out


def test_missing_data_file_is_one_line_error(tmp_path, capsys):
    code = main(["eval", "mbpp", "--validate-only", "--data", str(tmp_path / "missing.jsonl")])
    err = capsys.readouterr().err
    assert code == 1 and "not found" in err and "Traceback" not in err


@pytest.mark.slow  # renders a matplotlib chart
def test_eval_report_combines_runs_into_markdown_json_and_png(tmp_path, capsys):
    task = get_task("humaneval")
    answers = {prompt_text(task.prompt(p, FakeProfile())): (task.canonical(p) if i else task.wrong(p))
               for i, p in enumerate(task.problems(4))}
    generator, _ = fake_generator(answers)
    run_dir = tmp_path / "run"
    run_eval(task, generator, GenerationSettings(), run_dir, limit=4, progress=False)
    out = tmp_path / "report"
    assert main(["eval-report", str(run_dir), "--out", str(out), "--command", "codegemma eval humaneval"]) == 0
    md = (out / "results.md").read_text()
    assert "| **fake** | 75.0 | – | this run |" in md
    assert "| CodeGemma 2B-PT | 31.1 | 43.6 | paper |" in md and "codegemma eval humaneval" in md
    data = json.loads((out / "results.json").read_text())
    assert data["runs"]["fake"]["humaneval"]["pass@1"] == 0.75
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_report_on_a_directory_without_summary_fails_clearly(tmp_path, capsys):
    assert main(["eval-report", str(tmp_path), "--out", str(tmp_path / "r")]) == 1
    assert "summary.json not found" in capsys.readouterr().err
