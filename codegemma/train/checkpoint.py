"""Training checkpoints: everything needed to continue a run bit-for-bit, written atomically.

A checkpoint is one file `checkpoints/step_XXXXXXXX.pt` holding the model, optimizer and scheduler
states, the data readers' positions and the random-number generator states of every process, plus
the recipe and model config. `checkpoints/latest` names the newest complete one; both are written
to a temporary name and renamed, so a run killed at any instant leaves either the previous or the
new checkpoint, never half of one.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

from codegemma.errors import CodegemmaError

# at least 8 digits: from step 100,000,000 on the name grows a digit, and is still a checkpoint
_NAME = re.compile(r"^step_(\d{8,})\.pt$")
# what a save killed before its rename leaves (`_atomic_write`'s temporary names)
_TEMPORARY = re.compile(r"^\.(step_\d{8,}\.pt|latest)\..*\.tmp$")


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
    """Write `state` as the checkpoint of `step`, point `latest` at it, and prune old ones.

    `keep` counts this checkpoint and the newest ones before it; checkpoints of later steps (a run
    continued from an earlier checkpoint than its newest) are left alone, and the one just written is
    never pruned, so `latest` always names a file. A write the system refuses (a full disk, a quota)
    is a CodegemmaError that names the file and the newest complete checkpoint, which is intact.
    """
    ckpt_dir = Path(ckpt_dir)
    path = ckpt_dir / f"step_{step:08d}.pt"
    _remove_temporaries(ckpt_dir)
    try:
        _atomic_torch_save(state, path)
        _atomic_text(path.name + "\n", ckpt_dir / "latest")
    except Exception as exc:
        reason = _os_error(exc)
        if reason is None:  # not the system refusing the write: a bug, with its traceback
            raise
        newest = latest(ckpt_dir)
        kept = f"the newest complete checkpoint is still {newest}" if newest else "no checkpoint was written yet"
        raise CodegemmaError(f"{path}: cannot write the checkpoint ({reason.strerror or reason}); {kept}") from None
    if keep > 0:
        earlier = [s for s in list_steps(ckpt_dir) if s < step]
        for old in earlier[:max(len(earlier) - (keep - 1), 0)]:
            _path(ckpt_dir, old).unlink(missing_ok=True)
    return path


def _path(ckpt_dir: Path, step: int) -> Path:
    return ckpt_dir / f"step_{step:08d}.pt"


def _remove_temporaries(ckpt_dir: Path) -> None:
    """A save killed outright (SIGKILL, a second SIGTERM, a node lost) leaves its temporary file, as
    large as a checkpoint; a preemptible job would collect one per preemption. Only the run holding
    the out_dir lock writes here, so any temporary found is a dead save's."""
    if ckpt_dir.is_dir():
        for p in ckpt_dir.iterdir():
            if _TEMPORARY.match(p.name):
                p.unlink(missing_ok=True)


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind `exc`: torch.save reports a failed write as a RuntimeError raised while
    it handles the OSError ("unexpected pos ..."), which says nothing of the disk."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def list_steps(ckpt_dir: str | Path) -> list[int]:
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    return sorted(int(m.group(1)) for p in ckpt_dir.iterdir() if (m := _NAME.match(p.name)))


def latest(ckpt_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, or None if the run has none yet."""
    ckpt_dir = Path(ckpt_dir)
    pointer = ckpt_dir / "latest"
    if pointer.is_file():
        path = ckpt_dir / pointer.read_text().strip()
        if path.is_file():
            return path
    steps = list_steps(ckpt_dir)
    return _path(ckpt_dir, steps[-1]) if steps else None


def load(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CodegemmaError(f"checkpoint not found: {path}")
    try:
        # the file holds RNG and data-reader states (numpy arrays, tuples), so it is not weights-only
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file
        # one line: torch's messages run to several sentences and lines
        reason = " ".join(str(exc).split()).split(". ")[0].rstrip(".")
        earlier = [s for s in list_steps(path.parent) if _path(path.parent, s) != path]
        hint = (f"; remove it to continue from {_path(path.parent, earlier[-1]).name}"
                if _NAME.match(path.name) and earlier else "")
        raise CodegemmaError(f"{path}: not a readable training checkpoint ({reason}){hint}") from None
