import ast

import pytest

from codegemma.eval.babelcode import types as T


def hint(src: str) -> T.Type:
    return T.from_annotation(ast.parse(src, mode="eval").body)


def test_hints_map_to_neutral_types():
    assert hint("List[float]") == T.list_of(T.FLOAT)
    assert hint("Dict[str, int]") == T.dict_of(T.STR, T.INT)
    assert hint("Optional[str]") == T.optional_of(T.STR)
    assert hint("Tuple[int, int]") == T.list_of(T.INT)  # one item type: a list everywhere
    assert hint("Tuple[str, bool]") == T.tuple_of((T.STR, T.BOOL))
    assert hint("list") == T.list_of(T.UNKNOWN)
    with pytest.raises(T.UnsupportedType):
        hint("Any")


def test_inference_unifies_over_values():
    assert T.infer([1, 2.5]) == T.list_of(T.FLOAT)
    assert T.infer(True) == T.BOOL  # bool before int
    assert T.unify(T.infer([]), T.infer(["a"])) == T.list_of(T.STR)
    assert T.unify(T.NONE, T.INT) == T.optional_of(T.INT)
    assert T.infer((1, "a")) == T.tuple_of((T.INT, T.STR))
    assert T.unify(T.infer((1, 2)), T.infer((3, 4, 5))) == T.list_of(T.INT)
    with pytest.raises(T.UnsupportedType):
        T.infer([1, "a"])
    with pytest.raises(T.UnsupportedType):
        T.infer(2**70)


def test_hint_holes_are_filled_by_inference_and_conform_reshapes_values():
    merged = T.merge_hint(T.list_of(T.UNKNOWN), T.infer([1, 2]))
    assert merged == T.list_of(T.INT)
    assert T.complete(T.list_of(T.UNKNOWN)) == T.list_of(T.INT)
    assert T.conform((1, 2), T.list_of(T.FLOAT)) == [1.0, 2.0]
    with pytest.raises(T.UnsupportedType):
        T.conform("x", T.INT)
