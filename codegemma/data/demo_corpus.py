"""`codegemma data demo-corpus`: real code that is on any machine, as a collection of repositories.

The Python standard library (one repository per package, plus one for the top-level modules),
optionally the sources of installed distributions (one repository each, with their license file)
and Debian source packages (`apt-get source`, kept as tarballs). Good for tests and small runs.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sysconfig
import tempfile
from importlib import metadata
from pathlib import Path

from codegemma.data.atomic import check_replaceable, publish_dir, staging_dir
from codegemma.data.languages import EXTENSIONS, FILENAMES, detect_language
from codegemma.data.licenses import is_license_file
from codegemma.errors import CodegemmaError

SKIP = {"site-packages", "__pycache__", "dist-packages", "lib-dynload", "config-3.11-x86_64-linux-gnu"}


class _Selection:
    """Which source files a corpus takes: at most `max_file_bytes` each and of `languages` (None: any).
    Small files give a short context several files to a row, as long files give CodeGemma's 8192."""

    def __init__(self, max_file_bytes: int | None = None, languages: list[str] | None = None):
        self.max_file_bytes = max_file_bytes
        self.languages = {name.lower() for name in languages} if languages else None
        known = {name.lower() for name in (*EXTENSIONS.values(), *FILENAMES.values())}
        unknown = sorted((self.languages or set()) - known)
        if unknown:
            raise CodegemmaError(f"unknown language(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")

    def wants(self, src: Path) -> bool:
        language = detect_language(src.name)
        if language is None or (self.languages is not None and language.lower() not in self.languages):
            return False
        return self.max_file_bytes is None or src.stat().st_size <= self.max_file_bytes


class _Budget:
    def __init__(self, max_bytes: int | None):
        self.left = max_bytes

    def take(self, n: int) -> bool:
        if self.left is None:
            return True
        if n > self.left:
            self.left = 0  # stop at the first file that does not fit, rather than cherry-pick small ones
            return False
        self.left -= n
        return True


def _copy(src: Path, dst: Path, budget: _Budget) -> bool:
    size = src.stat().st_size
    if not budget.take(size):
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return True


def stdlib_repositories(out: Path, budget: _Budget, include_tests: bool = False,
                        selection: _Selection = _Selection()) -> int:
    root = Path(sysconfig.get_paths()["stdlib"])
    made = 0
    toplevel = sorted(p for p in root.glob("*.py") if p.is_file() and selection.wants(p))
    for path in toplevel:
        _copy(path, out / "stdlib" / path.name, budget)
    made += bool(toplevel)
    for package in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in SKIP and not p.name.startswith(".")):
        if package.name == "test" and not include_tests:
            continue
        files = sorted(f for f in package.rglob("*") if f.is_file() and "__pycache__" not in f.parts
                       and selection.wants(f))
        copied = [f for f in files if _copy(f, out / f"stdlib-{package.name}" / package.name / f.relative_to(package), budget)]
        made += bool(copied)
        if budget.left == 0:
            break
    return made


def site_package_repositories(out: Path, budget: _Budget, selection: _Selection = _Selection()) -> int:
    made = 0
    seen = set()
    for dist in sorted(metadata.distributions(), key=lambda d: (d.metadata["Name"] or "").lower()):
        name = (dist.metadata["Name"] or "").lower()
        if not name or name in seen or not dist.files:
            continue
        seen.add(name)
        sources, licenses = [], []
        for entry in dist.files:
            rel = Path(str(entry))
            src = Path(dist.locate_file(entry))
            if "__pycache__" in rel.parts or not src.is_file() or rel.parts[0] == "..":
                continue
            if rel.parts[0].endswith(".dist-info") and is_license_file(rel.name):
                licenses.append((src, out / f"pypi-{name}" / rel.name))  # to the repository root
            elif selection.wants(src) and not rel.parts[0].endswith((".dist-info", ".egg-info")):
                sources.append((src, out / f"pypi-{name}" / rel))
        # a distribution without selected sources makes no repository, not one of license files only
        copied = sum(_copy(src, target, budget) for src, target in sources + licenses) if sources else 0
        made += copied > 0
        if budget.left == 0:
            break
    return made


def debian_sources(out: Path, packages: list[str]) -> int:
    """Download Debian source packages (needs deb-src entries in apt's sources)."""
    for package in packages:
        with tempfile.TemporaryDirectory() as tmp:
            result = subprocess.run(["apt-get", "source", "--download-only", package], cwd=tmp,
                                    capture_output=True, text=True)
            if result.returncode != 0:
                message = (result.stderr.strip().splitlines() or ["apt-get failed"])[-1]
                raise CodegemmaError(f"apt-get source {package}: {message}")
            tarballs = sorted(Path(tmp).glob("*.orig.tar.*")) or sorted(Path(tmp).glob("*.tar.*"))
            if not tarballs:
                raise CodegemmaError(f"apt-get source {package}: no source tarball was downloaded")
            suffix = "".join(tarballs[0].suffixes[-2:])
            shutil.copyfile(tarballs[0], out / f"debian-{package}{suffix}")
    return len(packages)


def _is_demo_corpus(directory: Path) -> bool:
    """Whether every entry is one this module writes: stdlib / stdlib-* / pypi-* repositories, debian-* tarballs."""
    return all((e.is_dir() and (e.name == "stdlib" or e.name.startswith(("stdlib-", "pypi-"))))
               or (e.is_file() and e.name.startswith("debian-")) for e in directory.iterdir())


def build_demo_corpus(out: str | Path, max_mb: float | None = 50.0, stdlib: bool = True, site_packages: bool = False,
                      debian: list[str] | None = None, include_tests: bool = False, max_file_kb: float | None = None,
                      languages: list[str] | None = None) -> dict:
    """Debian tarballs are kept whole: `max_file_kb` and `languages` select the files of the others."""
    out = Path(out)
    # not `< 0`: NaN passes that, and infinity has no int()
    if not all(limit is None or 0 <= limit < math.inf for limit in (max_mb, max_file_kb)):
        raise CodegemmaError("max_mb and max_file_kb (--max-mb, --max-file-kb) must be 0 (no limit) or more, "
                             f"and finite; got {max_mb} and {max_file_kb}")
    check_replaceable(out, _is_demo_corpus, "a demo corpus")
    # made before the staging folder, which a bad setting here would otherwise leave behind
    budget = _Budget(int(max_mb * 1e6) if max_mb else None)
    selection = _Selection(int(max_file_kb * 1000) if max_file_kb else None, languages)
    stage = staging_dir(out)
    try:
        counts = {"stdlib": stdlib_repositories(stage, budget, include_tests, selection) if stdlib else 0,
                  "site_packages": site_package_repositories(stage, budget, selection) if site_packages else 0,
                  "debian": debian_sources(stage, debian) if debian else 0}
        if not any(stage.iterdir()):  # a corpus with nothing in it would only fail the next command
            raise CodegemmaError("no source file was selected for the demo corpus (check the sources asked for, "
                                 "max_file_kb and languages); nothing written")
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    publish_dir(stage, out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {**counts, "repositories": sum(1 for _ in out.iterdir()), "bytes": size}
