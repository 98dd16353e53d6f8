"""The language-neutral types of a translated problem, read from Python hints and test values.

A problem's parameters and result get one `Type` each. Hints come first (HumanEval has them);
where a hint is missing or vague (`list`, no annotation, MBPP's untyped functions), the type is
inferred from the literal values in the test asserts, unified over every test case, the way
BabelCode infers MBPP signatures. Tuples whose items share one type become lists (every target
language has lists; few have tuples); a tuple with mixed item types stays a `tuple`, which only
some languages support. Anything that cannot be typed raises `UnsupportedType`, and the problem
is dropped for the languages that need a static type.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class UnsupportedType(Exception):
    """A value or hint with no place in the neutral type model (mixed lists, sets, Any, ...)."""


@dataclass(frozen=True)
class Type:
    kind: str  # int float bool str list dict tuple optional unknown none
    args: tuple["Type", ...] = ()

    def __str__(self) -> str:
        if not self.args:
            return self.kind
        return f"{self.kind}[{', '.join(map(str, self.args))}]"

    @property
    def item(self) -> "Type":
        return self.args[0]

    def is_complete(self) -> bool:
        return self.kind not in ("unknown", "none") and all(a.is_complete() for a in self.args)


INT, FLOAT, BOOL, STR = Type("int"), Type("float"), Type("bool"), Type("str")
UNKNOWN, NONE = Type("unknown"), Type("none")
_SCALARS = {"int": INT, "float": FLOAT, "bool": BOOL, "str": STR}


def list_of(t: Type) -> Type:
    return Type("list", (t,))


def dict_of(k: Type, v: Type) -> Type:
    return Type("dict", (k, v))


def optional_of(t: Type) -> Type:
    return t if t.kind == "optional" else Type("optional", (t,))


def tuple_of(items: tuple[Type, ...]) -> Type:
    return Type("tuple", items)


def from_annotation(node: ast.expr | None) -> Type:
    """A type hint as written in a signature; missing or bare-container hints leave unknown parts."""
    if node is None:
        return UNKNOWN
    if isinstance(node, ast.Constant) and node.value is None:
        return NONE
    if isinstance(node, ast.Name):
        name = node.id
        if name in _SCALARS:
            return _SCALARS[name]
        if name in ("list", "List"):
            return list_of(UNKNOWN)
        if name in ("dict", "Dict"):
            return dict_of(UNKNOWN, UNKNOWN)
        if name in ("tuple", "Tuple"):
            return list_of(UNKNOWN)
        raise UnsupportedType(f"type hint {name}")
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
        name = node.value.id
        params = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if name in ("List", "list") and len(params) == 1:
            return list_of(from_annotation(params[0]))
        if name in ("Dict", "dict") and len(params) == 2:
            return dict_of(from_annotation(params[0]), from_annotation(params[1]))
        if name == "Optional" and len(params) == 1:
            return optional_of(from_annotation(params[0]))
        if name in ("Tuple", "tuple"):
            if len(params) == 2 and isinstance(params[1], ast.Constant) and params[1].value is Ellipsis:
                return list_of(from_annotation(params[0]))
            return normalize(tuple_of(tuple(from_annotation(p) for p in params)))
        raise UnsupportedType(f"type hint {ast.unparse(node)}")
    raise UnsupportedType(f"type hint {ast.unparse(node)}")


def infer(value: object) -> Type:
    """The type of one Python literal value (bool is checked before int: it is a subclass)."""
    if value is None:
        return NONE
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise UnsupportedType(f"integer {value} beyond 64 bits")
        return INT
    if isinstance(value, float):
        return FLOAT
    if isinstance(value, str):
        return STR
    if isinstance(value, list):
        return list_of(_unify_all(infer(v) for v in value))
    if isinstance(value, tuple):
        return normalize(tuple_of(tuple(infer(v) for v in value)))
    if isinstance(value, dict):
        if not all(isinstance(k, (str, int)) for k in value):
            raise UnsupportedType("dictionary keys that are not str or int")
        return dict_of(_unify_all(infer(k) for k in value), _unify_all(infer(v) for v in value.values()))
    raise UnsupportedType(f"value of Python type {type(value).__name__}")


def _unify_all(types) -> Type:
    result = UNKNOWN
    for t in types:
        result = unify(result, t)
    return result


def normalize(t: Type) -> Type:
    """A tuple whose items all unify to one type is a list of that type."""
    if t.kind != "tuple":
        return t
    try:
        return list_of(_unify_all(t.args))
    except UnsupportedType:
        return t


def unify(a: Type, b: Type) -> Type:
    """The narrowest type holding values of both `a` and `b`."""
    if a == b:
        return a
    if a.kind == "unknown":
        return b
    if b.kind == "unknown":
        return a
    if a.kind == "none" or b.kind == "none":
        other = b if a.kind == "none" else a
        return optional_of(other)
    if a.kind == "optional" or b.kind == "optional":
        inner_a = a.item if a.kind == "optional" else a
        inner_b = b.item if b.kind == "optional" else b
        return optional_of(unify(inner_a, inner_b))
    if {a.kind, b.kind} == {"int", "float"}:
        return FLOAT
    if a.kind == b.kind == "list":
        return list_of(unify(a.item, b.item))
    if a.kind == b.kind == "dict":
        return dict_of(unify(a.args[0], b.args[0]), unify(a.args[1], b.args[1]))
    if a.kind == b.kind == "tuple" and len(a.args) == len(b.args):
        return tuple_of(tuple(unify(x, y) for x, y in zip(a.args, b.args)))
    if {a.kind, b.kind} <= {"list", "tuple"}:
        items = [*(a.args if a.kind == "tuple" else (a.item,)), *(b.args if b.kind == "tuple" else (b.item,))]
        return list_of(_unify_all(items))
    raise UnsupportedType(f"mixed types {a} and {b}")


def merge_hint(hint: Type, inferred: Type) -> Type:
    """The hint where it says something, the inferred type where the hint leaves a hole."""
    if hint.kind == "unknown":
        return inferred
    if inferred.kind == "unknown" or hint.kind in _SCALARS:
        return hint
    if hint.kind == "optional":
        return optional_of(merge_hint(hint.item, inferred.item if inferred.kind == "optional" else inferred))
    if inferred.kind == "optional":
        return optional_of(merge_hint(hint, inferred.item))
    if hint.kind == inferred.kind and len(hint.args) == len(inferred.args):
        return Type(hint.kind, tuple(merge_hint(h, i) for h, i in zip(hint.args, inferred.args)))
    if hint.kind == "list" and inferred.kind == "tuple":
        return list_of(merge_hint(hint.item, _unify_all(inferred.args)))
    raise UnsupportedType(f"hint {hint} disagrees with test values of type {inferred}")


def complete(t: Type) -> Type:
    """Fill holes left only by empty containers (`[]` in every test) with int; a bare None is untypable."""
    if t.kind == "none":
        raise UnsupportedType("a value that is always None")
    if t.kind == "unknown":
        return INT
    return Type(t.kind, tuple(complete(a) for a in t.args))


def conform(value: object, t: Type) -> object:
    """`value` reshaped to `t` (tuples to lists, ints to floats), or UnsupportedType if it does not fit."""
    k = t.kind
    if k == "optional":
        return None if value is None else conform(value, t.item)
    if value is None:
        raise UnsupportedType(f"None where {t} is expected")
    if k == "bool" and isinstance(value, bool):
        return value
    if k == "int" and isinstance(value, int) and not isinstance(value, bool):
        if not INT64_MIN <= value <= INT64_MAX:
            raise UnsupportedType(f"integer {value} beyond 64 bits")
        return value
    if k == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if k == "str" and isinstance(value, str):
        return value
    if k == "list" and isinstance(value, (list, tuple)):
        return [conform(v, t.item) for v in value]
    if k == "tuple" and isinstance(value, (list, tuple)) and len(value) == len(t.args):
        return tuple(conform(v, a) for v, a in zip(value, t.args))
    if k == "dict" and isinstance(value, dict):
        return {conform(key, t.args[0]): conform(v, t.args[1]) for key, v in value.items()}
    raise UnsupportedType(f"value {value!r} does not fit type {t}")
