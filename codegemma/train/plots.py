"""PNG plots of a run's curves from its metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from codegemma.errors import CodegemmaError  # noqa: E402
from codegemma.train import metrics  # noqa: E402

_PANELS = [("loss", "loss"), ("lr", "learning rate"), ("grad_norm", "gradient norm"), ("tokens_per_s", "tokens/s")]
_CONTEXT_USE = ("copy_gain", "fim_suffix_gain", "fim_suffix_gain_spm")  # nats/token the context saves
_LINE_SCORES = ("infill_exact_match", "infill_exact_match_spm", "infill_edit_similarity",
                "infill_edit_similarity_spm")


def plot_run(metrics_path: str | Path, out_path: str | Path, title: str = "") -> Path:
    """Four panels (loss with eval points, LR, gradient norm, throughput) in one PNG, and two more
    when the run scored infilling: what the model takes from its context (copy and suffix gains)
    and the single-line infilling scores (exact match, edit similarity)."""
    train = metrics.read(metrics_path, "train")
    evals = metrics.read(metrics_path, "eval")
    infill = any(k in r for r in evals for k in _CONTEXT_USE + _LINE_SCORES)
    fig, axes = plt.subplots(2, 3 if infill else 2, figsize=(15 if infill else 10, 7))
    panels = list(axes.flat)
    for ax, (key, label) in zip(panels, _PANELS):
        pts = [(r["step"], r[key]) for r in train if key in r]
        if pts:
            ax.plot(*zip(*pts), label="train", linewidth=1)
        if key == "loss":
            _plot_evals(ax, evals, ("loss", "fim_middle_loss"))
        _label(ax, label)
    if infill:
        for ax, keys, label in ((panels[4], _CONTEXT_USE, "gain from context (nats/token)"),
                                (panels[5], _LINE_SCORES, "single-line infilling")):
            _plot_evals(ax, evals, keys)
            _label(ax, label)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save(fig, out_path)


def _label(ax, ylabel: str):
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def _plot_evals(ax, evals: list[dict], keys: tuple[str, ...]):
    for key in keys:
        pts = [(r["step"], r[key]) for r in evals if key in r]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=f"eval {key}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def plot_runs(metrics_paths: list[Path], labels: list[str], out_path: str | Path, title: str = "") -> Path:
    """Several runs on shared axes: training loss (left) and held-out evaluation losses (right)."""
    fig, (train_ax, eval_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
    for path, label in zip(metrics_paths, labels):
        train = [(r["step"], r["loss"]) for r in metrics.read(path, "train") if "loss" in r]
        if train:
            train_ax.plot(*zip(*train), label=label, linewidth=1)
        evals = metrics.read(path, "eval")
        for key, style in (("loss", "o-"), ("fim_middle_loss", "s--")):
            pts = [(r["step"], r[key]) for r in evals if key in r]
            if pts:
                eval_ax.plot(*zip(*pts), style, label=f"{label}: {key}")
    for ax, name in ((train_ax, "training loss"), (eval_ax, "held-out loss")):
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save(fig, out_path)


def save(fig, out_path: str | Path) -> Path:
    """Write a figure atomically (temporary name, then rename) and close it."""
    out_path = Path(out_path)
    # matplotlib picks the format from the file name, and the temporary one ends in .png: without
    # naming it, `--out curves.pdf` or `.svg` got a PNG under that name. Other names get PNG.
    kind = out_path.suffix[1:].lower()
    kind = kind if kind in fig.canvas.get_supported_filetypes() else "png"
    tmp = out_path.with_name(f".{out_path.name}.tmp.{kind}")
    try:
        if out_path.is_dir():
            raise CodegemmaError(f"{out_path} is a directory: name a .png file to write")
        out_path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(tmp, dpi=110, format=kind)
        tmp.replace(out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return out_path
