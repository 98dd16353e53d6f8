"""Hostile programs: each must be contained and must leave no process or file behind."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path

import pytest

from codegemma.eval import sandbox

LAYERS = sandbox.active_layers()


def python(code: str, timeout: float = 3.0, **kwargs) -> sandbox.RunResult:
    return sandbox.run([sys.executable, "-I", "main.py"], files={"main.py": textwrap.dedent(code)},
                       timeout=timeout, **kwargs)


def processes_with(token: str) -> list[int]:
    """Host pids whose command line contains `token`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if token.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.fixture
def host_stays_clean(monkeypatch):
    """Fails the test if the run leaves a working directory or a process carrying the token.

    Sandbox directories go to a private temporary root for the test, so runs elsewhere on the
    host cannot be mistaken for leftovers.
    """
    root = Path(tempfile.mkdtemp(prefix="codegemma-sandbox-test-"))
    root.chmod(0o755)
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    token = f"hostile-{uuid.uuid4().hex}"
    yield token
    monkeypatch.undo()
    # run_python keeps one (empty) base directory per temporary root for the life of the process.
    leftovers = [p for p in root.iterdir() if not p.name.startswith(sandbox.BASE_PREFIX)]
    leftovers += [p for base in root.glob(sandbox.BASE_PREFIX + "*") for p in base.iterdir()]
    shutil.rmtree(root, ignore_errors=True)
    assert leftovers == [], "sandbox working directory left behind"
    assert processes_with(token) == [], "sandboxed process outlived its run"


def test_normal_program_runs_and_reports_layers():
    result = python("print('hello'); import sys; print('oops', file=sys.stderr)")
    assert result.status == "ok" and result.returncode == 0
    assert result.stdout == "hello\n" and result.stderr == "oops\n"
    assert {"session", "rlimits", "env"} <= set(result.isolation)
    assert set(result.isolation) == set(LAYERS)


def test_files_are_placed_in_the_working_directory_and_nonzero_exit_is_an_error():
    result = sandbox.run([sys.executable, "-I", "main.py"],
                         files={"main.py": "import sys; sys.exit(open('pkg/data.txt').read() == 'x' and 3)",
                                "pkg/data.txt": "x"}, timeout=5)
    assert result.status == "error" and result.returncode == 3


def test_file_outside_the_working_directory_is_refused():
    with pytest.raises(ValueError, match="outside"):
        sandbox.run(["true"], files={"../escape.txt": "x"})


def test_fork_bomb_is_contained(host_stays_clean):
    result = python(f"""
        import os, sys
        sys.argv.append("{host_stays_clean}")
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """, timeout=2)
    assert result.status in ("timeout", "killed")


def test_unbounded_output_is_capped_and_killed(host_stays_clean):
    limits = sandbox.Limits(output_bytes=10_000)
    result = python("while True:\n    print('x' * 1000, flush=True)", timeout=10, limits=limits)
    assert result.status == "killed" and "output limit" in result.reason
    assert len(result.stdout) == 10_000
    assert result.seconds < 5


def test_sleeping_forever_times_out(host_stays_clean):
    result = python(f"import time, sys; sys.argv.append('{host_stays_clean}'); time.sleep(10_000)", timeout=1)
    assert result.status == "timeout" and 1 <= result.seconds < 3


def test_ignoring_sigterm_does_not_help(host_stays_clean):
    result = python("""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(10_000)
        """, timeout=1)
    assert result.status == "timeout" and result.seconds < 3


def test_memory_bomb_is_stopped_by_the_address_space_limit():
    limits = sandbox.Limits(address_space_mb=512)
    result = python("""
        chunks = []
        while True:
            chunks.append(bytearray(64 << 20))
        """, timeout=10, limits=limits)
    assert result.status == "error" and "MemoryError" in result.stderr


def test_background_process_does_not_outlive_the_run(host_stays_clean):
    # A double fork plus setsid escapes the process group; it must die with the run anyway.
    result = python(f"""
        import os, subprocess, sys
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "{host_stays_clean}"],
                         start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print("spawned")
        """, timeout=5)
    assert result.status == "ok" and result.stdout == "spawned\n"


def test_closing_its_own_stdout_still_captures_stderr_and_exit(host_stays_clean):
    result = python("""
        import os, sys, time
        print("before", flush=True)
        os.close(1)
        time.sleep(0.2)
        print("after close", file=sys.stderr)
        sys.exit(4)
        """)
    assert result.status == "error" and result.returncode == 4
    assert result.stdout == "before\n" and "after close" in result.stderr


def test_closing_stdout_and_hanging_still_times_out(host_stays_clean):
    result = python("import os, time; os.close(1); os.close(2); time.sleep(10_000)", timeout=1)
    assert result.status == "timeout"


def test_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("CODEGEMMA_TEST_SECRET", "s3cr3t-value")
    result = python(f"""
        import os
        print(sorted(os.environ))
        print("secret" if "s3cr3t-value" in repr(dict(os.environ)) else "clean")
        try:
            print(open("/proc/{os.getpid()}/environ", "rb").read())
        except OSError as exc:
            print("denied", type(exc).__name__)
        """)
    assert result.status == "ok", result.stderr
    assert "clean" in result.stdout and "s3cr3t-value" not in result.stdout
    if "uid" in LAYERS or "pidns" in LAYERS:
        assert "denied" in result.stdout


@pytest.mark.skipif("netns" not in LAYERS, reason="no network namespace on this host")
def test_network_connection_is_impossible():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        result = python(f"""
            import socket
            for host in ("127.0.0.1", "1.1.1.1"):
                try:
                    socket.create_connection((host, {port}), timeout=1).close()
                    print("connected", host)
                except OSError as exc:
                    print("refused", host, type(exc).__name__)
            """, timeout=5)
        with pytest.raises(OSError):  # nothing reached the host's listener
            server.accept()
    finally:
        server.close()
    assert result.status == "ok", result.stderr
    assert "connected" not in result.stdout and result.stdout.count("refused") == 2


@pytest.mark.skipif("uid" not in LAYERS, reason="needs an unprivileged uid (the harness runs as root)")
def test_writing_and_deleting_outside_its_directory_fails(tmp_path, host_stays_clean):
    victim_dir = tmp_path / "victim"
    victim_dir.mkdir()
    victim = victim_dir / "precious.txt"
    victim.write_text("keep me")
    os.chmod(tmp_path, 0o755)
    shared_tmp = Path("/tmp") / f"{host_stays_clean}.txt"
    result = python(f"""
        import os
        for path in ({str(victim)!r}, {str(victim_dir / 'new.txt')!r}, {str(shared_tmp)!r},
                     "/dev/shm/{host_stays_clean}", os.path.expanduser("~/../{host_stays_clean}")):
            try:
                with open(path, "w") as f:
                    f.write("pwned")
            except OSError as exc:
                print("write denied", path, type(exc).__name__)
        try:
            os.remove({str(victim)!r})
        except OSError as exc:
            print("delete denied", type(exc).__name__)
        """)
    assert result.status == "ok", result.stderr
    assert victim.read_text() == "keep me"
    assert not (victim_dir / "new.txt").exists()
    assert not shared_tmp.exists() and not Path(f"/dev/shm/{host_stays_clean}").exists()
    assert "delete denied" in result.stdout


_FROM_A_VIRTUALENV = """
import json, sys
sys.path.insert(0, sys.argv[1])
from codegemma.eval import sandbox

program = (
    "import sys\\n"
    "try:\\n"
    "    open(sys.prefix + '/pwned', 'w')\\n"
    "except OSError as exc:\\n"
    "    print('write denied', type(exc).__name__)\\n"
    "print(sys.prefix)\\n"
)
ran = sandbox.run([sys.executable, "-I", "main.py"], files={"main.py": program}, timeout=10)
forked = sandbox.run_python({"main.py": "import sys; print(sys.version_info[0])"})
print(json.dumps([[r.status, r.stdout, r.stderr] for r in (ran, forked)]))
"""


@pytest.mark.skipif("mountns" not in LAYERS, reason="the private /tmp needs a mount namespace")
def test_an_interpreter_in_a_virtualenv_under_tmp_runs_programs():
    """The private tmpfs over /tmp would hide a virtualenv there, and its `python` with it: the
    run puts the interpreter's tree back, read-only."""
    import json
    import subprocess
    import venv

    env_dir = Path(tempfile.mkdtemp(prefix="codegemma-venv-", dir="/tmp"))
    os.chmod(env_dir, 0o755)  # as `python -m venv` leaves it
    try:
        venv.create(env_dir, system_site_packages=True, symlinks=True)
        out = subprocess.run([str(env_dir / "bin" / "python"), "-c", _FROM_A_VIRTUALENV,
                              str(Path(__file__).resolve().parents[2])], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        ran, forked = json.loads(out.stdout.splitlines()[-1])
        assert ran[0] == "ok", ran[2]
        denied, prefix = ran[1].splitlines()
        assert denied.startswith("write denied") and prefix == str(env_dir)
        assert not (env_dir / "pwned").exists()
        assert forked[:2] == ["ok", "3\n"], forked[2]
    finally:
        shutil.rmtree(env_dir, ignore_errors=True)


_WRITE_THE_VICTIM = """
import sys
sys.path.insert(0, sys.argv[1])
from codegemma.eval import sandbox

program = (
    "try:\\n"
    f"    open({sys.argv[2]!r}, 'w').write('pwned')\\n"
    "except OSError as exc:\\n"
    "    print('denied', exc.errno)\\n"
    "open('mine.txt', 'w').write('mine')\\n"
    "print(open('mine.txt').read())\\n"
)
for result in (sandbox.run([sys.executable, "-I", "main.py"], files={"main.py": program}),
               sandbox.run_python({"main.py": program})):
    print(result.status, result.stdout.split(), sorted(result.isolation), result.stderr[-500:])
"""


NOBODY = 65534


def _become_nobody():
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _victim(owner: int) -> Path:
    """A file anyone may write, in a directory outside the private tmp dirs."""
    if not os.access("/run", os.W_OK):
        pytest.skip("no writable /run to hold a file outside the private tmp dirs")
    directory = Path(tempfile.mkdtemp(prefix="codegemma-victim-", dir="/run"))
    os.chmod(directory, 0o755)
    victim = directory / "precious.txt"
    victim.write_text("keep me")
    os.chmod(victim, 0o666)
    os.chown(victim, owner, -1)
    return victim


def _as_user(user: str) -> tuple[list[str], object]:
    """The interpreter and preexec_fn that run a script as `user`: "this" process's user, or an
    ordinary one (nobody), whose runs have user namespaces and no uid of their own."""
    if user == "this":
        return [sys.executable], None
    if os.geteuid() != 0 or not os.access("/usr/bin/python3", os.X_OK):
        pytest.skip("becoming an ordinary user needs root and an interpreter outside root's home")
    if sandbox._unreadable_root(str(Path(__file__).resolve().parents[2])) is not None:
        pytest.skip("the checkout is not readable by other users")
    return ["/usr/bin/python3"], _become_nobody


@pytest.mark.skipif("rofs" not in LAYERS, reason="a read-only file system needs mount_setattr (Linux 5.12)")
@pytest.mark.parametrize("user", ["this", "ordinary"])
def test_the_file_system_is_read_only_outside_its_directory(user):
    """A file the program's uid may write (a world-writable one; as an ordinary user, that user's
    own) stays as it is: everything but the working directory and the private tmpfs is mounted
    read-only. An ordinary user's runs (user namespaces, no uid of their own) have only this."""
    import subprocess

    argv, preexec = _as_user(user)
    victim = _victim(NOBODY if user == "ordinary" else os.getuid())
    try:
        out = subprocess.run([*argv, "-c", _WRITE_THE_VICTIM, str(Path(__file__).resolve().parents[2]), str(victim)],
                             capture_output=True, text=True, timeout=120, preexec_fn=preexec,
                             env={"PATH": sandbox.DEFAULT_PATH, "HOME": "/nonexistent"}, cwd="/")  # no home to hide
        assert out.returncode == 0, out.stderr
        for line in out.stdout.splitlines():
            assert line.startswith("ok ['denied', '30', 'mine'] "), line  # 30: EROFS
            assert "'rofs'" in line and ("'userns'" in line) == (user == "ordinary"), line
        assert len(out.stdout.splitlines()) == 2
        assert victim.read_text() == "keep me"
    finally:
        shutil.rmtree(victim.parent)


_READ_THE_HOME = """
import sys
sys.path.insert(0, sys.argv[1])
from codegemma.eval import sandbox

program = (
    "for path in " + repr(sys.argv[2:4]) + ":\\n"
    "    try:\\n"
    "        print(open(path).read())\\n"
    "    except OSError as exc:\\n"
    "        print('denied', exc.errno)\\n"
)
tools = sys.argv[4]
for result in (sandbox.run([sys.executable, "-I", "main.py"], files={"main.py": program}, expose=(tools,)),
               sandbox.run_python({"main.py": program})):
    print(result.status, result.stdout.split(), sorted(result.isolation), result.stderr[-500:])
"""


@pytest.mark.skipif("mountns" not in LAYERS, reason="hiding the home directories needs a mount namespace")
@pytest.mark.parametrize("user", ["this", "ordinary"])
def test_the_home_directory_is_hidden_but_what_a_run_exposes(user):
    """A file in the user's home that the program's uid could read (any file of their own, for an
    ordinary user) is not there for the program; an install tree in the home that a run exposes is."""
    import subprocess

    argv, preexec = _as_user(user)
    owner = NOBODY if user == "ordinary" else os.getuid()
    if not os.access("/run", os.W_OK):
        pytest.skip("no writable /run to hold a home outside the private tmp dirs")
    home = Path(tempfile.mkdtemp(prefix="codegemma-home-", dir="/run"))
    try:
        (home / "tools").mkdir()
        (home / "secret.txt").write_text("secret")
        (home / "tools" / "tool.txt").write_text("tool")
        for path in (home, home / "tools", home / "secret.txt", home / "tools" / "tool.txt"):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
            os.chown(path, owner, -1)
        out = subprocess.run([*argv, "-c", _READ_THE_HOME, str(Path(__file__).resolve().parents[2]),
                              str(home / "secret.txt"), str(home / "tools" / "tool.txt"), str(home / "tools")],
                             capture_output=True, text=True, timeout=120, preexec_fn=preexec,
                             env={"PATH": sandbox.DEFAULT_PATH, "HOME": str(home)}, cwd="/")
        assert out.returncode == 0, out.stderr
        ran, forked = out.stdout.splitlines()
        assert ran.startswith("ok ['denied', '2', 'tool'] "), ran  # 2: ENOENT, an empty tmpfs
        assert forked.startswith("ok ['denied', '2', 'denied', '2'] "), forked
    finally:
        shutil.rmtree(home)


_FROM_A_LARGE_PROCESS = """
import json, mmap, sys
sys.path.insert(0, sys.argv[1])
# 8 GiB of address space, reserved without memory behind it (PROT_NONE), as CUDA reserves it
reserved = mmap.mmap(-1, 8 << 30, flags=mmap.MAP_PRIVATE | getattr(mmap, "MAP_NORESERVE", 0), prot=0)
from codegemma.eval import sandbox

limits = sandbox.Limits(address_space_mb=512)
small = sandbox.run([sys.executable, "-I", "-c", "print('ran')"], limits=limits)
big = sandbox.run([sys.executable, "-I", "-c", "b = bytearray(1 << 30)"], limits=limits)
print(json.dumps({"layers": sorted(sandbox.available_layers()), "small": [small.status, small.stdout],
                  "big": [big.status, big.stderr[-200:]]}))
"""


def test_a_process_with_more_address_space_than_the_limit_runs_programs_under_it():
    """A forked child holds its parent's address space until it execs; a CUDA process's is larger
    than any program's limit, and a child of it limited before exec crashed there (in setgroups,
    with CUDA's torch loaded; a bare reservation as here does not crash it). Runs are forked from a
    small server instead: the layers are granted, and the limit binds the program."""
    import json
    import subprocess

    out = subprocess.run([sys.executable, "-c", _FROM_A_LARGE_PROCESS, str(Path(__file__).resolve().parents[2])],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.splitlines()[-1])
    assert set(report["layers"]) == set(sandbox.available_layers())
    assert report["small"] == ["ok", "ran\n"]
    assert report["big"][0] == "error" and "MemoryError" in report["big"][1]


def test_runs_are_set_up_in_a_fork_server_not_in_a_fork_of_the_caller(monkeypatch):
    """Setting up the layers runs Python code between fork and exec. In a fork of the caller, which
    may have threads (thread pools, torch's), that can deadlock or crash on a lock another thread
    held; every run is set up by a single-threaded server instead, so the caller's copy of the
    setup is never called."""
    def in_the_caller(plan):
        raise AssertionError("sandbox set up in a fork of the calling process")

    monkeypatch.setattr(sandbox, "_child_setup", in_the_caller)
    result = sandbox.run(["sh", "-c", "echo ran"])
    assert (result.status, result.stdout) == ("ok", "ran\n")
    assert set(result.isolation) == set(LAYERS)


def test_a_program_that_cannot_be_executed_is_an_error_that_says_so():
    result = sandbox.run(["./main.txt"], files={"main.txt": "not a program"})  # no execute bit
    assert result.status == "error" and result.returncode == 127
    assert "cannot run" in result.stderr and "main.txt" in result.stderr


def test_files_the_program_writes_in_its_directory_are_removed(host_stays_clean):
    result = python("open('big.bin', 'wb').write(b'0' * 1000); import os; print(os.getcwd())")
    assert result.status == "ok"
    assert not Path(result.stdout.strip()).exists()


def test_file_size_limit_stops_a_disk_filler():
    limits = sandbox.Limits(file_size_mb=1)
    result = python("open('big.bin', 'wb').write(b'0' * (4 << 20))", limits=limits)
    assert result.status in ("error", "killed")


def test_missing_program_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="not found"):
        sandbox.run(["no-such-program-xyz"])


def test_busy_loop_is_stopped_by_the_cpu_limit(host_stays_clean):
    result = python("while True:\n    pass", timeout=20, limits=sandbox.Limits(cpu_seconds=1))
    assert result.status == "killed" and "CPU time limit" in result.reason


def test_python_fork_server_runs_like_a_fresh_interpreter(host_stays_clean):
    result = sandbox.run_python({"main.py": textwrap.dedent(f"""
        import os, sys
        sys.argv.append("{host_stays_clean}")
        print(__name__, sys.argv[0], os.getcwd() == os.environ["HOME"], "codegemma" in sys.modules)
        sys.exit(5)
        """)})
    assert result.status == "error" and result.returncode == 5
    assert result.stdout == "__main__ main.py True False\n"
    assert set(result.isolation) == set(LAYERS)


def test_python_fork_server_contains_hostile_programs(host_stays_clean):
    bomb = sandbox.run_python({"main.py": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n"
                                          "        pass\n"}, timeout=2)
    assert bomb.status in ("timeout", "killed")
    escape = sandbox.run_python({"main.py": textwrap.dedent(f"""
        import subprocess, sys
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "{host_stays_clean}"],
                         start_new_session=True)
        raise RuntimeError("after spawning")
        """)})
    assert escape.status == "error" and "RuntimeError: after spawning" in escape.stderr
    spin = sandbox.run_python({"main.py": "while True:\n    pass\n"}, timeout=20, limits=sandbox.Limits(cpu_seconds=1))
    assert spin.status == "killed" and "CPU time limit" in spin.reason


def test_python_runs_do_not_see_each_others_temporary_files(host_stays_clean):
    first = sandbox.run_python({"main.py": f"open('/tmp/{host_stays_clean}', 'w').write('x')"})
    second = sandbox.run_python({"main.py": f"import os; print(os.path.exists('/tmp/{host_stays_clean}'))"})
    assert first.status == "ok" and second.stdout == "False\n"
    assert not Path("/tmp", host_stays_clean).exists()


def test_base_directory_of_a_dead_process_is_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = tmp_path / f"{sandbox.BASE_PREFIX}999999999-abc"
    (dead / "codegemma-sandbox-left").mkdir(parents=True)
    alive = tmp_path / f"{sandbox.BASE_PREFIX}{os.getpid()}-other"
    alive.mkdir()
    base = sandbox.workdir_base()
    assert not dead.exists() and alive.exists() and Path(base).parent == tmp_path
