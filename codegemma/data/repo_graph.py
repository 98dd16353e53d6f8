"""The dependency graph of a repository: imports resolved to files, edges from a file to its importers.

Resolution, per language (spec data-pipeline §2.5): relative imports (Python dots, `./x` in JS/TS,
`#include "x"`, Rust `mod`/`super::`) resolve against the importing file; the rest by longest
path-suffix match against the repository's paths (CodeGemma's rule), preferring among equal matches
the file nearest the importer, then the lexicographically first. Python absolute imports only match
below a source root (a directory that is not itself a package), so `import json` inside package
`mypkg` does not resolve to `mypkg/json.py`. Go imports strip the module path of `go.mod` and point
to every non-test `.go` file of the package directory.

Edge B -> A means "A imports B" (B should come first). Each edge records `strength`, the number of
module-level import statements behind it, and `count`, all statements including function-local,
conditional and `try` imports: these are how real code breaks an import cycle, so they are the
weakest edges when `ordering.break_cycles` must drop one.
"""

from __future__ import annotations

import posixpath
import re
from collections import defaultdict

import networkx as nx

from codegemma.data.imports import Import, extract_imports, module_directory

JS_EXTENSIONS = (".ts", ".tsx", ".js", ".jsx", ".mjs", ".cjs", ".d.ts")
_GO_MODULE = re.compile(r"^\s*module\s+(\S+)", re.M)


class RepoIndex:
    """Lookups over a repository's file paths used by the resolvers."""

    def __init__(self, paths: list[str], texts: dict[str, str] | None = None):
        self.paths = sorted(paths)
        self.path_set = set(self.paths)
        self.by_basename: dict[str, list[str]] = defaultdict(list)
        self.by_dir: dict[str, list[str]] = defaultdict(list)
        for p in self.paths:
            self.by_basename[posixpath.basename(p)].append(p)
            self.by_dir[posixpath.dirname(p)].append(p)
        self.packages = {posixpath.dirname(p) for p in self.paths if posixpath.basename(p) == "__init__.py"}
        self.go_modules: list[tuple[str, str]] = []  # (module path, directory of go.mod)
        for p in self.paths:
            if posixpath.basename(p) == "go.mod" and texts and p in texts:
                match = _GO_MODULE.search(texts[p])
                if match:
                    self.go_modules.append((match.group(1), posixpath.dirname(p)))

    def suffix_matches(self, suffix: str, root_check=None) -> list[str]:
        """Paths equal to `suffix` or ending in `/suffix` (whole path components only)."""
        out = []
        for p in self.by_basename.get(posixpath.basename(suffix), ()):
            if p == suffix or p.endswith("/" + suffix):
                if root_check is None or root_check(p[: len(p) - len(suffix)].rstrip("/")):
                    out.append(p)
        return out


def _nearest(importer: str, paths: list[str]) -> str:
    """The path sharing the longest directory prefix with the importer; ties lexicographic."""
    base = posixpath.dirname(importer).split("/")

    def shared(p):
        parts = posixpath.dirname(p).split("/")
        n = 0
        while n < min(len(parts), len(base)) and parts[n] == base[n]:
            n += 1
        return n

    return sorted(paths, key=lambda p: (-shared(p), p))[0]


def _first_match(importer: str, candidates: list[str], index: RepoIndex, root_check=None) -> str | None:
    for candidate in candidates:  # most specific first: the longest suffix that matches wins
        found = [p for p in index.suffix_matches(candidate, root_check) if p != importer]
        if found:
            return _nearest(importer, found)
    return None


def _exact(importer: str, candidates: list[str], index: RepoIndex) -> str | None:
    for candidate in candidates:
        path = posixpath.normpath(candidate)
        if path in index.path_set and path != importer:
            return path
    return None


def _python(importer: str, imp: Import, index: RepoIndex) -> list[str]:
    def module_files(parts: list[str]) -> list[str]:
        stem = "/".join(parts)
        return [stem + ".py", stem + "/__init__.py", stem + ".pyi"] if stem else []

    targets = []
    if imp.level:
        base = posixpath.dirname(importer)
        for _ in range(imp.level - 1):
            base = posixpath.dirname(base)
        prefix = [p for p in base.split("/") if p] + (imp.target.split(".") if imp.target else [])
        for name in imp.names:
            found = _exact(importer, module_files(prefix + [name]), index)
            if found:
                targets.append(found)
        if len(targets) < max(len(imp.names), 1):
            found = _exact(importer, module_files(prefix) or ["__init__.py"], index)
            if found:
                targets.append(found)
        return targets

    def at_source_root(prefix: str) -> bool:
        return prefix not in index.packages

    parts = imp.target.split(".")
    for name in imp.names:
        found = _first_match(importer, module_files(parts + [name]), index, at_source_root)
        if found:
            targets.append(found)
    if len(targets) < max(len(imp.names), 1):
        found = _first_match(importer, module_files(parts), index, at_source_root)
        if found:
            targets.append(found)
    return targets


def _java(importer: str, imp: Import, index: RepoIndex) -> list[str]:
    if imp.kind == "java_same_package":
        found = _exact(importer, [posixpath.join(posixpath.dirname(importer), imp.target + ".java")], index)
        return [found] if found else []
    parts = imp.target.split(".")
    if imp.kind == "java_wildcard":
        suffix = "/".join(parts)
        return [p for d, files in index.by_dir.items() if d == suffix or d.endswith("/" + suffix)
                for p in files if p.endswith(".java") and p != importer]
    while parts:  # a.b.C.Inner -> a/b/C.java
        found = _first_match(importer, ["/".join(parts) + ".java"], index)
        if found:
            return [found]
        parts = parts[:-1]
    return []


def _js(importer: str, imp: Import, index: RepoIndex) -> list[str]:
    if imp.target.startswith("/"):
        base = imp.target.lstrip("/")
    else:
        base = posixpath.normpath(posixpath.join(posixpath.dirname(importer), imp.target))
    stem = re.sub(r"\.(js|jsx|mjs|cjs)$", "", base)  # TypeScript imports name the compiled .js file
    candidates = [base] + [stem + ext for ext in JS_EXTENSIONS] + [base + "/index" + ext for ext in JS_EXTENSIONS]
    found = _exact(importer, candidates, index)
    return [found] if found else []


def _go(importer: str, imp: Import, index: RepoIndex) -> list[str]:
    directory = None
    for module, root in index.go_modules:
        if imp.target == module or imp.target.startswith(module + "/"):
            directory = posixpath.normpath(posixpath.join(root, imp.target[len(module) + 1:]))
            break
    if directory is None:  # no go.mod: the longest repository directory the import path ends with
        parts = imp.target.split("/")
        for k in range(len(parts)):
            suffix = "/".join(parts[k:])
            if suffix in index.by_dir:
                directory = suffix
                break
    if directory is None or directory == posixpath.dirname(importer):
        return []
    return [p for p in index.by_dir.get(directory, ()) if p.endswith(".go") and not p.endswith("_test.go")]


def _include(importer: str, imp: Import, index: RepoIndex) -> list[str]:
    if not imp.system:
        found = _exact(importer, [posixpath.join(posixpath.dirname(importer), imp.target), "include/" + imp.target,
                                  imp.target], index)
        if found:
            return [found]
    elif "/" not in imp.target:  # <stdio.h>: only a header at the top or in include/ counts
        found = _exact(importer, [imp.target, "include/" + imp.target], index)
        return [found] if found else []
    found = _first_match(importer, [posixpath.normpath(imp.target).lstrip("./")], index)
    return [found] if found else []


def _rust_crate_root(importer: str, index: RepoIndex) -> str:
    directory = posixpath.dirname(importer)
    while True:
        if posixpath.join(directory, "lib.rs") in index.path_set or posixpath.join(directory, "main.rs") in index.path_set:
            return directory
        if not directory:
            return posixpath.dirname(importer)
        directory = posixpath.dirname(directory)


def _rust(importer: str, imp: Import, index: RepoIndex) -> list[str]:
    head, *rest = imp.target.split("::")
    if head == "crate":
        base = _rust_crate_root(importer, index)
    elif head == "super":
        base = posixpath.dirname(module_directory(importer))
    else:
        base = module_directory(importer)
    for k in range(len(rest), 0, -1):  # crate::a::b::Item -> a/b.rs, a/b/mod.rs, then a.rs, a/mod.rs
        stem = posixpath.join(base, *rest[:k])
        found = _exact(importer, [stem + ".rs", stem + "/mod.rs"], index)
        if found:
            return [found]
    if head == "super" and imp.level != -1:  # an item defined in the parent module's own file
        found = _exact(importer, [base + ".rs", base + "/mod.rs", posixpath.join(base, "lib.rs"),
                                  posixpath.join(base, "main.rs")], index)
        return [found] if found else []
    return []


RESOLVERS = {"python": _python, "java": _java, "java_wildcard": _java, "java_same_package": _java,
             "relative_path": _js, "go_package": _go, "include": _include, "rust": _rust}


def resolve(importer: str, imp: Import, index: RepoIndex) -> list[str]:
    return sorted(set(RESOLVERS[imp.kind](importer, imp, index)) - {importer})


def dependency_graph(files: dict[str, tuple[str | None, str]], top_lines: int | None = None) -> nx.DiGraph:
    """Graph over all `files` ({path: (language, text)}): edge B -> A when A imports B."""
    index = RepoIndex(list(files), {p: t for p, (_, t) in files.items() if p.endswith("go.mod")})
    graph = nx.DiGraph()
    graph.add_nodes_from(sorted(files))
    for path in sorted(files):
        language, text = files[path]
        for imp in extract_imports(text, language, top_lines):
            for target in resolve(path, imp, index):
                if graph.has_edge(target, path):
                    data = graph.edges[target, path]
                else:
                    data = graph.add_edge(target, path, strength=0, count=0) or graph.edges[target, path]
                data["count"] += 1
                data["strength"] += 0 if imp.guarded else 1
    return graph
