from codegemma.data.imports import Import
from codegemma.data.languages import detect_language
from codegemma.data.repo_graph import RepoIndex, dependency_graph, resolve


def graph_of(files):
    return dependency_graph({p: (detect_language(p, t), t) for p, t in files.items()})


def edges(graph):
    return sorted(graph.edges)


def test_python_resolution_respects_packages_and_source_roots():
    index = RepoIndex(["src/pkg/__init__.py", "src/pkg/util.py", "src/pkg/json.py", "src/pkg/sub/__init__.py",
                       "src/pkg/sub/deep.py", "tools/cli.py"])
    assert resolve("tools/cli.py", Import("python", "pkg.util"), index) == ["src/pkg/util.py"]
    # `import json` means the standard library, not the package's own json module
    assert resolve("src/pkg/util.py", Import("python", "json"), index) == []
    assert resolve("src/pkg/sub/deep.py", Import("python", "", level=2, names=("util",)), index) == ["src/pkg/util.py"]
    assert resolve("src/pkg/sub/deep.py", Import("python", "", level=1, names=("thing",)), index) == [
        "src/pkg/sub/__init__.py"]
    assert resolve("tools/cli.py", Import("python", "pkg", names=("sub",)), index) == ["src/pkg/sub/__init__.py"]


def test_longest_suffix_then_nearest_file_wins():
    index = RepoIndex(["a/util/helpers.java", "b/util/helpers.java", "b/main/App.java", "util/Helpers.java"])
    assert resolve("b/main/App.java", Import("java", "util.helpers"), index) == ["b/util/helpers.java"]
    assert resolve("a/x/Y.java", Import("java", "util.helpers"), index) == ["a/util/helpers.java"]


def test_java_graph_with_same_package_and_wildcards():
    g = graph_of({
        "src/main/java/com/x/Foo.java": "package com.x;\npublic class Foo {}\n",
        "src/main/java/com/x/Bar.java": "package com.x;\npublic class Bar { Foo foo; }\n",
        "src/main/java/com/y/Baz.java": "package com.y;\nimport com.x.Bar;\nclass Baz { Bar b; }\n",
        "src/main/java/com/y/All.java": "package com.y;\nimport com.x.*;\nclass All {}\n",
    })
    assert edges(g) == [
        ("src/main/java/com/x/Bar.java", "src/main/java/com/y/All.java"),
        ("src/main/java/com/x/Bar.java", "src/main/java/com/y/Baz.java"),
        ("src/main/java/com/x/Foo.java", "src/main/java/com/x/Bar.java"),
        ("src/main/java/com/x/Foo.java", "src/main/java/com/y/All.java"),
    ]


def test_typescript_relative_imports_with_extensions_and_index():
    g = graph_of({
        "src/index.ts": "import {api} from './api';\nimport React from 'react';\n",
        "src/api.ts": "import {u} from './util';\nexport const api = 1;\n",
        "src/util/index.ts": "export const u = 1;\n",
        "src/legacy.js": "const api = require('./api.js');\n",
    })
    assert edges(g) == [("src/api.ts", "src/index.ts"), ("src/api.ts", "src/legacy.js"),
                        ("src/util/index.ts", "src/api.ts")]


def test_go_packages_through_go_mod():
    g = graph_of({
        "go.mod": "module example.com/proj\n\ngo 1.21\n",
        "main.go": 'package main\nimport (\n\t"fmt"\n\t"example.com/proj/internal/store"\n)\n',
        "internal/store/store.go": "package store\n",
        "internal/store/cache.go": "package store\n",
        "internal/store/store_test.go": "package store\n",
    })
    assert edges(g) == [("internal/store/cache.go", "main.go"), ("internal/store/store.go", "main.go")]


def test_c_includes_and_rust_modules():
    g = graph_of({
        "src/main.c": '#include <stdio.h>\n#include "foo.h"\n',
        "src/foo.c": '#include "foo.h"\n',
        "src/foo.h": "int foo(void);\n",
        "lib/src/lib.rs": "mod a;\nmod b;\n",
        "lib/src/a.rs": "use crate::b::Thing;\n",
        "lib/src/b.rs": "pub struct Thing;\n",
    })
    assert edges(g) == [("lib/src/a.rs", "lib/src/lib.rs"), ("lib/src/b.rs", "lib/src/a.rs"),
                        ("lib/src/b.rs", "lib/src/lib.rs"), ("src/foo.h", "src/foo.c"), ("src/foo.h", "src/main.c")]


def test_edge_strength_counts_module_level_imports():
    g = graph_of({"p.py": "import q\n", "q.py": "def f():\n    import p\n"})
    assert g.edges["q.py", "p.py"] == {"strength": 1, "count": 1}
    assert g.edges["p.py", "q.py"] == {"strength": 0, "count": 1}
