"""Evaluation during training: held-out loss, loss on FIM middles, single-line infilling scores.

The FIM metrics use held-out source files, not shards: each example masks one whole, non-blank
line of a file, builds its PSM or SPM prompt with the completion server's own prompt builder
(`codegemma.complete.prompt`: the file's budget shared 3:1 between prefix and suffix, cut at line
starts; the server sends SPM to FIM models by default), and
  - scores the teacher-forced loss of the middle tokens given prefix and suffix,
  - scores it again with every suffix replaced by another example's: the difference (the suffix
    gain, nats per middle token) is what the model takes from the suffix, 0 for a model that
    ignores it, which exact match at small scale cannot show, and
  - greedily generates until a newline or a FIM sentinel and scores the line: exact match, the
    edit similarity of CrossCodeEval and RepoBench, which also credits a line right in part, and
    the share of the line's suffix-only identifiers (in the text just after the line, not just
    before it) that the answer writes: what the answer took from the suffix, which a left-to-right
    answer can only guess.
The same lines can be scored left to right (order `l2r`: the prefix alone, no sentinels), the
baseline any model has without a suffix; it also scores models that have no FIM sentinels.
Examples are drawn once from a fixed seed, so every evaluation of a run (and every run of an
experiment) sees the same ones.

Beside them, a copy probe (`CopyProbe`): spans of the same held-out files, each given twice in a
row, and the loss on the second copy against the first. Infilling from a suffix takes an
in-context copying circuit (induction heads, Olsson et al. 2022); until one forms the second copy
is no cheaper than the first, whatever the FIM rate, and this metric shows when it does.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from codegemma.complete.budget import Budget
from codegemma.complete.prompt import FIM, build_prompt
from codegemma.data.pipeline import HELDOUT_REPOSITORIES
from codegemma.errors import CodegemmaError
from codegemma.eval.metrics import edit_similarity
from codegemma.fim import CODEGEMMA_SENTINELS, INFILL_ORDERS, L2R, PSM, sentinel_ids
from codegemma.kv_cache import KVCache
from codegemma.profiles import resolve_profile
from codegemma.train import distributed, losses
from codegemma.train.distributed import DistEnv
from codegemma.train.objectives import LanguageModeling
from codegemma.train.preference import write_jsonl

# Logit elements one batched forward pass of the middle loss may produce (512 MB in float32): 16
# rows of 256 tokens for an 8192-token vocabulary, 2 for Gemma's 262,144.
LOGITS_BUDGET = 2**27


# A run's greedy infilling answers of its last evaluation, in its out_dir (`answer_records`).
INFILL_ANSWERS = "infill-answers.jsonl"

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")
# "Just before" and "just after" the masked line, in characters: about what a 224-token prompt keeps
# on either side (128 and 58 tokens of some 4 characters), so the window does not depend on the order.
NEAR_PREFIX_CHARS, NEAR_SUFFIX_CHARS = 500, 250

SOURCE_SUFFIXES = (".py", ".js", ".ts", ".java", ".go", ".rs", ".c", ".h", ".cc", ".cpp", ".cs", ".kt", ".rb", ".sh")


@dataclass
class InfillExample:
    path: str
    prefix: str
    middle: str
    suffix: str


def read_files(root: str | Path, max_bytes: int = 200_000) -> list[tuple[str, str]]:
    """(path, text) of the source files under `root`, sorted by their path under `root`.

    The path is relative to `root`, or, in a held-out directory the data pipeline wrote (one
    folder per repository, listed in `repositories.json`), relative to the file's repository: the
    path line training examples carry, so an infilling prompt names a file as training did.
    """
    root = Path(root)
    listing = root / HELDOUT_REPOSITORIES
    try:
        repos = set(json.loads(listing.read_text())) if listing.is_file() else set()
    except (ValueError, TypeError) as e:
        raise CodegemmaError(f"{listing}: not a JSON list of repository folders ({e})") from None
    out = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in SOURCE_SUFFIXES):
        if path.stat().st_size > max_bytes:
            continue
        name = path.relative_to(root).as_posix()
        repo, _, inside = name.partition("/")
        try:
            out.append((inside if repo in repos and inside else name, path.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, OSError):
            continue
    return out


def single_line_examples(files: list[tuple[str, str]], n: int, seed: int = 1234) -> list[InfillExample]:
    """`n` examples, each masking one non-blank line (newline included) of a random file."""
    rng = random.Random(seed)
    candidates = [(path, text) for path, text in files if any(line.strip() for line in text.splitlines())]
    if not any(len(line.strip()) >= 2 for _, text in candidates for line in text.splitlines()):
        return []  # no line to mask (the draw below would never end)
    examples = []
    while candidates and len(examples) < n:
        path, text = rng.choice(candidates)
        lines = text.splitlines(keepends=True)
        choices = [i for i, line in enumerate(lines) if len(line.strip()) >= 2]
        if not choices:
            continue
        i = rng.choice(choices)
        examples.append(InfillExample(path, "".join(lines[:i]), lines[i], "".join(lines[i + 1:])))
    return examples


def is_exact(answer: str, example: InfillExample) -> bool:
    """The answer is the masked line, indentation included (trailing whitespace aside)."""
    return answer.rstrip() == example.middle.rstrip()


def suffix_only_identifiers(ex: InfillExample) -> set[str]:
    """The masked line's identifiers that occur just after it and not just before it: what a model
    can only take from the suffix."""
    before = set(IDENTIFIER.findall(ex.prefix[-NEAR_PREFIX_CHARS:]))
    after = set(IDENTIFIER.findall(ex.suffix[:NEAR_SUFFIX_CHARS]))
    return (set(IDENTIFIER.findall(ex.middle)) - before) & after


def answer_records(order: str, examples: list[InfillExample], answers: list[str]) -> list[dict]:
    """One JSON record per example: the order, the file and line masked, the line and the answer."""
    return [{"order": order, "path": ex.path, "line": ex.prefix.count("\n") + 1,
             "expected": ex.middle.rstrip("\n"), "answer": line, "exact": is_exact(line, ex)}
            for ex, line in zip(examples, answers, strict=True)]


class InfillScorer:
    """Tokenizes FIM examples into PSM or SPM prompts within a token budget (prefix and suffix trimmed),
    or into left-to-right prompts (L2R: the prefix alone, trimmed to the budget)."""

    def __init__(self, tokenizer, examples: list[InfillExample], max_prompt_tokens: int, add_bos: bool = True,
                 order: str = PSM):
        if order not in INFILL_ORDERS:
            raise ValueError(f"unknown infilling order {order!r}; expected one of {INFILL_ORDERS}")
        self.order = order
        self.tokenizer = tokenizer
        self.examples = examples
        self.max_prompt_tokens = max_prompt_tokens
        self.bos = [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []
        if order != L2R:
            sentinel_ids(tokenizer)  # a one-line error where the vocabulary has no FIM sentinels
            self.profile = replace(resolve_profile(tokenizer), add_bos=add_bos)
        # a left-to-right answer also ends at a sentinel where the vocabulary has them
        stops = {tokenizer.token_to_id(text) for text in CODEGEMMA_SENTINELS.all()} - {None}
        self.stop_ids = stops | ({tokenizer.eos_id} if tokenizer.eos_id is not None else set())

    def prompt(self, ex: InfillExample) -> list[int]:
        if self.order == L2R:
            # the path line and the prefix, as training saw files; the whole budget is the prefix's
            head = self.bos + self.tokenizer.encode(ex.path + "\n")
            pre = self.tokenizer.encode(ex.prefix)
            keep = max(0, self.max_prompt_tokens - len(head))
            return head + pre[max(0, len(pre) - keep):]
        return build_prompt(self.tokenizer, self.profile, ex.prefix, ex.suffix, path=ex.path,
                            budget=Budget(max_prompt_tokens=self.max_prompt_tokens), mode=FIM, order=self.order).ids

    def middle_loss(self, model: nn.Module, device: torch.device,
                    examples: list[InfillExample] | None = None, batch_size: int = 16) -> tuple[float, int]:
        """Sum of NLL over middle tokens, and their count (of `examples`, default this scorer's),
        scoring `batch_size` examples per forward pass."""
        nlls = self.middle_nlls(model, device, examples, batch_size)
        return sum(sum(row) for row in nlls), sum(len(row) for row in nlls)

    @torch.no_grad()
    def middle_nlls(self, model: nn.Module, device: torch.device,
                    examples: list[InfillExample] | None = None, batch_size: int = 16) -> list[list[float]]:
        """Each example's NLL (nats) on its middle tokens, in order (of `examples`, default this
        scorer's), scoring `batch_size` examples per forward pass."""
        rows = [(self.prompt(ex), self.tokenizer.encode(ex.middle))
                for ex in (self.examples if examples is None else examples)]
        config = distributed.model_config(model)
        if config is not None and rows:  # fewer rows at a time where [rows, width, vocab] logits would be huge
            width = max(len(p) + len(m) for p, m in rows)
            batch_size = max(1, min(batch_size, LOGITS_BUDGET // (width * config.vocab_size)))
        out: list[list[float]] = []
        for start in range(0, len(rows), batch_size):
            batch = rows[start:start + batch_size]
            # right padding: a causal model's logits at real positions never see the pad after them
            width = max(len(p) + len(m) for p, m in batch)
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            scored = torch.zeros(len(batch), width - 1, dtype=torch.bool)  # scored[i, t]: target t + 1 is middle
            for i, (prompt, middle) in enumerate(batch):
                ids[i, :len(prompt) + len(middle)] = torch.tensor(prompt + middle)
                scored[i, len(prompt) - 1:len(prompt) + len(middle) - 1] = True
            ids, scored = ids.to(device), scored.to(device)
            nll = losses.token_nll(model(ids[:, :-1]), ids[:, 1:])
            out += [nll[i][scored[i]].tolist() for i in range(len(batch))]
        return out

    def suffix_gain(self, model: nn.Module, device: torch.device,
                    true_loss: tuple[float, int] | None = None) -> float:
        """Middle loss (nats per token) with each example's suffix swapped for the next example's,
        minus the loss with the true suffixes (`middle_loss`'s result, computed if not given):
        how much the model uses the suffix."""
        true_sum, count = true_loss or self.middle_loss(model, device)
        swapped_sum, _ = self.middle_loss(model, device, self.swapped_examples())
        return (swapped_sum - true_sum) / max(count, 1)

    def swapped_examples(self) -> list[InfillExample]:
        """This scorer's examples, each with the next one's suffix (the last with the first's)."""
        n = len(self.examples)
        return [InfillExample(ex.path, ex.prefix, ex.middle, self.examples[(i + 1) % n].suffix)
                for i, ex in enumerate(self.examples)]

    def exact_match(self, model: nn.Module, device: torch.device, max_new_tokens: int,
                    batch_size: int = 16) -> tuple[int, int]:
        """Greedy single-line infilling: (exact matches, examples), `batch_size` prompts at a time."""
        hits, _ = self.line_scores(self.answers(model, device, max_new_tokens, batch_size))
        return hits, len(self.examples)

    @torch.no_grad()
    def answers(self, model: nn.Module, device: torch.device, max_new_tokens: int,
                batch_size: int = 16, examples: list[InfillExample] | None = None) -> list[str]:
        """The model's greedy line for every example (of `examples`, default this scorer's),
        `batch_size` prompts at a time."""
        examples = self.examples if examples is None else examples
        lines = []
        for start in range(0, len(examples), batch_size):
            batch = examples[start:start + batch_size]
            lines += self._greedy_lines(model, device, [self.prompt(ex) for ex in batch], max_new_tokens)
        return lines

    def line_scores(self, answers: list[str]) -> tuple[int, float]:
        """Exact matches (indentation included) of `answers` to this scorer's examples, and the sum of
        their edit similarities (CrossCodeEval's line score, on stripped text)."""
        pairs = list(zip(answers, self.examples, strict=True))
        hits = sum(is_exact(line, ex) for line, ex in pairs)
        return hits, sum(edit_similarity(line, ex.middle) for line, ex in pairs)

    def suffix_identifier_recall(self, answers: list[str]) -> float:
        """Of the examples' suffix-only identifiers (`suffix_only_identifiers`), the share that
        `answers` write (0 where the examples have none)."""
        written = total = 0
        for line, ex in zip(answers, self.examples, strict=True):
            wanted = suffix_only_identifiers(ex)
            written += len(wanted & set(IDENTIFIER.findall(line)))
            total += len(wanted)
        return written / max(total, 1)

    def _greedy_lines(self, model: nn.Module, device: torch.device, prompts: list[list[int]],
                      max_new_tokens: int) -> list[str]:
        """The first line each prompt's greedy continuation writes, ending at a newline, a stop token
        or `max_new_tokens`. Prompts are left-padded; padding has position -1, which the attention
        masks leave out, so a row's tokens are those it would get alone. Only the model's forward
        is called (not the serving engine, whose head reads the weights outside it), so this also
        runs on an FSDP-sharded model."""
        longest = max(len(p) for p in prompts)
        ids = torch.zeros(len(prompts), longest, dtype=torch.long)
        positions = torch.full((len(prompts), longest), -1, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, longest - len(prompt):] = torch.tensor(prompt)
            positions[row, longest - len(prompt):] = torch.arange(len(prompt))
        config = distributed.model_config(model)
        if config is None:
            raise ValueError(f"{type(model).__name__} is not a Gemma model: no KV cache to generate with")
        cache = KVCache(config, len(prompts), longest + max_new_tokens, device=device)
        logits = model(ids.to(device), positions=positions.to(device), cache=cache, last_only=True)
        next_position = torch.tensor([len(p) for p in prompts])
        out: list[list[int]] = [[] for _ in prompts]
        done = [False] * len(prompts)
        for _ in range(max_new_tokens):
            tokens = logits[:, -1].argmax(-1).tolist()
            for row, token in enumerate(tokens):
                if done[row]:
                    continue
                if token in self.stop_ids:
                    done[row] = True
                    continue
                out[row].append(token)
                done[row] = "\n" in self.tokenizer.decode([token])
            if all(done):
                break
            step = torch.tensor(tokens)[:, None]  # finished rows run on; their tokens are ignored
            logits = model(step.to(device), positions=next_position[:, None].to(device), cache=cache)
            next_position += 1
        return [self.tokenizer.decode(ids).split("\n")[0] for ids in out]


class CopyProbe:
    """Held-out spans of `span` tokens, each repeated once: `copy_gain` is the loss (nats/token) on
    the first copy minus that on the second. About 0 for a model that cannot copy from its
    context; a few nats once it can (the second copy is then nearly free)."""

    def __init__(self, tokenizer, files: list[tuple[str, str]], spans: int = 16, span: int = 96, seed: int = 4321):
        stream = [t for _, text in files for t in tokenizer.encode(text)]  # the files end to end
        self.span = min(span, len(stream))
        if self.span < 2:
            raise CodegemmaError("the held-out files hold too few tokens for a copy probe")
        self.bos = [tokenizer.bos_id] if tokenizer.add_bos_default and tokenizer.bos_id is not None else []
        rng = random.Random(seed)
        starts = [rng.randrange(len(stream) - self.span + 1) for _ in range(spans)]
        self.rows = [stream[s:s + self.span] for s in starts]

    @torch.no_grad()
    def copy_gain(self, model: nn.Module, device: torch.device) -> float:
        rows = torch.tensor([self.bos + row + row for row in self.rows], device=device)
        nll = losses.token_nll(model(rows[:, :-1]), rows[:, 1:])  # nll[:, i] scores token i + 1
        # Both means cover a copy's tokens after its first one (that one follows different text
        # in the two copies): nll[:, first:second - 1] for the first copy, nll[:, second:] the second.
        first, second = len(self.bos), len(self.bos) + self.span
        return (nll[:, first:second - 1].mean() - nll[:, second:].mean()).item()


def check_fits_context(max_prompt_tokens: int, max_new_tokens: int, context: int, what: str):
    """An infilling prompt and its answer must fit the model's context: a RoPE model was never
    trained to attend farther back, so a score there would measure extrapolation, not infilling."""
    if max_prompt_tokens + max_new_tokens > context:
        raise CodegemmaError(f"{what}: a prompt of {max_prompt_tokens} tokens and an answer of {max_new_tokens} "
                             f"exceed the model's context of {context} tokens")


def infill_scorers(tokenizer, files_dir: str | Path, examples: int, max_prompt_tokens: int,
                   orders: list[str]) -> tuple[list[InfillScorer], CopyProbe]:
    """One scorer per FIM order over the same `examples` lines masked in the source files under
    `files_dir`, and a copy probe on those files whose repeated spans fit `max_prompt_tokens`
    (a one-line error when there are no files)."""
    files = read_files(files_dir) if Path(files_dir).is_dir() else []
    if not files:
        raise CodegemmaError(f"no source files under {files_dir}")
    chosen = single_line_examples(files, examples)
    if not chosen:
        raise CodegemmaError(f"no line of two or more characters to mask in the source files under {files_dir}")
    scorers = [InfillScorer(tokenizer, chosen, max_prompt_tokens, add_bos=tokenizer.add_bos_default, order=order)
               for order in orders]
    return scorers, CopyProbe(tokenizer, files, span=min(96, max(8, (max_prompt_tokens - 1) // 2)))


class Evaluator:
    """Called by the trainer with the model in eval mode under no_grad."""

    def __init__(self, env: DistEnv, eval_reader_factory=None, batches: int = 8,
                 scorers: list[InfillScorer] = (), max_new_tokens: int = 48, copy_probe: CopyProbe | None = None,
                 answers_path: str | Path | None = None, share_examples: bool = False, held_out=None):
        self.env = env
        # (loss sum, count, sums of further metrics) of a held-out batch: the objective's own
        # (`objectives.*.held_out`), by default the next-token loss
        self.held_out = held_out or LanguageModeling().held_out
        # Each process scores every world_size-th infilling example and the sums and lines are
        # gathered: for a model every process holds whole (DDP). An FSDP-sharded model needs every
        # process in every forward pass, so there each one scores all of them.
        self.share_examples = share_examples and env.distributed
        # Where the main process writes each evaluation's greedy lines (`answer_records`, every
        # order's), replacing the last evaluation's: a run's file holds its final answers.
        self.answers_path = answers_path
        self.eval_reader_factory = eval_reader_factory
        self.batches = batches
        self.scorers = list(scorers)
        self.max_new_tokens = max_new_tokens
        self.copy_probe = copy_probe

    def __call__(self, model: nn.Module) -> dict:
        device = self.env.device
        result = {}
        if self.eval_reader_factory is not None:
            reader = self.eval_reader_factory()
            sums: dict[str, torch.Tensor] = {}
            for _ in range(self.batches):
                s, n, extra = self.held_out(model, _to(next(reader), device))
                for key, value in {"loss": s, "count": n, **extra}.items():
                    sums[key] = sums.get(key, 0) + value.detach().double()
            names = list(sums)
            totals = distributed.all_reduce_sum(torch.stack([sums[k] for k in names]), self.env)
            count = totals[names.index("count")].clamp(min=1)
            result.update({k: (v / count).item() for k, v in zip(names, totals) if k != "count"})
        inner = getattr(model, "module", model)
        records = []
        for scorer in self.scorers:
            tag = "" if scorer.order == PSM else f"_{scorer.order}"  # PSM keeps the plain names
            nlls = scorer.middle_nlls(inner, device, self._share(scorer.examples))
            # the first token apart: where a prompt's order makes the prefix's end hard to find
            # (PSM: behind the suffix), it costs far more than the rest of the line
            s, n = sum(sum(row) for row in nlls), sum(len(row) for row in nlls)
            first, starts = sum(row[0] for row in nlls if row), sum(1 for row in nlls if row)
            if scorer.order != L2R:  # a left-to-right prompt has no suffix to gain from
                swapped, _ = scorer.middle_loss(inner, device, self._share(scorer.swapped_examples()))
                s, n, first, starts, swapped = self._sum(s, n, first, starts, swapped)
                result[f"fim_suffix_gain{tag}"] = (swapped - s) / max(n, 1)
            else:
                s, n, first, starts = self._sum(s, n, first, starts)
            result[f"fim_middle_loss{tag}"] = s / max(n, 1)
            result[f"fim_first_token_loss{tag}"] = first / max(starts, 1)
            answers = self._gathered(scorer.answers(inner, device, self.max_new_tokens,
                                                    examples=self._share(scorer.examples)))
            records += answer_records(scorer.order, scorer.examples, answers)
            hits, similarity = scorer.line_scores(answers)
            result[f"infill_exact_match{tag}"] = hits / max(len(answers), 1)
            result[f"infill_edit_similarity{tag}"] = similarity / max(len(answers), 1)
            result[f"infill_suffix_identifier_recall{tag}"] = scorer.suffix_identifier_recall(answers)
        if self.copy_probe is not None:
            result["copy_gain"] = self.copy_probe.copy_gain(inner, device)
        if self.answers_path and records and self.env.is_main:
            write_jsonl(self.answers_path, records)
        return result

    def _share(self, examples: list) -> list:
        """This process's share of `examples`."""
        return examples[self.env.rank::self.env.world_size] if self.share_examples else examples

    def _sum(self, *values: float) -> list[float]:
        """Each value summed over the processes' shares."""
        if not self.share_examples:
            return list(values)
        total = torch.tensor(values, dtype=torch.float64, device=self.env.device)
        return distributed.all_reduce_sum(total, self.env).tolist()

    def _gathered(self, lines: list[str]) -> list[str]:
        """Every process's lines, back in the examples' order (the shares interleave)."""
        if not self.share_examples:
            return lines
        parts = distributed.gather_objects(lines, self.env)
        out: list[str] = [""] * sum(len(part) for part in parts)
        for rank, part in enumerate(parts):
            out[rank::self.env.world_size] = part
        return out


def _to(batch: dict, device: torch.device) -> dict:
    """A batch's tensors on `device` (a DPO batch nests its chosen and rejected rows)."""
    return {k: _to(v, device) if isinstance(v, dict) else v.to(device) for k, v in batch.items()}


def unigram_baseline(train_shards: str | Path, eval_shards: str | Path, vocab_size: int) -> float:
    """Held-out loss (nats/token) of the best context-free model: training-set token frequencies
    (add-one smoothed), scored on the eval shards' trained targets. A model that learned nothing
    about context cannot beat it."""
    import numpy as np

    from codegemma.data.shards import ShardDataset

    def targets(path):
        ds = ShardDataset(path)
        for i in range(len(ds)):
            row = ds[i]
            seg, mask, tok = row["segment_ids"], row["loss_mask"], row["tokens"]
            trained = mask[1:] & (seg[1:] == seg[:-1]) & (seg[:-1] != 0)
            yield tok[1:][trained]

    counts = np.ones(vocab_size, dtype=np.float64)
    for t in targets(train_shards):
        counts += np.bincount(t, minlength=vocab_size)[:vocab_size]
    logp = np.log(counts / counts.sum())
    total, n = 0.0, 0
    for t in targets(eval_shards):
        total -= logp[t].sum()
        n += len(t)
    return total / max(n, 1)
