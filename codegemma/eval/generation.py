"""The model side of an evaluation: load a checkpoint, resolve its profile, generate in batches.

`model_generator(spec)` returns a runner.Generator whose prompts follow the model's profile: BOS
when the profile adds one, FIM sentinels encoded by id, and generation stopped by the profile's
stop ids (sentinels, <eos>, <end_of_turn>) and by the task's stop strings.
"""

from __future__ import annotations

from codegemma.errors import CodegemmaError
from codegemma.eval.runner import GenerationSettings, Generator
from codegemma.fim import encode_pieces


def model_generator(spec: str | None = None, dtype: str = "float32", profile_name: str | None = None,
                    fim_order: str | None = None) -> Generator:
    from codegemma.checkpoints import load
    from codegemma.checkpoints.loading import DEFAULT_MODEL
    from codegemma.engine import Engine, SamplingParams
    from codegemma.profiles import resolve_profile

    loaded = load(spec, dtype=dtype)
    tokenizer = loaded.tokenizer
    if tokenizer is None:
        raise CodegemmaError(f"model {spec or 'default'} has no tokenizer ({loaded.source}); "
                             "evaluation needs one to turn prompts into tokens")
    profile = resolve_profile(tokenizer, profile_name, family=getattr(loaded.config, "family", None),
                              fim_order=fim_order)
    engine = Engine(loaded.model, detokenize=lambda ids: tokenizer.decode(ids, skip_special=False))
    sentinel_ids = dict(profile.sentinel_ids)
    bos = [profile.bos_id] if profile.add_bos and profile.bos_id is not None else []

    def encode(prompt: str | list[str]) -> list[int]:
        if isinstance(prompt, str):
            return bos + tokenizer.encode(prompt, add_bos=False)
        return bos + encode_pieces(tokenizer, prompt, sentinel_ids)

    def generate(prompts: list[list[int]], settings: GenerationSettings) -> list[str]:
        params = SamplingParams(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                                top_p=settings.top_p if settings.temperature > 0 else 1.0, seed=settings.seed,
                                stop_ids=profile.stop_ids, stop_strings=settings.stop_strings)
        return [tokenizer.decode(r.ids, skip_special=False) for r in engine.generate_batch(prompts, params)]

    source = DEFAULT_MODEL if spec in (None, "", "default") else loaded.source  # no machine path in reports
    info = {"source": source, "profile": profile.name, "dtype": dtype,
            "fim_order": profile.fim_order if profile.fim_supported else None}
    return Generator(name=_display_name(spec, loaded.source), profile=profile, encode=encode, generate=generate,
                     info=info, count_tokens=lambda text: len(tokenizer.encode(text, add_bos=False)))


def _display_name(spec: str | None, source: str) -> str:
    if spec in (None, "", "default"):
        return "gemma3-270m (default)"
    from pathlib import Path

    return Path(str(spec)).name or str(spec)
