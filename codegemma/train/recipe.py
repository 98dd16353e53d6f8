"""Run recipes: one TOML file describes a training run, from model and data to schedule and logging.

Every section maps to a dataclass below; unknown keys are errors so a typo never silently falls back
to a default. Relative paths inside a recipe are taken relative to the current directory (the
command is run from the repository root), matching how the CLI reports them.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from codegemma import toml_compat as tomllib
from codegemma.config import PRESETS
from codegemma.errors import CodegemmaError
from codegemma.fim import INFILL_ORDERS

OBJECTIVES = ("pretrain", "sft", "dpo")


@dataclass
class ModelSection:
    preset: str | None = "tiny-gemma"  # a codegemma.config preset, used when `init` is empty
    init: str | None = None  # start from a checkpoint: GGUF file or HF directory
    # ModelConfig fields over the preset. With `init`, the shape the start must have (checked when it
    # loads): a start another command builds is then described in the recipe, and preset + overrides
    # give its config to tools that need only the shape (bench/train.py) before it is built
    overrides: dict[str, Any] = field(default_factory=dict)
    init_std: float = 0.02
    # continued pretraining: turn these existing vocabulary entries into the FIM sentinels
    fim_sentinels_from: list[str] = field(default_factory=list)
    # parameters left as they start (glob patterns over names, e.g. "layers.*.self_attn.*"): the
    # optimizer never sees them, and their weight gradients are not computed
    freeze: list[str] = field(default_factory=list)


@dataclass
class DataSection:
    train: str = ""  # shard directory (pretrain), conversations JSONL (sft), preference pairs JSONL (dpo)
    eval: str = ""  # held-out data of the same kind
    seq_len: int = 256
    fim_rate: float = 0.0  # recorded for the shard builder (data recipe); shards carry FIM already
    spm_rate: float = 0.5
    # weight of the loss on a PSM middle's first token, the one PSM has to find behind the suffix;
    # 1 trains it as any other token (docs/experiments, "Weighing the PSM middle's first token")
    psm_first_token_weight: float = 1.0
    # weight of KL(left to right || PSM) on each PSM middle's first tokens: the model's own
    # distribution reading prefix and middle left to right taught to the PSM middle (docs/experiments,
    # "Teaching PSM the prefix's continuation"); 0 leaves it out
    psm_prefix_distill_weight: float = 0.0
    # how many of a middle's first tokens it teaches: 1 takes the teacher from the same pass (the
    # prefix's last token), more need a second pass without gradient over the left-to-right views
    psm_prefix_distill_tokens: int = 1
    data_recipe: str = ""  # recipes/data/*.toml the shards were built from (documentation only)


@dataclass
class OptimSection:
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0


@dataclass
class TrainSection:
    steps: int = 1000
    batch_size: int = 8  # per process, per micro-batch
    grad_accum: int = 1
    precision: str = "auto"  # auto: bf16 autocast on GPUs with native bf16 (Ampere on), else float32; or "fp32", "bf16" (on a CPU: bf16 products)
    compile: bool = False
    activation_checkpointing: bool = False
    device: str = "auto"
    threads: int = 0  # CPU threads for torch (0: torch's default, one per core)


@dataclass
class EvalSection:
    every: int = 0  # 0: only at the end
    batches: int = 8
    infill_files: str = ""  # directory of held-out source files for FIM-middle loss and infilling EM
    infill_examples: int = 64
    infill_max_new_tokens: int = 48
    infill_max_prompt_tokens: int = 512
    infill_orders: list[str] = field(default_factory=lambda: ["psm"])  # prompt orders scored: psm, spm, l2r


@dataclass
class LogSection:
    every: int = 10
    tensorboard: bool = True
    plots: bool = True
    progress: bool = True
    peak_flops: float = 0.0  # per device; 0 = look it up (GPU) or estimate (CPU)


@dataclass
class CheckpointSection:
    every: int = 0  # 0: only at the end
    keep: int = 2
    # "file": one file written by the main process; "sharded": a directory where each process writes
    # its own shards (torch.distributed.checkpoint); "auto": sharded under FSDP, else a file
    format: str = "auto"


@dataclass
class DistributedSection:
    strategy: str = "ddp"  # ddp or fsdp (only used under torchrun)


@dataclass
class LoraSection:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


@dataclass
class DpoSection:
    beta: float = 0.1


@dataclass
class Recipe:
    name: str = "run"
    objective: str = "pretrain"
    seed: int = 0
    out_dir: str = "runs/run"
    tokenizer: str = ""  # tokenizer.json, HF directory, GGUF or "default" (the default model's); "": the `init` checkpoint's
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    log: LogSection = field(default_factory=LogSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    distributed: DistributedSection = field(default_factory=DistributedSection)
    lora: LoraSection = field(default_factory=LoraSection)
    dpo: DpoSection = field(default_factory=DpoSection)

    def validate(self, where: str = "recipe") -> "Recipe":
        if self.objective not in OBJECTIVES:
            raise CodegemmaError(f"{where}: objective {self.objective!r} is not one of {OBJECTIVES}")
        if self.distributed.strategy not in ("ddp", "fsdp"):
            raise CodegemmaError(f"{where}: distributed.strategy must be 'ddp' or 'fsdp'")
        if self.checkpoint.format not in ("auto", "file", "sharded"):
            raise CodegemmaError(f"{where}: checkpoint.format must be 'auto', 'file' or 'sharded'")
        if self.train.precision not in ("auto", "fp32", "bf16"):
            raise CodegemmaError(f"{where}: train.precision must be auto, fp32 or bf16")
        if not _device_name(self.train.device):
            raise CodegemmaError(f"{where}: train.device must be auto, cpu, cuda or cuda:N (or another torch "
                                 f"device), not {self.train.device!r}")
        for name in ("steps", "batch_size", "grad_accum"):
            if getattr(self.train, name) < 1:
                raise CodegemmaError(f"{where}: train.{name} must be at least 1")
        for name, ok, rule in self._ranges():
            if not ok:
                raise CodegemmaError(f"{where}: {name} must be {rule}")
        if self.data.seq_len < 2:
            raise CodegemmaError(f"{where}: data.seq_len must be at least 2")
        if self.model.preset and self.model.preset not in PRESETS:
            # checked with `init` set too: the preset then still gives tools the model's shape
            raise CodegemmaError(f"{where}: model.preset {self.model.preset!r} is not one of "
                                 f"{', '.join(sorted(PRESETS))}")
        if self.model.freeze and self.lora.enabled:
            raise CodegemmaError(f"{where}: model.freeze and lora.enabled both choose what trains; use one")
        self._check_infill_orders(where)
        return self

    def _check_infill_orders(self, where: str) -> None:
        orders = self.eval.infill_orders
        names = ", ".join(repr(o) for o in INFILL_ORDERS)
        bad = [o for o in orders if o not in INFILL_ORDERS]
        if bad:
            raise CodegemmaError(f"{where}: eval.infill_orders must list some of {names}, not {bad}")
        repeated = sorted({o for o in orders if orders.count(o) > 1})
        # a repeated order is generated and scored again under the same metric names: twice the
        # evaluation time for nothing, and likely a typo for another order
        if repeated:
            raise CodegemmaError(f"{where}: eval.infill_orders lists {repeated} more than once")
        if self.eval.infill_files and not orders:
            # with held-out files but no order, the run would evaluate and report no infilling at all
            raise CodegemmaError(f"{where}: eval.infill_orders is empty while eval.infill_files is set; "
                                 f"list some of {names} (or leave eval.infill_files empty)")

    def _ranges(self):
        """(key, whether its value is in range, the range in words) for the numbers with a range;
        out of it, a run would fail part way (a zero log interval) or train on nonsense (a negative
        learning rate)."""
        o, t, e = self.optim, self.train, self.eval
        unit = "in [0, 1]"
        return [
            ("seed", 0 <= self.seed < 2**32, "in [0, 2**32)"),  # numpy's seed range
            ("optim.lr", o.lr > 0, "positive"),
            ("optim.min_lr_ratio", 0 <= o.min_lr_ratio <= 1, unit),
            ("optim.warmup_steps", o.warmup_steps >= 0, "0 or more"),
            ("optim.weight_decay", o.weight_decay >= 0, "0 or more"),
            ("optim.betas", len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "two numbers in [0, 1)"),
            ("optim.eps", o.eps > 0, "positive"),
            ("optim.grad_clip", o.grad_clip >= 0, "0 (no clipping) or more"),
            ("data.fim_rate", 0 <= self.data.fim_rate <= 1, unit),
            ("data.spm_rate", 0 <= self.data.spm_rate <= 1, unit),
            ("data.psm_first_token_weight", self.data.psm_first_token_weight >= 0, "0 or more"),
            ("data.psm_prefix_distill_weight", self.data.psm_prefix_distill_weight >= 0, "0 or more"),
            ("data.psm_prefix_distill_tokens", self.data.psm_prefix_distill_tokens >= 1, "at least 1"),
            ("model.init_std", self.model.init_std > 0, "positive"),
            ("train.threads", t.threads >= 0, "0 (torch's default) or more"),
            ("eval.every", e.every >= 0, "0 (only at the end) or more"),
            ("eval.batches", e.batches >= 1, "at least 1"),
            ("eval.infill_examples", e.infill_examples >= 1, "at least 1"),
            ("eval.infill_max_new_tokens", e.infill_max_new_tokens >= 1, "at least 1"),
            ("eval.infill_max_prompt_tokens", e.infill_max_prompt_tokens >= 1, "at least 1"),
            ("log.every", self.log.every >= 1, "at least 1"),
            ("log.peak_flops", self.log.peak_flops >= 0, "0 (estimated) or more"),
            ("checkpoint.every", self.checkpoint.every >= 0, "0 (only at the end) or more"),
            ("checkpoint.keep", self.checkpoint.keep >= 0, "0 (keep all) or more"),
            ("lora.r", self.lora.r >= 1, "at least 1"),
            ("lora.alpha", self.lora.alpha > 0, "positive"),
            ("lora.dropout", 0 <= self.lora.dropout < 1, "in [0, 1)"),
            ("dpo.beta", self.dpo.beta > 0, "positive"),
        ]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _device_name(name: str) -> bool:
    if name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit()):
        return True
    import torch

    try:
        torch.device(name)
    except (RuntimeError, ValueError):
        return False
    return True


def _build(cls, data: dict, where: str):
    names = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - names)
    if unknown:
        raise CodegemmaError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(names)}")
    defaults = cls()
    kwargs = {}
    for key, value in data.items():
        default = getattr(defaults, key)
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise CodegemmaError(f"{where}: [{key}] must be a table")
            kwargs[key] = _build(type(default), value, f"{where} [{key}]")
        else:
            kwargs[key] = _checked(value, default, f"{where}: {key}", _item_type(hints[key]))
    return cls(**kwargs)


def _item_type(hint) -> type | None:
    """The element type of a list or tuple field (`list[str]`: str), else None."""
    args = {a for a in typing.get_args(hint) if a is not Ellipsis}
    return args.pop() if typing.get_origin(hint) in (list, tuple) and len(args) == 1 else None


def _checked(value, default, where: str, item: type | None = None):
    """`value` if it has the type of the field's default (ints are fine where floats are expected,
    and numbers must be finite: an infinite learning rate or beta passes every range check);
    lists and tuples also need items of the field's element type."""
    if default is None or isinstance(default, dict):
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            raise CodegemmaError(f"{where} must be a finite number, got {value!r}")
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, list)
        if ok and item is not None:
            value = [_checked(v, item(), f"{where}[{i}]") for i, v in enumerate(value)]
        value = type(default)(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise CodegemmaError(f"{where} must be {type(default).__name__}, got {value!r}")
    return value


def from_dict(data: dict, where: str = "recipe") -> Recipe:
    return _build(Recipe, data, where).validate(where)


def set_override(data: dict, dotted: str) -> None:
    """Apply one `section.key=value` command-line override (value parsed as TOML, else a string)."""
    key, sep, value = dotted.partition("=")
    if not sep:
        raise CodegemmaError(f"override {dotted!r} is not of the form section.key=value")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise CodegemmaError(f"override {key!r}: {part!r} is not a section")
    node[parts[-1]] = parsed


def missing_inputs(recipe: Recipe) -> list[str]:
    """`section.key path` for each file or directory the recipe reads that is not there (the default
    model and presets, which need no file, aside), so a run can name them all before it starts."""
    tokenizer = "" if recipe.tokenizer == "default" else recipe.tokenizer
    named = [("tokenizer", tokenizer), ("data.train", recipe.data.train), ("data.eval", recipe.data.eval),
             ("eval.infill_files", recipe.eval.infill_files)]
    if recipe.model.init not in (None, "", "default") and recipe.model.init not in PRESETS:
        named.insert(0, ("model.init", recipe.model.init))
    return [f"{key} {value}" for key, value in named if value and not Path(value).exists()]


def load(path: str | Path, overrides: list[str] = ()) -> Recipe:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CodegemmaError(f"recipe not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise CodegemmaError(f"{path}: not a UTF-8 text file, as TOML must be ({exc.reason} at byte "
                             f"{exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise CodegemmaError(f"{path}: invalid TOML: {exc}") from None
    for item in overrides:
        set_override(data, item)
    data.setdefault("name", path.stem)
    return from_dict(data, str(path))
