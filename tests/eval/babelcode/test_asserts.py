import ast

from codegemma.eval.babelcode.asserts import extract


def cases(src: str, names=("candidate",)):
    return extract(ast.parse(src).body, set(names))


def test_recognised_assert_shapes():
    found = cases("""
assert candidate([1, 2], 3) == [4]
assert 5 == candidate(2, 3)
assert candidate('a') is True
assert not candidate('b')
assert candidate('c')
assert abs(candidate(2.0) - 0.5) < 1e-3
assert math.isclose(candidate(1), 2.5, rel_tol=0.01)
assert candidate(-1 * 2) == 'x' * 3, "message"
""")
    assert [(c.args, c.expected) for c in found.cases] == [
        (([1, 2], 3), [4]), ((2, 3), 5), (("a",), True), (("b",), False), (("c",), True), ((2.0,), 0.5),
        ((1,), 2.5), ((-2,), "xxx")]
    assert found.cases[5].tolerance == 1e-3
    assert found.cases[6].tolerance == 0.01
    assert found.skipped == 0


def test_unusable_asserts_are_skipped_and_counted():
    found = cases("""
assert True
assert candidate(x) == 1
assert set(candidate([1])) == set([1])
for i in range(3):
    assert candidate(i) == i
assert other(1) == 1
""")
    assert found.cases == []
    assert found.skipped == 4  # `assert True` is a marker, not a test


def test_function_called_by_its_own_name():
    found = cases("assert add(1, 2) == 3", names=("add",))
    assert [(c.args, c.expected) for c in found.cases] == [((1, 2), 3)]
