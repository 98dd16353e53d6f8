"""`codegemma complete FILE:LINE:COL` and `codegemma chat`."""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

from codegemma.complete.budget import MIN_PROMPT_TOKENS
from codegemma.errors import CodegemmaError
from codegemma.textfiles import checked_text, read_stdin


def parse_location(location: str) -> tuple[Path, int, int]:
    """FILE:LINE:COL with 1-based line and column (as compilers print them)."""
    parts = location.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        raise CodegemmaError(f"location {location!r} is not FILE:LINE:COL (1-based line and column)")
    line, col = int(parts[1]), int(parts[2])
    if line < 1 or col < 1:
        raise CodegemmaError(f"location {location!r}: line and column start at 1")
    return Path(parts[0]), line, col


def split_at(text: str, line: int, col: int, where: str) -> tuple[str, str]:
    """(prefix, suffix) of `text` at 1-based `line`, `col` (columns count characters)."""
    lines = text.splitlines(keepends=True) or [""]
    if text.endswith("\n") or not text:
        lines.append("")
    if line > len(lines):
        raise CodegemmaError(f"{where}: line {line} is past the end of the file ({len(lines)} lines)")
    body = lines[line - 1].rstrip("\r\n")
    if col > len(body) + 1:
        raise CodegemmaError(f"{where}: column {col} is past the end of line {line} ({len(body)} characters)")
    offset = sum(len(x) for x in lines[:line - 1]) + col - 1
    return text[:offset], text[offset:]


def prompt_tokens(text: str, flag: str = "") -> int:
    """argparse type of --max-prompt-tokens; with `flag`, a CodegemmaError that names it instead."""
    value = int(text)
    if value < MIN_PROMPT_TOKENS:
        message = f"must be at least {MIN_PROMPT_TOKENS} (BOS, the FIM sentinels and some of the file), got {value}"
        raise CodegemmaError(flag + message) if flag else argparse.ArgumentTypeError(message)
    return value


def build_completer(args, instruction_tuned: bool = False):
    from codegemma.commands import load_for_cli
    from codegemma.complete.budget import Budget
    from codegemma.complete.pipeline import Completer
    from codegemma.engine import Engine
    from codegemma.profiles import resolve_profile

    wanted = getattr(args, "max_prompt_tokens", None)
    if wanted is not None:  # checked before the model loads, also for serve and lsp
        prompt_tokens(str(wanted), "--max-prompt-tokens ")
    budget = Budget() if wanted is None else Budget(max_prompt_tokens=wanted)
    loaded = load_for_cli(args)
    profile = resolve_profile(loaded.tokenizer, getattr(args, "profile", None), family=loaded.config.family,
                              instruction_tuned=instruction_tuned, fim_order=getattr(args, "fim_order", None))
    engine = Engine(loaded.model, detokenize=loaded.tokenizer.decode)
    return Completer(engine, loaded.tokenizer, profile, budget)


def cmd_complete(args) -> int:
    from codegemma.complete.pipeline import CompletionRequest
    from codegemma.complete.repo import collect_repo_files, read_text

    path, line, col = parse_location(args.location)
    text = read_text(path)
    prefix, suffix = split_at(text, line, col, str(path))
    context: list[tuple[str, str]] = []
    if args.repo:
        context += collect_repo_files(Path(args.repo), path)
    for extra in args.context:
        context.append((Path(extra).as_posix(), read_text(Path(extra))))
    display_path = path.resolve().relative_to(Path(args.repo).resolve()).as_posix() if args.repo and \
        path.resolve().is_relative_to(Path(args.repo).resolve()) else path.name
    multiline = {"auto": None, "single": False, "multi": True}[args.lines]
    completer = build_completer(args)
    out = completer.run(CompletionRequest(prefix=prefix, suffix=suffix, path=display_path, context=context,
                                          max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                          multiline=multiline, mode=args.mode))
    if args.json:
        print(json.dumps({"text": out.text, "mode": out.mode, "order": out.order, "multiline": out.multiline,
                          "finish_reason": out.finish_reason, "prompt_tokens": out.prompt_tokens,
                          "generated_tokens": out.generated_tokens, "truncated": out.truncated,
                          "context": out.context_paths, "prompt_ms": round(out.prompt_ms, 1),
                          "predicted_ms": round(out.predicted_ms, 1)}))
    else:
        sys.stdout.write(out.text + "\n")
        print(f"[{out.mode}{' ' + out.order if out.order else ''}, {'multi' if out.multiline else 'single'}-line, "
              f"{out.prompt_tokens} prompt tokens, {out.generated_tokens} generated, {out.finish_reason}]",
              file=sys.stderr)
    return 0


def cmd_chat(args) -> int:
    from codegemma.commands import sampling_from_args
    from codegemma.complete.chat import run_chat

    completer = build_completer(args, instruction_tuned=True)
    profile = completer.profile
    if profile.chat_template is None:
        raise CodegemmaError(f"model profile {profile.name!r} has no chat template")
    params = sampling_from_args(args, profile.stop_ids)
    messages: list[dict] = [{"role": "system", "content": checked_text(args.system, "--system")}] if args.system else []
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chat with {profile.name}; end with Ctrl-D", file=sys.stderr)
    for number in itertools.count(1):
        if interactive:
            print("> ", end="", flush=True)
        line = read_stdin(f"stdin line {number}", line=True)
        if not line:
            break
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.rstrip("\n")})

        def show(text: str):
            sys.stdout.write(text)
            sys.stdout.flush()

        reply = run_chat(completer, messages, params, stop=params.stop_strings, on_delta=show)
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": reply.text})
    return 0


def register(sub):
    from codegemma.commands import add_model_args, add_sampling_args

    p = sub.add_parser("complete", help="complete code at FILE:LINE:COL (fill in the middle with repository context)")
    p.add_argument("location", help="FILE:LINE:COL, 1-based")
    p.add_argument("--repo", help="repository directory: its files of the same language become context")
    p.add_argument("--context", action="append", default=[], metavar="FILE", help="an extra context file (repeatable)")
    add_model_args(p)
    p.add_argument("--profile", default=None, help="override the model profile (e.g. codegemma, gemma3)")
    p.add_argument("--mode", choices=["fim", "prefix-only"], default=None, help="default: fim when the model has it")
    p.add_argument("--fim-order", choices=["psm", "spm"], default=None, help="default: the profile's (spm)")
    p.add_argument("--lines", choices=["auto", "single", "multi"], default="auto")
    p.add_argument("--max-new-tokens", "-n", type=int, default=None)
    p.add_argument("--temperature", "-t", type=float, default=None)
    p.add_argument("--max-prompt-tokens", type=prompt_tokens, default=None,
                   help="prompt budget in tokens (default 1536)")
    p.add_argument("--json", action="store_true", help="print the result and its statistics as JSON")
    p.set_defaults(func=cmd_complete)

    p = sub.add_parser("chat", help="interactive streaming chat with an instruction-tuned model (one line per turn)")
    add_model_args(p)
    add_sampling_args(p, max_new_tokens=512)
    p.add_argument("--profile", default=None, help="override the model profile (e.g. gemma3-it, codegemma-it)")
    p.add_argument("--system", default=None, help="instructions prepended to the first user turn")
    p.set_defaults(func=cmd_chat)
