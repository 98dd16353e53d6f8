"""Training throughput on CPU: this project's Gemma and training step vs Hugging Face `transformers`.

Both models get the same config (the tiny-cpu recipe's model), the same batch and sequence length,
the same loss (next-token cross-entropy), AdamW and gradient clipping, in the same process, with
interleaved timing rounds so machine load affects both alike. Reported: training tokens per second
(median over rounds) and the ratio.

    python bench/train.py [--recipe recipes/tiny-cpu.toml] [--batch 8] [--seq-len 256] [--rounds 5]
                          [--steps 3] [--threads 0] [--json docs/experiments/train-speed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from codegemma.checkpoints.hf_config import config_to_hf
from codegemma.train import recipe as recipe_mod
from codegemma.train.build import model_config
from codegemma.model import Gemma


def ours(cfg):
    model = Gemma(cfg)
    model.init_weights()

    def logits(ids):
        return model(ids[:, :-1])

    return model, logits


def theirs(cfg, state):
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_cfg = config_to_hf(cfg)
    model_type = hf_cfg.pop("model_type")
    config = AutoConfig.for_model(model_type, **{k: v for k, v in hf_cfg.items() if k not in ("architectures",)})
    config._attn_implementation = "sdpa"
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict({f"model.{k}": v for k, v in state.items()}, strict=False)

    def logits(ids):
        return model(input_ids=ids[:, :-1], use_cache=False).logits

    return model, logits


def step_time(model, logits, batch, opt, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        out = logits(batch)
        loss = F.cross_entropy(out.float().flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/tiny-cpu.toml")
    parser.add_argument("--vocab-size", type=int, default=8192, help="the recipe's tokenizer size")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps per timed round")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    recipe = recipe_mod.load(args.recipe, [f"model.overrides.vocab_size={args.vocab_size}"])
    cfg = model_config(recipe, None)
    a, a_logits = ours(cfg)
    b, b_logits = theirs(cfg, a.state_dict())
    batch = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len + 1))
    with torch.no_grad():  # same weights, same function: the comparison is like for like
        diff = (a_logits(batch) - b_logits(batch)).abs().max().item()
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in (("ours", a), ("transformers", b))}
    runs = {"ours": (a, a_logits), "transformers": (b, b_logits)}
    for name, (model, fn) in runs.items():  # warm-up
        step_time(model, fn, batch, opts[name], 1)
    times = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (model, fn) in runs.items():
            times[name].append(step_time(model, fn, batch, opts[name], args.steps))
    tokens = args.batch * args.seq_len
    result = {name: tokens / statistics.median(t) for name, t in times.items()}
    ratio = result["ours"] / result["transformers"]
    print(f"model: {sum(p.numel() for p in a.parameters()) / 1e6:.1f}M params ({cfg.family}), batch {args.batch} x "
          f"{args.seq_len}, {torch.get_num_threads()} threads, max |logit diff| {diff:.2e}")
    print(f"{'':14}{'tokens/s':>10}")
    for name, value in result.items():
        print(f"{name:14}{value:10.0f}")
    print(f"ratio (ours / transformers): {ratio:.2f}x")
    if args.json:
        out = {"tokens_per_s": result, "ratio": ratio, "batch": args.batch, "seq_len": args.seq_len,
               "threads": torch.get_num_threads(), "rounds": args.rounds, "steps_per_round": args.steps,
               "config": cfg.to_dict(), "logit_max_abs_diff": diff, "torch": torch.__version__,
               "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
               "load_average": os.getloadavg()}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
