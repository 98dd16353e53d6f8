"""What the completion filters need to know about a language: comments, blocks, top-level keywords."""

from __future__ import annotations

from dataclasses import dataclass

from codegemma.data.languages import detect_language


@dataclass(frozen=True)
class Syntax:
    name: str
    line_comment: str | None = "//"
    # Indentation languages open a block with ":" and close it by dedenting; brace languages use "{...}".
    indent_blocks: bool = False
    block_openers: tuple[str, ...] = ("{",)
    # A new line starting with one of these at column 0 begins a new top-level definition: a
    # multi-line completion that reaches one has left the scope it was asked to fill.
    top_level_keywords: tuple[str, ...] = ()
    quotes: tuple[str, ...] = ('"', "'")


_C_LIKE = dict(line_comment="//", block_openers=("{", "(", "["), quotes=('"', "'"))
SYNTAXES: dict[str, Syntax] = {
    "Python": Syntax("Python", line_comment="#", indent_blocks=True, block_openers=(":", "(", "[", "{"),
                     top_level_keywords=("def ", "class ", "async def ", "if __name__", "@")),
    "Cython": Syntax("Cython", line_comment="#", indent_blocks=True, block_openers=(":", "(", "[", "{"),
                     top_level_keywords=("def ", "cdef ", "cpdef ", "class ")),
    "JavaScript": Syntax("JavaScript", quotes=('"', "'", "`"), block_openers=("{", "(", "["),
                         top_level_keywords=("function ", "class ", "export ", "import ", "const ", "let ")),
    "TypeScript": Syntax("TypeScript", quotes=('"', "'", "`"), block_openers=("{", "(", "["),
                         top_level_keywords=("function ", "class ", "export ", "import ", "interface ", "type ")),
    "Go": Syntax("Go", quotes=('"', "'", "`"), block_openers=("{", "(", "["),
                 top_level_keywords=("func ", "type ", "var ", "const ", "import ", "package ")),
    "Rust": Syntax("Rust", quotes=('"',), block_openers=("{", "(", "["),
                   top_level_keywords=("fn ", "pub ", "impl ", "struct ", "enum ", "mod ", "use ", "trait ")),
    "Java": Syntax("Java", **_C_LIKE, top_level_keywords=("public ", "class ", "import ", "package ")),
    "Kotlin": Syntax("Kotlin", **_C_LIKE, top_level_keywords=("fun ", "class ", "import ", "package ")),
    "C": Syntax("C", **_C_LIKE, top_level_keywords=("#include", "#define", "static ", "struct ", "typedef ")),
    "C++": Syntax("C++", **_C_LIKE, top_level_keywords=("#include", "#define", "class ", "namespace ", "template")),
    "C#": Syntax("C#", **_C_LIKE, top_level_keywords=("using ", "namespace ", "public ")),
    "Shell": Syntax("Shell", line_comment="#", block_openers=("{", "then", "do")),
    "Ruby": Syntax("Ruby", line_comment="#", block_openers=("do", "{", "(", "[")),
    "Lua": Syntax("Lua", line_comment="--", block_openers=("then", "do", "(", "{")),
}
DEFAULT_SYNTAX = Syntax("unknown", line_comment=None, block_openers=("{", "(", "[", ":"))


def syntax_for(path: str | None, language: str | None = None) -> Syntax:
    """Syntax traits from an explicit language name (case-insensitive) or else the file's path."""
    if language:
        for name, syntax in SYNTAXES.items():
            if name.lower() == language.lower():
                return syntax
        aliases = {"py": "Python", "js": "JavaScript", "ts": "TypeScript", "rs": "Rust", "cpp": "C++",
                   "csharp": "C#", "javascriptreact": "JavaScript", "typescriptreact": "TypeScript", "sh": "Shell",
                   "bash": "Shell"}
        if language.lower() in aliases:
            return SYNTAXES[aliases[language.lower()]]
    if path:
        detected = detect_language(path)
        if detected in SYNTAXES:
            return SYNTAXES[detected]
    return DEFAULT_SYNTAX
