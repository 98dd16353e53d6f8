"""JavaScript (Node): arrays and plain objects; numbers compare exactly unless the result holds floats."""

from __future__ import annotations

import json

from codegemma.eval.babelcode.languages.base import RESULT_MARK, Language, float_literal, snake_to_camel
from codegemma.eval.babelcode.schema import Question
from codegemma.eval.babelcode.types import Type, UnsupportedType

EQ = r"""
function babelEq(a, b, tol) {
  if (a === undefined) a = null;
  if (b === undefined) b = null;
  if (a === null || b === null) return a === b;
  if (typeof a === "number" && typeof b === "number") {
    return Math.abs(a - b) <= tol * Math.max(1, Math.abs(b));
  }
  if (Array.isArray(a) || Array.isArray(b)) {
    if (!Array.isArray(a) || !Array.isArray(b) || a.length !== b.length) return false;
    return a.every((x, i) => babelEq(x, b[i], tol));
  }
  if (typeof a === "object" && typeof b === "object") {
    const ka = Object.keys(a), kb = Object.keys(b);
    if (ka.length !== kb.length) return false;
    return ka.every((k) => Object.prototype.hasOwnProperty.call(b, k) && babelEq(a[k], b[k], tol));
  }
  return a === b;
}

function babelCase(i, check) {
  let ok;
  try {
    ok = check();
  } catch (e) {
    console.log(`#BABEL# ERROR ${i}`);
    process.exit(1);
  }
  if (!ok) {
    console.log(`#BABEL# FAIL ${i}`);
    process.exit(1);
  }
  console.log(`#BABEL# PASS ${i}`);
}
""".replace("#BABEL#", RESULT_MARK)

KEYWORDS = frozenset("""break case catch class const continue debugger default delete do else export extends
false finally for function if import in instanceof new null return super switch this throw true try typeof
var void while with yield let static enum await implements package protected interface private public
arguments eval""".split())


class JavaScript(Language):
    name = "javascript"
    display = "JavaScript"
    source_name = "main.js"
    stop_strings = ("\n}",)
    keywords = KEYWORDS
    run_needs_large_memory = True
    run_cmd = "node --stack-size=8000 main.js"

    def function_name(self, name: str) -> str:
        return self.identifier(snake_to_camel(name))

    def type_name(self, t: Type, boxed: bool = False) -> str:
        if t.kind in ("int", "float", "bool", "str"):
            return {"int": "number", "float": "number", "bool": "boolean", "str": "string"}[t.kind]
        if t.kind in ("list", "tuple"):
            return "array"
        if t.kind == "dict":
            if t.args[0].kind != "str":
                raise UnsupportedType(f"type {t}")  # object keys are strings
            return "object"
        if t.kind == "optional":
            return self.type_name(t.item) + " or null"
        raise UnsupportedType(f"type {t}")

    def literal(self, value: object, t: Type) -> str:
        k = t.kind
        if k == "int":
            if abs(value) > 2**53:
                raise UnsupportedType(f"integer {value} beyond exact double range")
            return str(value)
        if k == "float":
            return float_literal(value)
        if k == "bool":
            return "true" if value else "false"
        if k == "str":
            return json.dumps(value)
        if k == "list":
            return "[" + ", ".join(self.literal(v, t.item) for v in value) + "]"
        if k == "tuple":
            return "[" + ", ".join(self.literal(v, a) for v, a in zip(value, t.args)) + "]"
        if k == "dict":
            self.type_name(t)
            return "{" + ", ".join(f"{json.dumps(a)}: {self.literal(b, t.args[1])}" for a, b in value.items()) + "}"
        if k == "optional":
            return "null" if value is None else self.literal(value, t.item)
        raise UnsupportedType(f"type {t}")

    def prompt(self, q: Question) -> str:
        params = ", ".join(self.identifier(n) for n, _ in q.params)
        return self.comment(self.description(q)) + f"function {self.function_name(q.entry_point)}({params}) {{\n"

    def default_return(self, t: Type) -> str:
        defaults = {"int": "0", "float": "0.0", "bool": "false", "str": '""', "list": "[]", "tuple": "[]",
                    "dict": "{}", "optional": "null"}
        return f"return {defaults[t.kind]};"

    def harness(self, q: Question) -> str:
        fn = self.function_name(q.entry_point)
        cases = "".join(
            f"babelCase({i}, () => babelEq({fn}({self.args(q, c.args)}), {self.literal(c.expected, q.returns)}, "
            f"{self.tolerance(q, c.tolerance)!r}));\n" for i, c in enumerate(q.tests))
        return "\n}\n" + EQ + "\n" + cases
