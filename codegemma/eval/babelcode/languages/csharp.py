"""C# (Mono mcs): List / Dictionary / nullable value types / value tuples."""

from __future__ import annotations

from codegemma.eval.babelcode.languages.base import (RESULT_MARK, Language, c_string, float_literal,
                                                     snake_to_pascal)
from codegemma.eval.babelcode.schema import Question
from codegemma.eval.babelcode.types import Type, UnsupportedType

HEADER = ("using System;\nusing System.Collections.Generic;\nusing System.Linq;\nusing System.Text;\n\n"
          "class Problem {\n")

# Fully qualified: a problem's own method (MBPP's `convert` becomes `Convert`) would shadow the class.
EQ = r"""
    static bool BabelEq(object a, object b, double tol) {
        if (a == null || b == null) return a == null && b == null;
        if (a is double || b is double) {
            if (!(a is double || a is long) || !(b is double || b is long)) return false;
            double x = global::System.Convert.ToDouble(a), y = global::System.Convert.ToDouble(b);
            return global::System.Math.Abs(x - y) <= tol * global::System.Math.Max(1.0, global::System.Math.Abs(y));
        }
        var la = a as System.Collections.IList;
        var lb = b as System.Collections.IList;
        if (la != null && lb != null) {
            if (la.Count != lb.Count) return false;
            for (int i = 0; i < la.Count; i++) if (!BabelEq(la[i], lb[i], tol)) return false;
            return true;
        }
        var da = a as System.Collections.IDictionary;
        var db = b as System.Collections.IDictionary;
        if (da != null && db != null) {
            if (da.Count != db.Count) return false;
            foreach (System.Collections.DictionaryEntry e in da) {
                if (!db.Contains(e.Key) || !BabelEq(e.Value, db[e.Key], tol)) return false;
            }
            return true;
        }
        var ta = a as System.Runtime.CompilerServices.ITuple;
        var tb = b as System.Runtime.CompilerServices.ITuple;
        if (ta != null && tb != null) {
            if (ta.Length != tb.Length) return false;
            for (int i = 0; i < ta.Length; i++) if (!BabelEq(ta[i], tb[i], tol)) return false;
            return true;
        }
        return a.Equals(b);
    }
"""

KEYWORDS = frozenset("""abstract as base bool break byte case catch char checked class const continue decimal
default delegate do double else enum event explicit extern false finally fixed float for foreach goto if
implicit in int interface internal is lock long namespace new null object operator out override params
private protected public readonly ref return sbyte sealed short sizeof stackalloc static string struct
switch this throw true try typeof uint ulong unchecked unsafe ushort using virtual void volatile while
Main""".split())


class CSharp(Language):
    name = "csharp"
    display = "C#"
    source_name = "Problem.cs"
    stop_strings = ("\n    }\n", "\n}")
    keywords = KEYWORDS
    run_needs_large_memory = True
    compile_cmd = "mcs -nowarn:162,168,219,414 -r:System.Numerics -out:out/prog.exe Problem.cs"
    run_cmd = "mono out/prog.exe"

    def function_name(self, name: str) -> str:
        return self.identifier(snake_to_pascal(name))

    def type_name(self, t: Type, boxed: bool = False) -> str:
        k = t.kind
        simple = {"int": "long", "float": "double", "bool": "bool", "str": "string"}
        if k in simple:
            return simple[k]
        if k == "list":
            return f"List<{self.type_name(t.item)}>"
        if k == "dict":
            return f"Dictionary<{self.type_name(t.args[0])}, {self.type_name(t.args[1])}>"
        if k == "optional":
            if t.item.kind in ("int", "float", "bool"):
                return self.type_name(t.item) + "?"
            raise UnsupportedType(f"type {t}")  # no nullable reference types in this compiler
        if k == "tuple":
            return f"({', '.join(self.type_name(a) for a in t.args)})"
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
            return f"new {self.type_name(t)} {{{', '.join(self.literal(v, t.item) for v in value)}}}"
        if k == "dict":
            items = ", ".join(f"{{{self.literal(a, t.args[0])}, {self.literal(b, t.args[1])}}}" for a, b in value.items())
            return f"new {self.type_name(t)} {{{items}}}"
        if k == "optional":
            return f"({self.type_name(t)})null" if value is None else f"({self.type_name(t)}){self.literal(value, t.item)}"
        if k == "tuple":
            return f"({', '.join(self.literal(v, a) for v, a in zip(value, t.args))})"
        raise UnsupportedType(f"type {t}")

    def prompt(self, q: Question) -> str:
        params = ", ".join(f"{self.type_name(t)} {self.identifier(n)}" for n, t in q.params)
        return (HEADER + self.comment(self.description(q), indent="    ")
                + f"    public static {self.type_name(q.returns)} {self.function_name(q.entry_point)}({params}) {{\n")

    def indent_body(self, statement: str) -> str:
        return f"        {statement}\n"

    def default_return(self, t: Type) -> str:
        return f"return default({self.type_name(t)});" if t.kind != "str" else 'return "";'

    def harness(self, q: Question) -> str:
        fn = self.function_name(q.entry_point)
        blocks = []
        for i, case in enumerate(q.tests):
            blocks.append(f"""        {{
            bool ok;
            try {{
                object got = {fn}({self.args(q, case.args)});
                ok = BabelEq(got, {self.literal(case.expected, q.returns)}, {self.tolerance(q, case.tolerance)!r});
            }} catch (Exception) {{
                global::System.Console.WriteLine("{RESULT_MARK} ERROR {i}");
                global::System.Environment.Exit(1);
                return;
            }}
            if (!ok) {{ global::System.Console.WriteLine("{RESULT_MARK} FAIL {i}"); global::System.Environment.Exit(1); }}
            global::System.Console.WriteLine("{RESULT_MARK} PASS {i}");
        }}
""")
        return "\n    }\n" + EQ + "\n    public static void Main(string[] args) {\n" + "".join(blocks) + "    }\n}\n"
