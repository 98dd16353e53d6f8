"""Generation on token ids: KV cache, sampling, streaming, batching and prefix-cache reuse."""

from codegemma.engine.engine import Engine, Result
from codegemma.engine.sampling import SamplingParams

__all__ = ["Engine", "Result", "SamplingParams"]
