"""Small-scale answers to questions the CodeGemma report leaves open, each one command.

    codegemma train experiment fim-rate   # FIM rate 0 vs 0.5 vs 0.9 at equal tokens
    codegemma train experiment packing    # dependency-ordered multi-file packing vs random file order

FIM rate uses the demo corpus (the Python standard library), packing a corpus of small Python files
(`small_file_corpus`), each split by repository into train and held-out parts by the data pipeline
and tokenized with the demo corpus's tokenizer. Every variant is a small Gemma-architecture model
trained from scratch, or starts from the same checkpoint (`--init`, e.g. the tiny-cpu recipe's
pruned Gemma 3 270M). Every variant sees the same number of tokens; results, curves and a
summary go to `--out` (docs/experiments/<name>/ by default), the runs to
<root>/experiments/<name of --out>/.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from codegemma.errors import CodegemmaError, differences


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


def corpus_paths(root: Path) -> tuple[Path, Path]:
    """Where the demo corpus and its tokenizer live under `root`."""
    return root / "corpus", root / "tokenizer" / "tokenizer.json"


def ensure_corpus(root: Path, max_mb: float = 12.0, vocab_size: int = 8192) -> tuple[Path, Path]:
    """The demo corpus and its tokenizer under `root` (built once, then reused)."""
    corpus, tokenizer = corpus_paths(root)
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
                fim_line_rate: float = 0.0, fim_single_line_rate: float = 0.0, spm_rate: float = 0.5,
                corpus: Path | None = None, tokenizer: str | None = None,
                fim_sentinels_from: Sequence[str] = ()) -> Path:
    """Run the data pipeline over the demo corpus (or `corpus`, tokenized with the demo corpus's
    tokenizer, or `tokenizer` with `fim_sentinels_from` as its sentinels) with one FIM rate and file
    order (cached by name);
    `fim_chunk_chars` > 0 makes each piece of that many characters of a file a FIM candidate, and
    `fim_suffix_line_rate` is the share of FIM examples whose suffix starts at a line start,
    `fim_line_rate` the share whose middle is whole lines, `fim_single_line_rate` the share whose
    middle is one line, `spm_rate` the share in SPM order."""
    from codegemma.data.pipeline import build
    from codegemma.data.recipe import recipe_from_dict

    chunked = f"-chunk{fim_chunk_chars}" if fim_chunk_chars else ""
    chunked += f"-linesuffix{fim_suffix_line_rate:g}" if fim_suffix_line_rate else ""
    chunked += f"-lines{fim_line_rate:g}" if fim_line_rate else ""
    chunked += f"-single{fim_single_line_rate:g}" if fim_single_line_rate else ""
    chunked += f"-spm{spm_rate:g}" if spm_rate != 0.5 else ""
    corpus_tag = f"-{corpus.name}" if corpus else ""
    out = out or root / f"shards-fim{fim_rate:g}{chunked}-{order}-{seq_len}{corpus_tag}"
    settings = {"fim_rate": fim_rate, "fim_chunk_chars": fim_chunk_chars,
                "fim_suffix_line_rate": fim_suffix_line_rate, "fim_line_rate": fim_line_rate,
                "fim_single_line_rate": fim_single_line_rate, "spm_rate": spm_rate, "file_order": order,
                "seq_len": seq_len, "fim_chunks_run_on": fim_chunk_chars > 0}
    if tokenizer:  # recorded only when chosen, so that shards from before match
        settings |= {"tokenizer": tokenizer, "fim_sentinels_from": list(fim_sentinels_from)}
    if _built_with(out, settings):
        return out
    demo_corpus, demo_tokenizer = corpus_paths(root)
    source = {"name": corpus.name if corpus else "stdlib", "path": str(corpus or demo_corpus)}
    recipe = recipe_from_dict({  # checks the settings before the corpus is built
        "name": out.name, "out_dir": str(out), "tokenizer": tokenizer or str(demo_tokenizer),
        "fim_sentinels_from": list(fim_sentinels_from), "seed": seed, "seq_len": seq_len,
        "eval_fraction": 0.1, "workers": 1, "sources": [source],
        "fim": {"rate": fim_rate, "spm_rate": spm_rate, "chunk_chars": fim_chunk_chars,
                "suffix_line_rate": fim_suffix_line_rate, "line_rate": fim_line_rate,
                "single_line_rate": fim_single_line_rate}, "packing": {"order": order},
    }, "demo data")
    if tokenizer:  # a bad one is found now, not after the corpus is collected
        from codegemma.data.stages import recipe_encoder

        recipe_encoder(recipe)
    ensure_corpus(root)
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


def check_scale(scale: Scale, root: Path) -> None:
    """Refuse settings no variant can run with (a learning rate of 0, a context too short for the
    infilling prompts, a missing --init) before the corpus, its tokenizer and the shards are built,
    which takes minutes, and before the settings are recorded for the runs."""
    from codegemma.train.recipe import missing_inputs

    where = root / "experiments" / "check"  # placeholder paths: nothing is read or written
    recipe = _recipe("check", where, where, where, scale, scale.eval_every, where)
    missing = [item for item in missing_inputs(recipe) if item.startswith("model.init ")]
    if missing:
        raise CodegemmaError(f"--init {scale.init}: not found (a training checkpoint directory, HF directory "
                             "or GGUF file)")


@torch.no_grad()
def segment_losses(model, shards: Path, file_separator: int, max_batches: int = 50, batch_size: int = 8,
                   bos: int | None = None) -> dict:
    """Held-out loss over all trained positions, and over positions after a file separator only
    (tokens of files that have other files of their repository before them in context).

    With `bos`, the same later-file tokens are scored a second time with each file alone: every
    separator becomes <bos> and starts a document of its own, so a file's tokens are predicted from
    that file only, as a standalone sample would be. `later_files_alone_loss` minus
    `later_files_loss` is then what the files before them are worth to the model, and `per_file`
    holds each later file's (loss sum, tokens) in shard order, for paired comparisons of models."""
    from codegemma.data.shards import ShardReader
    from codegemma.train import losses

    reader = ShardReader(shards, batch_size, shuffle=False)
    sums = {"all": 0.0, "later_files": 0.0, "later_files_alone": 0.0}
    counts = dict.fromkeys(sums, 0)
    per_file = []
    for _ in range(min(max_batches, reader.batches_per_epoch)):
        batch = next(reader)
        inputs, seg, targets, trained = losses.shift(batch)
        nll = losses.token_nll(model(inputs, segment_ids=seg), targets)
        is_sep = inputs == file_separator
        file_index = files_within_segments(inputs, seg, file_separator)
        later = trained & (file_index > 0)
        sums["all"] += (nll * trained).sum().item()
        counts["all"] += int(trained.sum())
        sums["later_files"] += (nll * later).sum().item()
        counts["later_files"] += int(later.sum())
        if bos is None:
            continue
        alone_inputs = torch.where(is_sep, torch.full_like(inputs, bos), inputs)
        starts = torch.ones_like(is_sep)
        starts[:, 1:] = (seg[:, 1:] != seg[:, :-1]) | is_sep[:, 1:]
        alone_seg = torch.where(seg == 0, 0, torch.cumsum(starts.long(), 1))
        alone = losses.token_nll(model(alone_inputs, segment_ids=alone_seg), targets)
        sums["later_files_alone"] += (alone * later).sum().item()
        counts["later_files_alone"] += int(later.sum())
        for row in range(inputs.shape[0]):
            keys = torch.stack([seg[row], file_index[row]], 1)[later[row]]
            for key in torch.unique_consecutive(keys, dim=0):
                here = later[row] & (seg[row] == key[0]) & (file_index[row] == key[1])
                per_file.append((nll[row][here].sum().item(), alone[row][here].sum().item(), int(here.sum())))
    out = {f"{k}_loss": sums[k] / max(counts[k], 1) for k in sums} | {f"{k}_tokens": counts[k] for k in counts}
    if bos is None:
        for key in ("later_files_alone_loss", "later_files_alone_tokens"):
            out.pop(key)
    else:
        out["per_file"] = per_file
    return out


def paired_difference(a: list, b: list) -> dict:
    """Mean per-token loss difference of model b minus model a over the same files, from each
    file's (loss sum, tokens) under either model (each file weighted by its tokens), with a
    standard error from the spread between files."""
    import math

    if len(a) != len(b) or any(x[1] != y[1] for x, y in zip(a, b)):
        raise CodegemmaError("paired losses must cover the same files")
    tokens = sum(x[1] for x in a)
    diffs = [(y[0] - x[0]) / x[1] for x, y in zip(a, b)]
    weights = [x[1] / tokens for x in a]
    mean = sum(w * d for w, d in zip(weights, diffs))
    variance = sum(w * w * (d - mean) ** 2 for w, d in zip(weights, diffs))
    return {"mean": mean, "stderr": math.sqrt(variance), "files": len(a), "tokens": tokens}


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
    check_scale(scale, root)
    _, tokenizer = ensure_corpus(root)
    plain = demo_shards(root, 0.0, seq_len=scale.seq_len)
    runs = _runs_dir(root, out, scale, rates=[float(r) for r in rates])
    results = {}
    for rate in rates:
        shards = demo_shards(root, rate, seq_len=scale.seq_len, fim_chunk_chars=scale.fim_chunk_chars)
        run_dir = runs / f"fim{rate:g}"
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
    add_paired_tests(results, runs)
    _write(out, "fim-rate", scale, results, _plot_fim, runs)
    return results


def add_paired_tests(results: dict, runs: Path) -> None:
    """Each FIM rate's single-line answers against rate 0's, line by line (codegemma.eval.paired:
    McNemar's exact test): in every order both scored, and each model at its best prompt, the FIM
    model in SPM order against rate 0 left to right."""
    from codegemma.eval import paired
    from codegemma.train.evaluate import INFILL_ANSWERS

    plain = runs / "fim0" / INFILL_ANSWERS
    if "0" not in results or not plain.is_file():
        return
    baseline = paired.load(plain)
    for rate, result in results.items():
        answers = runs / f"fim{rate}" / INFILL_ANSWERS
        if rate == "0" or not answers.is_file():
            continue
        outcomes = paired.load(answers)
        pairs = [(order, order) for order in outcomes if order in baseline]
        if "spm" in outcomes and "l2r" in baseline:
            pairs.append(("spm", "l2r"))
        result["paired_vs_fim0"] = [asdict(r) for r in paired.compare_files(outcomes, baseline, pairs)]


def small_file_corpus(root: Path, max_file_kb: float = 3.0) -> Path:
    """The packing experiment's corpus (built once, then reused): the Python files of at most
    `max_file_kb` of the installed distributions, one repository each. The standard library's
    files are long (median 6.8 KB): at a 1024-token context 0.6% of its training tokens have another
    file before them in their row, so file order could not matter there. Files of a few KB put two
    or three files in a row, as CodeGemma's 8192 tokens do with files of ordinary length."""
    corpus = root / f"corpus-small-files-{max_file_kb:g}kb"
    if not corpus.is_dir():
        from codegemma.data.demo_corpus import build_demo_corpus

        build_demo_corpus(corpus, None, stdlib=False, site_packages=True, max_file_kb=max_file_kb,
                          languages=["python"])
    return corpus


def packing(root: Path, out: Path, orders=("codegemma", "random"), scale: Scale | None = None,
            corpus: Path | None = None) -> dict:
    """Multi-file packing: train on repositories whose files are in dependency order vs random order,
    then measure the loss on held-out repositories' files given the files before them (dependency
    order, no FIM), where knowing how repositories are laid out should help; the same files scored
    alone say how much the files before them are worth, and the paired difference between the
    orders over the same files says whether the order helps."""
    from codegemma.tokenizer import Tokenizer
    from codegemma.train.run import run

    scale = scale or Scale(seq_len=1024, batch_size=2, steps=400)
    check_scale(scale, root)
    _, tokenizer = ensure_corpus(root)
    corpus = corpus or small_file_corpus(root)
    special = Tokenizer.from_file(tokenizer).special
    held_out = demo_shards(root, 0.0, "codegemma", scale.seq_len, corpus=corpus)
    runs = _runs_dir(root, out, scale, orders=list(orders), corpus=str(Path(corpus).resolve()))
    results, per_file = {}, {}
    for order in orders:
        shards = demo_shards(root, 0.0, order, scale.seq_len, corpus=corpus)
        run_dir = runs / order
        recipe = _recipe(order, run_dir, tokenizer, shards / "train", scale, 0, None)
        run(recipe)
        losses = segment_losses(_load_final(run_dir), held_out / "eval", special["file_separator"],
                                bos=special["bos"])
        per_file[order] = losses.pop("per_file")
        results[order] = {"order": order, **losses, "context_gain": losses["later_files_alone_loss"]
                          - losses["later_files_loss"], "train_tokens": scale.steps * scale.batch_size * scale.seq_len,
                          "train_later_file_share": later_file_share(shards / "train", special["file_separator"])}
    if len(orders) == 2:
        first, second = orders
        # per file: (loss sum given the files before, alone, and what the files before are worth; tokens)
        sums = {order: [(f[0], f[1], f[1] - f[0], f[2]) for f in per_file[order]] for order in orders}
        results[f"{second}_minus_{first}"] = {
            condition: paired_difference([(f[i], f[3]) for f in sums[first]], [(f[i], f[3]) for f in sums[second]])
            for i, condition in enumerate(("given_files_before", "alone", "worth_of_files_before"))}
    _write(out, "packing", scale, {"corpus": str(corpus), **results}, _plot_packing, runs)
    return results


def files_within_segments(tokens: torch.Tensor, seg: torch.Tensor, file_separator: int) -> torch.Tensor:
    """[B, T]: which file of its segment (packed document) each position is in, 0 for the first and
    k from the k-th separator on: the separators counted so far, less those before the segment."""
    is_sep = (tokens == file_separator).long()
    count = torch.cumsum(is_sep, 1)
    starts = torch.ones_like(seg, dtype=torch.bool)
    starts[:, 1:] = seg[:, 1:] != seg[:, :-1]
    # segments are contiguous and the counts only grow, so the latest start's count is the running max
    before = torch.cummax(torch.where(starts, count - is_sep, 0), 1).values
    return count - before


def later_file_share(shards: Path, file_separator: int) -> float:
    """The share of trained tokens in `shards` that have another file of their sample before them."""
    from codegemma.data.shards import ShardDataset

    dataset = ShardDataset(shards)
    later = total = 0
    for start in range(0, len(dataset), 256):
        batch = {k: torch.from_numpy(v) for k, v in dataset.batch(range(start, min(start + 256, len(dataset)))).items()}
        tokens, seg, mask = batch["tokens"], batch["segment_ids"], batch["loss_mask"] & (batch["segment_ids"] != 0)
        later += int((mask & (files_within_segments(tokens, seg, file_separator) > 0)).sum())
        total += int(mask.sum())
    return later / max(total, 1)


def _runs_dir(root: Path, out: Path, scale: Scale, **settings) -> Path:
    """Where an experiment's variants train. A rerun with the same settings reuses it (finished
    variants are not trained again, stopped ones continue); other settings are refused, since each
    variant would continue its checkpoints under them and report a run that never happened."""
    from codegemma.data import atomic

    runs = root / "experiments" / out.name
    record, now = runs / "settings.json", {**_scale_record(scale), **settings}
    if record.is_file():
        before = json.loads(record.read_text())
        if before != now and not _any_trained(runs):
            # the last start stopped before any variant trained (a bad setting, an interrupt while the
            # shards were built): there is nothing to continue, so these settings replace those
            atomic.write_json(record, now)
        elif before != now:
            raise CodegemmaError(f"{runs} holds this experiment's runs at other settings "
                                 f"({differences(before, now)}): choose another --out, or remove that directory "
                                 "to start over")
    elif runs.is_dir() and any(runs.iterdir()):
        raise CodegemmaError(f"{runs} holds runs whose settings were not recorded: choose another --out, or "
                             "remove that directory to start over")
    else:
        atomic.write_json(record, now)
    return runs


def _any_trained(runs: Path) -> bool:
    """Whether a variant under `runs` has logged a step or written a checkpoint, i.e. whether a
    rerun would continue it."""
    from codegemma.train import checkpoint

    return any((d / "metrics.jsonl").exists() or checkpoint.list_steps(d / "checkpoints") or (d / "final").exists()
               for d in runs.iterdir() if d.is_dir())


def _write(out: Path, name: str, scale: Scale, results: dict, plot, runs: Path) -> None:
    """Results and plots go to `out` (docs); checkpoints and weights stay in the run directories."""
    from codegemma.data import atomic
    from codegemma.train.plots import save

    atomic.write_text(out / "results.json", json.dumps({"experiment": name, "scale": _scale_record(scale),
                                                        "results": results}, indent=1) + "\n")
    save(plot(runs, results), out / f"{name}.png")
    for run_dir in sorted(runs.iterdir()):
        if (run_dir / "metrics.jsonl").is_file():
            shutil.copy(run_dir / "metrics.jsonl", out / f"metrics-{run_dir.name}.jsonl")


_SCRATCH_SIZE = ("d_model", "n_layers", "n_heads", "head_dim", "d_ff")


def _scale_record(scale: Scale) -> dict:
    """The settings as run: a model started from `init` has that checkpoint's size, not the
    from-scratch size fields, so those are left out of its record."""
    record = asdict(scale)
    if scale.init:
        for key in _SCRATCH_SIZE:
            del record[key]
    return record


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
        shown = []
        for i, (tag, label) in enumerate(orders):
            xs = [j + (i - (len(orders) - 1) / 2) * width for j in range(len(rates))]
            values = [results[r].get(key + tag) or 0.0 for r in rates]
            shown += values
            ax.bar(xs, values, width, label=label)
            for x, v in zip(xs, values):  # upright labels would run into the next bar's
                ax.annotate(f"{v:.3f}", (x, v), ha="center", va="bottom", fontsize=7,
                            rotation=90 if len(orders) > 1 else 0)
        ax.set_xticks(range(len(rates)), rates)
        if key == "infill_exact_match":
            ax.set_ylim(0, max(0.05, max(shown) * 1.6))  # an all-zero panel keeps 0 at its bottom
        else:  # losses differ by tenths of a nat: start the axis near them, with room for labels and legend
            low, high = min(shown), max(shown)
            ax.set_ylim(low - 0.5, high + 0.6)
        if len(orders) > 1:
            ax.legend(fontsize=7, ncol=len(orders), loc="upper center")
        ax.set_title(title)
        ax.set_xlabel("FIM rate")
    fig.tight_layout()
    return fig


def _plot_packing(runs: Path, results: dict):
    import matplotlib.pyplot as plt

    orders = [key for key, value in results.items() if isinstance(value, dict) and "order" in value]
    name, paired = next(((key, value) for key, value in results.items() if "_minus_" in key), ("", None))
    fig, axes = plt.subplots(1, 3 if paired else 2, figsize=(15 if paired else 10, 4))
    _curves(axes[0], runs, "loss")
    axes[0].set_title("training loss")
    bars = [("later_files_loss", "given the files before them"), ("later_files_alone_loss", "alone")]
    bars = [(key, label) for key, label in bars if all(key in results[o] for o in orders)]
    width = 0.8 / len(bars)
    values = []
    for i, (key, label) in enumerate(bars):
        xs = [j + (i - (len(bars) - 1) / 2) * width for j in range(len(orders))]
        ys = [results[o][key] for o in orders]
        values += ys
        axes[1].bar(xs, ys, width, label=label)
        for x, y in zip(xs, ys):
            axes[1].annotate(f"{y:.3f}", (x, y), ha="center", va="bottom", fontsize=8)
    axes[1].set_ylim(min(values) - 0.1, max(values) + 0.12)  # the differences are hundredths of a nat
    axes[1].set_xticks(range(len(orders)), [f"trained in {o} order" for o in orders])
    axes[1].set_ylabel("loss (nats per token)")
    axes[1].set_title("held-out files after the first of their sample")
    axes[1].legend(fontsize=8, loc="upper center", ncol=2)
    if paired:
        conditions = list(paired)
        means = [paired[c]["mean"] for c in conditions]
        axes[2].bar(range(len(conditions)), means, 0.5, yerr=[2 * paired[c]["stderr"] for c in conditions],
                    capsize=6, color="tab:gray")
        axes[2].axhline(0, color="black", linewidth=0.8)
        axes[2].set_xticks(range(len(conditions)), [c.replace("_", " ") for c in conditions])
        axes[2].set_title(f"{name.replace('_', ' ')}, same files (± 2 s.e.)")
        axes[2].set_ylabel("loss difference (nats per token)")
    fig.tight_layout()
    return fig


def scale_from(args) -> Scale:
    scale = Scale() if args.experiment == "fim-rate" else Scale(seq_len=1024, batch_size=2)
    for key in ("steps", "batch_size", "seq_len", "d_model", "n_layers", "infill_examples", "fim_chunk_chars",
                "init", "lr", "precision", "eval_every", "seed"):
        value = getattr(args, key, None)
        if value is not None:
            setattr(scale, key, value)
    if scale.steps < 4:
        raise CodegemmaError("experiments need at least 4 steps")
    return scale
