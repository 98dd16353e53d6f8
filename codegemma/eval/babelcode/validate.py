"""Proof that each language's harness works before any model is scored on it.

For every kept problem of every language, a stub that returns a default value must compile, run
and fail a test (status "failed": not a compile error, not a crash). Agreement of the translated
tests with the original ones on the reference solutions is verify.py's job (questions that disagree
never reach a language). The report also says, per language, how many problems were kept and why the rest were dropped.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from codegemma.eval.babelcode.build import Builder
from codegemma.eval.babelcode.execute import evaluate_programs
from codegemma.eval.babelcode.languages.base import Language
from codegemma.eval.babelcode.schema import Question
from codegemma.eval.babelcode.translate import Translation


@dataclass
class LanguageReport:
    language: str
    dataset: str
    problems: int
    kept: int
    dropped: dict[str, int]
    stub_failed: int = 0  # the good outcome: harness compiled, ran, and caught the wrong answer
    stub_broken: list[tuple[str, str, str]] = field(default_factory=list)  # (qid, status, detail)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.stub_broken

    def to_dict(self) -> dict:
        return asdict(self)


def check_stubs(translation: Translation, questions: list[Question], builder: Builder) -> LanguageReport:
    lang = translation.language
    start = time.perf_counter()
    verdicts = evaluate_programs(builder, [lang.program(q, lang.stub(q)) for q in questions],
                                 [len(q.tests) for q in questions])
    report = LanguageReport(lang.name, questions[0].dataset if questions else "", len(translation.kept) +
                            len(translation.dropped), len(translation.kept), dict(translation.drop_reasons()))
    for q, v in zip(questions, verdicts):
        if v.status == "failed":
            report.stub_failed += 1
        else:
            report.stub_broken.append((q.qid, v.status, v.detail[:500]))
    report.seconds = time.perf_counter() - start
    return report


def validate_language(translation: Translation, limit: int | None = None, cache_dir=None) -> LanguageReport:
    lang: Language = translation.language
    questions = translation.kept[:limit]
    builder = Builder(lang, cache_dir)
    report = check_stubs(translation, questions, builder)
    return report


def kept_counts(dataset: str, cache_dir=None) -> dict[str, LanguageReport]:
    """Per language: problems, kept, and drop reasons (no compiling)."""
    from codegemma.eval.babelcode.datasets import load
    from codegemma.eval.babelcode.languages import LANGUAGES
    from codegemma.eval.babelcode.translate import translate
    from codegemma.eval.babelcode.verify import agreeing

    items = agreeing(load(dataset), cache_dir)
    out = {}
    for name, lang in LANGUAGES.items():
        t = translate(items, lang)
        out[name] = LanguageReport(name, dataset, len(items), len(t.kept), dict(t.drop_reasons()))
    return out


def main(argv: list[str] | None = None) -> int:
    """Validate every language on both datasets; write JSON and a markdown table."""
    import argparse
    import json
    import os
    from pathlib import Path

    from codegemma.eval.babelcode.datasets import load
    from codegemma.eval.babelcode.languages import parse_languages
    from codegemma.eval.babelcode.translate import translate
    from codegemma.eval.babelcode.verify import agreeing

    parser = argparse.ArgumentParser(prog="python -m codegemma.eval.babelcode.validate", description=main.__doc__)
    parser.add_argument("--languages", default="all")
    parser.add_argument("--datasets", default="humaneval,mbpp")
    parser.add_argument("--out", default="docs/results/babelcode-validation")
    args = parser.parse_args(argv)
    reports = []
    for dataset in args.datasets.split(","):
        items = agreeing(load(dataset))
        for lang in parse_languages(args.languages):
            r = validate_language(translate(items, lang))
            r.dataset = dataset
            reports.append(r)
            print(f"{dataset:<9} {lang.name:<10} kept {r.kept}/{r.problems}  stub failed {r.stub_failed}  "
                  f"broken {len(r.stub_broken)}  {r.seconds:.0f} s", flush=True)
    lines = ["| Dataset | Language | Problems | Kept | Wrong stub caught | Harness broken | Dropped (reason: count) |",
             "|---|---|---|---|---|---|---|"]
    for r in reports:
        reasons = "; ".join(f"{k}: {v}" for k, v in sorted(r.dropped.items(), key=lambda kv: -kv[1]))
        lines.append(f"| {r.dataset} | {r.language} | {r.problems} | {r.kept} | {r.stub_failed} | "
                     f"{len(r.stub_broken)} | {reasons} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps([r.to_dict() for r in reports], indent=2) + "\n"),
                         (".md", "\n".join(lines) + "\n")):
        path = out.with_suffix(suffix)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    raise SystemExit(main())
