"""What every target language provides: names, types, literals, prompt, test harness, build steps.

A translated program is `prompt + completion + harness`: the prompt ends inside the function
body, the model writes the body, and the harness closes the function and runs each test case,
printing one result line per case (`#BABEL# PASS 3`, `#BABEL# FAIL 3`, `#BABEL# ERROR 3`) and
stopping at the first case that does not pass. The runner reads those lines; an exit without
them is a runtime error (a crash the harness could not catch).

Build steps are shell commands run inside the sandbox: `compile_cmd` turns `source_name` into
files under `out/`, which are cached and handed to `run_cmd` in a fresh sandbox.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod

from codegemma.eval.babelcode.schema import Question
from codegemma.eval.babelcode.types import Type, UnsupportedType

RESULT_MARK = "#BABEL#"


def snake_to_camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def snake_to_pascal(name: str) -> str:
    camel = snake_to_camel(name)
    return camel[:1].upper() + camel[1:]


def has_float(t: Type) -> bool:
    return t.kind == "float" or any(has_float(a) for a in t.args)


def c_string(s: str, unicode_escape: str = "\\u{:04x}", extra: dict[str, str] | None = None) -> str:
    """A double-quoted literal with C-family escapes; non-ASCII as `unicode_escape` (or raw if None)."""
    table = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r", **(extra or {})}
    out = []
    for ch in s:
        if ch in table:
            out.append(table[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(unicode_escape.format(ord(ch)) if unicode_escape else f"\\x{ord(ch):02x}")
        elif ord(ch) > 0x7E and unicode_escape:
            if ord(ch) > 0xFFFF and "{:04x}" in unicode_escape:
                raise UnsupportedType("a character outside the Basic Multilingual Plane")
            out.append(unicode_escape.format(ord(ch)))
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def float_literal(x: float) -> str:
    if x != x or x in (float("inf"), float("-inf")):
        raise UnsupportedType(f"float {x}")
    text = repr(x)
    return text if any(c in text for c in ".en") else text + ".0"


class Language(ABC):
    name: str = ""  # cli name: cpp, csharp, go, java, javascript, kotlin, python, rust
    display: str = ""  # Table 4 row label
    source_name: str = ""
    stop_strings: tuple[str, ...] = ()
    keywords: frozenset[str] = frozenset()
    compile_cmd: str | None = None  # shell, inside the sandbox; writes out/
    run_cmd: str = ""  # shell, inside the sandbox, with out/ restored
    # Languages whose compiler costs seconds per start compile many programs in one invocation.
    batch_compile: bool = False
    run_needs_large_memory: bool = False  # JVM / V8 reserve far more address space than they use

    # ------------------------------------------------------------------ naming

    def function_name(self, name: str) -> str:
        return self.identifier(name)

    def identifier(self, name: str) -> str:
        return name + "_" if name in self.keywords else name

    # ------------------------------------------------------------------ types and values

    @abstractmethod
    def type_name(self, t: Type, boxed: bool = False) -> str:
        """The target spelling of `t` (boxed: as a generic argument, where the language cares)."""

    @abstractmethod
    def literal(self, value: object, t: Type) -> str:
        """`value` (already conformed to `t`) as a target-language expression of type `t`."""

    def check_supported(self, q: Question) -> None:
        """Raise UnsupportedType if any parameter, result or test value has no target form."""
        for t in q.types():
            self.type_name(t)
        for case in q.tests:
            for value, (_, t) in zip(case.args, q.params):
                self.literal(value, t)
            self.literal(case.expected, q.returns)

    # ------------------------------------------------------------------ program text

    def description(self, q: Question) -> str:
        """The problem's description with the Python name replaced by this language's function name."""
        return re.sub(rf"\b{re.escape(q.entry_point)}\b", self.function_name(q.entry_point), q.description)

    def comment(self, text: str, prefix: str = "// ", indent: str = "") -> str:
        lines = text.strip("\n").splitlines() or [""]
        return "".join(f"{indent}{prefix}{line.rstrip()}".rstrip() + "\n" for line in lines)

    @abstractmethod
    def prompt(self, q: Question) -> str:
        """Header, description comment and signature; ends where the model writes the body."""

    @abstractmethod
    def harness(self, q: Question) -> str:
        """Closes the function and runs every test case, printing one result line per case."""

    def program(self, q: Question, completion: str) -> str:
        return self.prompt(q) + completion + self.harness(q)

    def stub(self, q: Question) -> str:
        """A body that compiles and returns a default value: it must fail the tests."""
        return self.indent_body(self.default_return(q.returns))

    def indent_body(self, statement: str) -> str:
        return f"    {statement}\n"

    @abstractmethod
    def default_return(self, t: Type) -> str:
        """A `return` statement giving a plain default of type `t` (zero, empty, ...)."""

    def tolerance(self, q: Question, tol: float) -> float:
        """Floats compare within a tolerance; everything else exactly."""
        return tol if has_float(q.returns) else 0.0

    def args(self, q: Question, values: tuple) -> str:
        return ", ".join(self.literal(v, t) for v, (_, t) in zip(values, q.params))
