from codegemma.data.imports import extract_imports, module_directory


def kinds(imports):
    return [(i.kind, i.target) for i in imports]


def test_python_imports_with_relative_levels_and_guards():
    found = extract_imports("import os, a.b as c\nfrom ..x.y import z, w as q\nfrom . import m\n"
                            "def f():\n    import lazy\n", "Python")
    assert kinds(found) == [("python", "os"), ("python", "a.b"), ("python", "x.y"), ("python", ""), ("python", "lazy")]
    assert found[2].level == 2 and found[2].names == ("z", "w")
    assert found[3].level == 1 and found[3].names == ("m",)
    assert [i.guarded for i in found] == [False, False, False, False, True]


def test_top_lines_limits_the_scan():
    text = "import a\n" + "x = 1\n" * 10 + "import b\n"
    assert kinds(extract_imports(text, "Python", top_lines=5)) == [("python", "a")]


def test_java_imports_static_wildcard_and_same_package_types():
    found = extract_imports("package p;\nimport a.b.C;\nimport static a.b.D.m;\nimport a.c.*;\n"
                            "class X extends Foo { Bar b; }", "Java")
    assert kinds(found) == [("java", "a.b.C"), ("java", "a.b.D"), ("java_wildcard", "a.c"),
                            ("java_same_package", "Bar"), ("java_same_package", "Foo")]


def test_javascript_keeps_only_local_specifiers():
    found = extract_imports("import x from './a';\nexport * from '../b';\nconst c = require('./c');\n"
                            "import 'react';\nconst d = await import('./d');\n", "TypeScript")
    assert [i.target for i in found] == ["./a", "../b", "./c", "./d"]


def test_go_c_and_rust():
    assert kinds(extract_imports('package main\nimport (\n "fmt"\n "example.com/m/util"\n)\n', "Go")) == [
        ("go_package", "fmt"), ("go_package", "example.com/m/util")]
    inc = extract_imports('#include "foo.h"\n#include <stdio.h>\n', "C++")
    assert [(i.target, i.system) for i in inc] == [("foo.h", False), ("stdio.h", True)]
    rust = extract_imports("mod a;\nmod b { }\nuse crate::x::{y, z};\nuse super::w;\nuse std::io;\n", "Rust")
    assert kinds(rust) == [("rust", "self::a"), ("rust", "crate::x"), ("rust", "super::w")]


def test_unsupported_language_has_no_imports():
    assert extract_imports("require 'x'", "Ruby") == []
    assert extract_imports("import x", None) == []


def test_rust_module_directory():
    assert module_directory("src/lib.rs") == "src"
    assert module_directory("src/a.rs") == "src/a"
    assert module_directory("src/a/mod.rs") == "src/a"
