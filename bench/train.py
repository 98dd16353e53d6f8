"""Training throughput: this project's Gemma and training step vs Hugging Face `transformers`.

Both models get the same config, the same weights, the same batch and sequence length, the same loss
(mean next-token cross-entropy in float32, each computed the library's own way: ours through the
trainer's loss, where head and cross-entropy are fused (codegemma.head_loss), transformers through
its `labels` argument), AdamW and gradient clipping, in the same process. On a CPU the timing
rounds interleave so that machine load affects both alike, and the ratio is the median of the
rounds' ratios; on a GPU, where two large models may not fit together, `--sequential` times one
model at a time. Reported: training tokens per second (median over rounds), model FLOPs
utilisation, and the ratio.

    python bench/train.py [--recipe recipes/tiny-cpu.toml | --preset gemma3-270m] [--batch 8]
                          [--seq-len 256] [--rounds 12] [--steps 2] [--threads 0]
                          [--device cpu|cuda] [--precision float32|bf16] [--compile] [--sequential]
                          [--runners ours,transformers] [--keep-freed-memory]
                          [--json docs/experiments/train-speed.json]

By default it times the tiny-cpu recipe's model at the recipe's own precision (`train.precision`,
`auto`): bf16 on a GPU, float32 on a CPU. `--precision bf16` times bf16 matrix products on a CPU,
which pay only where its instructions multiply bf16 (AMX or AVX512-BF16; elsewhere the trainer
warns that they are slower than float32).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from codegemma import bf16_matmuls
from codegemma.checkpoints.hf_config import config_from_hf, config_to_hf
from codegemma.config import ModelConfig, preset
from codegemma.model import Gemma
from codegemma.train import losses, metrics
from codegemma.train import recipe as recipe_mod
from codegemma.train.allocator import freed_memory_kept
from codegemma.train.build import model_config

RUNNERS = ("ours", "transformers")


def ours(cfg: ModelConfig, state: dict | None):
    model = Gemma(cfg)
    if state is None:
        model.init_weights()
    else:
        model.load_state_dict(state)
    return model, lambda m, ids: m(ids[:, :-1]), _our_loss


def _our_loss(m, ids):
    """The trainer's loss (codegemma.train.losses) on a batch of one document per row."""
    batch = {"tokens": ids, "segment_ids": torch.ones_like(ids), "loss_mask": torch.ones_like(ids, dtype=torch.bool)}
    total, count = losses.lm_loss_sum(m, batch)
    return total / count


def theirs(cfg: ModelConfig, state: dict):
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_cfg = config_to_hf(cfg)
    model_type = hf_cfg.pop("model_type")
    config = AutoConfig.for_model(model_type, **{k: v for k, v in hf_cfg.items() if k not in ("architectures",)})
    # SDPA where transformers offers it; it refuses it for attention logit soft-capping (Gemma 2),
    # which only its eager attention computes, and which its docs name for training Gemma 2
    config._attn_implementation = "eager" if cfg.attn_softcap else "sdpa"
    model = AutoModelForCausalLM.from_config(config)
    loaded = model.load_state_dict({f"model.{k}": v for k, v in state.items()}, strict=False)
    # strict=False only for the tied head; any other key left out would time a model that is partly
    # random, or another architecture, without a word
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(loaded.missing_keys) - tied or loaded.unexpected_keys:
        raise SystemExit(f"transformers' {type(model).__name__} does not take this model's weights: missing "
                         f"{sorted(set(loaded.missing_keys) - tied)}, unexpected {sorted(loaded.unexpected_keys)}")

    def loss(m, ids):  # transformers' own loss path; shift_labels: the targets as given, not re-shifted
        return m(input_ids=ids[:, :-1], labels=ids[:, :-1], shift_labels=ids[:, 1:].contiguous(), use_cache=False).loss

    return model, lambda m, ids: m(input_ids=ids[:, :-1], use_cache=False).logits, loss


def default_precision(recipe_path: str | None, device: str) -> str:
    """The precision the recipe trains in on this device (float32 for a preset on a CPU)."""
    wanted = recipe_mod.load(recipe_path, []).train.precision if recipe_path else "auto"
    if device.startswith("cuda"):
        return "float32" if wanted == "fp32" else "bf16"
    return "bf16" if wanted == "bf16" and bf16_matmuls.native_on_this_cpu() else "float32"


def recipe_config(path: str, vocab_size: int) -> ModelConfig:
    """The recipe's model config; for a recipe that starts from a checkpoint directory, that
    checkpoint's, or before it is built the shape the recipe declares for it ([model] preset and
    overrides, which `train run` checks the start has). The weights are drawn fresh either way:
    they do not change the speed."""
    declared = recipe_mod.load(path).model
    recipe = recipe_mod.load(path, [f"model.overrides.vocab_size={vocab_size}"])
    start = recipe.model.init
    if start and (Path(start) / "config.json").is_file():
        return config_from_hf(json.loads((Path(start) / "config.json").read_text()))
    if start and not declared.overrides:
        raise SystemExit(f"{path}: its start {start} is not a built checkpoint directory, and the recipe does not "
                         "declare its shape ([model] preset and overrides): build the start, or use --preset")
    if start:
        print(f"{path}: the start {start} is not built; timing the shape the recipe declares "
              f"({recipe.model.preset}, {recipe.model.overrides}) with fresh weights", file=sys.stderr)
    return model_config(recipe, None)


class Runner:
    """One implementation's model, optimizer and (optionally compiled) training step on a device."""

    def __init__(self, name: str, cfg: ModelConfig, state: dict | None, args):
        with torch.device(args.device):
            self.model, self.logits, self.loss = (ours if name == "ours" else theirs)(cfg, state)
        self.forward = torch.compile(self.model) if args.compile else self.model
        self.device = torch.device(args.device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=True)  # the trainer's, for both
        self.bf16 = args.precision == "bf16"
        # bf16 on a CPU: the trainer runs bf16 products and float32 elsewhere (codegemma.bf16_matmuls);
        # transformers has autocast
        self.bf16_products = self.bf16 and name == "ours" and self.device.type == "cpu"

    def autocast(self):
        if self.bf16_products:
            return bf16_matmuls.enabled()
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def probe(self, ids: torch.Tensor) -> torch.Tensor:
        """Float32 logits without autocast, to check both models compute the same function."""
        with torch.no_grad():
            return self.logits(self.model, ids).float().cpu()

    def step_time(self, batch: torch.Tensor, steps: int) -> float:
        self._sync()
        start = time.perf_counter()
        for _ in range(steps):
            with self.autocast():
                loss = self.loss(self.forward, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        self._sync()
        return (time.perf_counter() - start) / steps

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def time_runners(names, cfg, batch, args) -> tuple[dict, float | None, float | None]:
    """Median seconds per step of each runner, the ratio of the two runners' speeds, and the max
    |logit difference| between them. Interleaved, each round times both back to back (which goes
    first alternates), and the ratio is the median of the rounds' ratios: load that changes between
    rounds cancels. Sequential, it is the ratio of the medians."""
    probe_ids = batch[:1, : min(batch.shape[1], 129)]
    # the weights come from our model, whichever runner comes first (transformers' keys differ, and
    # it draws none of its own here); when ours is first it draws them on the device
    state = None if names[0] == "ours" else ours(cfg, None)[0].state_dict()
    times: dict[str, list[float]] = {name: [] for name in names}
    probes = {}
    if args.sequential:
        for name in names:
            runner = Runner(name, cfg, state, args)
            if state is None:
                state = {k: v.detach().cpu().clone() for k, v in runner.model.state_dict().items()}
            probes[name] = runner.probe(probe_ids)
            runner.step_time(batch, 1)  # warm-up (and compilation)
            times[name] = [runner.step_time(batch, args.steps) for _ in range(args.rounds)]
            del runner
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    else:
        runners = {}
        for name in names:
            runners[name] = Runner(name, cfg, state, args)
            if state is None:
                state = runners[name].model.state_dict()
            probes[name] = runners[name].probe(probe_ids)
        logit_difference(probes)  # before the timing: a mismatch stops it at once
        for runner in runners.values():
            runner.step_time(batch, 1)
        for i in range(args.rounds):
            for name in names if i % 2 == 0 else names[::-1]:
                times[name].append(runners[name].step_time(batch, args.steps))
    diff = logit_difference(probes)
    median = {name: statistics.median(t) for name, t in times.items()}
    ratio = None
    if len(names) == 2:
        paired = [theirs / ours for ours, theirs in zip(times["ours"], times["transformers"])]
        ratio = median["transformers"] / median["ours"] if args.sequential else statistics.median(paired)
    return median, ratio, diff


def logit_difference(probes: dict) -> float | None:
    """Max |logit difference| of the two models on the same weights and input (None with one);
    a speed ratio between models that compute different functions means nothing, so a real
    difference (beyond float32 rounding) stops the benchmark."""
    if len(probes) != 2:
        return None
    diff = (probes["ours"] - probes["transformers"]).abs().max().item()
    if not diff <= 1e-3 * (1 + probes["ours"].abs().max().item()):
        raise SystemExit(f"the two models' logits differ (max |difference| {diff:.3g}) on the same weights: "
                         "not the same architecture, no ratio")
    return diff


def _transformers_version() -> str | None:
    try:
        import transformers
    except ImportError:
        return None
    return transformers.__version__


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/tiny-cpu.toml", help="take the model from this recipe")
    parser.add_argument("--preset", default=None, help="or from a model preset (e.g. gemma3-270m)")
    parser.add_argument("--vocab-size", type=int, default=8192, help="the recipe's tokenizer size")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=12, help="timed rounds; the ratio is the median of theirs")
    parser.add_argument("--steps", type=int, default=2, help="steps per timed round")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("float32", "bf16"), default=None,
                        help="bf16: autocast over float32 weights, as the trainer does on GPUs (on a CPU the "
                             "trainer, and so `ours`, runs bf16 products only); default: the recipe's, where "
                             "this device runs it natively (see above)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--sequential", action="store_true", help="time one model at a time (large models)")
    parser.add_argument("--runners", default=",".join(RUNNERS))
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="CPU: time both with glibc keeping freed memory for reuse, as the trainer runs "
                             "(codegemma.train.allocator); default: glibc's defaults for both")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    names = [n for n in args.runners.split(",") if n]
    if not names or any(n not in RUNNERS for n in names):
        parser.error(f"--runners: choose from {', '.join(RUNNERS)}")
    if args.precision is None:
        args.precision = default_precision(None if args.preset else args.recipe, args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.preset:
        cfg = preset(args.preset)
    else:
        cfg = recipe_config(args.recipe, args.vocab_size)
    batch = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len + 1), device=args.device)
    # process-wide, so it applies to both runners alike
    with freed_memory_kept() if args.keep_freed_memory else contextlib.nullcontext():
        seconds, ratio, diff = time_runners(names, cfg, batch, args)

    tokens = args.batch * args.seq_len
    flops = metrics.flops_per_token(cfg, args.seq_len)
    peak = metrics.peak_flops(torch.device(args.device), args.precision == "bf16")
    result = {name: tokens / s for name, s in seconds.items()}
    mfu = {name: tps * flops / peak for name, tps in result.items()} if peak else {}
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{torch.get_num_threads()} threads"
    settings = [device, args.precision] + ["compiled"] * args.compile + ["freed memory kept"] * args.keep_freed_memory
    print(f"model: {args.preset or args.recipe} ({cfg.family}, {cfg.num_params() / 1e6:.1f}M params), "
          f"batch {args.batch} x {args.seq_len}, {', '.join(settings)}"
          + (f", max |logit diff| {diff:.2e}" if diff is not None else ""))
    print(f"{'':14}{'tokens/s':>10}{'MFU':>8}")
    for name, value in result.items():
        print(f"{name:14}{value:10.0f}{mfu.get(name, 0.0):8.1%}")
    if ratio is not None:
        print(f"ratio (ours / transformers): {ratio:.2f}x")
    if args.json:
        out = {"tokens_per_s": result, "mfu": mfu, "ratio": ratio, "batch": args.batch, "seq_len": args.seq_len,
               "device": device, "precision": args.precision, "compile": args.compile,
               "keep_freed_memory": args.keep_freed_memory,
               "threads": torch.get_num_threads(), "rounds": args.rounds, "steps_per_round": args.steps,
               "flops_per_token": flops, "peak_flops": peak, "config": cfg.to_dict(), "logit_max_abs_diff": diff,
               "torch": torch.__version__, "transformers": _transformers_version(),
               "machine": platform.processor() or platform.machine(),
               "cpus": os.cpu_count(), "load_average": os.getloadavg(), "params": cfg.num_params()}
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=1) + "\n")
        tmp.replace(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
