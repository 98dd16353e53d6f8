"""Table 4 of the CodeGemma report (BabelCode HumanEval and MBPP pass@1 per language), with the
published CodeGemma numbers beside this run's, and a bar chart.

    rows = scores_from_samples(path_to_samples_jsonl)        # {language: {"pass@1": .., "problems": ..}}
    rows = scores_from_records(records)                      # the same from records already read
    markdown = table4({"humaneval": he_rows, "mbpp": mbpp_rows}, model="gemma3-270m")
    plot_table4(..., "docs/results/babelcode.png")
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from codegemma.eval.babelcode.languages import LANGUAGES
from codegemma.eval.metrics import pass_at_k

# CodeGemma report (arXiv 2406.11409) Table 4, pass@1 in percent; columns as published.
PUBLISHED_COLUMNS = ("2B", "2B 1.1", "7B", "7B-IT", "7B-IT 1.1")
PUBLISHED = {
    "humaneval": {"cpp": (24.2, 19.9, 32.9, 42.2, 46.6), "csharp": (10.6, 26.1, 22.4, 26.7, 54.7),
                  "go": (20.5, 18.0, 21.7, 28.6, 34.2), "java": (29.2, 29.8, 41.0, 48.4, 50.3),
                  "javascript": (21.7, 28.0, 39.8, 46.0, 48.4), "kotlin": (28.0, 32.3, 39.8, 51.6, 47.8),
                  "python": (21.7, 36.6, 42.2, 48.4, 54.0), "rust": (26.7, 24.2, 34.1, 36.0, 37.3)},
    "mbpp": {"cpp": (47.1, 38.9, 53.8, 56.7, 63.5), "csharp": (28.7, 45.3, 32.5, 41.2, 62.0),
             "go": (45.6, 38.9, 43.3, 46.2, 53.2), "java": (41.8, 49.7, 50.3, 57.3, 62.9),
             "javascript": (45.3, 45.0, 58.2, 61.4, 61.4), "kotlin": (46.8, 49.7, 54.7, 59.9, 62.6),
             "python": (38.6, 52.9, 59.1, 62.0, 60.2), "rust": (45.3, 47.4, 52.9, 53.5, 52.3)},
}
DATASET_LABELS = {"humaneval": "HE", "mbpp": "MBPP"}


def scores_from_samples(path: str | os.PathLike) -> dict[str, dict]:
    """Per-language pass@1 (and statuses) from a runner's samples.jsonl of a babelcode task."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by an interrupt
    return scores_from_records(records)


def scores_from_records(records: list[dict]) -> dict[str, dict]:
    """Per-language pass@1 in percent, problem count and statuses from sample records
    (`task_id` `<language>/<dataset id>`, `passed`, `status`, `error`)."""
    by_problem: dict[str, list[bool]] = {}
    statuses: dict[str, dict[str, int]] = {}
    for record in records:
        language = record["task_id"].split("/", 1)[0]
        by_problem.setdefault(record["task_id"], []).append(bool(record["passed"]))
        kind = record["status"] if record["status"] != "error" else \
            ("compile_error" if record.get("error", "").startswith("compile error") else "runtime_error")
        counts = statuses.setdefault(language, {})
        counts[kind] = counts.get(kind, 0) + 1
    rows: dict[str, dict] = {}
    for language in statuses:
        mine = {k: v for k, v in by_problem.items() if k.startswith(language + "/")}
        rows[language] = {"pass@1": 100.0 * pass_at_k(mine, ks=(1,))["pass@1"], "problems": len(mine),
                          "statuses": statuses[language]}
    return rows


def table4(results: dict[str, dict[str, dict]], model: str, kept: dict[str, dict[str, int]] | None = None) -> str:
    """Markdown in Table 4's layout: one row per language, published columns then this run's."""
    datasets = [d for d in ("humaneval", "mbpp") if d in results]
    head = ["Lang"]
    for d in datasets:
        head += [f"{DATASET_LABELS[d]} {c}" for c in PUBLISHED_COLUMNS] + [f"{DATASET_LABELS[d]} {model}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, lang in LANGUAGES.items():
        cells = [lang.display]
        for d in datasets:
            cells += [f"{v:.1f}" for v in PUBLISHED[d][name]]
            row = results[d].get(name)
            if row is None:
                cells.append("–")
            else:
                n = (kept or {}).get(d, {}).get(name, row["problems"])
                cells.append(f"{row['pass@1']:.1f} (n={n})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_table4(results: dict[str, dict[str, dict]], model: str, out: str | os.PathLike,
                published_columns: tuple[str, ...] = ("2B", "7B")) -> Path:
    """Grouped bars per language: published CodeGemma columns and this run, one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = [d for d in ("humaneval", "mbpp") if d in results]
    names = list(LANGUAGES)
    fig, axes = plt.subplots(1, len(datasets), figsize=(7 * len(datasets), 4), squeeze=False)
    width = 0.8 / (len(published_columns) + 1)
    for ax, d in zip(axes[0], datasets):
        bars = [(f"CodeGemma {c} (published)", [PUBLISHED[d][n][PUBLISHED_COLUMNS.index(c)] for n in names])
                for c in published_columns]
        # a language this run did not evaluate gets no bar and a "not run" mark, never a 0 bar
        bars.append((f"{model} (this run)", [results[d].get(n, {}).get("pass@1") for n in names]))
        for i, (label, values) in enumerate(bars):
            ran = [(x, v) for x, v in enumerate(values) if v is not None]
            ax.bar([x + i * width for x, _ in ran], [v for _, v in ran], width, label=label)
        for x, v in enumerate(bars[-1][1]):
            if v is None:
                ax.text(x + width * len(published_columns), 0.5, "not run", rotation=90, ha="center",
                        va="bottom", fontsize=7, color="gray")
        ax.set_xticks([x + width * len(published_columns) / 2 for x in range(len(names))])
        ax.set_xticklabels([LANGUAGES[n].display for n in names], rotation=30)
        ax.set_ylabel("pass@1 (%)")
        ax.set_title(f"BabelCode {DATASET_LABELS[d]}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, out)
    return out
