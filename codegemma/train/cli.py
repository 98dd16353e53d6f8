"""`codegemma train ...`: run a recipe, train a tokenizer, export, merge LoRA, build SFT/DPO data, plot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from codegemma.commands import count, non_negative
from codegemma.errors import CodegemmaError


def register(subparsers) -> None:
    train = subparsers.add_parser("train", help="training: pretraining (FIM), SFT, DPO, LoRA, tokenizers, export")
    sub = train.add_subparsers(dest="train_command", metavar="SUBCOMMAND")
    sub.required = True

    p = sub.add_parser("run", help="train from a recipe (resumes from the newest checkpoint of its out_dir)")
    p.add_argument("recipe", help="recipes/*.toml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a recipe value, e.g. --set train.steps=100 (repeatable)")
    p.add_argument("--no-resume", action="store_true",
                   help="do not continue from out_dir's checkpoints (an out_dir that holds a run is refused)")
    p.set_defaults(func=_run)

    p = sub.add_parser("tokenizer", help="train a BPE tokenizer with the CodeGemma special-token layout")
    p.add_argument("corpus", nargs="+", help="files or directories of text")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--ext", action="append", default=[], help="only files with this suffix, e.g. .py (repeatable)")
    p.add_argument("--out", required=True, help="output tokenizer.json, or a directory to write it into (an "
                   "existing one, or a name ending in /); HF config files go beside it")
    p.set_defaults(func=_tokenizer)

    p = sub.add_parser("export", help="export a checkpoint or model to GGUF (F32/F16/BF16/Q8_0) or a HF directory")
    p.add_argument("source", help="training checkpoint (a .pt file or a sharded step directory), run directory, HF directory or GGUF")
    p.add_argument("--out", required=True, help="output .gguf file or directory")
    p.add_argument("--format", choices=("gguf", "hf"), default=None, help="default: from --out's suffix")
    p.add_argument("--dtype", choices=("f32", "f16", "bf16", "q8_0"), default=None,  # export.GGUF_FILE_TYPES
                   help="tensor type. GGUF: of the matrices (norms stay f32), default f16; q8_0: 8-bit blocks, "
                        "half of f16's size. HF safetensors: f32, f16 or bf16, default the model's own (float32)")
    p.add_argument("--tokenizer", default="", help="tokenizer for checkpoints that do not carry one")
    p.set_defaults(func=_export)

    p = sub.add_parser("prune", help="cut a small model out of a Gemma checkpoint: first layers, narrower MLPs, "
                                     "a new tokenizer's vocabulary (a HF directory to start a recipe from)")
    p.add_argument("--source", default=None, help="GGUF file or HF directory (default: the default model)")
    p.add_argument("--tokenizer", required=True, help="the new vocabulary: tokenizer.json, HF directory or GGUF")
    p.add_argument("--calibration", required=True, help="shard directory whose rows rank the MLP neurons and heads")
    p.add_argument("--layers", default="0-5", help="source layers to keep, e.g. 0-5 or 0,1,2 (default 0-5)")
    p.add_argument("--d-ff", type=int, required=True, help="MLP neurons to keep per layer")
    p.add_argument("--heads", type=int, default=None, help="query heads to keep per layer (default: all)")
    p.add_argument("--out", required=True, help="output HF directory (must not exist or be empty)")
    p.set_defaults(func=_prune)

    p = sub.add_parser("demo-data", help="shards from the demo corpus (stdlib) through the data pipeline")
    p.add_argument("--root", default="runs/demo", help="where the corpus and tokenizer live (built if missing)")
    p.add_argument("--out", default=None, help="shard output directory (default: <root>/shards)")
    p.add_argument("--fim-rate", type=float, default=0.5)
    p.add_argument("--fim-chunk-chars", type=non_negative, default=0,
                   help="FIM each piece of at most this many characters of a file, not whole files (0)")
    p.add_argument("--fim-suffix-line-rate", type=float, default=0.0,
                   help="share of FIM examples whose suffix starts at a line start (0: character-level)")
    p.add_argument("--fim-line-rate", type=float, default=0.0,
                   help="share of FIM examples whose middle is whole lines (0: character-level)")
    p.add_argument("--fim-single-line-rate", type=float, default=0.0,
                   help="share of FIM examples whose middle is one non-blank line (0: none)")
    p.add_argument("--fim-spm-rate", type=float, default=0.5,
                   help="share of FIM examples in SPM order, the rest PSM (0.5, CodeGemma's 50/50)")
    p.add_argument("--order", default="codegemma", help="file order: codegemma | deepseek | random | alphabetical")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--tokenizer", default=None,
                   help="tokenize with this tokenizer (file, HF directory, GGUF or `default`; default: the demo corpus's)")
    p.add_argument("--fim-sentinels-from", default="", metavar="T1,T2,T3,T4",
                   help="four unused tokens of --tokenizer to spell as the FIM sentinels (continued pretraining)")
    p.set_defaults(func=_demo_data)

    p = sub.add_parser("experiment", help="small-scale experiments: fim-rate, packing (results in docs/experiments)")
    p.add_argument("experiment", choices=("fim-rate", "packing"))
    p.add_argument("--root", default="runs/demo", help="demo corpus, tokenizer and shard cache")
    p.add_argument("--out", default=None, help="default: docs/experiments/<experiment>")
    for name in ("steps", "batch-size", "seq-len", "d-model", "n-layers", "infill-examples"):
        p.add_argument(f"--{name}", type=count, default=None)
    p.add_argument("--fim-chunk-chars", type=non_negative, default=None, help="FIM pieces of at most this many "
                                                                     "characters (0: whole files)")
    p.add_argument("--eval-every", type=non_negative, default=None,
                   help="fim-rate: steps between its runs' evaluations (0: four in a run); packing scores its "
                        "runs at the end")
    p.add_argument("--init", default=None, help="start every variant from this checkpoint (e.g. the tiny-cpu "
                                                  "recipe's runs/demo/gemma3-270m-pruned) instead of from scratch")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (3e-3; a pretrained start wants less)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None, help="train.precision of the runs")
    p.add_argument("--seed", type=int, default=None, help="the runs' seed (0)")
    p.add_argument("--corpus", default=None, help="packing: the repository collection (default: the Python files "
                                                  "of at most 3 KB of the installed distributions, built on first use)")
    p.set_defaults(func=_experiment)

    p = sub.add_parser("infill-eval", help="single-line infilling on held-out files: middle loss, suffix gain, "
                                           "exact match, edit similarity, copy gain (the training evaluation, "
                                           "on a finished model)")
    p.add_argument("source", help="training checkpoint (a .pt file or a sharded step directory), run directory, HF directory or GGUF")
    p.add_argument("--files", required=True, help="directory of held-out source files")
    p.add_argument("--examples", type=count, default=100, help="lines to mask (drawn with a fixed seed)")
    p.add_argument("--orders", default="psm,spm",
                   help="comma-separated prompt orders: psm, spm (FIM), l2r (the prefix alone, any model)")
    p.add_argument("--max-prompt-tokens", type=count, default=None,
                   help="default: 256, or the model's context less --max-new-tokens where that is smaller")
    p.add_argument("--max-new-tokens", type=count, default=32)
    p.add_argument("--tokenizer", default="", help="tokenizer for checkpoints that do not carry one")
    p.add_argument("--answers", default="",
                   help="also write every greedy answer beside its line here (JSON Lines, one per line and order)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: matrix products in bf16, as a bf16 training run evaluates (default fp32)")
    p.set_defaults(func=_infill_eval)

    p = sub.add_parser("plot", help="PNG curves of a run from its metrics.jsonl (several runs: overlaid)")
    p.add_argument("run_dirs", nargs="+", metavar="run_dir", help="run directory; LABEL=DIR names a run")
    p.add_argument("--out", default=None, help="default: RUN_DIR/curves.png (required for several runs)")
    p.add_argument("--title", default=None)
    p.set_defaults(func=_plot)

    p = sub.add_parser("dpo-pairs", help="preference pairs from execution-checked samples (pass vs fail)")
    p.add_argument("samples", help="JSONL (task_id, prompt, completion, passed), or a `codegemma eval` run "
                                   "directory (its samples.jsonl)")
    p.add_argument("--out", required=True)
    p.add_argument("--max-pairs-per-task", type=count, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_dpo_pairs)

    p = sub.add_parser("oss-instruct", help="synthesize instruction data from seed code with a served model")
    p.add_argument("seeds", help="directory of seed source files")
    p.add_argument("--base-url", required=True, help="OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", default="codegemma")
    p.add_argument("--n", type=count, default=100, help="how many seed snippets to try")
    p.add_argument("--out", required=True, help="output conversations JSONL (only test-passing pairs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-tokens", type=count, default=1024, help="longest answer, in tokens")
    p.add_argument("--workers", type=count, default=1,
                   help="requests in flight at once (default 1; more only for a server that answers chat "
                        "requests in parallel: `codegemma serve` answers them one at a time)")
    p.set_defaults(func=_oss_instruct)


def writable_out_dir(out_dir: Path) -> None:
    """Create `out_dir` now, so that a directory the run cannot write stops it before any work."""
    import tempfile

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out_dir).close()
    except OSError as e:
        raise CodegemmaError(f"out_dir {out_dir}: cannot write there ({e.strerror or e})") from None


def refuse_earlier_run(out_dir: Path) -> None:
    """A run started over in a directory that holds another would interleave their checkpoints and
    metrics (and pruning would keep the other's later steps): refused, nothing removed."""
    from codegemma.train import checkpoint

    steps = checkpoint.list_steps(out_dir / "checkpoints")
    if steps or (out_dir / "metrics.jsonl").exists():
        held = f"checkpoints up to step {steps[-1]}" if steps else "metrics.jsonl"
        raise CodegemmaError(f"{out_dir} holds a run ({held}); --no-resume would mix a new run into it: remove it "
                             "or choose another out_dir (--set out_dir=DIR)")


def _run(args) -> int:
    from codegemma.train import recipe as recipe_mod
    from codegemma.train.run import run
    from codegemma.train.stopping import RunStopped

    recipe = recipe_mod.load(args.recipe, args.overrides)
    missing = recipe_mod.missing_inputs(recipe)
    if missing:
        raise CodegemmaError(f"{args.recipe}: not found: {'; '.join(missing)} (point the recipe or --set KEY=PATH "
                             f"at them; the recipe's comments and docs/training.md show how to build them)")
    writable_out_dir(Path(recipe.out_dir))
    if args.no_resume:
        refuse_earlier_run(Path(recipe.out_dir))
    try:
        summary = run(recipe, resume=not args.no_resume)
    except RunStopped as stopped:
        if stopped.checkpoint is not None:  # the main process: the others say nothing
            print(f"codegemma train: {stopped}", file=sys.stderr)
        return 128 + stopped.signum
    if summary.get("final"):
        print(json.dumps(summary))
    return 0


def _tokenizer(args) -> int:
    import itertools

    from codegemma.train import tokenizer_train

    tokenizer_train.target(args.out)  # a bad output is refused before training, not after
    texts = itertools.chain.from_iterable(tokenizer_train.iter_files(c, tuple(args.ext)) for c in args.corpus)
    first = next(texts, None)
    if first is None:  # it would learn a vocabulary of the reserved tokens alone
        kinds = " or ".join(args.ext) + " " if args.ext else ""
        raise CodegemmaError(f"{', '.join(args.corpus)}: no {kinds}text files to learn a vocabulary from")
    tok = tokenizer_train.train(itertools.chain([first], texts), args.vocab_size)
    out = tokenizer_train.save(tok, args.out)
    print(f"wrote {out} ({tok.get_vocab_size()} tokens)")
    if tok.get_vocab_size() < args.vocab_size:  # BPE ran out of pairs seen twice: a corpus too small
        print(f"codegemma train tokenizer: warning: the corpus gave {tok.get_vocab_size()} of the "
              f"{args.vocab_size} tokens asked for (no more pairs occur twice); a larger corpus gives more",
              file=sys.stderr)
    return 0


def _export(args) -> int:
    from codegemma.train.export import export

    fmt = args.format or ("gguf" if args.out.endswith(".gguf") else "hf")
    out = export(args.source, args.out, fmt, args.dtype, args.tokenizer or None)
    print(f"wrote {out}")
    return 0


def _prune(args) -> int:
    from codegemma.train.prune import parse_layers, prune_checkpoint

    config, params = prune_checkpoint(args.source, args.tokenizer, args.calibration, parse_layers(args.layers),
                                      args.d_ff, args.out, args.heads)
    print(f"wrote {args.out} ({params:,} parameters: {config.n_layers} layer{'s' if config.n_layers != 1 else ''}, "
          f"{config.n_heads} "
          f"head{'s' if config.n_heads != 1 else ''}, d_ff {config.d_ff}, "
          f"vocabulary {config.vocab_size})")
    return 0


def _demo_data(args) -> int:
    from codegemma.train.experiments import demo_shards

    root = Path(args.root)
    out = demo_shards(root, args.fim_rate, args.order, args.seq_len, out=Path(args.out) if args.out else root / "shards",
                      fim_chunk_chars=args.fim_chunk_chars, fim_suffix_line_rate=args.fim_suffix_line_rate,
                      fim_line_rate=args.fim_line_rate, fim_single_line_rate=args.fim_single_line_rate,
                      spm_rate=args.fim_spm_rate, tokenizer=args.tokenizer,
                      fim_sentinels_from=[t for t in args.fim_sentinels_from.split(",") if t])
    print(f"shards in {out}/train and {out}/eval, held-out files in {out}/heldout")
    return 0


def _experiment(args) -> int:
    from codegemma.train import experiments

    scale = experiments.scale_from(args)
    out = Path(args.out or f"docs/experiments/{args.experiment}")
    if args.experiment == "fim-rate":
        if args.corpus:
            raise CodegemmaError("--corpus is for the packing experiment; fim-rate uses the demo corpus")
        results = experiments.fim_rate(Path(args.root), out, scale=scale)
    else:
        if args.eval_every is not None:  # it would be recorded with the runs and change nothing
            raise CodegemmaError("--eval-every is for the fim-rate experiment; packing scores its runs once, at the end")
        corpus = Path(args.corpus) if args.corpus else None
        if corpus is not None and not corpus.is_dir():
            raise CodegemmaError(f"--corpus {corpus}: not a directory of repositories")
        results = experiments.packing(Path(args.root), out, scale=scale, corpus=corpus)
    print(json.dumps(results, indent=1))
    return 0


def _infill_eval(args) -> int:
    from contextlib import nullcontext

    import torch

    from codegemma import bf16_matmuls
    from codegemma.checkpoints.loading import empty_model, load_weights_into
    from codegemma.fim import sentinel_ids
    from codegemma.train import distributed
    from codegemma.train.evaluate import (
        INFILL_ORDERS,
        L2R,
        Evaluator,
        check_fits_context,
        infill_scorers,
    )
    from codegemma.train.export import load_trained
    from codegemma.train.preference import jsonl_target

    orders = [o.strip() for o in args.orders.split(",") if o.strip()]
    if not orders or any(o not in INFILL_ORDERS for o in orders):
        raise CodegemmaError(f"--orders: choose from {', '.join(INFILL_ORDERS)}")
    if args.answers:  # refused now, not once the evaluation is done
        jsonl_target(args.answers)
    state, config, tokenizer = load_trained(args.source, args.tokenizer or None)
    if tokenizer is None:
        raise CodegemmaError(f"{args.source}: no tokenizer with the model; pass --tokenizer")
    if tokenizer.vocab_size > config.vocab_size:
        raise CodegemmaError(f"the tokenizer has {tokenizer.vocab_size} tokens, the model's vocabulary "
                             f"{config.vocab_size}: not the model's tokenizer")
    if any(o != L2R for o in orders):
        try:
            sentinel_ids(tokenizer)
        except ValueError as e:
            raise CodegemmaError(f"--orders {','.join(orders)}: {e}; --orders l2r scores it left to right") from None
    max_prompt_tokens = args.max_prompt_tokens
    if max_prompt_tokens is None:
        max_prompt_tokens = min(256, config.max_seq_len - args.max_new_tokens)
    check_fits_context(max_prompt_tokens, args.max_new_tokens, config.max_seq_len,
                       "--max-prompt-tokens + --max-new-tokens")
    try:
        scorers, probe = infill_scorers(tokenizer, args.files, args.examples, max_prompt_tokens, orders)
    except CodegemmaError as e:
        raise CodegemmaError(f"--files: {e}") from None
    model = load_weights_into(empty_model(config), state.items(), str(args.source))
    # under torchrun (CPU processes over gloo) each process scores a share of the lines
    env = distributed.init("cpu")
    products = bf16_matmuls.enabled() if args.precision == "bf16" else nullcontext()
    try:
        with torch.no_grad(), products:
            result = Evaluator(env, None, 0, scorers, args.max_new_tokens, probe,
                               answers_path=args.answers or None, share_examples=True)(model.eval())
    finally:
        distributed.shutdown(env)
    if not env.is_main:
        return 0
    print(json.dumps({"source": args.source, "examples": len(scorers[0].examples), **result}))
    return 0


def _plot(args) -> int:
    from codegemma.train.plots import plot_run, plot_runs

    labels, paths = [], []
    for item in args.run_dirs:
        label, path = item.split("=", 1) if "=" in item and not Path(item).exists() else ("", item)
        run_dir = Path(path)
        if not (run_dir / "metrics.jsonl").is_file():
            raise CodegemmaError(f"{run_dir}: no metrics.jsonl")
        labels.append(label or run_dir.name)
        paths.append(run_dir / "metrics.jsonl")
    if len(paths) == 1:
        out = args.out or paths[0].parent / "curves.png"
        print(plot_run(paths[0], out, args.title or labels[0]))
        return 0
    if args.out is None:
        raise CodegemmaError("several runs: name the output with --out")
    print(plot_runs(paths, labels, args.out, args.title or ""))
    return 0


def _dpo_pairs(args) -> int:
    from codegemma.train.preference import pairs_from_samples, read_samples, write_jsonl

    source = Path(args.samples)
    source = source / "samples.jsonl" if source.is_dir() else source  # an eval run directory
    samples = read_samples(source)
    pairs = pairs_from_samples(samples, args.max_pairs_per_task, args.seed)
    if not pairs:  # a DPO run could not start from it: refused, nothing written
        tasks = len({s.get("task_id") for s in samples})
        raise CodegemmaError(f"{source}: no preference pairs: none of its {tasks} problems has both a passing "
                             "and a failing sample (sample more per problem, or at a higher temperature)")
    write_jsonl(args.out, pairs)
    print(f"wrote {len(pairs)} pairs to {args.out}")
    return 0


def _oss_instruct(args) -> int:
    from codegemma.train.oss_instruct import generate

    stats = generate(args.seeds, args.base_url, args.model, args.n, args.out, seed=args.seed,
                     temperature=args.temperature, max_tokens=args.max_tokens, workers=args.workers,
                     progress=sys.stderr.isatty())
    print(json.dumps(stats))
    print(f"wrote {stats['kept']} conversations to {args.out}", file=sys.stderr)
    return 0
