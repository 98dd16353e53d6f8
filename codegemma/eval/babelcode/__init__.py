"""BabelCode-style multilingual evaluation: HumanEval and MBPP translated from Python into C++, C#,
Go, Java, JavaScript, Kotlin, Python and Rust (CodeGemma report, Table 4).

    datasets.py   HumanEval/MBPP -> language-neutral questions (typed signature, description, I/O cases)
    types.py      the neutral type model: hints and literal values -> types, unification
    asserts.py    test cases read from Python asserts with `ast`
    languages/    one module per target: types, literals, prompt, stops, test harness, build commands
    translate.py  which questions each language keeps, and why the others are dropped
    build.py      sandboxed compiles: content-addressed cache, parallel, batched for the JVM
    execute.py    sandboxed runs and the five statuses of a sample
    validate.py   every harness compiles and a wrong stub fails; Python agrees with the original tests
    tasks.py      `babelcode-humaneval`, `babelcode-mbpp` (and per language) for the eval runner
    report.py     Table 4 layout with the published CodeGemma numbers, and a chart

Importing this package registers the tasks.
"""

from codegemma.eval.babelcode import tasks  # noqa: F401  (registers the tasks)
