"""One dataset in one language: the questions that translate, and the ones dropped with a reason."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from codegemma.eval.babelcode.languages.base import Language
from codegemma.eval.babelcode.schema import Dropped, Question
from codegemma.eval.babelcode.types import UnsupportedType


@dataclass
class Translation:
    language: Language
    kept: list[Question] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)

    def drop_reasons(self) -> Counter:
        return Counter(d.reason.split(":")[0] for d in self.dropped)


def translate(items: list[Question | Dropped], language: Language) -> Translation:
    """Keep each question whose types and values the language can express; drop (and count) the rest.

    Problems already dropped while reading the dataset count as dropped in every language.
    """
    out = Translation(language)
    for item in items:
        if isinstance(item, Dropped):
            out.dropped.append(item)
            continue
        try:
            language.check_supported(item)
        except UnsupportedType as exc:
            out.dropped.append(Dropped(item.qid, f"no {language.display} type: {exc}"))
            continue
        out.kept.append(item)
    return out
