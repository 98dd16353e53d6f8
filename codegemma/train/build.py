"""Assemble a run from its recipe: tokenizer, model (fresh or from a checkpoint) and data readers."""

from __future__ import annotations

import fnmatch
import math
import typing
import warnings
from pathlib import Path

import torch

from codegemma.checkpoints.loading import empty_model
from codegemma.config import ModelConfig, preset
from codegemma.errors import CodegemmaError
from codegemma.fim import CODEGEMMA_SENTINELS
from codegemma.model import Gemma
from codegemma.tokenizer import Tokenizer, with_fim_sentinels
from codegemma.train.distributed import DistEnv
from codegemma.train.recipe import Recipe


def load_tokenizer(spec: str | Path) -> Tokenizer:
    """A tokenizer.json / tokenizer.model file, a Hugging Face directory, a GGUF file or `default`,
    read as the data pipeline reads it."""
    from codegemma.data.samples import load_tokenizer as load

    return load(str(spec))


# the numeric ModelConfig fields that may be 0; every other one is a size, count, scale or cap,
# where 0 or less is no model (n_heads = 0 ended in a ZeroDivisionError)
_TOKEN_IDS = ("bos_id", "eos_id", "pad_id")


def checked_overrides(overrides: dict) -> dict:
    """`model.overrides` with each known field's value of the field's type and in its range (ints
    where floats are expected become floats); names that are no field are left to the caller.

    The recipe loader takes the table as it is, and ModelConfig does not check types: a quoted
    `d_model = "256"` or `n_layers = 6.0` otherwise ends in a TypeError deep inside torch, and
    `qk_norm = "no"` or `n_layers = true` build a different model without any error."""
    hints = typing.get_type_hints(ModelConfig)
    checked = {}
    for key, value in overrides.items():
        if key not in hints:
            checked[key] = value
            continue
        hint = hints[key]
        optional = type(None) in typing.get_args(hint)
        kind = next((a for a in typing.get_args(hint) if a is not type(None)), hint) if optional else hint
        where = f"model.overrides.{key}"
        if typing.get_origin(kind) is list:
            if not isinstance(value, list) or not all(v in ("global", "local") for v in value):
                raise CodegemmaError(f'{where} must be a list of "global" / "local", got {value!r}')
        elif kind is bool:
            if not isinstance(value, bool):
                raise CodegemmaError(f"{where} must be true or false, got {value!r}")
        elif kind in (int, float):
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or (kind is int and not isinstance(value, int)) or not math.isfinite(value):
                raise CodegemmaError(f"{where} must be {'an integer' if kind is int else 'a finite number'}, "
                                     f"got {value!r}")
            value = float(value) if kind is float else value
            if key in _TOKEN_IDS and value < 0:
                raise CodegemmaError(f"{where} must be a token id (0 or more), got {value!r}")
            if key not in _TOKEN_IDS and value <= 0:
                raise CodegemmaError(f"{where} must be positive, got {value!r}")
        elif not isinstance(value, kind):
            raise CodegemmaError(f"{where} must be {kind.__name__}, got {value!r}")
        checked[key] = value
    return checked


def model_config(recipe: Recipe, tokenizer: Tokenizer | None) -> ModelConfig:
    if not recipe.model.preset:
        raise CodegemmaError("recipe [model] needs `preset` or `init`")
    base = preset(recipe.model.preset).to_dict()
    overrides = checked_overrides(recipe.model.overrides)
    unknown = sorted(set(overrides) - set(base))
    if unknown:
        raise CodegemmaError(f"model.overrides: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not "
                             f"a model field; fields: {', '.join(base)}")
    if tokenizer is not None:
        overrides.setdefault("vocab_size", tokenizer.vocab_size)
        for name in ("bos", "eos", "pad"):
            if tokenizer.special.get(name) is not None:
                overrides.setdefault(f"{name}_id", tokenizer.special[name])
    n_layers = overrides.get("n_layers", base["n_layers"])
    if "n_layers" in overrides and "layer_types" not in overrides:
        from codegemma.config import gemma2_layer_types, gemma3_layer_types

        family = overrides.get("family", base["family"])
        overrides["layer_types"] = {"gemma2": gemma2_layer_types, "gemma3": gemma3_layer_types}.get(
            family, lambda n: ["global"] * n)(n_layers)
    return ModelConfig.from_dict({**base, **overrides})


def build_model(recipe: Recipe, tokenizer: Tokenizer | None,
                weights: bool = True) -> tuple[Gemma, ModelConfig, Tokenizer | None]:
    """A float32 model in training mode: from `model.init` if given, else freshly initialised.

    `weights=False` builds it on the meta device, neither read nor initialised: the other processes
    of a distributed run get their weights from the main process (`Trainer`)."""
    if recipe.model.init:
        from codegemma.checkpoints import load

        checked_overrides(recipe.model.overrides)  # before a checkpoint that may take minutes to load
        loaded = load(recipe.model.init, dtype="float32", weights=weights, decoding_aids=False)
        model, config = loaded.model, loaded.config
        check_start_shape(recipe, config)
        tokenizer = tokenizer or loaded.tokenizer
        if recipe.model.fim_sentinels_from:
            tokenizer = add_fim_sentinels(model, tokenizer, recipe.model.fim_sentinels_from)
    else:
        config = model_config(recipe, tokenizer)
        if weights:
            model = Gemma(config)
            model.init_weights(std=recipe.model.init_std, generator=torch.Generator().manual_seed(recipe.seed))
        else:
            model = empty_model(config)
        if recipe.model.fim_sentinels_from:
            # a fresh model over a vocabulary without sentinels (Gemma's, from scratch): every row is
            # a fresh draw already, so only the tokenizer changes; ignoring the setting instead left the
            # run refusing shards built with it, asking for the very setting the recipe gives
            if tokenizer is None:
                raise CodegemmaError("model.fim_sentinels_from needs the run's tokenizer (`tokenizer`)")
            check_fim_rows(tokenizer, recipe.model.fim_sentinels_from, len(model.embed_tokens.weight))
            tokenizer = with_fim_sentinels(tokenizer, recipe.model.fim_sentinels_from, "model.fim_sentinels_from")
    freeze(model, recipe.model.freeze)
    if recipe.model.fim_sentinels_from and not model.embed_tokens.weight.requires_grad and weights:
        warnings.warn("model.freeze keeps embed_tokens as it starts: the FIM sentinels' rows "
                      "(model.fim_sentinels_from), fresh random draws, will not train", stacklevel=2)
    return model.train(), config, tokenizer


def check_start_shape(recipe: Recipe, config: ModelConfig) -> None:
    """The start (`model.init`) has every field `model.overrides` gives: a recipe that describes the
    start another command builds (`train prune`) stops at once when that start was built otherwise."""
    known = config.to_dict()

    def same(key, value) -> bool:  # a checkpoint may hold a float in float32 (norm_eps 1e-6 as 9.99e-7)
        have = known[key]
        if isinstance(value, float) and isinstance(have, (int, float)):
            return math.isclose(have, value, rel_tol=1e-6)
        return have == value

    wrong = [f"{key} = {value!r} (the start has {known[key]!r})" if key in known else f"{key} is not a model field"
             for key, value in checked_overrides(recipe.model.overrides).items()
             if key not in known or not same(key, value)]
    if wrong:
        raise CodegemmaError(f"model.init {recipe.model.init} is not the model model.overrides describes: "
                             + "; ".join(wrong))


def freeze(model: torch.nn.Module, patterns: list[str]) -> None:
    """Stop training the parameters whose names match any of `patterns`."""
    params = dict(model.named_parameters())
    frozen = set()
    for pattern in patterns:
        hits = fnmatch.filter(params, pattern)
        if not hits:
            example = list(params)[1]
            raise CodegemmaError(f"model.freeze: {pattern!r} matches no parameter (names look like {example!r})")
        frozen.update(hits)
    if frozen and len(frozen) == len(params):
        raise CodegemmaError("model.freeze: the patterns freeze every parameter; nothing would train")
    for name in frozen:
        params[name].requires_grad_(False)


def new_token_rows(embed: torch.Tensor, count: int, seed: int = 0) -> torch.Tensor:
    """[count, d_model] starting rows for tokens the embedding has never seen (FIM sentinels).

    Each row is drawn from a normal with the mean and covariance of the trained rows (Hewitt 2021,
    "Initializing new word embeddings for pretrained language models"): an ordinary-sized input,
    and a different one per token. Started all at the mean row, <|fim_prefix|>, <|fim_suffix|>
    and <|fim_middle|> are one input to the model, and a small model at a low learning rate
    barely tells them apart later (cosine 0.8-0.9 after the tiny-cpu recipe's 500 steps).
    """
    rows = embed.detach().float()
    mean = rows.mean(dim=0)
    centered = rows - mean
    cov = centered.T @ centered / max(len(rows) - 1, 1)
    jitter = 1e-6 * cov.diagonal().mean().clamp_min(1e-12)  # the covariance may be singular
    chol = torch.linalg.cholesky(cov + jitter * torch.eye(len(mean)))
    noise = torch.randn(count, len(mean), generator=torch.Generator().manual_seed(seed))
    return (mean + noise @ chol.T).to(embed.dtype)


def check_fim_rows(tokenizer: Tokenizer, unused: list[str], rows: int) -> None:
    """The tokens that become sentinels (model.fim_sentinels_from) have rows in the embedding
    (`with_fim_sentinels` checks that they are unused ones)."""
    for name in unused:
        token_id = tokenizer.token_to_id(name)
        if token_id is not None and token_id >= rows:
            raise CodegemmaError(f"model.fim_sentinels_from: {name} is id {token_id}, past the model's {rows} "
                                 "embedding rows")


def add_fim_sentinels(model: Gemma, tokenizer: Tokenizer | None, unused: list[str]) -> Tokenizer:
    """Turn four unused tokens into <|fim_prefix|>, <|fim_middle|>, <|fim_suffix|>, <|file_separator|>.

    Their embedding rows were never trained; each starts as a draw from the trained rows'
    distribution (`new_token_rows`), so the first FIM batches see ordinary-sized, distinct inputs.
    """
    if tokenizer is None:
        raise CodegemmaError("turning unused tokens into FIM sentinels needs the checkpoint's tokenizer")
    check_fim_rows(tokenizer, unused, len(model.embed_tokens.weight))
    fresh = [new for new in CODEGEMMA_SENTINELS.all() if tokenizer.token_to_id(new) is None]
    renamed = with_fim_sentinels(tokenizer, unused, "model.fim_sentinels_from")
    with torch.no_grad():
        weight = model.embed_tokens.weight
        fresh_ids = [renamed.token_to_id(new) for new in fresh]
        trained = torch.ones(len(weight), dtype=torch.bool)
        trained[fresh_ids] = False
        if fresh_ids and not weight.is_meta:  # a model without weights gets them, these rows too, sent
            weight[fresh_ids] = new_token_rows(weight[trained], len(fresh_ids))
    return renamed


def reference_shell(model: Gemma) -> Gemma:
    """DPO's frozen reference: a model of `model`'s shape on the meta device, which the Trainer fills
    with the start's weights where it places the trained model (`distributed.place_copy`, under FSDP2
    `distributed.shard_frozen`), so that no process holds a second copy of the start first."""
    return empty_model(model.config).eval().requires_grad_(False)


def check_data_vocabulary(recipe: Recipe, tokenizer: Tokenizer | None, config: ModelConfig) -> None:
    """Token shards record the vocabulary they were built with (`vocab_size`, `tokenizer` and the
    FIM sentinels' ids in their index's meta). Ids of another vocabulary read as other text and
    train without any error, so shards whose vocabulary is not the run's are refused: not the
    tokenizer's size, ids past the model's embedding, or sentinels the run's tokenizer puts
    elsewhere (a continued-pretraining run without the data's `fim_sentinels_from`)."""
    import json

    for key in ("train", "eval"):
        path = getattr(recipe.data, key)
        index = Path(path) / "index.json" if path else None
        if index is None or not index.is_file():
            continue  # conversations and pairs are tokenized by the run itself
        try:
            meta = json.loads(index.read_text()).get("meta", {})
        except (json.JSONDecodeError, AttributeError):
            continue  # the shard reader names a broken index
        where = f"data.{key} {index.parent}: its shards"
        built = meta.get("vocab_size")
        source = f" ({meta['tokenizer']})" if meta.get("tokenizer") else ""
        fix = "rebuild the shards with the run's tokenizer, or start from a model of the shards' tokenizer"
        if isinstance(built, int) and tokenizer is not None and built != tokenizer.vocab_size:
            raise CodegemmaError(f"{where} were tokenized with a vocabulary of {built} tokens{source}, the run's "
                                 f"tokenizer has {tokenizer.vocab_size}: {fix}")
        if isinstance(built, int) and built > config.vocab_size:
            raise CodegemmaError(f"{where} were tokenized with a vocabulary of {built} tokens{source}, the model's "
                                 f"embedding has {config.vocab_size} rows: {fix}")
        sentinels = meta.get("sentinel_ids")
        if tokenizer is None or not isinstance(sentinels, dict):
            continue
        for name, token_id in sorted(sentinels.items(), key=lambda item: item[1]):  # <|fim_prefix|> first
            ours = tokenizer.token_to_id(name)
            if ours != token_id:
                has = f"has it at id {ours}" if ours is not None else "has no such token"
                renamed = meta.get("fim_sentinels_from")
                hint = (f"the shards were built with fim_sentinels_from = {renamed}: give the run the same "
                        "model.fim_sentinels_from" if renamed else fix)
                raise CodegemmaError(f"{where} have {name} at id {token_id}, the run's tokenizer {has}: {hint}")


def shard_reader(path: str | Path, recipe: Recipe, env: DistEnv, batch_size: int | None = None, shuffle: bool = True,
                 seed: int | None = None, grad_accum: int = 1):
    from codegemma.data.shards import ShardReader

    reader = ShardReader(path, batch_size or recipe.train.batch_size, rank=env.rank, world_size=env.world_size,
                         seed=recipe.seed if seed is None else seed, shuffle=shuffle, grad_accum=grad_accum)
    if reader.seq_len != recipe.data.seq_len:
        raise CodegemmaError(f"{path}: shards have seq_len {reader.seq_len}, the recipe says {recipe.data.seq_len}")
    return reader
