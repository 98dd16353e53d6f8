"""Small-scale answers to questions the CodeGemma report leaves open, each one command.

    codegemma train experiment fim-rate   # FIM rate 0 vs 0.5 vs 0.9 at equal tokens
    codegemma train experiment packing    # dependency-ordered multi-file packing vs random file order

Both use the demo corpus (the Python standard library, split by repository into train and held-out
parts by the data pipeline) and a small Gemma-architecture model trained from scratch, or every
variant from the same checkpoint (`--init`, e.g. the tiny-cpu recipe's pruned Gemma 3 270M). Every
variant sees the same number of tokens; results, curves and a summary go to `--out`
(docs/experiments/<name>/ by default), the runs to <root>/experiments/<name of --out>/.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from codegemma.errors import CodegemmaError


@dataclass
class Scale:
    """Model and budget shared by every variant of an experiment."""

    d_model: int = 192
    n_layers: int = 4
    n_heads: int = 3
    head_dim: int = 64
    d_ff: int = 576
    seq_len: int = 256
    batch_size: int = 8
    steps: int = 400
    lr: float = 3e-3
    init: str = ""  # start every variant from this checkpoint instead of a fresh model of the size above
    precision: str = "auto"  # the recipes' train.precision (bf16: bf16 products on a CPU)
    eval_every: int = 0  # steps between the runs' evaluations (0: four in a run)
    infill_examples: int = 64
    fim_chunk_chars: int = 0  # > 0: FIM per line-aligned piece of a file (see data.samples.FimConfig)
    seed: int = 0
    extra: dict = field(default_factory=dict)


def ensure_corpus(root: Path, max_mb: float = 12.0, vocab_size: int = 8192) -> tuple[Path, Path]:
    """The demo corpus and its tokenizer under `root` (built once, then reused)."""
    corpus, tokenizer = root / "corpus", root / "tokenizer" / "tokenizer.json"
    if not corpus.is_dir():
        from codegemma.data.demo_corpus import build_demo_corpus

        build_demo_corpus(corpus, max_mb)
    if not tokenizer.is_file():
        from codegemma.train import tokenizer_train

        texts = tokenizer_train.iter_files(corpus, (".py",))
        tokenizer_train.save(tokenizer_train.train(texts, vocab_size), tokenizer)
    return corpus, tokenizer


def demo_shards(root: Path, fim_rate: float, order: str = "codegemma", seq_len: int = 256, seed: int = 0,
                out: Path | None = None, fim_chunk_chars: int = 0, fim_suffix_line_rate: float = 0.0,
                fim_line_rate: float = 0.0, spm_rate: float = 0.5) -> Path:
    """Run the data pipeline over the demo corpus with one FIM rate and file order (cached by name);
    `fim_chunk_chars` > 0 makes each piece of that many characters of a file a FIM candidate, and
    `fim_suffix_line_rate` is the share of FIM examples whose suffix starts at a line start,
    `fim_line_rate` the share whose middle is whole lines, `spm_rate` the share in SPM order."""
    from codegemma.data.pipeline import build
    from codegemma.data.recipe import recipe_from_dict

    chunked = f"-chunk{fim_chunk_chars}" if fim_chunk_chars else ""
    chunked += f"-linesuffix{fim_suffix_line_rate:g}" if fim_suffix_line_rate else ""
    chunked += f"-lines{fim_line_rate:g}" if fim_line_rate else ""
    chunked += f"-spm{spm_rate:g}" if spm_rate != 0.5 else ""
    out = out or root / f"shards-fim{fim_rate:g}{chunked}-{order}-{seq_len}"
    settings = {"fim_rate": fim_rate, "fim_chunk_chars": fim_chunk_chars,
                "fim_suffix_line_rate": fim_suffix_line_rate, "fim_line_rate": fim_line_rate,
                "spm_rate": spm_rate, "file_order": order, "seq_len": seq_len,
                "fim_chunks_run_on": fim_chunk_chars > 0}
    if _built_with(out, settings):
        return out
    corpus, tokenizer = ensure_corpus(root)
    recipe = recipe_from_dict({
        "name": out.name, "out_dir": str(out), "tokenizer": str(tokenizer), "seed": seed, "seq_len": seq_len,
        "eval_fraction": 0.1, "workers": 1, "sources": [{"name": "stdlib", "path": str(corpus)}],
        "fim": {"rate": fim_rate, "spm_rate": spm_rate, "chunk_chars": fim_chunk_chars,
                "suffix_line_rate": fim_suffix_line_rate, "line_rate": fim_line_rate}, "packing": {"order": order},
    }, "demo data")
    build(recipe, progress=False)
    return out


def _built_with(out: Path, settings: dict) -> bool:
    """Whether `out` already holds demo shards built with `settings` (False: none there yet).
    Shards built otherwise are an error, not a silent reuse: a run would train on other data."""
    index = out / "train" / "index.json"
    if not index.is_file():
        return False
    meta = json.loads(index.read_text(encoding="utf-8")).get("meta", {})
    # shards from before these settings were recorded used 0 for the FIM piece options
    have = {k: meta.get(k, 0 if k.startswith("fim_") else None) for k in settings}
    if have != settings:
        differ = ", ".join(f"{k}={have[k]} (asked {settings[k]})" for k in settings if have[k] != settings[k])
        raise CodegemmaError(f"{out} holds demo shards built with {differ}; choose another --out or remove it")
    return True


def _recipe(name: str, out_dir: Path, tokenizer: Path, train: Path, scale: Scale, eval_every: int,
            infill_dir: Path | None):
    from codegemma.train import recipe as recipe_mod

    if scale.init:
        model = {"init": scale.init}
    else:
        model = {"preset": "tiny-gemma", "overrides": {
            "d_model": scale.d_model, "n_layers": scale.n_layers, "n_heads": scale.n_heads, "n_kv_heads": 1,
            "head_dim": scale.head_dim, "d_ff": scale.d_ff, "max_seq_len": scale.seq_len}}
    return recipe_mod.from_dict({
        "name": name, "out_dir": str(out_dir), "seed": scale.seed, "tokenizer": str(tokenizer), "model": model,
        "data": {"train": str(train), "seq_len": scale.seq_len},
        "optim": {"lr": scale.lr, "warmup_steps": max(1, scale.steps // 10)},
        "train": {"steps": scale.steps, "batch_size": scale.batch_size, "precision": scale.precision},
        # left to right (the prefix alone) scores the same lines without a suffix: the baseline
        "eval": {"every": eval_every, "infill_files": str(infill_dir) if infill_dir else "",
                 "infill_examples": scale.infill_examples, "infill_max_prompt_tokens": scale.seq_len - 32,
                 "infill_max_new_tokens": 32, "infill_orders": ["psm", "spm", "l2r"]},
        "log": {"every": 10, "tensorboard": False, "plots": True, "progress": False},
        "checkpoint": {"every": max(50, scale.steps // 4)},
    })


@torch.no_grad()
def segment_losses(model, shards: Path, file_separator: int, max_batches: int = 50, batch_size: int = 8) -> dict:
    """Held-out loss over all trained positions, and over positions after a file separator only
    (tokens of files that have other files of their repository before them in context)."""
    from codegemma.data.shards import ShardReader
    from codegemma.train import losses

    reader = ShardReader(shards, batch_size, shuffle=False)
    sums = {"all": 0.0, "later_files": 0.0}
    counts = {"all": 0, "later_files": 0}
    for _ in range(min(max_batches, reader.batches_per_epoch)):
        batch = next(reader)
        inputs, seg, targets, trained = losses.shift(batch)
        nll = losses.token_nll(model(inputs, segment_ids=seg), targets)
        # a target is "later" if a file separator occurs earlier in its own segment
        is_sep = (inputs == file_separator)
        seen_sep = torch.zeros_like(is_sep)
        for row in range(inputs.shape[0]):
            for s in seg[row].unique().tolist():
                where = seg[row] == s
                seen_sep[row, where] = torch.cumsum(is_sep[row, where].long(), 0) > 0
        later = trained & seen_sep
        sums["all"] += (nll * trained).sum().item()
        counts["all"] += int(trained.sum())
        sums["later_files"] += (nll * later).sum().item()
        counts["later_files"] += int(later.sum())
    return {f"{k}_loss": sums[k] / max(counts[k], 1) for k in sums} | {f"{k}_tokens": counts[k] for k in counts}


def _final_eval(run_dir: Path) -> dict:
    from codegemma.train import metrics

    evals = metrics.read(run_dir / "metrics.jsonl", "eval")
    return evals[-1] if evals else {}


def _load_final(run_dir: Path):
    from codegemma.checkpoints import load

    return load(str(run_dir / "final"), progress=False).model.eval()


def fim_rate(root: Path, out: Path, rates=(0.0, 0.5, 0.9), scale: Scale | None = None) -> dict:
    """FIM-for-free: does training on FIM-formatted data cost left-to-right quality at equal tokens,
    and what does it buy in infilling? Left-to-right loss is measured on the held-out repositories
    packed *without* FIM, identical for every variant."""
    from codegemma.train.run import run

    scale = scale or Scale()
    _, tokenizer = ensure_corpus(root)
    plain = demo_shards(root, 0.0, seq_len=scale.seq_len)
    results = {}
    for rate in rates:
        shards = demo_shards(root, rate, seq_len=scale.seq_len, fim_chunk_chars=scale.fim_chunk_chars)
        run_dir = root / "experiments" / out.name / f"fim{rate:g}"
        every = scale.eval_every or scale.steps // 4
        recipe = _recipe(f"fim{rate:g}", run_dir, tokenizer, shards / "train", scale, every, plain / "heldout")
        run(recipe)
        final = _final_eval(run_dir)
        from codegemma.tokenizer import Tokenizer

        sep = Tokenizer.from_file(tokenizer).special["file_separator"]
        l2r = segment_losses(_load_final(run_dir), plain / "eval", sep)
        results[f"{rate:g}"] = {"fim_rate": rate, "l2r_loss": l2r["all_loss"], "l2r_tokens": l2r["all_tokens"],
                                **{f"{key}{tag}": final.get(f"{key}{tag}") for tag in ("", "_spm", "_l2r")
                                   for key in ("fim_middle_loss", "fim_suffix_gain", "infill_exact_match",
                                               "infill_edit_similarity")},
                                "train_tokens": scale.steps * scale.batch_size * scale.seq_len}
    _write(out, "fim-rate", scale, results, _plot_fim, root / "experiments" / out.name)
    return results


def packing(root: Path, out: Path, orders=("codegemma", "random"), scale: Scale | None = None) -> dict:
    """Multi-file packing: train on repositories whose files are in dependency order vs random order,
    then measure the loss on held-out repositories' files given the files before them (dependency
    order, no FIM), where knowing how repositories are laid out should help."""
    from codegemma.tokenizer import Tokenizer
    from codegemma.train.run import run

    scale = scale or Scale(seq_len=1024, batch_size=2, steps=400)
    _, tokenizer = ensure_corpus(root)
    sep = Tokenizer.from_file(tokenizer).special["file_separator"]
    held_out = demo_shards(root, 0.0, "codegemma", scale.seq_len)
    results = {}
    for order in orders:
        shards = demo_shards(root, 0.0, order, scale.seq_len)
        run_dir = root / "experiments" / out.name / order
        recipe = _recipe(order, run_dir, tokenizer, shards / "train", scale, 0, None)
        run(recipe)
        losses = segment_losses(_load_final(run_dir), held_out / "eval", sep)
        results[order] = {"order": order, **losses, "train_tokens": scale.steps * scale.batch_size * scale.seq_len}
    _write(out, "packing", scale, results, _plot_packing, root / "experiments" / out.name)
    return results


def _write(out: Path, name: str, scale: Scale, results: dict, plot, runs: Path) -> None:
    """Results and plots go to `out` (docs); checkpoints and weights stay in the run directories."""
    from codegemma.train.plots import save

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"experiment": name, "scale": asdict(scale),
                                                  "results": results}, indent=1) + "\n")
    save(plot(runs, results), out / f"{name}.png")
    for run_dir in sorted(runs.iterdir()):
        if (run_dir / "metrics.jsonl").is_file():
            shutil.copy(run_dir / "metrics.jsonl", out / f"metrics-{run_dir.name}.jsonl")


def _curves(ax, runs: Path, key: str, kind: str = "train"):
    from codegemma.train import metrics

    for run_dir in sorted(runs.iterdir()):
        path = run_dir / "metrics.jsonl"
        if path.is_file():
            pts = [(r["step"], r[key]) for r in metrics.read(path, kind) if key in r]
            if pts:
                ax.plot(*zip(*pts), label=run_dir.name, marker="o" if kind == "eval" else None)
    ax.legend()
    ax.grid(alpha=0.3)
    ax.set_xlabel("step")


def _plot_fim(runs: Path, results: dict):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    _curves(axes[0], runs, "loss")
    axes[0].set_title("training loss (FIM-formatted data)")
    rates = list(results)
    panels = [("l2r_loss", "held-out left-to-right loss (no FIM)"), ("fim_middle_loss", "held-out FIM-middle loss"),
              ("infill_exact_match", "single-line infilling exact match")]
    width = 0.27
    for ax, (key, title) in zip(axes[1:], panels):
        orders = [("", "PSM"), ("_spm", "SPM"), ("_l2r", "left to right")] if key != "l2r_loss" else [("", None)]
        orders = [(tag, label) for tag, label in orders if any(results[r].get(key + tag) is not None for r in rates)]
        for i, (tag, label) in enumerate(orders):
            xs = [j + (i - (len(orders) - 1) / 2) * width for j in range(len(rates))]
            values = [results[r].get(key + tag) or 0.0 for r in rates]
            ax.bar(xs, values, width, label=label)
            for x, v in zip(xs, values):
                ax.annotate(f"{v:.3f}", (x, v), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(rates)), rates)
        if len(orders) > 1:
            ax.legend()
        ax.set_title(title)
        ax.set_xlabel("FIM rate")
    fig.tight_layout()
    return fig


def _plot_packing(runs: Path, results: dict):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    _curves(axes[0], runs, "loss")
    axes[0].set_title("training loss")
    orders = list(results)
    width = 0.35
    xs = range(len(orders))
    axes[1].bar([x - width / 2 for x in xs], [results[o]["all_loss"] for o in orders], width, label="all tokens")
    axes[1].bar([x + width / 2 for x in xs], [results[o]["later_files_loss"] for o in orders], width,
                label="files after the first")
    axes[1].set_xticks(list(xs), orders)
    axes[1].set_title("held-out repositories, dependency order")
    axes[1].legend()
    fig.tight_layout()
    return fig


def scale_from(args) -> Scale:
    scale = Scale() if args.experiment == "fim-rate" else Scale(seq_len=1024, batch_size=2)
    for key in ("steps", "batch_size", "seq_len", "d_model", "n_layers", "infill_examples", "fim_chunk_chars",
                "init", "lr", "precision", "eval_every"):
        value = getattr(args, key, None)
        if value is not None:
            setattr(scale, key, value)
    if scale.steps < 4:
        raise CodegemmaError("experiments need at least 4 steps")
    return scale
