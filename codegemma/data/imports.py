"""Imports of a source file, read with tree-sitter grammars (Python, Java, JavaScript/TypeScript, Go,
C/C++, Rust). Each import becomes an `Import`: the module or path it names, in a language-neutral
form that `repo_graph` resolves against the repository's files."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from functools import lru_cache

# language of `languages.detect_language` -> (grammar module, its language function)
GRAMMARS = {
    "Python": ("tree_sitter_python", "language"), "Cython": ("tree_sitter_python", "language"),
    "Java": ("tree_sitter_java", "language"),
    "JavaScript": ("tree_sitter_javascript", "language"), "TypeScript": ("tree_sitter_typescript", "language_tsx"),
    "Go": ("tree_sitter_go", "language"), "C": ("tree_sitter_cpp", "language"), "C++": ("tree_sitter_cpp", "language"),
    "CUDA": ("tree_sitter_cpp", "language"), "Rust": ("tree_sitter_rust", "language"),
}
# function-local or conditional imports: the code works without them at import time, so they are the
# edges to give up first when breaking a cycle
_GUARDS = {"function_definition", "if_statement", "try_statement", "method_declaration", "function_declaration",
           "arrow_function", "function_item", "preproc_if", "preproc_ifdef", "class_body", "statement_block"}


@dataclass(frozen=True)
class Import:
    kind: str  # python | java | java_wildcard | java_same_package | relative_path | go_package | include | rust
    target: str  # dotted module, relative path or package path, per kind
    level: int = 0  # Python: leading dots of a relative import
    names: tuple[str, ...] = ()  # Python: names after `from x import`
    guarded: bool = False  # inside a function, conditional or try block
    system: bool = False  # C/C++ `#include <...>`


@lru_cache(maxsize=None)
def parser_for(language: str):
    import importlib

    import tree_sitter

    module, function = GRAMMARS[language]
    try:
        grammar = getattr(importlib.import_module(module), function)()
    except ImportError:
        return None
    return tree_sitter.Parser(tree_sitter.Language(grammar))


def supported(language: str | None) -> bool:
    return language in GRAMMARS


def _text(node) -> str:
    return node.text.decode("utf-8", "replace")


def _guarded(node) -> bool:
    parent = node.parent
    while parent is not None:
        if parent.type in _GUARDS:
            return True
        parent = parent.parent
    return False


def _walk(node, wanted: set[str]):
    stack = [node]
    while stack:
        n = stack.pop()
        if n.type in wanted:
            yield n
        stack.extend(reversed(n.children))


def extract_imports(text: str, language: str | None, top_lines: int | None = None) -> list[Import]:
    """Imports in the first `top_lines` lines (all lines when None); [] for unsupported languages."""
    if not supported(language):
        return []
    parser = parser_for(language)
    if parser is None:
        return []
    if top_lines is not None:
        text = "\n".join(text.split("\n")[:top_lines])
    root = parser.parse(text.encode("utf-8")).root_node
    return {
        "Python": _python, "Cython": _python, "Java": _java, "JavaScript": _javascript, "TypeScript": _javascript,
        "Go": _go, "C": _c, "C++": _c, "CUDA": _c, "Rust": _rust,
    }[language](root)


def _python(root) -> list[Import]:
    out = []
    for node in _walk(root, {"import_statement", "import_from_statement", "future_import_statement"}):
        guarded = _guarded(node)
        if node.type == "import_statement":
            for name in node.children_by_field_name("name"):
                dotted = name.child_by_field_name("name") if name.type == "aliased_import" else name
                out.append(Import("python", _text(dotted), guarded=guarded))
        elif node.type == "import_from_statement":
            module = node.child_by_field_name("module_name")
            level, dotted = 0, ""
            if module is not None and module.type == "relative_import":
                for child in module.children:
                    if child.type == "import_prefix":
                        level = _text(child).count(".")
                    elif child.type == "dotted_name":
                        dotted = _text(child)
            elif module is not None:
                dotted = _text(module)
            names = []
            for name in node.children_by_field_name("name"):
                dotted_name = name.child_by_field_name("name") if name.type == "aliased_import" else name
                names.append(_text(dotted_name))
            out.append(Import("python", dotted, level=level, names=tuple(names), guarded=guarded))
    return out


_JAVA_IMPORT = re.compile(r"import\s+(static\s+)?([\w.]+?)(\.\*)?\s*;")


def _java(root) -> list[Import]:
    out = []
    for node in _walk(root, {"import_declaration"}):
        match = _JAVA_IMPORT.search(re.sub(r"\s+", " ", _text(node)))
        if not match:
            continue
        static, name, wildcard = match.groups()
        if static and not wildcard:
            name = name.rsplit(".", 1)[0]  # `import static a.b.C.member` depends on C
        out.append(Import("java_wildcard" if wildcard and not static else "java", name))
    # classes of the same package need no import: every type name used is a candidate dependency
    used = sorted({_text(n) for n in _walk(root, {"type_identifier"})})
    out += [Import("java_same_package", name) for name in used]
    return out


def _string_value(node) -> str | None:
    if node is None:
        return None
    text = _text(node)
    return text[1:-1] if len(text) >= 2 and text[0] in "'\"`" and text[-1] == text[0] else None


def _javascript(root) -> list[Import]:
    out = []
    for node in _walk(root, {"import_statement", "export_statement", "call_expression"}):
        if node.type == "call_expression":
            function = node.child_by_field_name("function")
            if function is None or _text(function) not in ("require", "import"):
                continue
            args = node.child_by_field_name("arguments")
            source = _string_value(args.named_children[0]) if args is not None and args.named_children else None
        else:
            source = _string_value(node.child_by_field_name("source"))
        if source and source.startswith((".", "/")):  # bare specifiers are packages, not repository files
            out.append(Import("relative_path", source, guarded=node.type == "call_expression" and _guarded(node)))
    return out


def _go(root) -> list[Import]:
    return [Import("go_package", path) for node in _walk(root, {"import_spec"})
            if (path := _string_value(node.child_by_field_name("path")))]


def _c(root) -> list[Import]:
    out = []
    for node in _walk(root, {"preproc_include"}):
        path = node.child_by_field_name("path")
        if path is None:
            continue
        text = _text(path)
        if path.type == "system_lib_string":
            out.append(Import("include", text[1:-1], system=True, guarded=_guarded(node)))
        elif len(text) >= 2:
            out.append(Import("include", text[1:-1], guarded=_guarded(node)))
    return out


_RUST_USE = re.compile(r"^(?:pub(?:\([^)]*\))?\s+)?use\s+((?:crate|super|self)(?:::\w+)*)")


def _rust(root) -> list[Import]:
    out = []
    for node in _walk(root, {"mod_item", "use_declaration"}):
        if node.type == "mod_item":
            if node.child_by_field_name("body") is None:  # `mod x;` loads x.rs or x/mod.rs
                name = node.child_by_field_name("name")
                if name is not None:
                    out.append(Import("rust", "self::" + _text(name), level=-1))
        else:
            match = _RUST_USE.match(re.sub(r"\s+", " ", _text(node)))
            if match:
                out.append(Import("rust", match.group(1), guarded=_guarded(node)))
    return out


def module_directory(path: str) -> str:
    """Directory holding a Rust file's child modules: `src/a.rs` -> `src/a`, `src/lib.rs` -> `src`."""
    stem = posixpath.splitext(posixpath.basename(path))[0]
    parent = posixpath.dirname(path)
    return parent if stem in ("lib", "main", "mod") else posixpath.join(parent, stem)
