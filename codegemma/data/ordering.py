"""File order inside a repository sample: CodeGemma's dependency-graph packing and the alternatives
used for ablations (DeepSeek-Coder's minimum in-degree order, random, alphabetical).

CodeGemma (report §2.3): break cycles by dropping the least important edges, compute all-pairs shortest
paths, then sort topologically, taking next the unparented file (all its dependencies placed) at the
smallest distance to the files already placed, ties lexicographic. Distances are taken in the
undirected import graph: an importer and its dependency are equally related either way.
Cycle-breaking rule: while a cycle remains, find one (networkx `find_cycle` inside each strongly
connected component) and drop its weakest edge: the fewest module-level import statements, then the
fewest import statements of any kind, then the edge whose (dependency, importer) sorts last.
Files with no edge at all follow the graph's files alphabetically, except that a unit test is placed
right after its implementation (test_foo.py / foo_test.py by foo.py, TestFoo.java / FooTest.java by
Foo.java, foo.test.ts / foo.spec.ts by foo.ts, foo_test.go by foo.go).
"""

from __future__ import annotations

import posixpath
import random
import re

import networkx as nx

from codegemma.errors import CodegemmaError

STRATEGIES = ("codegemma", "deepseek", "random", "alphabetical")
_TEST_PATTERNS = [re.compile(p) for p in (
    r"^test_(?P<stem>.+)$", r"^(?P<stem>.+)_test$", r"^(?P<stem>.+)_tests$", r"^Test(?P<stem>[A-Z].*)$",
    r"^(?P<stem>.+?)Tests?$", r"^(?P<stem>.+)\.(test|spec)$", r"^tests?_(?P<stem>.+)$")]


def break_cycles(graph: nx.DiGraph) -> tuple[nx.DiGraph, list[tuple[str, str]]]:
    """A copy of `graph` without cycles, and the edges that were dropped (in order)."""
    dag = graph.copy()
    dag.remove_edges_from(list(nx.selfloop_edges(dag)))
    dropped = []
    while True:
        components = sorted((sorted(c) for c in nx.strongly_connected_components(dag) if len(c) > 1))
        if not components:
            return dag, dropped
        for component in components:
            sub = dag.subgraph(component)
            cycle = nx.find_cycle(sub, source=component[0])
            ranked = sorted(cycle, reverse=True)  # among equally weak edges, the last (u, v) goes
            weakest = min(ranked, key=lambda e: (dag.edges[e]["strength"], dag.edges[e]["count"]))
            dag.remove_edge(*weakest[:2])
            dropped.append(tuple(weakest[:2]))


def implementation_of(path: str) -> str | None:
    """The implementation file stem a test file exercises, or None when `path` is not a test."""
    stem, ext = posixpath.splitext(posixpath.basename(path))
    for pattern in _TEST_PATTERNS:
        match = pattern.match(stem)
        if match and match.group("stem"):
            return match.group("stem") + ext
    return None


def _with_tests_beside(ordered: list[str], loose: list[str]) -> list[str]:
    """`ordered` then `loose` alphabetically, each test moved right after its implementation."""
    everything = set(ordered) | set(loose)
    by_name: dict[str, list[str]] = {}
    for p in everything:
        by_name.setdefault(posixpath.basename(p), []).append(p)
    attached: dict[str, list[str]] = {}
    for p in sorted(loose):
        subject = implementation_of(p)
        candidates = [c for c in by_name.get(subject, []) if c != p] if subject else []
        if candidates:
            # the implementation nearest the test (same directory first), then the first by name
            directory = posixpath.dirname(p)
            impl = sorted(candidates, key=lambda c: (posixpath.dirname(c) != directory, len(c), c))[0]
            attached.setdefault(impl, []).append(p)
    placed = {t for tests in attached.values() for t in tests}
    out: list[str] = []

    def emit(p):
        out.append(p)
        for t in attached.get(p, []):
            if t not in out:
                emit(t)

    for p in ordered + sorted(p for p in loose if p not in placed):
        emit(p)
    return out


def codegemma_order(graph: nx.DiGraph) -> list[str]:
    in_graph = sorted(n for n in graph if graph.degree(n) > 0)
    loose = sorted(n for n in graph if graph.degree(n) == 0)
    dag, _ = break_cycles(graph.subgraph(in_graph))
    distance = dict(nx.all_pairs_shortest_path_length(graph.subgraph(in_graph).to_undirected()))
    parents = {n: dag.in_degree(n) for n in in_graph}
    inf = float("inf")
    closest = {n: inf for n in in_graph}
    ordered: list[str] = []
    ready = {n for n in in_graph if parents[n] == 0}
    while ready:
        nxt = min(ready, key=lambda n: (closest[n], n))
        ready.remove(nxt)
        ordered.append(nxt)
        for n, d in distance[nxt].items():
            if d < closest[n]:
                closest[n] = d
        for child in dag.successors(nxt):
            parents[child] -= 1
            if parents[child] == 0:
                ready.add(child)
    return _with_tests_beside(ordered, loose)


def deepseek_order(graph: nx.DiGraph, rng: random.Random) -> list[str]:
    """DeepSeek-Coder Algorithm 1: per connected subgraph, repeatedly take the unvisited file with the
    smallest in-degree (cycles are broken this way), ties at random; subgraphs in order of first name."""
    out = []
    for component in sorted((sorted(c) for c in nx.weakly_connected_components(graph))):
        indegree = {n: sum(1 for p in graph.predecessors(n) if p != n) for n in component}
        unvisited = set(component)
        while unvisited:
            low = min(indegree[n] for n in unvisited)
            ties = sorted(n for n in unvisited if indegree[n] == low)
            pick = ties[rng.randrange(len(ties))]
            unvisited.remove(pick)
            out.append(pick)
            for child in graph.successors(pick):
                if child in unvisited:
                    indegree[child] -= 1
    return out


def order_files(graph: nx.DiGraph, strategy: str = "codegemma", seed: int = 0) -> list[str]:
    """All nodes of `graph` (a `repo_graph.dependency_graph`) in sample order."""
    rng = random.Random(seed)
    if strategy == "codegemma":
        return codegemma_order(graph)
    if strategy == "deepseek":
        return deepseek_order(graph, rng)
    if strategy == "random":
        files = sorted(graph)
        rng.shuffle(files)
        return files
    if strategy == "alphabetical":
        return sorted(graph)
    raise CodegemmaError(f"unknown file order {strategy!r}; expected one of {STRATEGIES}")
