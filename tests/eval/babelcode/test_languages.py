"""Each language's harness, end to end through the sandbox: hand-written right answers pass,
a default stub fails, and exceptions, endless loops and syntax errors get their own status."""

import pytest

from codegemma.eval.babelcode import types as T
from codegemma.eval.babelcode.build import Builder
from codegemma.eval.babelcode.execute import run_build
from codegemma.eval.babelcode.languages import LANGUAGES
from codegemma.eval.babelcode.schema import Question, TestCase

ADD = Question("T/add", "test", "add_numbers", (("x", T.INT), ("y", T.INT)), T.INT, "Add x and y.",
               (TestCase((1, 2), 3), TestCase((-5, 5), 0), TestCase((2**40, 1), 2**40 + 1)), "", "")
MEAN = Question("T/mean", "test", "mean_of", (("values", T.list_of(T.FLOAT)),), T.FLOAT, "Mean of values.",
                (TestCase(([1.0, 2.0],), 1.5), TestCase(([0.1, 0.2],), 0.15)), "", "")
WORDS = Question("T/words", "test", "count_words", (("text", T.STR),), T.dict_of(T.STR, T.INT),
                 "Count each word.", (TestCase(("a b a",), {"a": 2, "b": 1}), TestCase(("",), {})), "", "")

RIGHT = {
    "cpp": ("return x + y;", "double s = 0; for (double v : values) s += v; return s / values.size();",
            "std::map<std::string, long> m; std::istringstream in(text); std::string w; "
            "while (in >> w) m[w]++; return m;"),
    "csharp": ("return x + y;", "return values.Average();",
               "var d = new Dictionary<string, long>(); foreach (var w in text.Split(new[] {' '}, "
               "StringSplitOptions.RemoveEmptyEntries)) { d[w] = d.ContainsKey(w) ? d[w] + 1 : 1; } return d;"),
    "go": ("return x + y", "s := 0.0\n\tfor _, v := range values {\n\t\ts += v\n\t}\n\treturn s / float64(len(values))",
           "m := map[string]int{}\n\tfor _, w := range strings.Fields(text) {\n\t\tm[w]++\n\t}\n\treturn m"),
    "java": ("return x + y;", "double s = 0; for (double v : values) s += v; return s / values.size();",
             "HashMap<String, Long> m = new HashMap<>(); for (String w : text.split(\" \")) "
             "if (!w.isEmpty()) m.merge(w, 1L, Long::sum); return m;"),
    "javascript": ("return x + y;", "return values.reduce((a, b) => a + b, 0) / values.length;",
                   "const m = {}; for (const w of text.split(' ').filter(Boolean)) m[w] = (m[w] || 0) + 1; return m;"),
    "kotlin": ("return x + y", "return values.sum() / values.size",
               "return text.split(' ').filter { it.isNotEmpty() }.groupingBy { it }.eachCount()"
               ".mapValues { it.value.toLong() }"),
    "python": ("return x + y", "return sum(values) / len(values)",
               "d = {}\n    for w in text.split():\n        d[w] = d.get(w, 0) + 1\n    return d"),
    "rust": ("x + y", "values.iter().sum::<f64>() / values.len() as f64",
             "let mut m = HashMap::new();\n    for w in text.split_whitespace() {\n        "
             "*m.entry(w.to_string()).or_insert(0) += 1;\n    }\n    m"),
}
RAISE = {"cpp": 'throw std::runtime_error("boom");', "csharp": 'throw new Exception("boom");', "go": 'panic("boom")',
         "java": 'throw new RuntimeException("boom");', "javascript": 'throw new Error("boom");',
         "kotlin": 'throw RuntimeException("boom")', "python": 'raise ValueError("boom")', "rust": 'panic!("boom")'}
LOOP = {"cpp": "volatile long k = 0; while (true) { k++; }", "csharp": "while (true) {}", "go": "for {\n\t}",
        "java": "while (true) {}", "javascript": "while (true) {}", "kotlin": "while (true) {}\n    return 0L",
        "python": "while True:\n        pass", "rust": "loop {}"}

SLOW = {"kotlin", "java", "cpp", "rust", "go", "csharp"}  # compiler start-up or a cold precompiled header


@pytest.mark.toolchain
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in LANGUAGES])
def test_harness_verdicts(name):
    lang = LANGUAGES[name]
    add, mean, words = RIGHT[name]
    samples = [  # (question, body, expected status)
        (ADD, lang.indent_body(add), "passed"),
        (MEAN, lang.indent_body(mean), "passed"),
        (WORDS, lang.indent_body(words), "passed"),
        (ADD, lang.stub(ADD), "failed"),
        (MEAN, lang.stub(MEAN), "failed"),
        (WORDS, lang.stub(WORDS), "failed"),
        (ADD, lang.indent_body(RAISE[name]), "runtime_error"),
        (ADD, lang.indent_body(LOOP[name]), "timeout"),
        (ADD, "    this is ( not code\n", "compile_error" if lang.compile_cmd else "runtime_error"),
    ]
    builder = Builder(lang)
    builds = builder.build_many([lang.program(q, body) for q, body, _ in samples])
    got = [run_build(lang, b, len(q.tests), timeout=3.0).status for b, (q, _, _) in zip(builds, samples)]
    assert got == [want for _, _, want in samples], [b.log[-400:] for b in builds if not b.ok]


@pytest.mark.parametrize("name", list(LANGUAGES))
def test_prompt_ends_in_the_signature_and_stops_close_the_function(name):
    lang = LANGUAGES[name]
    prompt = lang.prompt(MEAN)
    assert lang.function_name("mean_of") in prompt.splitlines()[-1] or name == "python"
    assert "Mean of values." in prompt
    program = lang.program(MEAN, lang.stub(MEAN))
    completion_end = program[len(prompt) + len(lang.stub(MEAN)):]
    # The harness re-supplies the text the stop sequence cut off.
    assert any(completion_end.startswith(stop.rstrip("\n")) for stop in lang.stop_strings) or name == "python"


@pytest.mark.slow
@pytest.mark.toolchain("cpp")
def test_cpp_calls_the_problems_function_not_a_std_namesake():
    lang = LANGUAGES["cpp"]
    gcd = Question("T/gcd", "test", "gcd", (("x", T.INT), ("y", T.INT)), T.INT, "Greatest common divisor.",
                   (TestCase((12, 17), 1), TestCase((4, 6), 2)), "", "")
    literals = Question("T/lit", "test", "string_literals", (("text", T.STR),), T.STR, "Echo.",
                        (TestCase(("a",), "b"),), "", "")
    builds = Builder(lang).build_many([lang.program(gcd, lang.stub(gcd)), lang.program(literals, lang.stub(literals))])
    assert [run_build(lang, b, 2).status for b in builds] == ["failed", "failed"], [b.log[-300:] for b in builds]


@pytest.mark.toolchain("csharp")
def test_csharp_harness_survives_a_method_named_like_a_system_class():
    lang = LANGUAGES["csharp"]
    q = Question("T/convert", "test", "convert", (("x", T.INT),), T.list_of(T.FLOAT), "Split a number.",
                 (TestCase((1,), [1.0, 0.0]),), "", "")
    right = lang.indent_body("return new List<double> { x, 0.0 };")
    builds = Builder(lang).build_many([lang.program(q, right), lang.program(q, lang.stub(q))])
    assert [run_build(lang, b, 1).status for b in builds] == ["passed", "failed"], [b.log[-300:] for b in builds]
