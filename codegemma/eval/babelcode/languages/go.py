"""Go: slices and maps; optional values and tuples have no plain Go form and are dropped."""

from __future__ import annotations

from codegemma.eval.babelcode.languages.base import (RESULT_MARK, Language, c_string, float_literal,
                                                     snake_to_pascal)
from codegemma.eval.babelcode.schema import Question
from codegemma.eval.babelcode.types import Type, UnsupportedType

# Imports live above the signature, where the model cannot add any, so the prompt offers the
# common ones and the harness marks each as used (Go rejects unused imports).
IMPORTS = ("fmt", "math", "os", "reflect", "sort", "strconv", "strings", "unicode")
HEADER = "package main\n\nimport (\n" + "".join(f'\t"{m}"\n' for m in IMPORTS) + ")\n\n"
USES = ("var _ = fmt.Sprint\nvar _ = math.Abs\nvar _ = os.Exit\nvar _ = reflect.DeepEqual\nvar _ = sort.Ints\n"
        "var _ = strconv.Itoa\nvar _ = strings.Split\nvar _ = unicode.IsUpper\n")

EQ = r"""
func babelEq(a, b interface{}, tol float64) bool {
	return babelEqValue(reflect.ValueOf(a), reflect.ValueOf(b), tol)
}

func babelEqValue(a, b reflect.Value, tol float64) bool {
	if a.Kind() != b.Kind() {
		return false
	}
	switch a.Kind() {
	case reflect.Float64, reflect.Float32:
		x, y := a.Float(), b.Float()
		return math.Abs(x-y) <= tol*math.Max(1, math.Abs(y))
	case reflect.Slice:
		if a.Len() != b.Len() {
			return false
		}
		for i := 0; i < a.Len(); i++ {
			if !babelEqValue(a.Index(i), b.Index(i), tol) {
				return false
			}
		}
		return true
	case reflect.Map:
		if a.Len() != b.Len() {
			return false
		}
		for _, k := range a.MapKeys() {
			w := b.MapIndex(k)
			if !w.IsValid() || !babelEqValue(a.MapIndex(k), w, tol) {
				return false
			}
		}
		return true
	}
	return reflect.DeepEqual(a.Interface(), b.Interface())
}

func babelCase(i int, check func() bool) {
	ok, finished := false, false
	func() {
		defer func() { recover() }()
		ok = check()
		finished = true
	}()
	if !finished {
		fmt.Printf("#BABEL# ERROR %d\n", i)
		os.Exit(1)
	}
	if !ok {
		fmt.Printf("#BABEL# FAIL %d\n", i)
		os.Exit(1)
	}
	fmt.Printf("#BABEL# PASS %d\n", i)
}
""".replace("#BABEL#", RESULT_MARK)

KEYWORDS = frozenset("""break case chan const continue default defer else fallthrough for func go goto if import
interface map package range return select struct switch type var string int bool len cap append copy
make new panic print println recover""".split() + list(IMPORTS))


class Go(Language):
    name = "go"
    display = "Go"
    source_name = "main.go"
    stop_strings = ("\n}",)
    keywords = KEYWORDS
    compile_cmd = "go build -o out/prog main.go"
    run_cmd = "./out/prog"

    def function_name(self, name: str) -> str:
        return self.identifier(snake_to_pascal(name))

    def type_name(self, t: Type, boxed: bool = False) -> str:
        k = t.kind
        simple = {"int": "int", "float": "float64", "bool": "bool", "str": "string"}
        if k in simple:
            return simple[k]
        if k == "list":
            return "[]" + self.type_name(t.item)
        if k == "dict":
            return f"map[{self.type_name(t.args[0])}]{self.type_name(t.args[1])}"
        raise UnsupportedType(f"type {t}")

    def literal(self, value: object, t: Type) -> str:
        k = t.kind
        if k == "int":
            return str(value)
        if k == "float":
            return float_literal(value)
        if k == "bool":
            return "true" if value else "false"
        if k == "str":
            return c_string(value, unicode_escape="\\U{:08x}")
        if k == "list":
            return f"{self.type_name(t)}{{{', '.join(self.literal(v, t.item) for v in value)}}}"
        if k == "dict":
            items = ", ".join(f"{self.literal(a, t.args[0])}: {self.literal(b, t.args[1])}" for a, b in value.items())
            return f"{self.type_name(t)}{{{items}}}"
        raise UnsupportedType(f"type {t}")

    def prompt(self, q: Question) -> str:
        params = ", ".join(f"{self.identifier(n)} {self.type_name(t)}" for n, t in q.params)
        return (HEADER + self.comment(self.description(q))
                + f"func {self.function_name(q.entry_point)}({params}) {self.type_name(q.returns)} {{\n")

    def indent_body(self, statement: str) -> str:
        return f"\t{statement}\n"

    def default_return(self, t: Type) -> str:
        defaults = {"int": "0", "float": "0.0", "bool": "false", "str": '""'}
        return f"return {defaults.get(t.kind) or self.type_name(t) + '{}'}"

    def harness(self, q: Question) -> str:
        fn = self.function_name(q.entry_point)
        ret = self.type_name(q.returns)
        cases = "".join(
            f"\tbabelCase({i}, func() bool {{\n"
            f"\t\tvar want {ret} = {self.literal(c.expected, q.returns)}\n"
            f"\t\treturn babelEq({fn}({self.args(q, c.args)}), want, {self.tolerance(q, c.tolerance)!r})\n\t}})\n"
            for i, c in enumerate(q.tests))
        return "\n}\n\n" + USES + EQ + "\nfunc main() {\n" + cases + "}\n"
