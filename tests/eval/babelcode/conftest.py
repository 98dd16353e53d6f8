"""A language's tests need its compiler or runtime. Where it is absent they are skipped with the
Debian package that brings it, unless CODEGEMMA_REQUIRE_TOOLCHAINS=1 (set by CI, which installs
them all): there a missing toolchain must fail, not pass quietly."""

from __future__ import annotations

import os
import shutil

import pytest

from codegemma.eval.babelcode.build import DEBIAN_PACKAGES, TOOLS


def languages_of(item) -> set[str]:
    """The languages whose toolchains a test's `toolchain` markers name."""
    params = getattr(item, "callspec", None)
    param = params.params.get("name") if params is not None else None
    return {mark.args[0] if mark.args else param for mark in item.iter_markers("toolchain")} & set(TOOLS)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("CODEGEMMA_REQUIRE_TOOLCHAINS") == "1":
        return
    for item in items:
        missing = sorted(name for name in languages_of(item) if shutil.which(TOOLS[name]) is None)
        if missing:
            packages = " ".join(DEBIAN_PACKAGES[name] for name in missing)
            tools = ", ".join(TOOLS[name] for name in missing)
            item.add_marker(pytest.mark.skip(reason=f"needs {tools} (apt-get install {packages})"))
