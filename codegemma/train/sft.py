"""Supervised fine-tuning data: chat conversations -> packed token shards with loss on model turns.

Conversations come as JSONL, one per line: {"messages": [{"role": "user"|"assistant"|"system",
"content": str}, ...]}. They are rendered with the model profile's chat template (Gemma's
`<start_of_turn>role\\n ... <end_of_turn>\\n`), and only what the model says is trained: each model
turn's text and its closing `<end_of_turn>`, never the user's words or the turn headers.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from codegemma.errors import CodegemmaError
from codegemma.textfiles import json_lines


def _chat_template(tokenizer):
    from codegemma.profiles import resolve_profile

    profile = resolve_profile(tokenizer, instruction_tuned=True)
    if profile.chat_template is None:
        raise CodegemmaError("this tokenizer has no chat tokens (<start_of_turn>/<end_of_turn>): cannot build SFT data")
    return profile, profile.chat_template


def _piece_ids(tokenizer, template) -> dict[str, int]:
    return {t: tokenizer.token_to_id(t) for t in (template.turn_start, template.turn_end)}


def _encode(tokenizer, pieces: Sequence[str], ids: dict[str, int]) -> list[int]:
    out: list[int] = []
    for piece in pieces:
        out += [ids[piece]] if piece in ids else tokenizer.encode(piece)
    return out


def tokenize_conversation(messages: Sequence[dict], tokenizer, template=None, add_bos: bool | None = None
                          ) -> tuple[list[int], list[bool]]:
    """Token ids of a conversation and, per token, whether it is trained (model-turn text + end marker)."""
    if template is None:
        profile, template = _chat_template(tokenizer)
        add_bos = profile.add_bos if add_bos is None else add_bos
    ids = _piece_ids(tokenizer, template)
    # the template checks every role and content; done first, a malformed model turn is that clear
    # error instead of a KeyError or AttributeError below
    template.pieces(messages, add_generation_prompt=False)
    tokens: list[int] = [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []
    trained: list[bool] = [False] * len(tokens)
    done: list[str] = []  # template pieces already emitted
    for i, message in enumerate(messages):
        if message.get("role") not in ("assistant", "model"):
            continue
        # everything up to this model turn's header is context, rendered by the template itself
        prompt = template.pieces(messages[:i], add_generation_prompt=True)
        if prompt[:len(done)] != done:
            # Gemma has no system turn: system text joins the first user turn, which the model turns
            # before this message were rendered without
            raise CodegemmaError("a system message after a model turn: Gemma has no system role, so system "
                                 "text goes into the first user turn; put system messages first")
        context = _encode(tokenizer, prompt[len(done):], ids)
        reply = tokenizer.encode(template.turn_text(message["content"])) + [ids[template.turn_end]]
        tokens += context + reply
        trained += [False] * len(context) + [True] * len(reply)
        done = template.pieces(messages[:i + 1], add_generation_prompt=False)
        tail = done[len(prompt):]  # [model header + text, <end_of_turn>, separator...]
        tokens += _encode(tokenizer, tail[tail.index(template.turn_end) + 1:], ids)
        trained += [False] * (len(tokens) - len(trained))
    if not any(trained):
        raise CodegemmaError("conversation has no assistant turn to train on")
    return tokens, trained


def read_conversations(path: str | Path) -> Iterable[tuple[int, list[dict]]]:
    path = Path(path)
    if not path.is_file():
        raise CodegemmaError(f"conversations file not found: {path}")
    for n, record in json_lines(path):
        messages = record.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise CodegemmaError(f"{path}:{n}: expected {{\"messages\": [{{\"role\", \"content\"}}, ...]}}")
        yield n, messages


def prepare(path: str | Path, tokenizer, seq_len: int, out_dir: str | Path, meta: dict | None = None) -> Path:
    """Tokenize and pack conversations into a shard directory (best-fit, one segment per conversation);
    `meta` goes into its index.

    A conversation longer than `seq_len` is cut at `seq_len` tokens (what remains of its model turns
    is still trained); one with nothing trained left is dropped.
    """
    from codegemma.data.packing import best_fit
    from codegemma.data.shards import ShardWriter

    profile, template = _chat_template(tokenizer)
    rows: list[tuple[list[int], list[bool]]] = []
    conversations, cut = 0, 0
    for n, messages in read_conversations(path):
        try:
            tokens, trained = tokenize_conversation(messages, tokenizer, template, profile.add_bos)
        except CodegemmaError as exc:
            raise CodegemmaError(f"{path}:{n}: {exc}") from None
        conversations += 1
        cut += len(tokens) > seq_len
        tokens, trained = tokens[:seq_len], trained[:seq_len]
        if any(trained[1:]):
            rows.append((tokens, trained))
    dropped = conversations - len(rows)
    if not rows:
        raise CodegemmaError(f"{path}: no usable conversations: none has a model turn within seq_len={seq_len} tokens")
    if cut:  # a user sizing seq_len needs to know how much of the data it kept
        warnings.warn(f"{path}: {cut} of {conversations} conversations are longer than seq_len={seq_len} tokens: "
                      f"{cut - dropped} cut there, {dropped} left out (no model turn starts within it)", stacklevel=2)
    pad = tokenizer.pad_id or 0
    writer = ShardWriter(out_dir, seq_len,
                         meta={"kind": "sft", "source": str(path), "conversations": len(rows), **(meta or {})})
    for members in best_fit([len(t) for t, _ in rows], seq_len):
        tokens = np.full(seq_len, pad, np.int32)
        segments = np.zeros(seq_len, np.int32)
        mask = np.zeros(seq_len, bool)
        at = 0
        for seg, i in enumerate(members, start=1):
            t, m = rows[i]
            tokens[at:at + len(t)], segments[at:at + len(t)], mask[at:at + len(t)] = t, seg, m
            at += len(t)
        writer.add(tokens, segments, mask)
    return writer.close()
