"""Reports laid out like the CodeGemma paper's Table 2 (infilling), Table 3 (Python pass@1) and
Table 4 (BabelCode pass@1 per language), with the published numbers beside this run's: Markdown,
JSON and PNG bar charts (Table 4's are drawn by codegemma.eval.babelcode.report, one per model).

    write_report(summaries, out_dir, command="codegemma eval humaneval")
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Sequence

from codegemma.errors import CodegemmaError

# CodeGemma report (arXiv 2406.11409) Table 3: pass@1 in percent.
PAPER_TABLE3 = {
    "CodeGemma 2B-PT": {"humaneval": 31.1, "mbpp": 43.6},
    "CodeGemma 2B-PT 1.1": {"humaneval": 37.8, "mbpp": 49.2},
    "Gemma 2B PT": {"humaneval": 22.0, "mbpp": 29.2},
    "CodeGemma 7B-PT": {"humaneval": 44.5, "mbpp": 56.2},
    "CodeGemma 7B-IT": {"humaneval": 56.1, "mbpp": 54.2},
    "CodeGemma 7B-IT 1.1": {"humaneval": 60.4, "mbpp": 55.2},
    "Gemma 7B PT": {"humaneval": 32.3, "mbpp": 44.4},
}

# Table 2: HumanEval infilling pass rate in percent and total seconds for 128-token continuations
# (HF Transformers, bf16, batch size 1, g2-standard-4). The paper gives no sizes for the baselines
# inside each class, so they are labelled by class.
PAPER_TABLE2 = {
    "CodeGemma 2B": {"single-line": 78.41, "multi-line": 51.44, "time single (s)": 543, "time multi (s)": 8479},
    "CodeGemma 2B 1.1": {"single-line": 79.28, "multi-line": 50.99, "time single (s)": 771, "time multi (s)": 9372},
    "DeepSeek Coder (2B class)": {"single-line": 79.96, "multi-line": 50.95, "time single (s)": 990,
                            "time multi (s)": 13138},
    "StarCoder2 (2B class)": {"single-line": 77.44, "multi-line": 47.65, "time single (s)": 3665, "time multi (s)": 20629},
    "CodeGemma 7B": {"single-line": 76.09, "multi-line": 58.44, "time single (s)": 1505, "time multi (s)": 22896},
    "CodeGemma 7B-IT": {"single-line": 68.25, "multi-line": 20.05, "time single (s)": 8330,
                        "time multi (s)": 49438},
    "CodeGemma 7B-IT 1.1": {"single-line": 77.44, "multi-line": 23.66, "time single (s)": 7579,
                            "time multi (s)": 46888},
    "DeepSeek Coder (7B class)": {"single-line": 85.87, "multi-line": 63.20, "time single (s)": 1559,
                            "time multi (s)": 22387},
}

TABLE3_TASKS = {"humaneval": "HumanEval", "mbpp": "MBPP"}
TABLE2_TASKS = {"humaneval-infill-single-line": "single-line", "humaneval-infill-multi-line": "multi-line"}
OTHER_INFILL = {"humaneval-infill-random-span": "random-span", "humaneval-infill-random-span-light": "random-span-light"}


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


# what `build` reads from each runner summary.json, and the JSON type each must have
SUMMARY_FIELDS = {"model": str, "task": str, "scores": dict, "problems": int, "n": int, "temperature": (int, float)}


def check_summary(summary, where) -> dict:
    """`summary` if it is a runner summary `build` can read; else an error naming `where` and the field."""
    if not isinstance(summary, dict):
        raise CodegemmaError(f"{where}: expected a JSON object (an eval run's summary), got {type(summary).__name__}")
    for key, kind in SUMMARY_FIELDS.items():
        if key not in summary:
            raise CodegemmaError(f"{where}: no {key!r} field: is this an eval run's summary?")
        if not isinstance(summary[key], kind) or isinstance(summary[key], bool):
            raise CodegemmaError(f"{where}: {key!r} has the wrong type ({type(summary[key]).__name__})")
    if summary.get("by_language") and not isinstance(summary.get("dataset"), str):
        raise CodegemmaError(f"{where}: 'by_language' without a 'dataset' field")
    return summary


def build(summaries: Sequence[dict]) -> dict:
    """This run's rows: model -> task -> pass@1 (fraction) plus timing, from runner summaries; and
    for multilingual runs, model -> dataset -> language -> pass@1 (percent, as Table 4 prints it).

    A model's BabelCode languages may come from one combined run or from several per-language runs;
    they are merged, and a language measured twice is an error rather than a silent choice."""
    runs: dict[str, dict] = {}
    table4: dict[str, dict[str, dict]] = {}
    for s in summaries:
        row = runs.setdefault(s["model"], {})
        row[s["task"]] = {"pass@1": s["scores"].get("pass@1"), "scores": s["scores"], "problems": s["problems"],
                          "n": s["n"], "temperature": s["temperature"], "generate_seconds": s.get("generate_seconds"),
                          "statuses": s.get("statuses", {})}
        if s.get("by_language"):
            dataset = table4.setdefault(s["model"], {}).setdefault(s["dataset"], {})
            for language, scores in s["by_language"].items():
                if language in dataset:
                    raise CodegemmaError(f"{s['model']}: BabelCode {s['dataset']} {language} appears in two runs "
                                         f"(the second is {s['task']}); pass each run directory once")
                dataset[language] = scores
    from codegemma.eval.babelcode.report import PUBLISHED, PUBLISHED_COLUMNS

    return {"runs": runs, "table4": table4, "paper_table3": PAPER_TABLE3, "paper_table2": PAPER_TABLE2,
            "paper_table4": {"columns": PUBLISHED_COLUMNS, "pass@1": PUBLISHED}}


def markdown(report: dict, command: str | None = None, notes: Sequence[str] = ()) -> str:
    runs = report["runs"]
    lines = ["# Evaluation results", ""]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    lines += list(notes) + ([""] if notes else [])
    if any(t in row for row in runs.values() for t in TABLE3_TASKS):
        lines += ["## Python pass@1 (paper Table 3)", "", "| Model | HumanEval | MBPP | source |", "|---|---|---|---|"]
        for model, row in runs.items():
            cells = [_pct(row[t]["pass@1"]) if t in row else "–" for t in TABLE3_TASKS]
            lines.append(f"| **{model}** | {' | '.join(cells)} | this run |")
        for model, row in PAPER_TABLE3.items():
            lines.append(f"| {model} | {row['humaneval']:.1f} | {row['mbpp']:.1f} | paper |")
        lines.append("")
    if any(t in row for row in runs.values() for t in (*TABLE2_TASKS, *OTHER_INFILL)):
        lines += ["## HumanEval infilling (paper Table 2)", "",
                  "| Model | Time single (s) | Time multi (s) | Single-line | Multi-line | source |",
                  "|---|---|---|---|---|---|"]
        for model, row in runs.items():
            single, multi = row.get("humaneval-infill-single-line"), row.get("humaneval-infill-multi-line")
            time_cell = lambda r: "–" if r is None or r.get("generate_seconds") is None else f"{r['generate_seconds']:.0f}"  # noqa: E731
            lines.append(f"| **{model}** | {time_cell(single)} | {time_cell(multi)} | "
                         f"{_pct(single and single['pass@1'])} | {_pct(multi and multi['pass@1'])} | this run |")
        for model, row in PAPER_TABLE2.items():
            lines.append(f"| {model} | {row['time single (s)']} | {row['time multi (s)']} | {row['single-line']:.2f} "
                         f"| {row['multi-line']:.2f} | paper |")
        lines.append("")
    if report.get("table4"):
        from codegemma.eval.babelcode.report import table4

        lines += ["## BabelCode pass@1 per language (paper Table 4)", "",
                  "Published CodeGemma columns, then this run's pass@1 (%) with the number of problems kept "
                  "in that language.", ""]
        for model, results in report["table4"].items():
            if len(report["table4"]) > 1:
                lines += [f"### {model}", ""]
            lines += [table4(results, model).rstrip("\n"), ""]
    lines += ["## Details of this run", "", "| Model | Task | Problems | n | T | Scores | Statuses | Generation (s) |",
              "|---|---|---|---|---|---|---|---|"]
    for model, row in runs.items():
        for task, r in row.items():
            scores = ", ".join(f"{k} {v:.3f}" for k, v in r["scores"].items())
            statuses = ", ".join(f"{k} {v}" for k, v in sorted(r["statuses"].items()))
            gen = "–" if r.get("generate_seconds") is None else f"{r['generate_seconds']:.0f}"
            lines.append(f"| {model} | {task} | {r['problems']} | {r['n']} | {r['temperature']} | {scores} | "
                         f"{statuses} | {gen} |")
    return "\n".join(lines) + "\n"


def chart(report: dict, path: Path) -> bool:
    """Horizontal bars: the paper's pass@1 for each model beside this run's, one panel per table
    (Tables 2 and 3); False when there is nothing of theirs to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    panels = []
    for task, label in TABLE3_TASKS.items():
        ours = {m: 100 * r[task]["pass@1"] for m, r in runs.items() if task in r and r[task]["pass@1"] is not None}
        if ours:
            panels.append((f"{label} pass@1 (%)", ours, {m: v[task] for m, v in PAPER_TABLE3.items()}))
    for task, label in TABLE2_TASKS.items():
        ours = {m: 100 * r[task]["pass@1"] for m, r in runs.items() if task in r and r[task]["pass@1"] is not None}
        if ours:
            panels.append((f"Infilling {label} pass (%)", ours, {m: v[label] for m, v in PAPER_TABLE2.items()}))
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (title, ours, paper) in zip(axes[0], panels):
        names = [f"{m} (this run)" for m in ours] + list(paper)
        values = list(ours.values()) + list(paper.values())
        colors = ["tab:orange"] * len(ours) + ["tab:blue"] * len(paper)
        ax.barh(names[::-1], values[::-1], color=colors[::-1])
        for y, v in enumerate(values[::-1]):
            ax.text(v + 0.5, y, f"{v:.1f}", va="center", fontsize=8)
        ax.set_title(title)
        ax.set_xlim(0, 100)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return True


def table4_chart_paths(report: dict, out: Path, stem: str) -> dict[str, Path]:
    """Where each model's Table 4 chart goes: <stem>-table4.png, or one file per model when several."""
    models = list(report.get("table4", {}))
    if len(models) == 1:
        return {models[0]: out / f"{stem}-table4.png"}
    return {m: out / f"{stem}-table4-{_slug(m)}.png" for m in models}


def _slug(name: str) -> str:
    return re.sub(r"[^\w.-]+", "-", name).strip("-")


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_report(summaries: Sequence[dict], out_dir: str | os.PathLike, command: str | None = None,
                 notes: Sequence[str] = (), stem: str = "results") -> dict[str, Path]:
    """Write <stem>.md, <stem>.json, <stem>.png (Tables 2 and 3) and <stem>-table4*.png (BabelCode)
    into out_dir; returns the paths written, keyed md, json, png, table4_png[:<model>]."""
    if not stem or Path(stem).name != stem or stem in (".", ".."):
        raise CodegemmaError(f"--stem {stem!r}: give a file name without a folder (the files go into {out_dir})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = build(summaries)
    paths = {"md": out / f"{stem}.md", "json": out / f"{stem}.json", "png": out / f"{stem}.png"}
    _atomic_text(paths["md"], markdown(report, command, notes))
    _atomic_text(paths["json"], json.dumps({"command": command, "summaries": list(summaries), **report}, indent=2,
                                           ensure_ascii=False) + "\n")
    if not chart(report, paths["png"]):
        del paths["png"]
    table4_paths = table4_chart_paths(report, out, stem)
    if table4_paths:
        from codegemma.eval.babelcode.report import plot_table4

        for model, path in table4_paths.items():
            plot_table4(report["table4"][model], model, path)
            paths["table4_png" if len(table4_paths) == 1 else f"table4_png:{model}"] = path
    return paths
