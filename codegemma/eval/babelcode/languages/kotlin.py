"""Kotlin (JVM): List / Map / nullable types / Pair and Triple; many programs per kotlinc run."""

from __future__ import annotations

from codegemma.eval.babelcode.languages.base import (RESULT_MARK, Language, c_string, float_literal,
                                                     snake_to_camel)
from codegemma.eval.babelcode.schema import Question
from codegemma.eval.babelcode.types import Type, UnsupportedType

HEADER = "import kotlin.math.*\n\n"

EQ = r"""
fun babelEq(a: Any?, b: Any?, tol: Double): Boolean {
    if (a == null || b == null) return a == null && b == null
    if (a is Double || b is Double) {
        if (a !is Number || b !is Number) return false
        return Math.abs(a.toDouble() - b.toDouble()) <= tol * Math.max(1.0, Math.abs(b.toDouble()))
    }
    if (a is List<*> && b is List<*>) {
        if (a.size != b.size) return false
        return a.indices.all { babelEq(a[it], b[it], tol) }
    }
    if (a is Map<*, *> && b is Map<*, *>) {
        if (a.size != b.size) return false
        return a.all { (k, v) -> b.containsKey(k) && babelEq(v, b[k], tol) }
    }
    if (a is Pair<*, *> && b is Pair<*, *>) return babelEq(a.first, b.first, tol) && babelEq(a.second, b.second, tol)
    if (a is Triple<*, *, *> && b is Triple<*, *, *>) {
        return babelEq(a.first, b.first, tol) && babelEq(a.second, b.second, tol) && babelEq(a.third, b.third, tol)
    }
    return a == b
}
"""

KEYWORDS = frozenset("""as break class continue do else false for fun if in interface is null object package
return super this throw true try typealias typeof val var when while main""".split())


class Kotlin(Language):
    name = "kotlin"
    display = "Kotlin"
    source_name = "Problem.kt"
    stop_strings = ("\n}",)
    keywords = KEYWORDS
    batch_compile = True
    run_needs_large_memory = True
    compile_cmd = "kotlinc -nowarn -d out {sources}"
    run_cmd = ("java -Xmx512m -Xss16m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:CompressedClassSpaceSize=64m "
               "-XX:ReservedCodeCacheSize=64m -cp out:{kotlin_stdlib} {main_class}")

    def function_name(self, name: str) -> str:
        return self.identifier(snake_to_camel(name))

    def type_name(self, t: Type, boxed: bool = False) -> str:
        k = t.kind
        simple = {"int": "Long", "float": "Double", "bool": "Boolean", "str": "String"}
        if k in simple:
            return simple[k]
        if k == "list":
            return f"List<{self.type_name(t.item)}>"
        if k == "dict":
            return f"Map<{self.type_name(t.args[0])}, {self.type_name(t.args[1])}>"
        if k == "optional":
            if t.item.kind == "optional":
                raise UnsupportedType(f"type {t}")
            return f"{self.type_name(t.item)}?"
        if k == "tuple" and len(t.args) in (2, 3):
            return f"{'Pair' if len(t.args) == 2 else 'Triple'}<{', '.join(self.type_name(a) for a in t.args)}>"
        raise UnsupportedType(f"type {t}")

    def literal(self, value: object, t: Type) -> str:
        k = t.kind
        if k == "int":
            return f"{value}L" if value != -(2**63) else "Long.MIN_VALUE"
        if k == "float":
            return float_literal(value)
        if k == "bool":
            return "true" if value else "false"
        if k == "str":
            return c_string(value, extra={"$": "\\$"})
        if k == "list":
            return f"listOf<{self.type_name(t.item)}>({', '.join(self.literal(v, t.item) for v in value)})"
        if k == "dict":
            items = ", ".join(f"{self.literal(a, t.args[0])} to {self.literal(b, t.args[1])}" for a, b in value.items())
            return f"mapOf<{self.type_name(t.args[0])}, {self.type_name(t.args[1])}>({items})"
        if k == "optional":
            return "null" if value is None else self.literal(value, t.item)
        if k == "tuple":
            return f"{self.type_name(t)}({', '.join(self.literal(v, a) for v, a in zip(value, t.args))})"
        raise UnsupportedType(f"type {t}")

    def prompt(self, q: Question) -> str:
        params = ", ".join(f"{self.identifier(n)}: {self.type_name(t)}" for n, t in q.params)
        return (HEADER + self.comment(self.description(q))
                + f"fun {self.function_name(q.entry_point)}({params}): {self.type_name(q.returns)} {{\n")

    def default_return(self, t: Type) -> str:
        defaults = {"int": "0L", "float": "0.0", "bool": "false", "str": '""', "optional": "null",
                    "list": "listOf()", "dict": "mapOf()"}
        if t.kind == "tuple":
            return f"return {self.literal(tuple(_zero(a) for a in t.args), t)}"
        return f"return {defaults[t.kind]}"

    def harness(self, q: Question) -> str:
        fn = self.function_name(q.entry_point)
        blocks = []
        for i, case in enumerate(q.tests):
            blocks.append(f"""    run {{
        val ok = try {{
            babelEq({fn}({self.args(q, case.args)}), {self.literal(case.expected, q.returns)}, {self.tolerance(q, case.tolerance)!r})
        }} catch (e: Throwable) {{
            println("{RESULT_MARK} ERROR {i}")
            System.exit(1)
            false
        }}
        if (!ok) {{ println("{RESULT_MARK} FAIL {i}"); System.exit(1) }}
        println("{RESULT_MARK} PASS {i}")
    }}
""")
        return "\n}\n" + EQ + "\nfun main() {\n" + "".join(blocks) + "}\n"


def _zero(t: Type) -> object:
    return {"int": 0, "float": 0.0, "bool": False, "str": ""}.get(t.kind, [] if t.kind == "list" else
                                                                {} if t.kind == "dict" else None)
