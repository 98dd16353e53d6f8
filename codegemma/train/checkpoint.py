"""Training checkpoints: everything needed to continue a run bit-for-bit, written atomically.

A checkpoint holds the model, optimizer and scheduler states, the data readers' positions and the
random-number generator states of every process, plus the recipe and model config, in one of two
forms:

- a file, `checkpoints/step_XXXXXXXX.pt`, written by the main process from the gathered state;
- a directory, `checkpoints/step_XXXXXXXX/` (sharded, `torch.distributed.checkpoint`): each process
  writes its own shards of the weights and the optimizer state (`__R_0.distcp`, with `.metadata`
  saying where every piece lies), and the main process the rest (`state.pt`). A 7B FSDP run then
  never gathers ~100 GB of training state into one process, and each process reads back only its
  part. Readable in one process too (`load`), for export and evaluation.

`checkpoints/latest` names the newest complete one. Both forms are written under a temporary name
and renamed, so a run killed at any instant leaves either the previous or the new checkpoint,
never half of one.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from codegemma.errors import CodegemmaError
from codegemma.train import distributed

# at least 8 digits: from step 100,000,000 on the name grows a digit, and is still a checkpoint.
# A file (`.pt`) or a sharded checkpoint's directory (no suffix).
_NAME = re.compile(r"^step_(\d{8,})(\.pt)?$")
# what a save killed before its rename leaves (`_atomic_write`'s temporary files, `save_sharded`'s
# directories)
_TEMPORARY = re.compile(r"^\.(step_\d{8,}(\.pt)?|latest)\..*\.tmp$")
# a sharded checkpoint's own part: everything but the tensors that each process writes
_STATE = "state.pt"


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_write(path: Path, write) -> None:
    """Call `write(f)` on a temporary binary file beside `path`, then rename it over `path`.

    On any failure (the write, the fsync, the rename, an interrupt) the temporary file is removed
    and the error re-raised: `path` keeps its old content, and a run that retries the save does not
    leave a trail of half-written siblings in its checkpoint directory.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a run's directory is shared like its other outputs
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _atomic_torch_save(obj, path: Path) -> None:
    _atomic_write(path, lambda f: torch.save(obj, f))


def _atomic_text(text: str, path: Path) -> None:
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def save(ckpt_dir: str | Path, step: int, state: dict, keep: int = 2) -> Path:
    """Write `state` as the checkpoint file of `step`, point `latest` at it, and prune old ones.

    `keep` counts this checkpoint and the newest ones before it; checkpoints of later steps (a run
    continued from an earlier checkpoint than its newest) are left alone, and the one just written is
    never pruned, so `latest` always names a checkpoint. A write the system refuses (a full disk, a
    quota) is a CodegemmaError that names the file and the newest complete checkpoint, which is intact.
    """
    ckpt_dir = Path(ckpt_dir)
    path = ckpt_dir / f"step_{step:08d}.pt"
    _remove_temporaries(ckpt_dir)
    try:
        _atomic_torch_save(state, path)
    except Exception as exc:
        raise _write_error(exc, path) from None
    _publish(path, step, keep)
    return path


def save_sharded(ckpt_dir: str | Path, step: int, tensors: dict, state: dict | None, env, keep: int = 2) -> Path:
    """Write the checkpoint of `step` as a directory: every process its shards of `tensors` (the
    model's and the optimizer's state dicts, as `get_state_dict` gives them), the main process
    `state` (everything else; None in the others). Collective: every process calls it.

    The shards go into a temporary directory that the main process renames once all of them and
    `state` are written; then `latest` and pruning as in `save`. The processes coordinate on the
    file group (`distributed.wait_for_main`), which allows a slow disk an hour where a training
    collective allows 10 minutes."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    ckpt_dir = Path(ckpt_dir)
    path = ckpt_dir / f"step_{step:08d}"
    partial = ckpt_dir / f".{path.name}.sharded.tmp"
    if env.is_main:
        _remove_temporaries(ckpt_dir)  # a dead save's directory, which this one would write into
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    distributed.wait_for_main(env)
    try:
        with _single_process_is_meant():
            dcp.save(tensors, storage_writer=dcp.FileSystemWriter(partial), process_group=env.file_group,
                     no_dist=not env.distributed)
        if env.is_main:
            _atomic_torch_save(state, partial / _STATE)
    except (Exception, CheckpointException) as exc:  # (not an Exception: a BaseException)
        if env.is_main:  # (a failed shard is reported to every process once all have stopped writing)
            _remove(partial)
        raise _write_error(exc, path) from None
    if env.is_main:
        if path.exists():  # this step saved before, by a run continued from an earlier checkpoint
            old = ckpt_dir / f".{path.name}.replaced.tmp"
            os.replace(path, old)
            os.replace(partial, path)
            shutil.rmtree(old)
        else:
            os.replace(partial, path)
        _publish(path, step, keep)
    distributed.wait_for_main(env)
    return path


def _publish(path: Path, step: int, keep: int) -> None:
    """Point `latest` at the checkpoint just written and prune the ones before it beyond `keep`."""
    ckpt_dir = path.parent
    try:
        _atomic_text(path.name + "\n", ckpt_dir / "latest")
    except Exception as exc:
        raise _write_error(exc, path) from None
    # the same step saved in the other form, by a run continued with another checkpoint.format
    _remove(path.with_suffix("") if path.suffix == ".pt" else path.with_name(path.name + ".pt"))
    if keep > 0:
        earlier = [s for s in list_steps(ckpt_dir) if s < step]
        for old in earlier[:max(len(earlier) - (keep - 1), 0)]:
            _remove(_path(ckpt_dir, old))


def _write_error(exc: BaseException, path: Path) -> BaseException:
    """What a failed save raises: one line naming the checkpoint and the newest intact one when
    the system refused the write (a full disk, a quota); else `exc` itself, a bug, with its
    traceback."""
    reason = _os_error(exc)
    if reason is None:
        return exc
    newest = latest(path.parent)
    kept = f"the newest complete checkpoint is still {newest}" if newest else "no checkpoint was written yet"
    return CodegemmaError(f"{path}: cannot write the checkpoint ({reason.strerror or reason}); {kept}")


def _path(ckpt_dir: Path, step: int) -> Path:
    """The checkpoint of `step`: its file, or its directory if it was saved sharded."""
    file = ckpt_dir / f"step_{step:08d}.pt"
    sharded = ckpt_dir / file.stem
    return sharded if sharded.is_dir() and not file.exists() else file


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def is_sharded(path: str | Path) -> bool:
    """Whether `path` is a sharded checkpoint's directory."""
    path = Path(path)
    return path.is_dir() and (path / _STATE).is_file() and (path / ".metadata").is_file()


def saved_at(path: str | Path) -> int:
    """When the checkpoint at `path` was complete (ns since the epoch): a sharded one's state is its
    last file written."""
    path = Path(path)
    return (path / _STATE if path.is_dir() else path).stat().st_mtime_ns


def _remove_temporaries(ckpt_dir: Path) -> None:
    """A save killed outright (SIGKILL, a second SIGTERM, a node lost) leaves its temporary file or
    directory, as large as a checkpoint; a preemptible job would collect one per preemption. Only
    the run holding the out_dir lock writes here, so any temporary found is a dead save's."""
    if ckpt_dir.is_dir():
        for p in ckpt_dir.iterdir():
            if _TEMPORARY.match(p.name):
                _remove(p)


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind `exc`: torch.save reports a failed write as a RuntimeError raised while
    it handles the OSError ("unexpected pos ..."), which says nothing of the disk; a sharded save
    reports each process's failure in a CheckpointException."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        failures = _failures(exc)
        if failures:
            return next((f for f in map(_os_error, failures) if f is not None), None)
        exc = exc.__cause__ or exc.__context__
    return None


def list_steps(ckpt_dir: str | Path) -> list[int]:
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    return sorted({int(m.group(1)) for p in ckpt_dir.iterdir() if (m := _NAME.match(p.name))})


def latest(ckpt_dir: str | Path) -> Path | None:
    """The newest complete checkpoint (a file or a sharded directory), or None if the run has none yet."""
    ckpt_dir = Path(ckpt_dir)
    pointer = ckpt_dir / "latest"
    if pointer.is_file():
        path = ckpt_dir / pointer.read_text().strip()
        if path.is_file() or is_sharded(path):
            return path
    steps = list_steps(ckpt_dir)
    return _path(ckpt_dir, steps[-1]) if steps else None


def load(path: str | Path) -> dict:
    """A checkpoint's whole state in this process, on the CPU. Of a sharded checkpoint: the model's
    weights gathered whole and everything else but the optimizer state, which only a run resuming
    it reads (`load_shards`), each process its own part."""
    path = Path(path)
    if is_sharded(path):
        state = load_state(path)
        state["model"] = _whole_model(path)
        return state
    if not path.is_file():
        raise CodegemmaError(f"checkpoint not found: {path}")
    return _torch_load(path, path)


def load_state(path: str | Path) -> dict:
    """A sharded checkpoint's state without its tensors (small: read by every process)."""
    path = Path(path)
    return _torch_load(path / _STATE, path)


def load_shards(path: str | Path, tensors: dict, env) -> None:
    """Fill `tensors` (state dicts as `get_state_dict` gives them: this process's shards) from the
    sharded checkpoint at `path`, each process reading its own part. Collective."""
    _read_shards(Path(path), tensors, env.file_group, no_dist=not env.distributed)


def _whole_model(path: Path) -> dict:
    """The model's weights of a sharded checkpoint, assembled whole from every process's shards."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    try:
        entries = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
    except Exception as exc:
        raise CodegemmaError(f"{path}: not a readable sharded checkpoint ({_one_line(exc)})") from None
    model = {key.removeprefix("model."): torch.empty(meta.size, dtype=meta.properties.dtype)
             for key, meta in entries.items() if key.startswith("model.") and isinstance(meta, TensorStorageMetadata)}
    _read_shards(path, {"model": model}, None, no_dist=True)
    return model


def _read_shards(path: Path, tensors: dict, group, no_dist: bool) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        with _single_process_is_meant():
            dcp.load(tensors, storage_reader=dcp.FileSystemReader(path), process_group=group, no_dist=no_dist)
    except (Exception, CheckpointException) as exc:  # a missing or damaged shard file
        raise CodegemmaError(f"{path}: not a readable sharded checkpoint ({_one_line(exc)})") from None


@contextmanager
def _single_process_is_meant():
    """torch.distributed.checkpoint warns on every save and load in one process ("assuming the
    intent is to save in a single process"), which is what `no_dist` asked for."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _torch_load(file: Path, path: Path) -> dict:
    try:
        # the file holds RNG and data-reader states (numpy arrays, tuples), so it is not weights-only
        return torch.load(file, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file
        earlier = [s for s in list_steps(path.parent) if _path(path.parent, s) != path]
        hint = (f"; remove it to continue from {_path(path.parent, earlier[-1]).name}"
                if _NAME.match(path.name) and earlier else "")
        raise CodegemmaError(f"{path}: not a readable training checkpoint ({_one_line(exc)}){hint}") from None


def _one_line(exc: BaseException) -> str:
    """The first sentence of an error: torch's messages run to several sentences and lines, and a
    sharded checkpoint's carry every failed process's traceback (the first process's error is
    said)."""
    failures = _failures(exc)
    if failures:
        exc = failures[0]
    return " ".join(str(exc).split()).split(". ")[0].rstrip(".")


def _failures(exc: BaseException) -> list[BaseException]:
    """The errors of the processes whose part of a sharded save or load failed, in rank order
    (torch.distributed.checkpoint's CheckpointException: {rank: (exception, stack)}); [] for any
    other error."""
    failures = getattr(exc, "failures", None) or {}
    return [f[0] if isinstance(f, tuple) else f for _, f in sorted(failures.items())]
