import random

import networkx as nx
import pytest

from codegemma.data.languages import detect_language
from codegemma.data.ordering import break_cycles, order_files, implementation_of
from codegemma.data.repo_graph import dependency_graph
from codegemma.errors import CodegemmaError


def order(files, strategy="codegemma", seed=0):
    graph = dependency_graph({p: (detect_language(p, t), t) for p, t in files.items()})
    return order_files(graph, strategy, seed)


PY_REPO = {
    "pkg/__init__.py": "",
    "pkg/util.py": "import os\n",
    "pkg/models.py": "from .util import helper\n",
    "pkg/api.py": "from pkg.models import Model\nfrom pkg import util\n",
    "app.py": "import pkg.api\n",
    "README.md": "# demo\n",
    "setup.py": "from setuptools import setup\n",
    "scripts/test_helpers.py": "def test_x(): pass\n",
    "scripts/helpers.py": "def x(): pass\n",
}


def test_python_repository_order():
    assert order(PY_REPO) == ["pkg/util.py", "pkg/models.py", "pkg/api.py", "app.py", "README.md",
                              "pkg/__init__.py", "scripts/helpers.py", "scripts/test_helpers.py", "setup.py"]


def test_closest_unparented_file_beats_alphabetical():
    # after a.py, z.py (its importer) is at distance 1 while b.py is unrelated: z goes first
    assert order({"a.py": "", "z.py": "import a\n", "b.py": "", "c.py": "import b\n"}) == ["a.py", "z.py", "b.py", "c.py"]


def test_cycle_drops_function_local_import_first():
    files = {"p.py": "import q\n", "q.py": "def f():\n    import p\n"}
    assert order(files) == ["q.py", "p.py"]


def test_cycle_with_equal_edges_drops_the_last_edge():
    graph = nx.DiGraph()
    graph.add_edge("p.py", "q.py", strength=1, count=1)
    graph.add_edge("q.py", "p.py", strength=1, count=1)
    dag, dropped = break_cycles(graph)
    assert dropped == [("q.py", "p.py")] and nx.is_directed_acyclic_graph(dag)
    assert order({"p.py": "import q\n", "q.py": "import p\n"}) == ["p.py", "q.py"]


def test_break_cycles_leaves_a_dag_on_a_dense_random_graph():
    rng = random.Random(1)
    graph = nx.DiGraph()
    for _ in range(80):
        u, v = rng.sample(range(15), 2)
        graph.add_edge(f"f{u}", f"f{v}", strength=rng.randint(0, 2), count=3)
    dag, dropped = break_cycles(graph)
    assert nx.is_directed_acyclic_graph(dag)
    assert len(dag.edges) + len(dropped) == len(graph.edges)


def test_java_unit_test_sits_beside_implementation():
    files = {
        "src/main/java/com/x/Foo.java": "package com.x;\npublic class Foo {}\n",
        "src/main/java/com/x/Bar.java": "package com.x;\npublic class Bar { Foo foo; }\n",
        "src/test/java/com/x/TestFoo.java": "package com.x;\nclass TestFoo {}\n",
        "src/main/java/com/x/Alone.java": "package com.x;\nclass Alone {}\n",
    }
    assert order(files) == ["src/main/java/com/x/Foo.java", "src/test/java/com/x/TestFoo.java",
                            "src/main/java/com/x/Bar.java", "src/main/java/com/x/Alone.java"]


def test_rust_crate_order():
    files = {"src/lib.rs": "mod a;\nmod b;\n", "src/a.rs": "use crate::b::Thing;\n", "src/b.rs": "pub struct Thing;\n"}
    assert order(files) == ["src/b.rs", "src/a.rs", "src/lib.rs"]


def test_test_file_patterns():
    assert implementation_of("tests/test_foo.py") == "foo.py"
    assert implementation_of("foo_test.go") == "foo.go"
    assert implementation_of("TestFoo.java") == "Foo.java"
    assert implementation_of("FooTest.java") == "Foo.java"
    assert implementation_of("foo.spec.ts") == "foo.ts"
    assert implementation_of("foo.py") is None


def test_deepseek_order_is_min_indegree_and_seeded():
    files = {"a.py": "", "b.py": "import a\n", "c.py": "import a\nimport b\n", "x.py": "import y\n", "y.py": "import x\n"}
    first = order(files, "deepseek", seed=0)
    assert first[:3] == ["a.py", "b.py", "c.py"]
    assert set(first[3:]) == {"x.py", "y.py"}  # a 2-cycle: either may go first, chosen at random
    assert first == order(files, "deepseek", seed=0)
    assert {tuple(order(files, "deepseek", seed=s)[3:]) for s in range(20)} == {("x.py", "y.py"), ("y.py", "x.py")}


def test_random_and_alphabetical_and_unknown():
    files = {f"f{i}.py": "" for i in range(10)}
    assert order(files, "alphabetical") == sorted(files)
    shuffled = order(files, "random", seed=3)
    assert sorted(shuffled) == sorted(files) and shuffled != sorted(files)
    assert shuffled == order(files, "random", seed=3)
    with pytest.raises(CodegemmaError, match="unknown file order"):
        order(files, "bogus")
