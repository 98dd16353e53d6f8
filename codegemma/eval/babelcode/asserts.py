"""Input/output test cases read from Python `assert` statements with `ast`.

Recognised shapes (the function may be called `candidate` or by its own name):
    assert f(*args) == want            assert want == f(*args)
    assert f(*args) is True|False      assert f(*args)          assert not f(*args)
    assert abs(f(*args) - want) < tol  assert math.isclose(f(*args), want[, rel_tol=..., abs_tol=...])
Arguments and expected values must be literals (arithmetic on literals is allowed). Asserts of any
other shape (loops over random inputs, set comparisons, helper calls) are skipped and counted.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from codegemma.eval.babelcode.schema import DEFAULT_TOLERANCE

_LITERAL_NODES = (ast.Expression, ast.Constant, ast.List, ast.Tuple, ast.Dict, ast.BinOp, ast.UnaryOp,
                  ast.Load, ast.operator, ast.unaryop)


class NotLiteral(Exception):
    pass


@dataclass
class RawCase:
    args: tuple
    expected: object
    tolerance: float = DEFAULT_TOLERANCE


@dataclass
class Extraction:
    cases: list[RawCase] = field(default_factory=list)
    skipped: int = 0


def literal(node: ast.expr) -> object:
    """The value of a literal expression; arithmetic on literals (`-0.5`, `2**3`, `'a' * 3`) is folded."""
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    tree = ast.Expression(body=node)
    if not all(isinstance(n, _LITERAL_NODES) for n in ast.walk(tree)):
        raise NotLiteral(ast.unparse(node))
    try:
        return eval(compile(tree, "<literal>", "eval"), {"__builtins__": {}})  # only literals and operators
    except Exception as exc:  # noqa: BLE001 - any failure means "not a usable literal"
        raise NotLiteral(ast.unparse(node)) from exc


def _call_args(node: ast.expr, names: set[str]) -> tuple | None:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in names and not node.keywords:
        if any(isinstance(a, ast.Starred) for a in node.args):
            return None
        return tuple(literal(a) for a in node.args)
    return None


def _tolerance(node: ast.expr) -> float:
    value = literal(node)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise NotLiteral(ast.unparse(node))
    return float(value)


def _case(test: ast.expr, names: set[str]) -> RawCase | None:
    if (args := _call_args(test, names)) is not None:
        return RawCase(args, True)
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        if (args := _call_args(test.operand, names)) is not None:
            return RawCase(args, False)
        return None
    if isinstance(test, ast.Call) and ast.unparse(test.func) == "math.isclose" and len(test.args) == 2:
        if (args := _call_args(test.args[0], names)) is None:
            return None
        tol = max([_tolerance(k.value) for k in test.keywords if k.arg in ("rel_tol", "abs_tol")] or [1e-9])
        return RawCase(args, literal(test.args[1]), max(tol, DEFAULT_TOLERANCE))
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return None
    op, left, right = test.ops[0], test.left, test.comparators[0]
    if isinstance(op, (ast.Eq, ast.Is)):
        for call, want in ((left, right), (right, left)):
            if (args := _call_args(call, names)) is not None:
                expected = literal(want)
                if isinstance(op, ast.Is) and not isinstance(expected, bool) and expected is not None:
                    return None
                return RawCase(args, expected)
        return None
    if isinstance(op, (ast.Lt, ast.LtE)) and isinstance(left, ast.Call) and len(left.args) == 1:
        if ast.unparse(left.func) in ("abs", "math.fabs"):
            diff = left.args[0]
            if isinstance(diff, ast.BinOp) and isinstance(diff.op, ast.Sub):
                for call, want in ((diff.left, diff.right), (diff.right, diff.left)):
                    if (args := _call_args(call, names)) is not None:
                        return RawCase(args, literal(want), _tolerance(right))
    return None


def extract(statements: list[ast.stmt], names: set[str]) -> Extraction:
    """Test cases from the top-level asserts of `statements`; asserts nested in loops are skipped."""
    out = Extraction()
    for stmt in statements:
        if isinstance(stmt, ast.Assert):
            if isinstance(stmt.test, ast.Constant):
                continue  # `assert True`: a marker in HumanEval, not a test
            try:
                case = _case(stmt.test, names)
            except NotLiteral:
                case = None
            if case is None:
                out.skipped += 1
            else:
                out.cases.append(case)
        elif isinstance(stmt, (ast.For, ast.While, ast.With, ast.If)):
            out.skipped += sum(isinstance(n, ast.Assert) for n in ast.walk(stmt))
    return out
