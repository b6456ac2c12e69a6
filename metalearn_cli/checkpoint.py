"""Checkpoints: one self-describing dict per file, written atomically, read with ``weights_only``.

Like nanoGPT's checkpoint dict, a file holds everything needed to rebuild and continue a run:
the resolved config, a format version, the strategy's state (the meta-knowledge: model and any
learned strategy parameters), optimizer and schedule, step, best validation and every RNG state.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metalearn_cli.errors import CheckpointError

FORMAT = "metalearn-checkpoint"
VERSION = 1


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (plus format and version) to ``path`` atomically (see :func:`atomic_save`)."""
    atomic_save(path, {"format": FORMAT, "version": VERSION, **state}, "checkpoint",
                "free disk space or choose another hydra.run.dir")


def atomic_save(path: Path, payload: dict[str, Any], what: str, remedy: str) -> None:
    """``torch.save`` via a temp file, fsync and ``os.replace``: ``path`` is whole or untouched.

    A failure is a one-line :class:`CheckpointError` naming ``what`` was written and ending in
    ``remedy``; no temp file is left.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes files private; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except OSError as exc:
        kept = "the previous one is kept" if path.exists() else "no earlier file exists"
        raise CheckpointError(f"could not write {what} {path} ({exc.strerror or exc}); {kept}; {remedy}") from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def remove_stale_temporaries(directory: Path) -> None:
    """Temp files left by a process killed mid-write (the checkpoints themselves are never partial)."""
    for stale in directory.glob(".*.pt.*.tmp"):
        stale.unlink(missing_ok=True)


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Read a checkpoint safely (a file, or a run dir's best.pt); any problem is a one-line :class:`CheckpointError`."""
    path = resolve_checkpoint(Path(path))
    return check_checkpoint(read_state(path), path)


def resolve_checkpoint(path: Path) -> Path:
    """A run dir names its checkpoints/best.pt (else last.pt); a file names itself."""
    if path.is_dir():
        for candidate in (path / "checkpoints" / "best.pt", path / "best.pt", path / "checkpoints" / "last.pt"):
            if candidate.is_file():
                path = candidate
                break
        else:
            raise CheckpointError(f"{path} holds no checkpoints/best.pt or last.pt; pass a checkpoint file or a run dir")
    return path


def read_state(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True``: nothing in the file is executed."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass checkpoints/best.pt or last.pt of a run dir")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types on a damaged or foreign file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise CheckpointError(
            f"{path} is not a readable metalearn checkpoint (corrupt, truncated or unsafe: {reason[:160]}); "
            "use another checkpoint, e.g. checkpoints/last.pt or best.pt of the run"
        ) from exc
    return state


def check_checkpoint(state: Any, path: Path) -> dict[str, Any]:
    """The header, version and required keys of a loaded checkpoint."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a metalearn checkpoint (no '{FORMAT}' header); pass a best.pt/last.pt written by metalearn train")
    if int(state.get("version", -1)) > VERSION:
        raise CheckpointError(f"{path} has format version {state['version']}, newer than this metalearn ({VERSION}); upgrade metalearn")
    for key in ("config", "model", "step"):
        if key not in state:
            raise CheckpointError(f"{path} lacks '{key}'; the file is incomplete, use another checkpoint")
    return state



def capture_rng() -> dict[str, Any]:
    """Every RNG a run touches, in types that ``weights_only`` loading accepts."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }


def restore_rng(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    n = rng["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = rng["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
