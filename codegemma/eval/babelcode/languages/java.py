"""Java 17: ArrayList / HashMap / Optional, boxed numbers in generics; many programs per javac run."""

from __future__ import annotations

from codegemma.eval.babelcode.languages.base import (RESULT_MARK, Language, c_string, float_literal,
                                                     snake_to_camel)
from codegemma.eval.babelcode.schema import Question
from codegemma.eval.babelcode.types import Type, UnsupportedType

HEADER = "import java.util.*;\nimport java.util.stream.*;\nimport java.math.*;\n\nclass Problem {\n"

EQ = r"""
    static boolean babelEq(Object a, Object b, double tol) {
        if (a == null || b == null) return a == b;
        if (a instanceof Double || b instanceof Double) {
            if (!(a instanceof Number) || !(b instanceof Number)) return false;
            double x = ((Number) a).doubleValue(), y = ((Number) b).doubleValue();
            return Math.abs(x - y) <= tol * Math.max(1.0, Math.abs(y));
        }
        if (a instanceof List && b instanceof List) {
            List<?> la = (List<?>) a, lb = (List<?>) b;
            if (la.size() != lb.size()) return false;
            for (int i = 0; i < la.size(); i++) if (!babelEq(la.get(i), lb.get(i), tol)) return false;
            return true;
        }
        if (a instanceof Map && b instanceof Map) {
            Map<?, ?> ma = (Map<?, ?>) a, mb = (Map<?, ?>) b;
            if (ma.size() != mb.size()) return false;
            for (Map.Entry<?, ?> e : ma.entrySet()) {
                if (!mb.containsKey(e.getKey()) || !babelEq(e.getValue(), mb.get(e.getKey()), tol)) return false;
            }
            return true;
        }
        if (a instanceof Optional && b instanceof Optional) {
            Optional<?> oa = (Optional<?>) a, ob = (Optional<?>) b;
            if (oa.isPresent() != ob.isPresent()) return false;
            return !oa.isPresent() || babelEq(oa.get(), ob.get(), tol);
        }
        return a.equals(b);
    }
"""

KEYWORDS = frozenset("""abstract assert boolean break byte case catch char class const continue default do
double else enum extends final finally float for goto if implements import instanceof int interface long
native new package private protected public return short static strictfp super switch synchronized this
throw throws transient try void volatile while true false null var record yield main""".split())


class Java(Language):
    name = "java"
    display = "Java"
    source_name = "Problem.java"
    stop_strings = ("\n    }\n", "\n}")
    keywords = KEYWORDS
    batch_compile = True
    run_needs_large_memory = True
    compile_cmd = "javac -nowarn -encoding UTF-8 -d out {sources}"
    run_cmd = ("java -Xmx512m -Xss16m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:CompressedClassSpaceSize=64m "
               "-XX:ReservedCodeCacheSize=64m -cp out {main_class}")

    def function_name(self, name: str) -> str:
        return self.identifier(snake_to_camel(name))

    def type_name(self, t: Type, boxed: bool = False) -> str:
        k = t.kind
        if k in ("int", "float", "bool"):
            return {"int": ("long", "Long"), "float": ("double", "Double"), "bool": ("boolean", "Boolean")}[k][boxed]
        if k == "str":
            return "String"
        if k == "list":
            return f"ArrayList<{self.type_name(t.item, True)}>"
        if k == "dict":
            return f"HashMap<{self.type_name(t.args[0], True)}, {self.type_name(t.args[1], True)}>"
        if k == "optional":
            return f"Optional<{self.type_name(t.item, True)}>"
        raise UnsupportedType(f"type {t}")

    def literal(self, value: object, t: Type) -> str:
        k = t.kind
        if k == "int":
            return f"{value}L"
        if k == "float":
            return float_literal(value)
        if k == "bool":
            return "true" if value else "false"
        if k == "str":
            return c_string(value)
        if k == "list":
            if not value:
                return f"new {self.type_name(t)}()"
            return f"new {self.type_name(t)}(Arrays.asList({', '.join(self.literal(v, t.item) for v in value)}))"
        if k == "dict":
            if not value:
                return f"new {self.type_name(t)}()"
            entries = ", ".join(f"Map.entry({self.literal(a, t.args[0])}, {self.literal(b, t.args[1])})"
                                for a, b in value.items())
            return f"new {self.type_name(t)}(Map.ofEntries({entries}))"
        if k == "optional":
            return "Optional.empty()" if value is None else f"Optional.of({self.literal(value, t.item)})"
        raise UnsupportedType(f"type {t}")

    def prompt(self, q: Question) -> str:
        params = ", ".join(f"{self.type_name(t)} {self.identifier(n)}" for n, t in q.params)
        return (HEADER + self.comment(self.description(q), indent="    ")
                + f"    public static {self.type_name(q.returns)} {self.function_name(q.entry_point)}({params}) {{\n")

    def indent_body(self, statement: str) -> str:
        return f"        {statement}\n"

    def default_return(self, t: Type) -> str:
        defaults = {"int": "0L", "float": "0.0", "bool": "false", "str": '""', "optional": "Optional.empty()"}
        return f"return {defaults.get(t.kind) or 'new ' + self.type_name(t) + '()'};"

    def harness(self, q: Question) -> str:
        fn = self.function_name(q.entry_point)
        blocks = []
        for i, case in enumerate(q.tests):
            blocks.append(f"""        {{
            boolean ok;
            try {{
                Object got = {fn}({self.args(q, case.args)});
                ok = babelEq(got, {self.literal(case.expected, q.returns)}, {self.tolerance(q, case.tolerance)!r});
            }} catch (Throwable e) {{
                System.out.println("{RESULT_MARK} ERROR {i}");
                System.exit(1);
                return;
            }}
            if (!ok) {{ System.out.println("{RESULT_MARK} FAIL {i}"); System.exit(1); }}
            System.out.println("{RESULT_MARK} PASS {i}");
        }}
""")
        return ("\n    }\n" + EQ + "\n    public static void main(String[] args) {\n" + "".join(blocks)
                + "    }\n}\n")
