"""ModelConfig: one dataclass whose switches cover Gemma 1 (CodeGemma), Gemma 2 and Gemma 3.

Published values come from the Gemma 1/2/3 reports and the released Hugging Face configs
(see spec: codegemma.md section 6). Gemma 1 is the plain pre-norm transformer; Gemma 2 adds
post-norms, soft-capping and alternating local/global attention; Gemma 3 swaps soft-capping for
QK-norm and uses 5 local layers per global one with a separate RoPE base for local layers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from codegemma.errors import CodegemmaError

FAMILIES = ("gemma", "gemma2", "gemma3")


@dataclass
class ModelConfig:
    family: str = "gemma"
    vocab_size: int = 256000
    d_model: int = 2048
    n_layers: int = 18
    n_heads: int = 8
    n_kv_heads: int = 1
    head_dim: int = 256
    d_ff: int = 16384
    max_seq_len: int = 8192
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0  # global (full-attention) layers
    rope_local_theta: float = 10000.0  # sliding-window layers
    rope_scaling: float = 1.0  # linear position interpolation, global layers only
    sliding_window: int | None = None
    # "global" or "local" per layer; empty means every layer is global
    layer_types: list[str] = field(default_factory=list)
    query_pre_attn_scalar: float | None = None  # None: head_dim
    attn_softcap: float | None = None
    final_softcap: float | None = None
    post_norms: bool = False  # Gemma 2/3: norms after attention and MLP as well as before
    qk_norm: bool = False  # Gemma 3
    bos_id: int = 2
    eos_id: int = 1
    pad_id: int = 0

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise CodegemmaError(f"unknown model family {self.family!r}; expected one of {FAMILIES}")
        if not self.layer_types:
            self.layer_types = ["global"] * self.n_layers
        if len(self.layer_types) != self.n_layers:
            raise CodegemmaError(f"layer_types has {len(self.layer_types)} entries for {self.n_layers} layers")
        if self.n_heads % self.n_kv_heads:
            raise CodegemmaError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if "local" in self.layer_types and not self.sliding_window:
            raise CodegemmaError("local layers need a sliding_window")

    @property
    def query_scale(self) -> float:
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    def num_params(self, include_embedding: bool = True) -> int:
        d, h = self.d_model, self.head_dim
        attn = d * h * (self.n_heads + 2 * self.n_kv_heads) + self.n_heads * h * d
        mlp = 3 * d * self.d_ff
        norms = d * (4 if self.post_norms else 2) + (2 * h if self.qk_norm else 0)
        total = self.n_layers * (attn + mlp + norms) + d
        return total + (self.vocab_size * d if include_embedding else 0)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise CodegemmaError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**data)


def gemma2_layer_types(n_layers: int) -> list[str]:
    """Gemma 2 alternates, starting with a local layer."""
    return ["local" if i % 2 == 0 else "global" for i in range(n_layers)]


def gemma3_layer_types(n_layers: int) -> list[str]:
    """Gemma 3: five local layers, then one global (global iff (i + 1) % 6 == 0)."""
    return ["global" if (i + 1) % 6 == 0 else "local" for i in range(n_layers)]


def _gemma1(**kw) -> ModelConfig:
    return ModelConfig(family="gemma", vocab_size=256000, max_seq_len=8192, **kw)


def _gemma2(n_layers: int, **kw) -> ModelConfig:
    return ModelConfig(family="gemma2", vocab_size=256000, n_layers=n_layers, max_seq_len=8192,
                       sliding_window=4096, layer_types=gemma2_layer_types(n_layers), attn_softcap=50.0,
                       final_softcap=30.0, post_norms=True, **kw)


def _gemma3(n_layers: int, **kw) -> ModelConfig:
    kw.setdefault("max_seq_len", 32768)
    return ModelConfig(family="gemma3", vocab_size=262144, n_layers=n_layers, layer_types=gemma3_layer_types(n_layers),
                       rope_theta=1_000_000.0, rope_local_theta=10_000.0, post_norms=True, qk_norm=True, **kw)


PRESETS = {
    # Gemma 1 and CodeGemma share the architecture exactly (CodeGemma report).
    "gemma-2b": lambda: _gemma1(d_model=2048, n_layers=18, n_heads=8, n_kv_heads=1, head_dim=256, d_ff=16384),
    "gemma-7b": lambda: _gemma1(d_model=3072, n_layers=28, n_heads=16, n_kv_heads=16, head_dim=256, d_ff=24576),
    "codegemma-2b": lambda: _gemma1(d_model=2048, n_layers=18, n_heads=8, n_kv_heads=1, head_dim=256, d_ff=16384),
    "codegemma-7b": lambda: _gemma1(d_model=3072, n_layers=28, n_heads=16, n_kv_heads=16, head_dim=256, d_ff=24576),
    "codegemma-7b-it": lambda: _gemma1(d_model=3072, n_layers=28, n_heads=16, n_kv_heads=16, head_dim=256, d_ff=24576),
    "gemma2-2b": lambda: _gemma2(26, d_model=2304, n_heads=8, n_kv_heads=4, head_dim=256, d_ff=9216,
                                 query_pre_attn_scalar=256),
    "gemma2-9b": lambda: _gemma2(42, d_model=3584, n_heads=16, n_kv_heads=8, head_dim=256, d_ff=14336,
                                 query_pre_attn_scalar=256),
    "gemma2-27b": lambda: _gemma2(46, d_model=4608, n_heads=32, n_kv_heads=16, head_dim=128, d_ff=36864,
                                  query_pre_attn_scalar=144),
    "gemma3-270m": lambda: _gemma3(18, d_model=640, n_heads=4, n_kv_heads=1, head_dim=256, d_ff=2048,
                                   sliding_window=512, query_pre_attn_scalar=256),
    "gemma3-1b": lambda: _gemma3(26, d_model=1152, n_heads=4, n_kv_heads=1, head_dim=256, d_ff=6912,
                                 sliding_window=512, query_pre_attn_scalar=256),
    "gemma3-4b": lambda: _gemma3(34, d_model=2560, n_heads=8, n_kv_heads=4, head_dim=256, d_ff=10240,
                                 sliding_window=1024, query_pre_attn_scalar=256, rope_scaling=8.0,
                                 max_seq_len=131072),
    # Tiny configs for tests: every switch of their family, a small vocabulary and window.
    "tiny-gemma": lambda: ModelConfig(family="gemma", vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=1,
                                      head_dim=32, d_ff=128, max_seq_len=256),
    "tiny-gemma-mha": lambda: ModelConfig(family="gemma", vocab_size=512, d_model=64, n_layers=2, n_heads=4,
                                          n_kv_heads=4, head_dim=24, d_ff=128, max_seq_len=256),
    "tiny-gemma2": lambda: ModelConfig(family="gemma2", vocab_size=512, d_model=64, n_layers=4, n_heads=4, n_kv_heads=2,
                                       head_dim=32, d_ff=128, max_seq_len=256, sliding_window=8,
                                       layer_types=gemma2_layer_types(4), attn_softcap=50.0, final_softcap=30.0,
                                       post_norms=True, query_pre_attn_scalar=48),
    "tiny-gemma3": lambda: ModelConfig(family="gemma3", vocab_size=512, d_model=64, n_layers=6, n_heads=4, n_kv_heads=1,
                                       head_dim=32, d_ff=128, max_seq_len=256, sliding_window=8,
                                       layer_types=gemma3_layer_types(6), rope_theta=1_000_000.0,
                                       rope_local_theta=10_000.0, post_norms=True, qk_norm=True,
                                       query_pre_attn_scalar=32),
}


def preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise CodegemmaError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()
