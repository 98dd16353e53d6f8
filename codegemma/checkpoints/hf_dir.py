"""Hugging Face checkpoint directories: config.json plus one safetensors file or shards with an index."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from codegemma.checkpoints.hf_config import config_from_hf, config_to_hf
from codegemma.checkpoints.hf_weights import to_hf_state_dict
from codegemma.config import ModelConfig
from codegemma.data.atomic import check_replaceable, publish_dir, staging_dir
from codegemma.errors import CodegemmaError
from codegemma.textfiles import read_json
from codegemma.tokenizer import with_bos_template

INDEX = "model.safetensors.index.json"


def read_config(directory: Path) -> ModelConfig:
    path = directory / "config.json"
    if not path.is_file():
        raise CodegemmaError(f"{directory}: no config.json")
    return config_from_hf(read_json(path), str(path))


def weight_files(directory: Path) -> list[Path]:
    index = directory / INDEX
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as exc:
            raise CodegemmaError(f"{index}: not a valid safetensors index ({exc})") from None
        files = [directory / n for n in names]
        for f in files:
            if not f.is_file():
                raise CodegemmaError(f"{index} names {f.name}, which is missing")
        return files
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    raise CodegemmaError(f"{directory}: no model.safetensors or {INDEX}")


def iter_tensors(directory: Path):
    """(hf name, tensor) for every tensor of the checkpoint, read lazily shard by shard."""
    for path in weight_files(directory):
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        except (SafetensorError, OSError) as exc:
            raise CodegemmaError(f"{path}: not a readable safetensors file (truncated or corrupt: {exc})") from None


def save_hf(model, config: ModelConfig, tokenizer, out_dir: str | os.PathLike, dtype: torch.dtype | None = None,
            max_shard_bytes: int = 5 * 2**30, replace: bool = False):
    """Write a directory that `transformers.AutoModelForCausalLM.from_pretrained` loads.

    Written into a temporary directory beside the target, then renamed, so a failure leaves nothing.
    A non-empty `out_dir` is refused, unless `replace` and it holds nothing but a model's files (what
    this function writes): that one is swapped for the new model once the new one is complete.
    """
    out = Path(out_dir)
    check_replaceable(out, _only_model_files if replace else lambda d: False,
                      "a model directory (it holds other files)" if replace else "empty")
    tmp = staging_dir(out)
    try:
        state = to_hf_state_dict({k: v.detach().to(dtype or v.dtype).contiguous() for k, v in model.state_dict().items()})
        hf_config = config_to_hf(config)
        hf_config["torch_dtype"] = str(next(iter(state.values())).dtype).removeprefix("torch.")
        _save_shards(state, tmp, max_shard_bytes)
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2))
        (tmp / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": config.bos_id, "eos_token_id": config.eos_id, "pad_token_id": config.pad_id}, indent=2))
        if tokenizer is not None:
            _save_tokenizer(tokenizer, tmp)
        publish_dir(tmp, out)  # an old model directory goes only once the new one is complete
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        # a full disk, say: safetensors' error names no file, and an OSError's names the temporary one
        if isinstance(exc, SafetensorError):
            raise CodegemmaError(f"{out}: cannot write the weights ({exc})") from None
        if isinstance(exc, OSError) and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, str(out)) from None
        raise


def _only_model_files(directory: Path) -> bool:
    written = {"config.json", "generation_config.json", "model.safetensors", INDEX, "tokenizer.json",
               "tokenizer_config.json"}
    return all(e.is_file() and (e.name in written or (e.name.startswith("model-") and e.name.endswith(".safetensors")))
               for e in directory.iterdir())


def _save_tokenizer(tokenizer, directory: Path):
    """tokenizer.json (with the <bos> template transformers needs, `with_bos_template`) and
    tokenizer_config.json, as transformers reads them."""
    add_bos = tokenizer.bos_id is not None and tokenizer.add_bos_default
    backend = with_bos_template(tokenizer.backend, tokenizer.bos_id) if add_bos else tokenizer.backend
    backend.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GemmaTokenizer", "add_bos_token": add_bos, "add_eos_token": False,
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
    }, indent=2))


def _save_shards(state: dict, directory: Path, max_shard_bytes: int):
    shards, current, size = [], {}, 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = tensor
        size += nbytes
    shards.append(current)
    if len(shards) == 1:
        _save_readable(shards[0], directory / "model.safetensors")
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        _save_readable(shard, directory / fname)
        weight_map.update({name: fname for name in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (directory / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def _save_readable(tensors: dict, path: Path):
    save_file(tensors, str(path), metadata={"format": "pt"})
    path.chmod(0o644)  # safetensors writes 0600; a saved model is meant to be read by others too
