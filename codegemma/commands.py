"""Model commands: `codegemma generate`, `codegemma info`, `codegemma convert`."""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

from codegemma.errors import CodegemmaError
from codegemma.textfiles import checked_text, read_stdin

# The names checkpoints.loading.DTYPE_NAMES accepts, spelled out so that building the parser needs
# no torch import (tests/test_commands.py checks they agree).
DTYPE_CHOICES = ["float32", "bfloat16", "float16", "int8", "int4"]
MODEL_HELP = "a .gguf file, a Hugging Face directory or a preset name (default: the bundled Gemma 3 270M)"


def count(text: str) -> int:
    """argparse type of a count flag: an integer of 1 or more (argparse's error names the flag)."""
    value = int(text)  # a ValueError is argparse's "invalid count value"
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def seconds(text: str) -> float:
    """argparse type of a duration flag: a finite number of seconds above 0."""
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text}")
    return value


def non_negative(text: str) -> int:
    """argparse type of a flag that takes 0 or more (0 often meaning "the default" or "none")."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def add_model_args(parser: argparse.ArgumentParser):
    parser.add_argument("--model", "-m", default=None, help=MODEL_HELP)
    parser.add_argument("--dtype", default="float32", choices=DTYPE_CHOICES,
                        help="weight and activation dtype (default float32); int8/int4: weight-only "
                             "quantized for fast CPU inference (see docs/inference.md)")


def add_sampling_args(parser: argparse.ArgumentParser, max_new_tokens: int = 128):
    g = parser.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", "-n", type=int, default=max_new_tokens)
    g.add_argument("--temperature", "-t", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--min-p", type=float, default=0.0)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def sampling_from_args(args, stop_ids=()):
    from codegemma.engine import SamplingParams

    return SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                          seed=args.seed, stop_ids=frozenset(stop_ids), stop_strings=tuple(args.stop))


def load_for_cli(args):
    from codegemma.checkpoints import load

    loaded = load(args.model, dtype=args.dtype)
    if loaded.tokenizer is None:
        raise CodegemmaError(f"{loaded.source} has no tokenizer; name a checkpoint that includes one")
    return loaded


def cmd_generate(args) -> int:
    from codegemma.engine import Engine
    from codegemma.profiles import resolve_profile
    from codegemma.tokenizer import StreamDecoder

    prompt = read_stdin() if args.prompt == "-" else checked_text(args.prompt, "the prompt argument")
    loaded = load_for_cli(args)
    tok = loaded.tokenizer
    profile = resolve_profile(tok, args.profile)
    params = sampling_from_args(args, profile.stop_ids)
    ids = tok.encode(prompt, add_bos=not args.no_bos and profile.add_bos)
    engine = Engine(loaded.model, detokenize=tok.decode)
    decoder = StreamDecoder(tok)
    out = sys.stdout
    if args.echo:
        out.write(prompt)
    emitted = ""
    pieces = (decoder.push(token) for token in engine.stream(ids, params))
    for piece in itertools.chain(pieces, [None]):
        if piece is None:  # generation ended: print what the decoder still holds
            piece = decoder.flush()
        emitted += piece
        hit = next((s for s in params.stop_strings if s in emitted), None)
        if hit is not None:  # print up to the stop string, not past it
            keep = emitted.index(hit) - (len(emitted) - len(piece))
            out.write(piece[:max(keep, 0)])
            break
        out.write(piece)
        out.flush()
    out.write("\n")
    return 0


def decoding_path(model) -> str:
    """How a decode step computes, and the bytes of weights it reads."""
    from codegemma.quant import weight_bytes_per_token

    if model._decode_step is not None:
        how = "GGUF block codes, C decoder layers (codegemma.decode_step)"
    elif model.attached_head_blocks is not None:
        how = "GGUF block codes (codegemma.block_weights)"
    elif model.attached_head_screen is not None:
        how = "float32 layers, screened head (codegemma.head_screen)"
    else:
        how = f"{model.dtype_name} layers"
    return f"{how}; {weight_bytes_per_token(model) / 1e6:,.0f} MB of weights read per token"


def cmd_info(args) -> int:
    from codegemma.profiles import resolve_profile

    loaded = load_for_cli(args)
    cfg, model, tok = loaded.config, loaded.model, loaded.tokenizer
    print(f"source:        {loaded.source}")
    print(f"family:        {cfg.family}")
    print(f"parameters:    {model.num_params():,} ({model.num_params(False):,} without the embedding)")
    print(f"dtype:         {model.dtype_name}")
    print(f"decoding:      {decoding_path(model)}")
    print(f"layers:        {cfg.n_layers} ({cfg.layer_types.count('local')} sliding-window, window {cfg.sliding_window})")
    print(f"d_model:       {cfg.d_model}, d_ff {cfg.d_ff}, heads {cfg.n_heads} (kv {cfg.n_kv_heads}), head_dim {cfg.head_dim}")
    print(f"context:       {cfg.max_seq_len}")
    print(f"rope theta:    global {cfg.rope_theta:g}, local {cfg.rope_local_theta:g}, scaling {cfg.rope_scaling:g}")
    print(f"soft-caps:     attention {cfg.attn_softcap}, final {cfg.final_softcap}; qk-norm {cfg.qk_norm}")
    print(f"tokenizer:     vocabulary {tok.vocab_size:,}, add bos {tok.add_bos_default}")
    print("special:       " + ", ".join(f"{name}={i}" for name, i in sorted(tok.special.items(), key=lambda x: x[1])))
    profile = resolve_profile(tok)
    print(f"profile:       {profile.name} (FIM {'yes' if profile.fim_supported else 'no'}, "
          f"stop ids {sorted(profile.stop_ids)})")
    return 0


def cmd_convert(args) -> int:
    from codegemma.checkpoints import load, save_hf

    loaded = load(args.source, dtype=args.dtype)
    out = Path(args.output)
    save_hf(loaded.model, loaded.config, loaded.tokenizer, out)
    print(f"wrote {out} ({loaded.model.num_params():,} parameters, {args.dtype})")
    return 0


def register(sub):
    p = sub.add_parser("generate", help="continue a prompt with a model, streaming tokens to stdout")
    p.add_argument("prompt", help="the prompt text, or - to read it from stdin")
    add_model_args(p)
    add_sampling_args(p)
    p.add_argument("--no-bos", action="store_true", help="do not prepend <bos>")
    p.add_argument("--echo", action="store_true", help="print the prompt before the continuation")
    p.add_argument("--profile", default=None, help="override the model profile (see `codegemma info`)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("info", help="print a model's config, parameter counts, dtype, tokenizer and special tokens")
    p.add_argument("model", nargs="?", default=None, help=MODEL_HELP)
    p.add_argument("--dtype", default="float32", choices=DTYPE_CHOICES)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="convert a GGUF file or checkpoint to a Hugging Face safetensors directory")
    p.add_argument("source", help=MODEL_HELP)
    p.add_argument("output", help="output directory (must not exist or be empty)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.set_defaults(func=cmd_convert)
