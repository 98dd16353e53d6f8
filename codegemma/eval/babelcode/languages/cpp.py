"""C++17: std::vector / std::map / std::optional / std::tuple; compiled with a precompiled header."""

from __future__ import annotations

from codegemma.eval.babelcode.languages.base import RESULT_MARK, Language, c_string, float_literal
from codegemma.eval.babelcode.schema import Question
from codegemma.eval.babelcode.types import Type, UnsupportedType

HEADER = "#include <bits/stdc++.h>\nusing namespace std;\n\n"

# Equality templates are declared before they are defined: calls inside a template on std types
# find global overloads only by ordinary lookup at the point of definition (ADL searches std).
EQ = r"""
template <typename T> bool babel_eq(const T& a, const T& b, double tol);
bool babel_eq(const double& a, const double& b, double tol);
template <typename T> bool babel_eq(const std::vector<T>& a, const std::vector<T>& b, double tol);
template <typename K, typename V> bool babel_eq(const std::map<K, V>& a, const std::map<K, V>& b, double tol);
template <typename T> bool babel_eq(const std::optional<T>& a, const std::optional<T>& b, double tol);
template <typename... Ts> bool babel_eq(const std::tuple<Ts...>& a, const std::tuple<Ts...>& b, double tol);

template <typename T> bool babel_eq(const T& a, const T& b, double) { return a == b; }
bool babel_eq(const double& a, const double& b, double tol) {
    return std::fabs(a - b) <= tol * std::max(1.0, std::fabs(b));
}
template <typename T> bool babel_eq(const std::vector<T>& a, const std::vector<T>& b, double tol) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i) if (!babel_eq(a[i], b[i], tol)) return false;
    return true;
}
template <typename K, typename V> bool babel_eq(const std::map<K, V>& a, const std::map<K, V>& b, double tol) {
    if (a.size() != b.size()) return false;
    for (const auto& kv : a) {
        auto it = b.find(kv.first);
        if (it == b.end() || !babel_eq(kv.second, it->second, tol)) return false;
    }
    return true;
}
template <typename T> bool babel_eq(const std::optional<T>& a, const std::optional<T>& b, double tol) {
    if (a.has_value() != b.has_value()) return false;
    return !a.has_value() || babel_eq(*a, *b, tol);
}
template <typename Tuple, size_t... I>
bool babel_eq_tuple(const Tuple& a, const Tuple& b, double tol, std::index_sequence<I...>) {
    return (babel_eq(std::get<I>(a), std::get<I>(b), tol) && ...);
}
template <typename... Ts> bool babel_eq(const std::tuple<Ts...>& a, const std::tuple<Ts...>& b, double tol) {
    return babel_eq_tuple(a, b, tol, std::index_sequence_for<Ts...>{});
}
"""

KEYWORDS = frozenset("""alignas alignof and asm auto bitand bitor bool break case catch char class compl const
constexpr continue default delete do double else enum explicit export extern false float for friend goto if
inline int long mutable namespace new noexcept not nullptr operator or private protected public register
return short signed sizeof static struct switch template this throw true try typedef typeid typename union
unsigned using virtual void volatile while xor string vector map std main""".split())


class Cpp(Language):
    name = "cpp"
    display = "C/C++"
    source_name = "main.cpp"
    stop_strings = ("\n}",)
    keywords = KEYWORDS
    # pch/ holds babel.h and its precompiled babel.h.gch (built once per cache, see build.py).
    compile_cmd = "g++ -std=c++17 -O1 -w {include} -o out/prog main.cpp"
    run_cmd = "./out/prog"

    def type_name(self, t: Type, boxed: bool = False) -> str:
        k = t.kind
        simple = {"int": "long", "float": "double", "bool": "bool", "str": "std::string"}
        if k in simple:
            return simple[k]
        if k == "list":
            return f"std::vector<{self.type_name(t.item)}>"
        if k == "dict":
            return f"std::map<{self.type_name(t.args[0])}, {self.type_name(t.args[1])}>"
        if k == "optional":
            return f"std::optional<{self.type_name(t.item)}>"
        if k == "tuple":
            return f"std::tuple<{', '.join(self.type_name(a) for a in t.args)}>"
        raise UnsupportedType(f"type {t}")

    def literal(self, value: object, t: Type) -> str:
        k = t.kind
        if k == "int":
            return f"{value}L" if abs(value) >= 2**31 else str(value)
        if k == "float":
            return float_literal(value)
        if k == "bool":
            return "true" if value else "false"
        if k == "str":
            return f"std::string({c_string(value, unicode_escape=None)})"
        if k == "list":
            return f"{self.type_name(t)}{{{', '.join(self.literal(v, t.item) for v in value)}}}"
        if k == "dict":
            items = ", ".join(f"{{{self.literal(a, t.args[0])}, {self.literal(b, t.args[1])}}}" for a, b in value.items())
            return f"{self.type_name(t)}{{{items}}}"
        if k == "optional":
            return f"{self.type_name(t)}()" if value is None else f"{self.type_name(t)}({self.literal(value, t.item)})"
        if k == "tuple":
            return f"{self.type_name(t)}({', '.join(self.literal(v, a) for v, a in zip(value, t.args))})"
        raise UnsupportedType(f"type {t}")

    def signature(self, q: Question) -> str:
        params = ", ".join(f"{self.type_name(t)} {self.identifier(n)}" for n, t in q.params)
        return f"{self.type_name(q.returns)} {self.function_name(q.entry_point)}({params}) {{\n"

    def prompt(self, q: Question) -> str:
        return HEADER + self.comment(self.description(q)) + self.signature(q)

    def default_return(self, t: Type) -> str:
        return f"return {self.type_name(t)}{{}};"

    def harness(self, q: Question) -> str:
        ret = self.type_name(q.returns)
        # Qualified, so `using namespace std` cannot put std::gcd or namespace std::string_literals
        # in the way of the problem's own function.
        fn = "::" + self.function_name(q.entry_point)
        blocks = []
        for i, case in enumerate(q.tests):
            blocks.append(f"""    {{
        bool ok = false;
        try {{
            {ret} got = {fn}({self.args(q, case.args)});
            {ret} want = {self.literal(case.expected, q.returns)};
            ok = babel_eq(got, want, {self.tolerance(q, case.tolerance)!r});
        }} catch (...) {{
            std::cout << "{RESULT_MARK} ERROR {i}" << std::endl;
            return 1;
        }}
        if (!ok) {{ std::cout << "{RESULT_MARK} FAIL {i}" << std::endl; return 1; }}
        std::cout << "{RESULT_MARK} PASS {i}" << std::endl;
    }}
""")
        return "\n}\n" + EQ + "\nint main() {\n" + "".join(blocks) + "    return 0;\n}\n"
