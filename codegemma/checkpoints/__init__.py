"""Loading and saving checkpoints: Hugging Face safetensors directories, GGUF files, the default model.

`load(spec)` accepts None (the default Gemma 3 270M), a GGUF file, a Hugging Face directory, a
converted-cache directory, or a preset name (random weights, for tests and training from scratch).
"""

from __future__ import annotations

from codegemma.checkpoints.loading import DEFAULT_MODEL, Loaded, load, load_weights_into, resolve_dtype
from codegemma.checkpoints.hf_dir import save_hf

__all__ = ["DEFAULT_MODEL", "Loaded", "load", "load_weights_into", "resolve_dtype", "save_hf"]
