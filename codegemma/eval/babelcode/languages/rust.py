"""Rust: Vec / HashMap / Option / tuples; equality through a small trait with float tolerance."""

from __future__ import annotations

from codegemma.eval.babelcode.languages.base import RESULT_MARK, Language, c_string, float_literal
from codegemma.eval.babelcode.schema import Question
from codegemma.eval.babelcode.types import Type, UnsupportedType

UNICODE_ESCAPE = "\\u{{{:x}}}"  # \u{1f600}: any code point
HEADER = "use std::collections::HashMap;\n\n"

EQ = r"""
trait BabelEq {
    fn babel_eq(&self, other: &Self, tol: f64) -> bool;
}
macro_rules! babel_exact {
    ($($t:ty),*) => { $(impl BabelEq for $t { fn babel_eq(&self, o: &Self, _: f64) -> bool { self == o } })* };
}
babel_exact!(i64, bool, String);
impl BabelEq for f64 {
    fn babel_eq(&self, o: &Self, tol: f64) -> bool { (self - o).abs() <= tol * o.abs().max(1.0) }
}
impl<T: BabelEq> BabelEq for Vec<T> {
    fn babel_eq(&self, o: &Self, tol: f64) -> bool {
        self.len() == o.len() && self.iter().zip(o.iter()).all(|(a, b)| a.babel_eq(b, tol))
    }
}
impl<T: BabelEq> BabelEq for Option<T> {
    fn babel_eq(&self, o: &Self, tol: f64) -> bool {
        match (self, o) { (None, None) => true, (Some(a), Some(b)) => a.babel_eq(b, tol), _ => false }
    }
}
impl<K: std::hash::Hash + Eq, V: BabelEq> BabelEq for HashMap<K, V> {
    fn babel_eq(&self, o: &Self, tol: f64) -> bool {
        self.len() == o.len() && self.iter().all(|(k, v)| o.get(k).map_or(false, |w| v.babel_eq(w, tol)))
    }
}
impl<A: BabelEq, B: BabelEq> BabelEq for (A, B) {
    fn babel_eq(&self, o: &Self, tol: f64) -> bool { self.0.babel_eq(&o.0, tol) && self.1.babel_eq(&o.1, tol) }
}
impl<A: BabelEq, B: BabelEq, C: BabelEq> BabelEq for (A, B, C) {
    fn babel_eq(&self, o: &Self, tol: f64) -> bool {
        self.0.babel_eq(&o.0, tol) && self.1.babel_eq(&o.1, tol) && self.2.babel_eq(&o.2, tol)
    }
}
impl<A: BabelEq, B: BabelEq, C: BabelEq, D: BabelEq> BabelEq for (A, B, C, D) {
    fn babel_eq(&self, o: &Self, tol: f64) -> bool {
        self.0.babel_eq(&o.0, tol) && self.1.babel_eq(&o.1, tol) && self.2.babel_eq(&o.2, tol)
            && self.3.babel_eq(&o.3, tol)
    }
}

fn babel_case<F: FnOnce() -> bool + std::panic::UnwindSafe>(i: usize, check: F) {
    match std::panic::catch_unwind(check) {
        Ok(true) => println!("#BABEL# PASS {}", i),
        Ok(false) => { println!("#BABEL# FAIL {}", i); std::process::exit(1); }
        Err(_) => { println!("#BABEL# ERROR {}", i); std::process::exit(1); }
    }
}
""".replace("#BABEL#", RESULT_MARK)

KEYWORDS = frozenset("""as async await break const continue crate dyn else enum extern false fn for if impl in
let loop match mod move mut pub ref return self Self static struct super trait true type unsafe use where
while abstract become box do final macro override priv typeof unsized virtual yield try main""".split())


class Rust(Language):
    name = "rust"
    display = "Rust"
    source_name = "main.rs"
    stop_strings = ("\n}",)
    keywords = KEYWORDS
    # No optimisation (it costs compile time these tiny programs never win back), but no debug
    # assertions either: integer overflow wraps as in a release build instead of panicking.
    compile_cmd = ("rustc --edition 2021 -C opt-level=0 -C debug-assertions=off -C debuginfo=0 -A warnings "
                   "-o out/prog main.rs")
    run_cmd = "./out/prog"

    def type_name(self, t: Type, boxed: bool = False) -> str:
        k = t.kind
        simple = {"int": "i64", "float": "f64", "bool": "bool", "str": "String"}
        if k in simple:
            return simple[k]
        if k == "list":
            return f"Vec<{self.type_name(t.item)}>"
        if k == "dict":
            if t.args[0].kind not in ("int", "str"):
                raise UnsupportedType(f"type {t}")
            return f"HashMap<{self.type_name(t.args[0])}, {self.type_name(t.args[1])}>"
        if k == "optional":
            return f"Option<{self.type_name(t.item)}>"
        if k == "tuple" and len(t.args) <= 4:
            return f"({', '.join(self.type_name(a) for a in t.args)})"
        raise UnsupportedType(f"type {t}")

    def literal(self, value: object, t: Type) -> str:
        k = t.kind
        if k == "int":
            return str(value) if value != -(2**63) else "i64::MIN"
        if k == "float":
            return float_literal(value)
        if k == "bool":
            return "true" if value else "false"
        if k == "str":
            return f"String::from({c_string(value, unicode_escape=UNICODE_ESCAPE)})"
        if k == "list":
            return f"vec![{', '.join(self.literal(v, t.item) for v in value)}]"
        if k == "dict":
            items = ", ".join(f"({self.literal(a, t.args[0])}, {self.literal(b, t.args[1])})" for a, b in value.items())
            return f"HashMap::from([{items}])" if value else "HashMap::new()"
        if k == "optional":
            return "None" if value is None else f"Some({self.literal(value, t.item)})"
        if k == "tuple":
            return f"({', '.join(self.literal(v, a) for v, a in zip(value, t.args))})"
        raise UnsupportedType(f"type {t}")

    def prompt(self, q: Question) -> str:
        params = ", ".join(f"{self.identifier(n)}: {self.type_name(t)}" for n, t in q.params)
        return (HEADER + self.comment(self.description(q), prefix="/// ")
                + f"fn {self.function_name(q.entry_point)}({params}) -> {self.type_name(q.returns)} {{\n")

    def default_return(self, t: Type) -> str:
        return f"return <{self.type_name(t)}>::default();"

    def harness(self, q: Question) -> str:
        fn = self.function_name(q.entry_point)
        ret = self.type_name(q.returns)
        cases = "".join(
            f"    babel_case({i}, || {{\n"
            f"        let want: {ret} = {self.literal(c.expected, q.returns)};\n"
            f"        {fn}({self.args(q, c.args)}).babel_eq(&want, {self.tolerance(q, c.tolerance)!r})\n    }});\n"
            for i, c in enumerate(q.tests))
        return "\n}\n" + EQ + "\nfn main() {\n    std::panic::set_hook(Box::new(|_| {}));\n" + cases + "}\n"
