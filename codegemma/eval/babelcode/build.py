"""Compiling translated programs inside the sandbox: cached by content, run in parallel, batched
for compilers that pay seconds per start (javac, kotlinc).

Each compile runs in a fresh sandbox that writes its outputs under `out/`; the sandbox ships them
back as a base64 tar on stdout (its working directory is deleted afterwards), and they are stored
under the cache directory keyed by (language, toolchain version, program text). Compile errors
are cached too: the same program always fails the same way. C++ compiles against a precompiled
`bits/stdc++.h`, built once per cache and mounted read-only into each compile.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from codegemma.errors import CodegemmaError
from codegemma.eval import sandbox
from codegemma.eval.babelcode.languages.base import Language

ARTIFACT_MARK = "__BABEL_ARTIFACTS__"
COMPILE_TIMEOUT = 60.0  # per program; a batch gets this plus a few seconds per program
BATCH_SIZE = 48
KOTLIN_STDLIB = "/usr/share/java/kotlin-stdlib.jar"
VERSION_ARGV = {"cpp": ["g++", "--version"], "java": ["javac", "-version"], "kotlin": ["kotlinc", "-version"],
                "csharp": ["mcs", "--version"], "go": ["go", "version"], "rust": ["rustc", "--version"],
                "javascript": ["node", "--version"], "python": ["python3", "--version"]}
TOOLS = {"cpp": "g++", "java": "javac", "kotlin": "kotlinc", "csharp": "mcs", "go": "go", "rust": "rustc",
         "javascript": "node", "python": "python3"}
DEBIAN_PACKAGES = {"cpp": "g++", "java": "openjdk-17-jdk-headless", "kotlin": "kotlin", "csharp": "mono-mcs",
                   "go": "golang-go", "rust": "rustc", "javascript": "nodejs", "python": "python3"}


def default_cache_dir() -> Path:
    base = os.environ.get("CODEGEMMA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "codegemma")
    return Path(base) / "babelcode"


@dataclass
class Build:
    """The compiled form of one program: run files (relative paths) or the compiler's complaint."""

    ok: bool
    files: dict[str, bytes] = field(default_factory=dict)
    log: str = ""
    seconds: float = 0.0  # compile wall time attributed to this program (a batch's time is shared)
    cached: bool = False
    main_class: str = ""  # JVM languages: the class `run_cmd` starts
    cacheable: bool = True  # False when the failure says more about the machine than the program


def program_key(language: Language, toolchain: str, program: str) -> str:
    """Content address of a compile: language, compiler version, compile command and source."""
    text = f"{language.name}\0{toolchain}\0{language.compile_cmd}\0{program}"
    return hashlib.sha256(text.encode()).hexdigest()


def require_tool(language: Language) -> None:
    tool = TOOLS[language.name]
    if shutil.which(tool) is None:
        raise CodegemmaError(f"{language.display} needs `{tool}` on PATH (Debian package "
                             f"{DEBIAN_PACKAGES[language.name]})")


def toolchain_access(language: Language) -> tuple[dict[str, str], tuple[str, ...]]:
    """The PATH entry and exposed directories a sandboxed compile needs to find the language's tool.

    Toolchains outside /usr/bin (rustup's under the home directory) are reached through their real
    install directory, which the sandbox mounts back in; rustup's proxy is bypassed for the sysroot.
    """
    tool = shutil.which(TOOLS[language.name])
    if tool is None:
        return {}, ()
    bin_dir = os.path.dirname(os.path.realpath(tool))
    if language.name == "rust":
        sysroot = subprocess.run([tool, "--print", "sysroot"], capture_output=True, text=True, timeout=60).stdout.strip()
        if sysroot:
            return {"PATH": f"{sysroot}/bin:{sandbox.DEFAULT_PATH}"}, (sysroot,)
    if bin_dir in sandbox.DEFAULT_PATH.split(":"):
        return {}, ()
    return {"PATH": f"{bin_dir}:{sandbox.DEFAULT_PATH}"}, (os.path.dirname(bin_dir),)


def _toolchain_version(language: Language) -> str:
    require_tool(language)
    proc = subprocess.run(VERSION_ARGV[language.name], capture_output=True, text=True, timeout=120)
    return (proc.stdout + proc.stderr).strip().splitlines()[0] if (proc.stdout + proc.stderr).strip() else "?"


def _unpack(stdout: str) -> dict[str, bytes]:
    payload = stdout.split(ARTIFACT_MARK, 1)[1].strip()
    files = {}
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(payload)), mode="r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile():
                name = os.path.normpath(member.name)
                if name.startswith("..") or os.path.isabs(name):
                    raise ValueError(f"artifact path {member.name!r} escapes the output directory")
                files[name] = tar.extractfile(member).read()
    return files


def _with_export(cmd: str) -> str:
    return (f"mkdir -p out && {cmd} && printf '\\n{ARTIFACT_MARK}\\n' "
            f"&& tar -czf - out | base64 -w0")


class Builder:
    """Compiles programs of one language; thread-safe, shares one cache directory between runs."""

    def __init__(self, language: Language, cache_dir: str | Path | None = None, jobs: int | None = None,
                 compile_timeout: float = COMPILE_TIMEOUT, batch: bool = True, precompiled_header: bool = True):
        self.language = language
        self.batch = batch and language.batch_compile
        self.use_pch = precompiled_header
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.jobs = jobs or os.cpu_count() or 1
        self.compile_timeout = compile_timeout
        self.toolchain = _toolchain_version(language)
        self.tool_env, self.tool_expose = toolchain_access(language)
        self._lock = threading.Lock()
        self._pch: Path | None = None
        self._expose: tuple[str, ...] = ()

    # ------------------------------------------------------------------ cache

    def _entry(self, key: str) -> Path:
        return self.cache_dir / self.language.name / key[:2] / key

    def _load(self, key: str) -> Build | None:
        entry = self._entry(key)
        meta = entry / "build.json"
        if not meta.is_file():
            return None
        info = json.loads(meta.read_text())
        files = {}
        if info["ok"]:
            for rel in info["files"]:
                files[rel] = (entry / "files" / rel).read_bytes()
        return Build(info["ok"], files, info["log"], 0.0, True, info.get("main_class", ""))

    def _store(self, key: str, build: Build) -> None:
        entry = self._entry(key)
        if entry.exists():
            return
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:8]}-", dir=entry.parent))
        for rel, data in build.files.items():
            target = tmp / "files" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        (tmp / "build.json").write_text(json.dumps({"ok": build.ok, "log": build.log, "files": sorted(build.files),
                                                    "main_class": build.main_class}))
        try:
            os.replace(tmp, entry)
        except OSError:  # another process stored the same program first
            shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------------ compile

    def _precompiled_header(self) -> Path | None:
        """bits/stdc++.h precompiled once (the bulk of every C++ compile otherwise), or None if the
        sandbox cannot see any place to keep it (it hides /tmp behind a private tmpfs)."""
        with self._lock:
            if self._pch is not None or self._expose == ("none",) or not self.use_pch:
                return self._pch
            root = next((d for d in (self.cache_dir, default_cache_dir()) if not _hidden_in_sandbox(d)), None)
            if root is None:
                self._expose = ("none",)
                return None
            pch_dir = root / "cpp" / f"pch-{hashlib.sha256(self.toolchain.encode()).hexdigest()[:12]}"
            if not (pch_dir / "babel.h.gch").is_file():
                pch_dir.parent.mkdir(parents=True, exist_ok=True)
                cmd = _with_export("cp babel.h out/ && g++ -std=c++17 -O1 -w -x c++-header babel.h -o out/babel.h.gch")
                res = sandbox.run(["sh", "-c", cmd], files={"babel.h": "#include <bits/stdc++.h>\n"}, timeout=300,
                                  limits=_compile_limits())
                if not res.ok:
                    raise CodegemmaError(f"building the C++ precompiled header failed: {res.stderr.strip()[-300:]}")
                tmp = Path(tempfile.mkdtemp(dir=pch_dir.parent))
                for rel, data in _unpack(res.stdout).items():
                    (tmp / os.path.basename(rel)).write_bytes(data)
                    os.chmod(tmp / os.path.basename(rel), 0o644)
                os.chmod(tmp, 0o755)
                try:
                    os.replace(tmp, pch_dir)
                except OSError:
                    shutil.rmtree(tmp, ignore_errors=True)
            self._pch = pch_dir
            self._expose = (str(pch_dir),)
            return pch_dir

    def _sandbox_expose(self) -> tuple[str, ...]:
        return self.tool_expose + tuple(e for e in self._expose if e != "none")

    def _compile_one(self, program: str) -> Build:
        lang = self.language
        cmd = lang.compile_cmd
        env = dict(self.tool_env)
        if lang.name == "cpp":
            pch = self._precompiled_header()
            cmd = cmd.format(include=f"-include {pch}/babel.h" if pch else "")
        if lang.name == "go":
            env.update(GOCACHE="/tmp/gocache", GOPATH="/tmp/gopath", GO111MODULE="off")
        start = time.perf_counter()
        res = sandbox.run(["sh", "-c", _with_export(cmd)], files={lang.source_name: program},
                          timeout=self.compile_timeout, limits=_compile_limits(), env=env, expose=self._sandbox_expose())
        seconds = time.perf_counter() - start
        if res.ok and ARTIFACT_MARK in res.stdout:
            return Build(True, _unpack(res.stdout), "", seconds)
        return Build(False, {}, _compile_log(res), seconds, cacheable=_is_verdict(res))

    def _compile_batch(self, programs: dict[str, str]) -> dict[str, Build]:
        """JVM languages: every program in its own package, one compiler start for all of them."""
        lang = self.language
        results: dict[str, Build] = {}
        pending = dict(programs)
        while pending:
            files = {f"p{key[:20]}/{lang.source_name}": self._packaged(key, prog) for key, prog in pending.items()}
            cmd = lang.compile_cmd.format(sources=" ".join(sorted(files)))
            start = time.perf_counter()
            res = sandbox.run(["sh", "-c", _with_export(cmd)], files=files,
                              timeout=self.compile_timeout + 3 * len(files), limits=_compile_limits(),
                              env=self.tool_env, expose=self._sandbox_expose())
            per_program = (time.perf_counter() - start) / len(files)
            if res.ok and ARTIFACT_MARK in res.stdout:
                artifacts = _unpack(res.stdout)
                for key in pending:
                    pkg = f"out/p{key[:20]}/"
                    mine = {rel: data for rel, data in artifacts.items() if rel.startswith(pkg)}
                    results[key] = Build(True, mine, "", per_program, main_class=self._main_class(key))
                return results
            log = _compile_log(res)
            blamed = {key for key in pending if f"p{key[:20]}/{lang.source_name}" in log}
            if not blamed or res.status == "timeout":
                # Nothing to pin the failure on: fall back to one compiler start per program.
                if len(pending) == 1:
                    key = next(iter(pending))
                    results[key] = Build(False, {}, log, per_program, cacheable=_is_verdict(res))
                    return results
                for key, prog in pending.items():
                    results.update(self._compile_batch({key: prog}))
                return results
            for key in blamed:
                mine = "\n".join(line for line in log.splitlines() if f"p{key[:20]}/" in line)
                results[key] = Build(False, {}, mine or log, per_program)
                del pending[key]
        return results

    def _packaged(self, key: str, program: str) -> str:
        sep = ";" if self.language.name == "java" else ""
        return f"package p{key[:20]}{sep}\n{program}"

    def _main_class(self, key: str) -> str:
        return f"p{key[:20]}.{'Problem' if self.language.name == 'java' else 'ProblemKt'}"

    def build_many(self, programs: list[str]) -> list[Build]:
        """Compiled forms of `programs`, in order; cache hits cost nothing, misses compile in parallel."""
        lang = self.language
        if lang.compile_cmd is None:
            return [Build(True, {lang.source_name: p.encode()}) for p in programs]
        keys = [program_key(lang, self.toolchain, p) for p in programs]
        builds: dict[str, Build] = {}
        missing: dict[str, str] = {}
        for key, prog in zip(keys, programs):
            if key in builds or key in missing:
                continue
            hit = self._load(key)
            if hit is not None:
                builds[key] = hit
            else:
                missing[key] = prog
        if missing:
            if lang.name == "cpp":
                self._precompiled_header()
            if self.batch:
                items = list(missing.items())
                size = max(1, min(BATCH_SIZE, -(-len(items) // self.jobs)))
                chunks = [dict(items[i:i + size]) for i in range(0, len(items), size)]
                with ThreadPoolExecutor(self.jobs) as pool:
                    for done in pool.map(self._compile_batch, chunks):
                        builds.update(done)
            elif lang.batch_compile:  # one compiler start per program
                with ThreadPoolExecutor(self.jobs) as pool:
                    for done in pool.map(self._compile_batch, [{k: p} for k, p in missing.items()]):
                        builds.update(done)
            else:
                with ThreadPoolExecutor(self.jobs) as pool:
                    for key, build in zip(missing, pool.map(self._compile_one, missing.values())):
                        builds[key] = build
            for key in missing:
                if builds[key].cacheable:
                    self._store(key, builds[key])
        out = []
        for key in keys:
            b = builds[key]
            out.append(Build(b.ok, b.files, b.log, b.seconds, b.cached, b.main_class or
                             (self._main_class(key) if lang.batch_compile else "")))
        return out


def _is_verdict(res: sandbox.RunResult) -> bool:
    """A compile failure worth caching: the compiler ran and rejected the program (not a missing
    tool, a timeout on a busy machine, or a kill)."""
    return res.status == "error" and res.returncode not in (126, 127)


def _hidden_in_sandbox(path: Path) -> bool:
    real = os.path.realpath(path)
    return any(real == d or real.startswith(d + os.sep) for d in map(os.path.realpath, sandbox.PRIVATE_TMP_DIRS))


def _compile_limits() -> sandbox.Limits:
    return sandbox.Limits(address_space_mb=None, processes=512, file_size_mb=512, open_files=4096,
                          output_bytes=256 << 20, tmpfs_mb=1024)


def _compile_log(res: sandbox.RunResult) -> str:
    if res.status == "timeout":
        return f"compile timeout: {res.reason}"
    text = (res.stderr + "\n" + res.stdout.split(ARTIFACT_MARK, 1)[0]).strip()
    text = re.sub(r"/tmp/codegemma-sandbox-[^/\s]+/", "", text)
    return text[:4000]  # the head: compilers report the first error first (the tail is often a summary)
