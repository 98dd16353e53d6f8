"""A model stand-in for harness tests: prompts are bytes, completions are canned per problem."""

from __future__ import annotations

from dataclasses import dataclass

from codegemma.eval.runner import Generator, GenerationSettings, prompt_text
from codegemma.fim import CODEGEMMA_SENTINELS, FimSentinels


@dataclass(frozen=True)
class FakeProfile:
    name: str = "fake-fim"
    fim_supported: bool = True
    sentinels: FimSentinels | None = CODEGEMMA_SENTINELS
    stop_texts: tuple[str, ...] = ("<|file_separator|>", "<eos>")


def encode(prompt) -> list[int]:
    return list(prompt_text(prompt).encode("utf-8"))


class CannedGenerator:
    """Answers each prompt with `answers[prompt_text]`, recording every prompt it was asked."""

    def __init__(self, answers: dict[str, str], fail_after_calls: int | None = None):
        self.answers = answers
        self.calls: list[list[str]] = []
        self.settings: list[GenerationSettings] = []
        self.fail_after_calls = fail_after_calls

    def __call__(self, prompts: list[list[int]], settings: GenerationSettings) -> list[str]:
        if self.fail_after_calls is not None and len(self.calls) >= self.fail_after_calls:
            raise KeyboardInterrupt
        texts = [bytes(ids).decode("utf-8") for ids in prompts]
        self.calls.append(texts)
        self.settings.append(settings)
        return [self.answers[t] for t in texts]


def fake_generator(answers: dict[str, str], profile=FakeProfile(), **kwargs) -> tuple[Generator, CannedGenerator]:
    canned = CannedGenerator(answers, **kwargs)
    return Generator(name="fake", profile=profile, encode=encode, generate=canned), canned
