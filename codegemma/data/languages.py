"""Language of a file from its name, extension and shebang line."""

from __future__ import annotations

import posixpath
import re

# extension (lower case, with dot) -> language
EXTENSIONS: dict[str, str] = {
    ".py": "Python", ".pyi": "Python", ".pyw": "Python", ".pyx": "Cython", ".pxd": "Cython",
    ".java": "Java", ".kt": "Kotlin", ".kts": "Kotlin", ".scala": "Scala", ".groovy": "Groovy", ".gradle": "Groovy",
    ".js": "JavaScript", ".mjs": "JavaScript", ".cjs": "JavaScript", ".jsx": "JavaScript",
    ".ts": "TypeScript", ".tsx": "TypeScript", ".mts": "TypeScript", ".cts": "TypeScript",
    ".go": "Go", ".rs": "Rust", ".c": "C", ".h": "C",
    ".cc": "C++", ".cpp": "C++", ".cxx": "C++", ".c++": "C++", ".hpp": "C++", ".hh": "C++", ".hxx": "C++",
    ".inl": "C++", ".ipp": "C++", ".cs": "C#", ".fs": "F#", ".fsx": "F#", ".vb": "Visual Basic",
    ".swift": "Swift", ".m": "Objective-C", ".mm": "Objective-C++", ".rb": "Ruby", ".php": "PHP",
    ".pl": "Perl", ".pm": "Perl", ".t": "Perl", ".lua": "Lua", ".r": "R", ".jl": "Julia", ".dart": "Dart",
    ".hs": "Haskell", ".lhs": "Haskell", ".ml": "OCaml", ".mli": "OCaml", ".ex": "Elixir", ".exs": "Elixir",
    ".erl": "Erlang", ".hrl": "Erlang", ".clj": "Clojure", ".cljs": "Clojure", ".el": "Emacs Lisp",
    ".lisp": "Common Lisp", ".scm": "Scheme", ".rkt": "Racket", ".zig": "Zig", ".nim": "Nim", ".v": "Verilog",
    ".sv": "SystemVerilog", ".vhd": "VHDL", ".vhdl": "VHDL", ".f90": "Fortran", ".f": "Fortran", ".f95": "Fortran",
    ".pas": "Pascal", ".ada": "Ada", ".adb": "Ada", ".ads": "Ada", ".asm": "Assembly", ".s": "Assembly",
    ".sh": "Shell", ".bash": "Shell", ".zsh": "Shell", ".fish": "Shell", ".ps1": "PowerShell", ".bat": "Batchfile",
    ".cmd": "Batchfile", ".sql": "SQL", ".html": "HTML", ".htm": "HTML", ".css": "CSS", ".scss": "SCSS",
    ".sass": "Sass", ".less": "Less", ".vue": "Vue", ".svelte": "Svelte", ".json": "JSON", ".jsonl": "JSON",
    ".yaml": "YAML", ".yml": "YAML", ".toml": "TOML", ".ini": "INI", ".cfg": "INI", ".xml": "XML", ".xsl": "XSLT",
    ".xslt": "XSLT", ".md": "Markdown", ".markdown": "Markdown", ".rst": "reStructuredText", ".tex": "TeX",
    ".txt": "Text", ".proto": "Protocol Buffer", ".cmake": "CMake", ".mk": "Makefile", ".dockerfile": "Dockerfile",
    ".tf": "HCL", ".hcl": "HCL", ".nix": "Nix", ".vim": "Vim Script", ".awk": "Awk", ".tcl": "Tcl",
    ".cu": "CUDA", ".cuh": "CUDA", ".sol": "Solidity", ".elm": "Elm", ".purs": "PureScript", ".gd": "GDScript",
    ".graphql": "GraphQL", ".gql": "GraphQL", ".cabal": "Cabal", ".cob": "COBOL", ".cbl": "COBOL",
    ".smt2": "SMT", ".roff": "Roff", ".1": "Roff", ".owl": "OWL", ".dot": "DOT", ".gv": "DOT",
}

# exact file names (case-sensitive as in repositories)
FILENAMES: dict[str, str] = {
    "Makefile": "Makefile", "makefile": "Makefile", "GNUmakefile": "Makefile", "Dockerfile": "Dockerfile",
    "Containerfile": "Dockerfile", "CMakeLists.txt": "CMake", "Rakefile": "Ruby", "Gemfile": "Ruby",
    "Vagrantfile": "Ruby", "BUILD": "Starlark", "BUILD.bazel": "Starlark", "WORKSPACE": "Starlark",
    "meson.build": "Meson", "SConstruct": "Python", "SConscript": "Python", "Jenkinsfile": "Groovy",
    "go.mod": "Go Module", "Cargo.toml": "TOML", "Pipfile": "TOML", ".bashrc": "Shell", ".zshrc": "Shell",
    "configure.ac": "M4", "Kconfig": "Kconfig",
}

# interpreter named on a shebang line -> language
INTERPRETERS: dict[str, str] = {
    "python": "Python", "python2": "Python", "python3": "Python", "pypy": "Python", "pypy3": "Python",
    "sh": "Shell", "bash": "Shell", "dash": "Shell", "zsh": "Shell", "ksh": "Shell", "fish": "Shell",
    "node": "JavaScript", "nodejs": "JavaScript", "deno": "TypeScript", "ts-node": "TypeScript", "perl": "Perl",
    "ruby": "Ruby", "php": "PHP", "lua": "Lua", "Rscript": "R", "julia": "Julia", "tclsh": "Tcl", "wish": "Tcl",
    "awk": "Awk", "gawk": "Awk", "runhaskell": "Haskell", "escript": "Erlang", "elixir": "Elixir",
    "pwsh": "PowerShell", "guile": "Scheme", "racket": "Racket", "swift": "Swift", "groovy": "Groovy",
}

# languages whose files are data, configuration or prose rather than programs
DATA_LANGUAGES = frozenset({"JSON", "YAML", "TOML", "INI", "XML", "Text", "OWL", "DOT", "CSV"})
PROSE_LANGUAGES = frozenset({"Markdown", "reStructuredText", "TeX", "Text", "Roff"})

_SHEBANG = re.compile(r"^#!\s*(\S+)(?:\s+(\S+))?")


def interpreter_language(first_line: str) -> str | None:
    match = _SHEBANG.match(first_line)
    if not match:
        return None
    program = posixpath.basename(match.group(1))
    if program == "env" and match.group(2):  # "#!/usr/bin/env python3"
        program = posixpath.basename(match.group(2))
    program = re.sub(r"[\d.]+$", "", program) or program  # python3.11 -> python
    return INTERPRETERS.get(program) or INTERPRETERS.get(program + "3")


def detect_language(path: str, text: str | None = None) -> str | None:
    """The language of `path`, or None when neither its name nor its shebang tells."""
    name = posixpath.basename(path)
    if name in FILENAMES:
        return FILENAMES[name]
    stem, ext = posixpath.splitext(name)
    if ext.lower() in EXTENSIONS:
        return EXTENSIONS[ext.lower()]
    if name.lower().startswith("dockerfile"):
        return "Dockerfile"
    if text and text.startswith("#!"):
        return interpreter_language(text.split("\n", 1)[0])
    return None
