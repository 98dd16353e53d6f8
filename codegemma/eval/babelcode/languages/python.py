"""Python: the translated problem run as a Python program, which lets validation compare it with the
original dataset tests on the canonical solutions."""

from __future__ import annotations

from codegemma.eval.babelcode.languages.base import RESULT_MARK, Language, float_literal
from codegemma.eval.babelcode.schema import Question
from codegemma.eval.babelcode.types import Type, UnsupportedType

HEADER = "from typing import *\nimport math\n\n\n"

EQ = r'''

def _babel_eq(a, b, tol):
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_babel_eq(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_babel_eq(a[k], b[k], tol) for k in a)
    if isinstance(a, float) or isinstance(b, float):
        if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
            return False
        return abs(a - b) <= tol * max(1.0, abs(b))
    return a == b


def _babel_case(i, check):
    try:
        ok = check()
    except BaseException:
        print(f"#BABEL# ERROR {i}", flush=True)
        raise SystemExit(1)
    if not ok:
        print(f"#BABEL# FAIL {i}", flush=True)
        raise SystemExit(1)
    print(f"#BABEL# PASS {i}", flush=True)

'''.replace("#BABEL#", RESULT_MARK)

KEYWORDS = frozenset("""False None True and as assert async await break class continue def del elif else
except finally for from global if import in is lambda nonlocal not or pass raise return try while with
yield""".split())


class Python(Language):
    name = "python"
    display = "Python"
    source_name = "main.py"
    stop_strings = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")
    keywords = KEYWORDS
    run_cmd = "python3 -I -S -B main.py"

    def type_name(self, t: Type, boxed: bool = False) -> str:
        k = t.kind
        simple = {"int": "int", "float": "float", "bool": "bool", "str": "str"}
        if k in simple:
            return simple[k]
        if k == "list":
            return f"List[{self.type_name(t.item)}]"
        if k == "dict":
            return f"Dict[{self.type_name(t.args[0])}, {self.type_name(t.args[1])}]"
        if k == "optional":
            return f"Optional[{self.type_name(t.item)}]"
        if k == "tuple":
            return f"Tuple[{', '.join(self.type_name(a) for a in t.args)}]"
        raise UnsupportedType(f"type {t}")

    def literal(self, value: object, t: Type) -> str:
        k = t.kind
        if k == "float":
            return float_literal(value)
        if k in ("int", "bool", "str"):
            return repr(value)
        if k == "list":
            return "[" + ", ".join(self.literal(v, t.item) for v in value) + "]"
        if k == "tuple":
            return "(" + "".join(self.literal(v, a) + ", " for v, a in zip(value, t.args)).rstrip(" ") + ")"
        if k == "dict":
            return "{" + ", ".join(f"{self.literal(a, t.args[0])}: {self.literal(b, t.args[1])}"
                                   for a, b in value.items()) + "}"
        if k == "optional":
            return "None" if value is None else self.literal(value, t.item)
        raise UnsupportedType(f"type {t}")

    def prompt(self, q: Question) -> str:
        params = ", ".join(f"{self.identifier(n)}: {self.type_name(t)}" for n, t in q.params)
        doc = "\n".join(("    " + line).rstrip() for line in q.description.strip("\n").splitlines())
        doc = doc.replace('"""', "'''").replace("\\", "\\\\")
        return (HEADER + f"def {self.function_name(q.entry_point)}({params}) -> {self.type_name(q.returns)}:\n"
                + f'    """\n{doc}\n    """\n')

    def default_return(self, t: Type) -> str:
        defaults = {"int": "0", "float": "0.0", "bool": "False", "str": '""', "list": "[]", "dict": "{}",
                    "optional": "None"}
        return f"return {defaults.get(t.kind, '()')}"

    def harness(self, q: Question) -> str:
        fn = self.function_name(q.entry_point)
        cases = "".join(
            f"_babel_case({i}, lambda: _babel_eq({fn}({self.args(q, c.args)}), {self.literal(c.expected, q.returns)}, "
            f"{self.tolerance(q, c.tolerance)!r}))\n" for i, c in enumerate(q.tests))
        return "\n" + EQ + "\n" + cases


def reference_completion(q: Question) -> str:
    """The dataset's reference solution as a completion: the translated function's body is a
    placeholder and the reference module follows it, redefining the function by the same name
    before the harness calls it."""
    return "    pass\n\n\n" + q.reference.rstrip() + "\n"
