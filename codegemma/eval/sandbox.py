"""Run untrusted programs (model-written code, its tests, compilers) in a contained child process.

    result = sandbox.run(["g++", "main.cpp"], files={"main.cpp": code}, timeout=60, limits=COMPILER_LIMITS)
    result = sandbox.run_python({"main.py": code}, timeout=10)   # Python, without interpreter start-up
    result.status      # "ok" | "error" | "timeout" | "killed"
    result.isolation   # the layers that were active for this run, e.g. ["session", "rlimits", ...]

Every call gets a fresh temporary working directory holding `files` (removed afterwards), no stdin,
a scrubbed environment, captured and capped stdout/stderr, and these layers where the host allows:

- ``session``   own session and process group, SIGKILLed as a whole on timeout;
- ``rlimits``   address space, CPU seconds, processes, file size, open files, no core dumps;
- ``env``       only PATH, HOME, LANG, TMPDIR and what the caller passes in `env`;
- ``uid``       (when started as root) a random unprivileged uid/gid per run, so the program can
                write nowhere but its own directory, cannot signal other processes, RLIMIT_NPROC
                (ignored for root) caps its fork rate, and after the run every process of that uid
                is killed, including ones that started their own session;
- ``pidns``     (where ``uid`` is unavailable) a PID namespace whose init is the program: when it
                exits, the kernel kills every process it left behind;
- ``netns``     an empty network namespace (only a downed loopback): no connection can be made;
- ``mountns``   private, size-limited tmpfs over /tmp, /var/tmp and /dev/shm (an interpreter
                installed there, such as a virtualenv in /tmp, is put back read-only); an empty
                tmpfs over the home directories (/home and the user's own), so a program reads no
                one's files there, and (with ``uid``) over unreadable ancestors of the interpreter;
                the interpreter and `expose`d install trees under them are put back.
- ``rofs``      (with ``mountns``) every file system read-only but the working directory and the
                private tmpfs: without ``uid`` (an ordinary user's runs) the program has its user's
                own rights, and this is what keeps it from changing that user's files;
- ``userns``    (when not root) a user namespace, which is what lets an ordinary user create the
                namespaces above.

Layers are probed once per process; a layer the kernel refuses is left out, and the result says so.
Every run is forked from a small single-threaded server (codegemma.eval.zygote), never from the
calling process: setting up the layers takes Python code between fork and exec, which is unsafe in
a process with threads, and a limit on address space set in a fork of a large process (a CUDA one
reserves gigabytes) would crash it before it could exec. `run` execs any executable (its own
namespaces per run); `run_python` forks Python programs from a pristine interpreter that has set up
the network and mount namespaces once, which makes it several times faster than starting an
interpreter per program.
Compilers and runtimes of other languages use the same call with their own `Limits`
(more address space, processes and time) and may need `expose` for install trees under
unreadable directories.
"""

from __future__ import annotations

import atexit
import ctypes
import fcntl
import functools
import os
import pwd
import random
import resource
import selectors
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
SYS_MOUNT_SETATTR = 442  # the same number on every Linux architecture (Linux 5.12)
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1

PRIVATE_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
# a directory holding one of these is no home to hide, whatever $HOME says
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/etc", "/opt", "/var", "/srv", "/nix", "/run", "/proc", "/dev")
ALL_LAYERS = ("session", "rlimits", "env", "uid", "pidns", "netns", "mountns", "rofs", "userns")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class Limits:
    """Resource limits of one run. Sizes in MiB; `cpu_seconds=None` means ceil(timeout) + 1."""

    address_space_mb: int | None = 2048
    cpu_seconds: int | None = None
    processes: int = 64
    file_size_mb: int = 16
    open_files: int = 256
    output_bytes: int = 64 * 1024
    tmpfs_mb: int = 64


COMPILER_LIMITS = Limits(address_space_mb=None, processes=256, file_size_mb=256, open_files=1024,
                         tmpfs_mb=512)


@dataclass
class RunResult:
    status: str  # "ok" (exit 0) | "error" (exit != 0) | "timeout" | "killed" (signal or output limit)
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    isolation: list[str] = field(default_factory=list)
    reason: str = ""  # why it was killed or timed out, e.g. "output limit 65536 bytes"

    @property
    def ok(self) -> bool:
        return self.status == "ok"


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


@dataclass(frozen=True)
class _Plan:
    """What the child does between fork and exec; built in the parent so the child only makes syscalls."""

    layers: frozenset[str]
    uid: int | None
    workdir: str
    limits: tuple[tuple[int, int], ...]
    tmpfs_mb: int
    hidden_roots: tuple[tuple[str, tuple[str, ...]], ...]  # (home or unreadable ancestor, paths to put back)
    # install trees under a private tmp dir (a virtualenv in /tmp), put back read-only: (path, the
    # flags of its read-only remount, which must keep the locked flags of the mount it is on)
    tmp_exposed: tuple[tuple[str, int], ...] = ()
    workdir_flags: int = 0  # the locked flags of the working directory's mount (its writable remount)


def _userns_map() -> None:
    # An unprivileged process may map only its own ids into its new user namespace.
    uid, gid = os.geteuid(), os.getegid()
    _unshare(CLONE_NEWUSER)
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"0 {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"0 {gid} 1")


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64)]


def _read_only_everywhere() -> None:
    """Every mount of this mount namespace read-only; mounts made afterwards are not."""
    attr = _MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    _check(_libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, b"/", AT_RECURSIVE, ctypes.byref(attr), ctypes.sizeof(attr)),
           "mount_setattr")


def _setup_mounts(plan: _Plan) -> None:
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    keep = {path: os.open(path, os.O_PATH | os.O_DIRECTORY)
            for _, paths in plan.hidden_roots for path in paths}
    work_fd = os.open(plan.workdir, os.O_PATH | os.O_DIRECTORY)
    tmp_kept = [(path, flags, os.open(path, os.O_PATH | os.O_DIRECTORY)) for path, flags in plan.tmp_exposed]
    if "rofs" in plan.layers:
        _read_only_everywhere()
    for root, paths in plan.hidden_roots:
        _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
        for path in paths:
            os.makedirs(path, exist_ok=True)
            _mount(f"/proc/self/fd/{keep[path]}", path, None, MS_BIND | MS_REC)
    for tmp in PRIVATE_TMP_DIRS:
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            _mount("tmpfs", tmp, "tmpfs", MS_NOSUID | MS_NODEV, f"size={plan.tmpfs_mb}m,mode=1777")
    # The working directory may lie under a directory just covered; put it back at the same path.
    if not os.path.isdir(plan.workdir):
        os.makedirs(plan.workdir)
        _mount(f"/proc/self/fd/{work_fd}", plan.workdir, None, MS_BIND)
    elif "rofs" in plan.layers:
        _mount(plan.workdir, plan.workdir, None, MS_BIND)  # a mount of its own, to be made writable
    if "rofs" in plan.layers:  # the bind copied the read-only flag of the mount it came from
        _mount(None, plan.workdir, None, MS_REMOUNT | MS_BIND | plan.workdir_flags)
    for root, _ in plan.hidden_roots:  # nothing to write there: a program writing to ~ gets EROFS
        _mount(None, root, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    # So may the interpreter's own tree; it comes back read-only, the program's to run, not to change.
    for path, flags, fd in tmp_kept:
        if not os.path.isdir(path):
            os.makedirs(path)
            _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
            _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)
    for fd in (*keep.values(), work_fd, *(fd for *_, fd in tmp_kept)):
        os.close(fd)


def _close_exec_fds() -> None:
    # The waiter never execs; close what exec would have closed and its copies of the standard
    # streams, which the server reads until EOF.
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if fd <= 2 or fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC:
                os.close(fd)
        except OSError:
            pass


def _wait_and_exit(pid: int) -> None:
    _close_exec_fds()
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
        except ChildProcessError:
            os._exit(255)
    if os.WIFSIGNALED(status):
        # Die of the same signal, so the parent sees what killed the program.
        sig = os.WTERMSIG(status)
        try:
            if sig not in (signal.SIGKILL, signal.SIGSTOP):
                signal.signal(sig, signal.SIG_DFL)
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            os.kill(os.getpid(), sig)
        except OSError:
            pass
        os._exit(128 + sig)
    os._exit(os.WEXITSTATUS(status))


def _child_setup(plan: _Plan) -> None:
    """Runs in a child of a fork server (codegemma.eval.zygote) before it execs or runs the program;
    the child already has a session of its own."""
    layers = plan.layers
    flags = (CLONE_NEWNET if "netns" in layers else 0) | (CLONE_NEWNS if "mountns" in layers else 0) \
        | (CLONE_NEWPID if "pidns" in layers else 0)
    if "userns" in layers:
        _userns_map()
    if flags:
        _unshare(flags)
    if "mountns" in layers:
        _setup_mounts(plan)
    if "pidns" in layers:
        # Only children enter the new PID namespace: fork its init, which becomes the program; this
        # process stays behind to relay the exit status (it shares the process group, so a timeout
        # kill reaches both).
        pid = os.fork()
        if pid != 0:
            _wait_and_exit(pid)
    if "rlimits" in layers:
        for res, value in plan.limits:
            resource.setrlimit(res, (value, value))
    if plan.uid is not None:
        os.setgroups([])
        os.setgid(plan.uid)
        os.setuid(plan.uid)
    os.chdir(plan.workdir)
    os.umask(0o077)


# ---------------------------------------------------------------- which layers this host allows


def _needs_userns() -> bool:
    return os.geteuid() != 0


def _probe_one(layers: frozenset[str]) -> bool:
    from codegemma.eval import zygote

    with tempfile.TemporaryDirectory(prefix="codegemma-probe-") as tmp:
        plan = _make_plan(layers, tmp, Limits(), timeout=5, expose=())
        try:
            _prepare_workdir(Path(tmp), {}, plan.uid)
            reply = zygote.local_server(workdir_base()).run(plan, {"PATH": DEFAULT_PATH}, timeout=10,
                                                           cap=4096, argv=["/bin/sh", "-c", "exit 0"])
            return reply["returncode"] == 0
        except (OSError, RuntimeError):
            return False


@functools.lru_cache(maxsize=1)
def available_layers() -> frozenset[str]:
    """The isolation layers this host grants, probed once by starting a trivial program with each."""
    if not sys.platform.startswith("linux"):
        return frozenset({"session", "rlimits", "env"})
    base = {"session", "rlimits", "env"}
    if _needs_userns():
        if not _probe_one(frozenset(base | {"userns"})):
            return frozenset(base)
        base.add("userns")
    else:
        base.add("uid")
    granted = set(base)
    for layer in ("netns", "mountns", "pidns"):
        if _probe_one(frozenset(base | {layer})):
            granted.add(layer)
    if "mountns" in granted and _probe_one(frozenset(base | {"mountns", "rofs"})):  # mount_setattr: Linux 5.12
        granted.add("rofs")
    if not _probe_one(frozenset(granted)):  # each alone worked; together they must too
        return frozenset(base)
    return frozenset(granted)


# ---------------------------------------------------------------- one run


def _unreadable_root(path: str) -> str | None:
    """The highest ancestor of `path` that other users cannot traverse, if any."""
    parts = Path(path).parts
    for i in range(2, len(parts) + 1):
        ancestor = str(Path(*parts[:i]))
        try:
            mode = os.stat(ancestor).st_mode
        except OSError:
            return None
        if not mode & stat.S_IXOTH:
            return ancestor
    return None


def _home_dirs() -> list[str]:
    """The home directories to hide from programs: /home and this user's own (by $HOME and by the
    password database), outermost only. A "home" that holds system directories (/, /usr, /opt) or
    lies in a private tmp dir is left alone."""
    candidates = {"/home", os.environ.get("HOME", "")}
    try:
        candidates.add(pwd.getpwuid(os.geteuid()).pw_dir)
    except KeyError:
        pass
    homes = set()
    for home in {os.path.realpath(c) for c in candidates if c}:
        if not os.path.isdir(home) or any(Path(system).is_relative_to(home) for system in SYSTEM_DIRS) \
                or any(Path(home).is_relative_to(tmp) for tmp in PRIVATE_TMP_DIRS):
            continue
        homes.add(home)
    return sorted(h for h in homes if not any(h != o and Path(h).is_relative_to(o) for o in homes))


def plan_cpu_seconds(limits: Limits, timeout: float) -> int:
    return limits.cpu_seconds if limits.cpu_seconds is not None else int(timeout) + 1


def _make_plan(layers: frozenset[str], workdir: str, limits: Limits, timeout: float,
               expose: tuple[str, ...]) -> _Plan:
    uid = random.SystemRandom().randrange(1 << 20, 1 << 30) if "uid" in layers else None
    cpu = plan_cpu_seconds(limits, timeout)
    rl = [(resource.RLIMIT_CPU, cpu), (resource.RLIMIT_FSIZE, limits.file_size_mb << 20),
          (resource.RLIMIT_NOFILE, limits.open_files), (resource.RLIMIT_CORE, 0),
          (resource.RLIMIT_NPROC, limits.processes)]
    if limits.address_space_mb is not None:
        rl.append((resource.RLIMIT_AS, limits.address_space_mb << 20))
    hidden: dict[str, list[str]] = {}
    tmp_exposed: list[tuple[str, int]] = []
    if "mountns" in layers:
        homes = _home_dirs()
        hidden = {home: [] for home in homes}
        for path in sorted({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, *expose)}):
            if not os.path.isdir(path):
                continue
            if any(Path(path).is_relative_to(tmp) for tmp in PRIVATE_TMP_DIRS):
                if not any(Path(path).is_relative_to(kept) for kept, _ in tmp_exposed):
                    tmp_exposed.append((path, _locked_flags(path)))
                continue
            root = next((home for home in homes if Path(path).is_relative_to(home)), None)
            if root is None and uid is not None:
                root = _unreadable_root(path)
            if root is not None:
                hidden.setdefault(root, []).append(path)
    return _Plan(layers=layers, uid=uid, workdir=workdir, limits=tuple(rl), tmpfs_mb=limits.tmpfs_mb,
                 hidden_roots=tuple((r, tuple(sorted(p))) for r, p in sorted(hidden.items())),
                 tmp_exposed=tuple(tmp_exposed), workdir_flags=_locked_flags(workdir))


def _locked_flags(path: str) -> int:
    """The flags of the mount holding `path` that a remount in a user namespace must keep."""
    have = os.statvfs(path).f_flag
    return sum(flag for st, flag in ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
                                     (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME)) if have & st)


def _prepare_workdir(workdir: Path, files: dict[str, str | bytes], uid: int | None) -> None:
    for name, content in files.items():
        target = (workdir / name).resolve()
        if workdir.resolve() not in target.parents:
            raise ValueError(f"sandbox file {name!r} lies outside the working directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            target.write_text(content, encoding="utf-8")
        else:
            target.write_bytes(content)
    if uid is not None:
        for dirpath, dirnames, filenames in os.walk(workdir):
            os.chown(dirpath, uid, uid)
            for name in filenames:
                os.chown(os.path.join(dirpath, name), uid, uid)
        os.chmod(workdir, 0o700)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _classify(status: str | None, reason: str, code: int | None, layers: set[str], limits: Limits,
              timeout: float) -> tuple[str, str]:
    if status is not None:
        return status, reason
    if code == 0:
        return "ok", ""
    if code is not None and code < 0:
        if -code in (signal.SIGKILL, signal.SIGXCPU) and "rlimits" in layers:
            return "killed", f"CPU time limit ({plan_cpu_seconds(limits, timeout)} s)"
        return "killed", f"signal {-code}"
    return "error", ""


def active_layers(network: bool = False) -> set[str]:
    """The layers each run gets: those available, less what a cheaper active layer makes redundant."""
    layers = set(available_layers())
    if network:
        layers.discard("netns")
    if "uid" in layers:
        # A uid of its own already lets every leftover process be found and killed after the run,
        # at a fraction of the cost of creating and tearing down a PID namespace.
        layers.discard("pidns")
    return layers


def _child_env(workdir: Path, path: str, env: dict[str, str] | None) -> dict[str, str]:
    return {"PATH": path, "HOME": str(workdir), "TMPDIR": str(workdir), "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}


def run(argv: list[str], files: dict[str, str | bytes] | None = None, timeout: float = 10.0,
        limits: Limits = Limits(), env: dict[str, str] | None = None, network: bool = False,
        expose: tuple[str, ...] = (), workdir_prefix: str = "codegemma-sandbox-") -> RunResult:
    """Run `argv` in a fresh working directory holding `files`, contained; see the module docstring.

    `argv[0]` is looked up on the scrubbed PATH (plus the directory of this interpreter).
    `network=True` keeps the host network (for tools that must download; never for model code).
    `expose` lists install directories the program needs that an unprivileged uid cannot reach.
    """
    path = _program_path()
    exe = shutil.which(argv[0], path=path) if os.sep not in argv[0] else argv[0]
    if exe is None:
        raise FileNotFoundError(f"sandbox: program {argv[0]!r} not found on {path}")
    return _run_in_server(active_layers(network), files or {}, timeout, limits, env, workdir_prefix,
                          (*expose, os.path.dirname(os.path.realpath(exe))), argv=[exe, *argv[1:]])


def _program_path() -> str:
    return f"{os.path.dirname(sys.executable)}:{DEFAULT_PATH}"


def _run_in_server(layers: set[str], files: dict[str, str | bytes], timeout: float, limits: Limits,
                   env: dict[str, str] | None, workdir_prefix: str, expose: tuple[str, ...],
                   argv: list[str] | None = None, main: str | None = None) -> RunResult:
    """One run in a fresh working directory, forked by this thread's server: `argv` exec'd by an
    exec server, or the Python file `main` run by a python server."""
    from codegemma.eval import zygote

    base = workdir_base()
    workdir = Path(tempfile.mkdtemp(prefix=workdir_prefix, dir=base))
    try:
        plan = _make_plan(frozenset(layers), str(workdir), limits, timeout, expose)
        _prepare_workdir(workdir, files, plan.uid)
        server = zygote.local_server(base, plan if main is not None else None)
        reply = server.run(plan, _child_env(workdir, _program_path(), env), timeout, limits.output_bytes,
                           main=main, argv=argv)
        status, reason = _classify(reply["status"], reply["reason"], reply["returncode"], layers, limits, timeout)
        return RunResult(status, reply["returncode"], reply["stdout"], reply["stderr"], reply["seconds"],
                         sorted(layers, key=ALL_LAYERS.index), reason)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


_bases: dict[str, str] = {}
_bases_lock = threading.Lock()


BASE_PREFIX = "codegemma-sandbox-root-"


def _remove_orphaned_bases(tmp: str) -> None:
    """Base directories of processes that died without cleaning up (killed, not interrupted)."""
    for entry in os.scandir(tmp):
        if entry.name.startswith(BASE_PREFIX):
            pid = entry.name[len(BASE_PREFIX):].split("-", 1)[0]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                shutil.rmtree(entry.path, ignore_errors=True)


def workdir_base() -> str:
    """This process's directory for working directories (one per temporary root)."""
    tmp = tempfile.gettempdir()
    with _bases_lock:
        base = _bases.get(tmp)
        if base is None or not os.path.isdir(base):
            _remove_orphaned_bases(tmp)
            base = tempfile.mkdtemp(prefix=f"{BASE_PREFIX}{os.getpid()}-", dir=tmp)
            os.chmod(base, 0o711)  # the per-run uids must traverse it, not list it
            _bases[tmp] = base
    return base


@atexit.register
def _remove_bases() -> None:
    from codegemma.eval import zygote

    zygote.close_all()
    for base in _bases.values():
        shutil.rmtree(base, ignore_errors=True)


def run_python(files: dict[str, str | bytes], main: str = "main.py", timeout: float = 10.0,
               limits: Limits = Limits(), env: dict[str, str] | None = None,
               workdir_prefix: str = "codegemma-sandbox-") -> RunResult:
    """Run the Python file `main` from `files` as __main__, with the same containment as `run`.

    The process is forked from a pristine interpreter kept ready per thread (codegemma.eval.zygote,
    which never runs untrusted code itself) instead of starting a new interpreter, which saves the
    interpreter's start-up on every run. That server sets up the network and mount namespaces once
    and empties its private /tmp, /var/tmp and /dev/shm after every run; each run still gets its
    own process, uid, rlimits and working directory. What the program sees matches
    `python -I -S main.py`.
    """
    return _run_in_server(active_layers(network=False), files, timeout, limits, env, workdir_prefix, (), main=main)


def clean_private_tmp(keep: str) -> None:
    """Empty the private temporary directories, except the path leading to `keep`."""
    for tmp in PRIVATE_TMP_DIRS:
        if not os.path.isdir(tmp) or os.path.islink(tmp):
            continue
        for name in os.listdir(tmp):
            path = os.path.join(tmp, name)
            if keep == path or keep.startswith(path + os.sep):
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.unlink(path)
                except OSError:
                    pass


def _drain_now(fd: int, buf: bytearray, cap: int) -> None:
    while len(buf) <= cap:
        try:
            chunk = os.read(fd, 65536)
        except (BlockingIOError, OSError):
            return
        if not chunk:
            return
        buf += chunk


def _supervise(proc, timeout: float, cap: int) -> tuple[str | None, str, bytes, bytes]:
    """Drain stdout/stderr up to `cap` bytes each until the process exits or the deadline passes.

    `proc` is a subprocess.Popen or anything with the same pid/stdout/stderr/poll/wait. The exit is
    watched through a pidfd, so it is noticed at once instead of by polling.
    """
    deadline = time.monotonic() + timeout
    buffers = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    status, reason = None, ""
    sel = selectors.DefaultSelector()
    for fd in buffers:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    pidfd = os.pidfd_open(proc.pid)
    sel.register(pidfd, selectors.EVENT_READ)
    try:
        exited = False
        while not exited:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                status, reason = "timeout", f"no exit within {timeout:g} s"
                break
            for key, _ in sel.select(remaining):
                if key.fd == pidfd:
                    exited = True
                    continue
                buf = buffers[key.fd]
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                buf += chunk
                if len(buf) > cap:
                    status, reason = "killed", f"output limit {cap} bytes"
            if status is not None:
                break
        if exited:
            # What the program wrote before exiting is in the pipes; anything still holding them
            # is a leftover, killed below.
            for fd, buf in buffers.items():
                _drain_now(fd, buf, cap)
    finally:
        _kill_group(proc.pid)
        proc.wait()
        sel.close()
        os.close(pidfd)
        proc.stdout.close()
        proc.stderr.close()
    out, err = (bytes(b[:cap]) for b in buffers.values())
    return status, reason, out, err
