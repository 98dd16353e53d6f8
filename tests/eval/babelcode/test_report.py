import json

from codegemma.eval.babelcode.report import PUBLISHED, plot_table4, scores_from_samples, table4


def test_scores_group_samples_by_language(tmp_path):
    records = [("cpp/HumanEval/0", True, "passed", ""), ("cpp/HumanEval/1", False, "error", "compile error: x"),
               ("go/HumanEval/0", False, "error", "runtime error: panic"), ("go/HumanEval/1", True, "passed", "")]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps({"task_id": t, "sample": 0, "passed": p, "status": s, "error": e}) + "\n"
                            for t, p, s, e in records) + '{"task_id": "cut sh')
    rows = scores_from_samples(path)
    assert rows["cpp"]["pass@1"] == 50.0 and rows["cpp"]["problems"] == 2
    assert rows["cpp"]["statuses"] == {"passed": 1, "compile_error": 1}
    assert rows["go"]["statuses"] == {"runtime_error": 1, "passed": 1}


def test_table_has_published_and_own_columns_and_chart_is_written(tmp_path):
    results = {"humaneval": {"cpp": {"pass@1": 12.5, "problems": 8}}, "mbpp": {}}
    md = table4(results, "tiny")
    lines = md.splitlines()
    assert lines[0].startswith("| Lang | HE 2B |") and "HE tiny" in lines[0] and "MBPP tiny" in lines[0]
    cpp = next(line for line in lines if line.startswith("| C/C++"))
    assert "24.2" in cpp and "12.5 (n=8)" in cpp and "47.1" in cpp
    assert len(lines) == 2 + len(PUBLISHED["humaneval"])
    png = plot_table4(results, "tiny", tmp_path / "chart.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_chart_draws_no_bar_for_a_language_that_was_not_run(tmp_path, monkeypatch):
    import matplotlib.axes

    drawn = []
    original = matplotlib.axes.Axes.bar

    def recording_bar(self, x, height, *args, **kwargs):
        drawn.append((kwargs.get("label"), list(height)))
        return original(self, x, height, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "bar", recording_bar)
    plot_table4({"humaneval": {"cpp": {"pass@1": 12.5, "problems": 8}}}, "tiny", tmp_path / "chart.png")
    ours = [heights for label, heights in drawn if label == "tiny (this run)"]
    assert ours == [[12.5]]  # C++ only: the seven languages not run are not drawn as zeros
    assert all(len(heights) == len(PUBLISHED["humaneval"]) for label, heights in drawn if "published" in label)
