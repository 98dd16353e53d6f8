"""Preference data for DPO: pairs from execution feedback, tokenized into aligned shard directories.

Execution feedback: for each problem, samples whose tests passed are preferred over samples whose
tests failed. Sample records (JSONL) carry `task_id`, `prompt`, `completion` and a verdict, either
`passed: bool` or `status`/`result` equal to "passed" / "ok" (what `codegemma eval` and the sandbox
report). Pairs are {"prompt", "chosen", "rejected", "task_id"}.

Tokenized pairs live in `<dir>/chosen` and `<dir>/rejected`, two shard directories with the same
row order; `PairReader` reads both with one shuffle so row i of each batch is one pair.
"""

from __future__ import annotations

import json
import random
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import numpy as np

from codegemma.data.atomic import file_target, write_text
from codegemma.errors import CodegemmaError
from codegemma.textfiles import json_lines

_PASS_WORDS = {"passed", "pass", "ok", "success"}


def _numbered_records(path: str | Path) -> Iterable[tuple[int, dict]]:
    """(line number, object) for every non-blank line: blank lines still count, so an error names
    the line an editor shows."""
    path = Path(path)
    if not path.is_file():
        raise CodegemmaError(f"file not found: {path}")
    yield from json_lines(path)


def read_jsonl(path: str | Path) -> list[dict]:
    return [record for _, record in _numbered_records(path)]


def jsonl_target(path: str | Path) -> Path:
    """`path` as a file to write JSONL to; a directory there is an error (checked before work is done)."""
    return file_target(path, ".jsonl file")


def write_jsonl(path: str | Path, records: Iterable[dict]) -> Path:
    path = jsonl_target(path)
    write_text(path, "".join(json.dumps(record) + "\n" for record in records))
    return path


def passed(sample: dict) -> bool:
    if "passed" in sample:
        return bool(sample["passed"])
    verdict = sample.get("status", sample.get("result"))
    if verdict is None:
        raise CodegemmaError(f"sample {sample.get('task_id')!r} has no verdict (passed / status / result)")
    return str(verdict).lower() in _PASS_WORDS


def _distinct_completions(samples: list[dict]) -> list[dict]:
    first: dict[str, dict] = {}
    for sample in samples:
        # an empty completion (a model that stopped at once) has no tokens to score: as a text pair
        # its log-probability is 0 under every model, and `prepare` refuses it
        if sample["completion"]:
            first.setdefault(sample["completion"], sample)
    return list(first.values())


def _checked_sample(sample: dict, where: str) -> dict:
    for key in ("task_id", "prompt", "completion"):
        if key not in sample:
            raise CodegemmaError(f"{where}: sample is missing {key!r}")
    try:
        passed(sample)
    except CodegemmaError as exc:
        raise CodegemmaError(f"{where}: {exc}") from None
    return sample


def read_samples(path: str | Path) -> list[dict]:
    """Evaluation samples (JSONL: task_id, prompt, completion and a verdict), a bad one named by the
    file and the line an editor shows."""
    return [_checked_sample(sample, f"{path}:{n}") for n, sample in _numbered_records(path)]


def pairs_from_samples(samples: list[dict], max_pairs_per_task: int = 4, seed: int = 0) -> list[dict]:
    """Up to `max_pairs_per_task` (passing, failing) pairs per problem, drawn without repeats."""
    by_task: dict[str, dict[bool, list[dict]]] = defaultdict(lambda: {True: [], False: []})
    for i, sample in enumerate(samples):
        by_task[str(sample["task_id"])][passed(_checked_sample(sample, f"sample {i}"))].append(sample)
    rng = random.Random(seed)
    pairs = []
    for task_id in sorted(by_task):
        # samples drawn at a temperature often repeat a text: the same pair twice would weigh it twice
        # and spend the task's pairs on copies
        good, bad = (_distinct_completions(by_task[task_id][ok]) for ok in (True, False))
        combos = [(g, b) for g in range(len(good)) for b in range(len(bad))]
        # distinct completions only: a pair of identical texts teaches nothing
        combos = [(g, b) for g, b in combos if good[g]["completion"] != bad[b]["completion"]]
        for g, b in rng.sample(combos, min(max_pairs_per_task, len(combos))):
            pairs.append({"task_id": task_id, "prompt": good[g]["prompt"], "chosen": good[g]["completion"],
                          "rejected": bad[b]["completion"]})
    return pairs


def _response_text(response, where: str) -> str:
    """A pair's chosen or rejected side: a string, or (conversational pairs) one assistant message."""
    if isinstance(response, list) and len(response) == 1 and isinstance(response[0], dict):
        response = response[0].get("content")
    if not isinstance(response, str):
        raise CodegemmaError(f"{where}: must be a string or a list holding one assistant message")
    return response


def tokenize_pair_side(prompt, response: str, tokenizer, where: str) -> tuple[list[int], list[bool]]:
    """Token ids of prompt + response and, per token, whether it is the response (trained).

    A string prompt is text the response continues, as `codegemma eval` samples it: the prompt's
    tokens, then the response's, nothing added between or after. A list of chat messages is a
    conversation the response answers as the model's turn, through the chat template.
    """
    from codegemma.profiles import resolve_profile
    from codegemma.train.sft import tokenize_conversation

    if isinstance(prompt, str):
        head = [tokenizer.bos_id] if resolve_profile(tokenizer).add_bos and tokenizer.bos_id is not None else []
        context, reply = head + tokenizer.encode(prompt), tokenizer.encode(response)
        if not reply:
            raise CodegemmaError(f"{where}: empty response")
        return context + reply, [False] * len(context) + [True] * len(reply)
    if isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
        try:
            tokens, trained = tokenize_conversation(prompt + [{"role": "assistant", "content": response}], tokenizer)
        except CodegemmaError as exc:
            raise CodegemmaError(f"{where}: {exc}") from None
        # model turns inside the prompt are context, not the response: only the last run of trained
        # tokens (the answer and its <end_of_turn>) counts in the log-probabilities
        start = len(trained) - trained[::-1].index(True)  # just after the answer's <end_of_turn>
        while start and trained[start - 1]:
            start -= 1
        return tokens, [False] * start + trained[start:]
    raise CodegemmaError(f"{where}: prompt must be a string (text to continue) or a list of chat messages")


def prepare(path: str | Path, tokenizer, seq_len: int, out_dir: str | Path, meta: dict | None = None) -> Path:
    """Tokenize pairs into `out_dir/{chosen,rejected}`, the response tokens trained; `meta` goes into
    both indexes.

    Pairs follow the two usual layouts: text (`prompt`, `chosen`, `rejected` strings; the responses
    continue the prompt, as `dpo-pairs` writes them from `codegemma eval` samples) and
    conversational (`prompt` a list of chat messages; `chosen`/`rejected` the model's answer, a
    string or one assistant message). Pairs where either side exceeds `seq_len` tokens are dropped,
    since truncating one side would compare a cut response with a whole one.
    """
    from codegemma.data.shards import ShardWriter

    rows, pairs = [], 0
    for n, pair in _numbered_records(path):
        pairs += 1
        if not all(k in pair for k in ("prompt", "chosen", "rejected")):
            raise CodegemmaError(f"{path}:{n}: a pair needs prompt, chosen and rejected")
        texts = [_response_text(pair[key], f"{path}:{n}: {key}") for key in ("chosen", "rejected")]
        sides = [tokenize_pair_side(pair["prompt"], text, tokenizer, f"{path}:{n}") for text in texts]
        # compared as tokens: texts that differ only in what the chat template trims are the same
        # answer, and such a pair's loss is log 2 whatever the model does: a mistake in the data
        if sides[0] == sides[1]:
            raise CodegemmaError(f"{path}:{n}: chosen and rejected are the same response")
        if all(len(t) <= seq_len for t, _ in sides):
            rows.append(sides)
    if not rows:
        raise CodegemmaError(f"{path}: no pair fits in seq_len={seq_len}")
    if len(rows) < pairs:
        warnings.warn(f"{path}: {pairs - len(rows)} of {pairs} pairs are longer than seq_len={seq_len} tokens "
                      "and are left out", stacklevel=2)
    out_dir = Path(out_dir)
    pad = tokenizer.pad_id or 0
    for side, name in enumerate(("chosen", "rejected")):
        writer = ShardWriter(out_dir / name, seq_len,
                             meta={"kind": "dpo", "side": name, "pairs": len(rows),
                                   "too_long": pairs - len(rows), **(meta or {})})
        for row in rows:
            tokens, trained = row[side]
            t = np.full(seq_len, pad, np.int32)
            seg = np.zeros(seq_len, np.int32)
            mask = np.zeros(seq_len, bool)
            t[:len(tokens)], seg[:len(tokens)], mask[:len(tokens)] = tokens, 1, trained
            writer.add(t, seg, mask)
        writer.close()
    return out_dir


class PairReader:
    """Batches {"chosen": {...}, "rejected": {...}}: two shard readers sharing one shuffle."""

    def __init__(self, path: str | Path, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, grad_accum: int = 1):
        from codegemma.data.shards import ShardReader

        path = Path(path)
        self.readers = {side: ShardReader(path / side, batch_size, rank, world_size, seed, shuffle, grad_accum)
                        for side in ("chosen", "rejected")}
        if len(self.readers["chosen"].dataset) != len(self.readers["rejected"].dataset):
            raise CodegemmaError(f"{path}: chosen and rejected shards differ in length")

    @property
    def seq_len(self) -> int:
        return self.readers["chosen"].seq_len

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return {side: next(reader) for side, reader in self.readers.items()}

    def state_dict(self) -> dict:
        return {side: reader.state_dict() for side, reader in self.readers.items()}

    def load_state_dict(self, state: dict) -> None:
        for side, reader in self.readers.items():
            reader.load_state_dict(state[side])
