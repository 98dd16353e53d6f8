"""`codegemma <command>`: one entry point; each stage registers its own subcommands."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from codegemma import __version__
from codegemma.errors import CodegemmaError

# Each module exposes `register(subparsers)`, adding parsers whose `func(args) -> int | None` runs them.
COMMAND_MODULES = [
    "codegemma.commands",  # generate, info, convert
    "codegemma.complete.cli",  # complete, chat
    "codegemma.serve.cli",  # serve, lsp
    "codegemma.data.cli",  # data ...
    "codegemma.train.cli",  # train ...
    "codegemma.eval.cli",  # eval ...
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="codegemma", description="CodeGemma models: generate, complete, serve, data, train, eval.")
    parser.add_argument("--version", action="version", version=f"codegemma {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                continue  # that stage is not part of this install
            raise
        module.register(sub)
    return parser


def show_own_warnings(command: str) -> None:
    """The project's own warnings as one line, like its errors (`codegemma train: warning: ...`);
    other libraries' keep Python's form, which names the code that warned."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    # a second call (`main` run again in one process) replaces the first rather than wrapping it
    python_form = getattr(warnings.showwarning, "python_form", warnings.showwarning)

    def show(message, category, filename, lineno, file=None, line=None):
        if not os.path.abspath(filename).startswith(package):
            return python_form(message, category, filename, lineno, file, line)
        text = str(message).removeprefix("codegemma: ")
        print(f"codegemma {command}: warning: {text}", file=file or sys.stderr)

    show.python_form = python_form
    warnings.showwarning = show


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    show_own_warnings(args.command)
    try:
        code = args.func(args)
    except CodegemmaError as exc:
        print(f"codegemma {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        # the system refused a path or a resource the command was given (not there, not a directory,
        # no permission, a full disk, a port in use): one line that names it, like any user error
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"codegemma {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print(f"interrupted: {exc}" if str(exc) else "interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
