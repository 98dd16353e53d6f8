"""From the text around a cursor to prompt token ids, within a token budget.

FIM mode (the vocabulary has the sentinels): repository context as `path\\ncontent` blocks joined
by <|file_separator|>, then the file at the cursor in PSM or SPM order, all through `codegemma.fim`,
the module the training data is built with.

Prefix-only mode (no sentinels, e.g. the default Gemma 3 270M): context files as plain files,
each introduced by a comment naming its path, then a comment naming the current file and its
prefix. The suffix is not in the prompt; the post-processing filters still use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

from codegemma.complete.budget import Budget, fit_context, rank_context, split_file_budget, trim_prefix
from codegemma.complete.language import Syntax
from codegemma.errors import CodegemmaError
from codegemma.fim import PSM, SPM, encode_literal, encode_pieces, fim_prompt, repo_context_pieces
from codegemma.profiles import ModelProfile

FIM = "fim"
PREFIX_ONLY = "prefix-only"
MODES = (FIM, PREFIX_ONLY)


class _Tokenizer(Protocol):
    def encode(self, text: str, add_bos: bool = False) -> list[int]: ...

    def token_to_id(self, token: str) -> int | None: ...


@dataclass
class Prompt:
    ids: list[int]
    mode: str
    order: str | None
    prefix: str  # what remains of the prefix after trimming (ends at the cursor)
    suffix: str  # what remains of the suffix after trimming (starts at the cursor)
    context_paths: list[str] = field(default_factory=list)
    truncated: bool = False


def choose_mode(profile: ModelProfile, requested: str | None) -> str:
    if requested in (None, "", "auto"):
        return FIM if profile.fim_supported else PREFIX_ONLY
    if requested not in MODES:
        raise CodegemmaError(f"unknown completion mode {requested!r}; expected one of {', '.join(MODES)}")
    if requested == FIM and not profile.fim_supported:
        raise CodegemmaError(f"model profile {profile.name!r} has no FIM sentinels: use mode prefix-only")
    return requested


def build_prompt(tokenizer: _Tokenizer, profile: ModelProfile, prefix: str, suffix: str, *, path: str | None = None,
                 context: Sequence[tuple[str, str]] = (), syntax: Syntax | None = None, budget: Budget = Budget(),
                 mode: str | None = None, order: str | None = None, middle_start: str = "") -> Prompt:
    """The prompt for a completion at the cursor between `prefix` and `suffix`.

    `middle_start` is text the model must continue from right after the cursor (llama.cpp's
    `prompt` field of /infill); it is never trimmed.
    """
    mode = choose_mode(profile, mode)
    order = order or profile.fim_order
    protected = tuple(profile.stop_texts)
    specials = {**profile.sentinel_ids, **profile.chat_ids}

    def count(text: str) -> int:
        return len(tokenizer.encode(text)) if text else 0

    bos = [profile.bos_id] if profile.add_bos and profile.bos_id is not None else []
    if mode == FIM:
        sentinels = profile.sentinels
        # tokens that are there whatever the budget: BOS, the sentinels, the path line, middle_start
        fixed = len(bos) + 3 + (count(path + "\n") if path else 0) + count(middle_start)
        context_cost = lambda p: 1 + count(p + "\n")  # noqa: E731 - path line and its separator
    else:
        comment = (syntax.line_comment if syntax else None) or "#"
        fixed = len(bos) + (count(_path_comment(path, comment)) if path else 0) + count(middle_start)
        context_cost = lambda p: count(_path_comment(p, comment)) + 1  # noqa: E731
    available = budget.max_prompt_tokens - fixed
    if available <= 0:
        raise CodegemmaError(f"max_prompt_tokens {budget.max_prompt_tokens} leaves no room for the file "
                             f"(fixed part alone takes {fixed} tokens)")

    ranked = rank_context(context, prefix[-2000:] + suffix[:1000], path) if context else []
    context_need = sum(count(c) + context_cost(p) for p, c in ranked)
    # The context's share is fixed per request shape, not what the file leaves over: that keeps
    # the context block identical while the user types, so its cached tokens stay valid.
    context_budget = min(context_need, int(available * budget.context_fraction))
    file_budget = available - context_budget
    kept_context = fit_context(ranked, context_budget, count, context_cost) if ranked else []

    if mode == FIM:
        kept_prefix, kept_suffix = split_file_budget(prefix, suffix, file_budget, count, budget.prefix_share,
                                                     budget.anchor_steps, protected)
        pieces = repo_context_pieces(kept_context, sentinels) + fim_prompt(kept_prefix, kept_suffix, order, path,
                                                                           sentinels)
        if middle_start:
            if order == SPM and kept_prefix:
                pieces[-1] += middle_start
            else:
                pieces.append(middle_start)
        ids = bos + encode_pieces(tokenizer, pieces, dict(profile.sentinel_ids), literal_text=True)
    else:
        order = None
        kept_prefix = trim_prefix(prefix, file_budget, count, budget.anchor_steps, protected)
        kept_suffix = suffix
        comment = (syntax.line_comment if syntax else None) or "#"
        text = "".join(_path_comment(p, comment) + c + ("" if c.endswith("\n") else "\n") + "\n"
                       for p, c in kept_context)
        text += (_path_comment(path, comment) if path else "") + kept_prefix + middle_start
        ids = bos + encode_literal(tokenizer, text, specials)
    truncated = (kept_prefix != prefix or (mode == FIM and kept_suffix != suffix)
                 or len(kept_context) < len(context) or any(c != dict(context).get(p) for p, c in kept_context))
    return Prompt(ids=ids, mode=mode, order=order if mode == FIM else None, prefix=kept_prefix, suffix=kept_suffix,
                  context_paths=[p for p, _ in kept_context], truncated=truncated)


def _path_comment(path: str, comment: str) -> str:
    return f"{comment} Path: {path}\n"


__all__ = ["FIM", "PREFIX_ONLY", "MODES", "PSM", "SPM", "Prompt", "build_prompt", "choose_mode"]
