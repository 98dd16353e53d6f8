"""A problem in language-neutral form: typed signature, description, and input/output test cases.

Every target language is generated from this one record (BabelCode's "question schema"), so a
problem means the same thing in C++ as in Python. Values in `TestCase` are already conformed to
the declared types (tuples of one item type are lists, ints where a float is declared are floats).
"""

from __future__ import annotations

from dataclasses import dataclass

from codegemma.eval.babelcode.types import Type

DEFAULT_TOLERANCE = 1e-6


@dataclass(frozen=True)
class TestCase:
    __test__ = False  # a data record, not a pytest class

    args: tuple
    expected: object
    tolerance: float = DEFAULT_TOLERANCE  # for floats: |got - want| <= tolerance * max(1, |want|)


@dataclass(frozen=True)
class Question:
    qid: str  # "HumanEval/0", "MBPP/11"
    dataset: str  # "humaneval" | "mbpp"
    entry_point: str
    params: tuple[tuple[str, Type], ...]
    returns: Type
    description: str
    tests: tuple[TestCase, ...]
    reference: str  # the canonical Python solution as a module, for validating the translation
    original_test: str  # the dataset's own Python test code, run against `reference` in validation

    def types(self) -> list[Type]:
        return [t for _, t in self.params] + [self.returns]


@dataclass(frozen=True)
class Dropped:
    """A problem left out of a dataset or a language, and why (reported per language)."""

    qid: str
    reason: str
