"""The eight BabelCode target languages of the CodeGemma report's Table 4, by command-line name."""

from __future__ import annotations

from codegemma.errors import CodegemmaError
from codegemma.eval.babelcode.languages.base import Language
from codegemma.eval.babelcode.languages.cpp import Cpp
from codegemma.eval.babelcode.languages.csharp import CSharp
from codegemma.eval.babelcode.languages.go import Go
from codegemma.eval.babelcode.languages.java import Java
from codegemma.eval.babelcode.languages.javascript import JavaScript
from codegemma.eval.babelcode.languages.kotlin import Kotlin
from codegemma.eval.babelcode.languages.python import Python
from codegemma.eval.babelcode.languages.rust import Rust

# Table 4 row order.
LANGUAGES: dict[str, Language] = {lang.name: lang for lang in
                                  (Cpp(), CSharp(), Go(), Java(), JavaScript(), Kotlin(), Python(), Rust())}


def get_language(name: str) -> Language:
    try:
        return LANGUAGES[name]
    except KeyError:
        raise CodegemmaError(f"unknown BabelCode language {name!r}; known: {', '.join(LANGUAGES)}") from None


def parse_languages(spec: str | None) -> list[Language]:
    """`cpp,java` -> those languages; None or "all" -> all eight."""
    if spec is None or spec.strip() in ("", "all"):
        return list(LANGUAGES.values())
    chosen = [get_language(name.strip()) for name in spec.split(",") if name.strip()]
    if not chosen:  # "," would make a task of no language, and no problems
        raise CodegemmaError(f"languages {spec!r} names no language; choose from {', '.join(LANGUAGES)}")
    return chosen
