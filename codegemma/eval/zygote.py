"""Fork servers for the sandbox: one pristine interpreter per thread and kind, forked once per run.

Two kinds, both started once per thread (`python -I -S`, standard library only) and never running
untrusted code themselves:

- ``python``: forks a child per program that applies the sandbox plan (namespaces, rlimits,
  unprivileged uid, working directory; see codegemma.eval.sandbox), points fds 0-2 at /dev/null
  and the output pipes, and runs the program's file as __main__. Starting a Python interpreter
  costs more than most benchmark programs take to run; this saves it. The server sets up the
  network and mount namespaces once, and a few common modules are preloaded.
- ``exec``: forks a child that applies the whole plan itself and execs a program (a compiler, a
  runtime). Setting up the sandbox takes Python code between fork and exec, which is unsafe in a
  process with threads (the caller's thread pools, torch's): a child forked from a busy process
  can deadlock or crash on a lock another thread held. This server is single-threaded, so its
  children are safe.

Protocol: one JSON request per line on the server's stdin, one JSON reply per line on its stdout
(fds moved aside at start, so nothing a child prints can reach the channel).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import asdict
from pathlib import Path

# Modules most benchmark programs import; loading them once in the server saves it in every child.
PRELOAD = ("math", "re", "collections", "itertools", "functools", "heapq", "bisect", "string", "typing",
           "operator", "random", "hashlib", "statistics", "fractions", "decimal", "copy", "datetime", "json",
           "traceback")


_ROOT = str(Path(__file__).resolve().parents[2])  # the directory holding the codegemma package


class _Forked:
    """The Popen-like view of a forked child that sandbox._supervise needs."""

    def __init__(self, pid: int, out_fd: int, err_fd: int):
        self.pid = pid
        self.stdout = os.fdopen(out_fd, "rb", buffering=0)
        self.stderr = os.fdopen(err_fd, "rb", buffering=0)
        self.returncode: int | None = None

    def _set(self, status: int) -> None:
        self.returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._set(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            self._set(os.waitpid(self.pid, 0)[1])
        return self.returncode


def _run_main(main: str) -> None:
    """In the child: run `main` as `python -I -S main` would, then exit without returning."""
    import builtins
    import traceback

    code = 0
    # Leave no trace of the server: its own modules and path entry go before the program runs.
    for name in [m for m in sys.modules if m == "codegemma" or m.startswith("codegemma.")]:
        del sys.modules[name]
    sys.path[:] = [os.getcwd()] + [p for p in sys.path if p != _ROOT]
    try:
        sys.argv = [main]
        with open(main, "rb") as f:
            source = f.read()
        program = compile(source, main, "exec")
        exec(program, {"__name__": "__main__", "__file__": main, "__builtins__": builtins})
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code & 0xFF
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - the program's own failure, reported like the interpreter does
        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


SETUP_FAILED = 255


def _exec(argv: list[str], env: dict) -> None:
    """In the child: become `argv` (a relative path is taken from the working directory), or exit
    127 as a shell would."""
    try:
        os.execve(argv[0], argv, env)
    except OSError as exc:
        os.write(2, f"sandbox: cannot run {argv[0]}: {exc.strerror}\n".encode())
    os._exit(127)


def _handle(request: dict) -> dict:
    from codegemma.eval import sandbox

    fields = request["plan"]
    # The server already lives in its own network and mount namespaces; children inherit them.
    layers = set(fields["layers"]) - _INHERITED
    plan = sandbox._Plan(layers=frozenset(layers), uid=fields["uid"], workdir=fields["workdir"],
                         limits=tuple(tuple(x) for x in fields["limits"]), tmpfs_mb=fields["tmpfs_mb"],
                         hidden_roots=tuple((r, tuple(p)) for r, p in fields["hidden_roots"]),
                         tmp_exposed=tuple((p, f) for p, f in fields["tmp_exposed"]),
                         workdir_flags=fields["workdir_flags"])
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            os.closerange(3, 1 << 16)
            os.chdir(plan.workdir)
            try:
                sandbox._child_setup(plan)
            except Exception as exc:  # noqa: BLE001 - the host refused a layer; say which step
                os.write(2, f"sandbox setup failed: {type(exc).__name__}: {exc}\n".encode())
                os._exit(SETUP_FAILED)
            if "argv" in request:
                _exec(request["argv"], request["env"])
            os.environ.clear()
            os.environ.update(request["env"])
            _run_main(request["main"])
        finally:
            os._exit(SETUP_FAILED)
    os.close(out_w)
    os.close(err_w)
    proc = _Forked(pid, out_r, err_r)
    status, reason, out, err = sandbox._supervise(proc, request["timeout"], request["cap"])
    _kill_leftovers(plan.uid)
    if "mountns" in _INHERITED:
        sandbox.clean_private_tmp(keep=_BASE)
    return {"status": status, "reason": reason, "returncode": proc.returncode, "pid": pid,
            "stdout": out.decode("utf-8", "replace"), "stderr": err.decode("utf-8", "replace"),
            "seconds": time.perf_counter() - start}


def _kill_leftovers(uid: int | None) -> None:
    """Kill whatever the program left running (daemons that left its process group included).

    The server is a child subreaper, so every orphaned descendant becomes its child: killing its
    children until none is left reaches them all, for the cost of reading one file.
    """
    children = f"/proc/self/task/{os.getpid()}/children"
    if not _SUBREAPER or not os.path.exists(children):
        if uid is not None:
            _kill_all_of(uid)
        return
    for _ in range(10_000):
        with open(children) as f:
            pids = [int(x) for x in f.read().split()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def _kill_all_of(uid: int) -> None:
    """Kill every process of `uid` at once: kill(-1) from a helper running as that uid reaches
    exactly the processes it may signal, and the kernel holds off new forks while it runs."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


_INHERITED: set[str] = set()
_BASE = ""
_SUBREAPER = False
PR_SET_CHILD_SUBREAPER = 36


def serve(setup: dict) -> None:
    """The server loop (run in the server process).

    `setup`: {"layers": [...], "base": dir, "plan": static mount plan}. The server moves into an
    empty network namespace and a mount namespace with private temporary directories, in which
    `base` (where the parent creates working directories) stays visible at its own path.
    """
    global _BASE, _SUBREAPER
    from codegemma.eval import sandbox

    _BASE = setup["base"]
    _SUBREAPER = sandbox._libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    flags = 0
    if "netns" in setup["layers"]:
        flags |= sandbox.CLONE_NEWNET
        _INHERITED.add("netns")
    if "mountns" in setup["layers"]:
        flags |= sandbox.CLONE_NEWNS
        _INHERITED.add("mountns")
        _INHERITED.update(set(setup["layers"]) & {"rofs"})
    if flags:
        sandbox._unshare(flags)
    if "mountns" in _INHERITED:
        p = setup["plan"]
        sandbox._setup_mounts(sandbox._Plan(layers=frozenset(_INHERITED & {"rofs"}), uid=None, workdir=_BASE,
                                            limits=(), tmpfs_mb=p["tmpfs_mb"],
                                            hidden_roots=tuple((r, tuple(x)) for r, x in p["hidden_roots"]),
                                            tmp_exposed=tuple((x, f) for x, f in p["tmp_exposed"]),
                                            workdir_flags=sandbox._locked_flags(_BASE)))
    for name in PRELOAD:
        __import__(name)
    requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    for line in requests:
        try:
            reply = _handle(json.loads(line))
        except Exception as exc:  # noqa: BLE001 - reported to the caller, the server keeps serving
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


class Server:
    """The parent's handle on one server process (used by one thread at a time).

    `plan` is given for a ``python`` server, whose namespaces it sets up once; an ``exec`` server
    (`plan=None`) leaves every layer to its children.
    """

    def __init__(self, base: str, plan=None):
        self.base = base
        # Namespaces need root here; without it (user namespaces) each child sets them up itself.
        layers = sorted(plan.layers & {"netns", "mountns", "rofs"}) if plan and os.geteuid() == 0 else []
        setup = {"layers": layers, "base": base,
                 "plan": {"tmpfs_mb": plan.tmpfs_mb, "hidden_roots": [list(x) for x in plan.hidden_roots],
                          "tmp_exposed": [list(x) for x in plan.tmp_exposed]} if plan else {}}
        bootstrap = (f"import sys, json; sys.path.insert(0, {_ROOT!r}); from codegemma.eval.zygote import serve; "
                     f"serve(json.loads({json.dumps(setup)!r}))")
        self.proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", bootstrap], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, encoding="utf-8",
                                     env={"PATH": os.environ.get("PATH", "")})

    def run(self, plan, env: dict, timeout: float, cap: int, main: str | None = None,
            argv: list[str] | None = None) -> dict:
        """Run the Python file `main` (a ``python`` server) or exec `argv` (an ``exec`` server)."""
        request = {"plan": {**asdict(plan), "layers": sorted(plan.layers)}, "env": env, "timeout": timeout,
                   "cap": cap, **({"argv": argv} if argv is not None else {"main": main})}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"sandbox fork server exited with code {self.proc.wait()}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"sandbox fork server: {reply['error']}")
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


_local = threading.local()
_servers: list[Server] = []
_lock = threading.Lock()


def local_server(base: str, plan=None) -> Server:
    """This thread's server for working directories under `base`, started on first use (and again
    if it died): a ``python`` server given the `plan` it sets up namespaces for, else an ``exec`` one."""
    kind = "python" if plan is not None else "exec"
    servers = getattr(_local, "servers", None)
    if servers is None:
        servers = _local.servers = {}
    server = servers.get(kind)
    if server is None or server.proc.poll() is not None or server.base != base:
        if server is not None:
            server.close()
        server = Server(base, plan)
        servers[kind] = server
        with _lock:
            _servers.append(server)
        # A thread pool's threads come and go; their servers go with them.
        weakref.finalize(threading.current_thread(), _retire, server)
    return server


def _retire(server: Server) -> None:
    server.close()
    with _lock:
        if server in _servers:
            _servers.remove(server)


def close_all() -> None:
    with _lock:
        for server in _servers:
            server.close()
        _servers.clear()
