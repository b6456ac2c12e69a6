"""Checkpoint and export files: writing them, and the one way to read them back.

A training checkpoint (``best.pt`` / ``last.pt``) holds everything needed to continue a run, as
nanoGPT's checkpoint dict does: the resolved config, a format version, the strategy's state (the
meta-knowledge: model and any learned strategy parameters), optimizer and schedule, step, best
validation and every RNG state. An export holds the meta-knowledge alone. Both are read with
``weights_only=True`` (nothing in a file is executed), through one header check.
"""

from __future__ import annotations

import random
import warnings
import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from metalearn_cli.console import shell_override
from metalearn_cli.errors import CheckpointError
from metalearn_cli.files import save_torch
from metalearn_cli.rundir import resolve_checkpoint

FORMAT = "metalearn-checkpoint"
EXPORT_FORMAT = "metalearn-meta-knowledge"
VERSION = 1  # of both formats
REQUIRED = {FORMAT: ("config", "model", "step"), EXPORT_FORMAT: ("config", "model", "image_format")}


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a training checkpoint (``state`` plus format and version) atomically."""
    save_torch(path, {"format": FORMAT, "version": VERSION, **state}, "checkpoint",
               "free disk space or choose another hydra.run.dir")


def read_state(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True``: nothing in the file is executed."""
    if not path.is_file():
        what = "does not exist" if not path.exists() else "is not a file" if not path.is_dir() else "is a folder"
        raise CheckpointError(f"checkpoint {path} {what}; pass checkpoints/best.pt or last.pt of a run dir")
    other = {"best.pt": "use the run's checkpoints/last.pt", "last.pt": f"use the run's checkpoints/best.pt (to train on: {shell_override('resume', path.parent / 'best.pt')})"}.get(
        path.name, "use another checkpoint, e.g. checkpoints/last.pt or best.pt of the run")
    changed = _changed_entry(path)
    if changed:
        raise CheckpointError(f"{path} is damaged: its entry {changed} fails its CRC-32 check, so bytes changed after "
                              f"it was written (a bad disk, copy or edit); {other}")
    try:
        with warnings.catch_warnings():  # a refused file is one line of ours, not torch's advice to file an issue
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types on a damaged or foreign file
        raise CheckpointError(f"{path} is not a readable metalearn checkpoint ({_damage(path, exc)}); {other}") from exc


def _changed_entry(path: Path) -> Optional[str]:
    """The first entry of a torch.save zip archive whose CRC-32 does not match its bytes. torch.load does not
    check them, so a changed byte inside a tensor would load as a wrong weight without a word."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return None  # not a whole zip archive: torch.load's refusal says what it is (_damage)


LEGACY_MAGIC = b"\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"  # torch.save before 1.6 pickles this number first


def _plain_pickle(head: bytes) -> bool:
    """A pickle (protocol 2-5) that does not open with the number torch.save's legacy format pickles first
    (after protocol 4's frame header, where there is one)."""
    if len(head) < 3 or head[0] != 0x80 or not 2 <= head[1] <= 5:
        return False
    body = head[11:] if head[2:3] == b"\x95" else head[2:]  # FRAME: opcode + 8 length bytes
    return not body.startswith(LEGACY_MAGIC)


def _damage(path: Path, exc: Exception) -> str:
    """What is wrong with a file ``torch.load`` refused, in words a user can act on: torch's own
    messages for a damaged file are internal (``KeyError: '101'``, ``pop from empty list``)."""
    message = str(exc).strip()
    try:
        with open(path, "rb") as f:
            head = f.read(32)
    except OSError as err:
        return f"it cannot be read: {err.strerror or err}"
    if not head:
        return "the file is empty: a copy or download that did not finish?"
    if not head.startswith(b"PK\x03\x04") and not head.startswith(b"\x80"):  # torch.save: a zip archive (a pickle before 1.6)
        return "it is not a PyTorch file (torch.save writes a zip archive; this one is something else)"
    if _plain_pickle(head):
        return "it is a plain Python pickle, not a torch.save file (pickle.dump wrote it?); pass a best.pt or last.pt of a run"
    if "weights_only" in message or "Weights only load failed" in message:
        return "it holds pickled objects other than tensors, which are never executed"
    if "central directory" in message or (head.startswith(b"PK\x03\x04") and not zipfile.is_zipfile(path)):
        return "it is truncated: the end of its zip archive is missing (a copy or save that did not finish)"
    first = (message.splitlines()[0] if message else exc.__class__.__name__).split(". ")[0]  # not torch's advice after it
    return f"it is damaged inside: {exc.__class__.__name__}: {first[:120]}"


def check_header(state: Any, path: Path, formats: tuple[str, ...] = (FORMAT,)) -> dict[str, Any]:
    """The format, version and required keys of a loaded file; one line for whatever is wrong."""
    fmt = state.get("format") if isinstance(state, dict) else None
    if fmt not in formats:
        if formats == (FORMAT,) and fmt == EXPORT_FORMAT:  # an export where training state is needed (resume=, last.pt)
            raise CheckpointError(f"{path} is a metalearn export (meta-knowledge alone, no optimizer or step to go on "
                                  "from); pass a best.pt/last.pt written by metalearn train (an export starts a new run: "
                                  "trainer.init_from=FILE)")
        if formats == (FORMAT,):
            raise CheckpointError(f"{path} is not a metalearn checkpoint (no '{FORMAT}' header); "
                                  "pass a best.pt/last.pt written by metalearn train")
        raise CheckpointError(f"{path} is neither a metalearn checkpoint nor an exported meta-knowledge file; "
                              "pass a best.pt/last.pt of a run or a file written by metalearn export")
    try:
        version = int(state.get("version", -1))
    except (TypeError, ValueError):
        raise CheckpointError(f"{path} has an unreadable format version {state.get('version')!r}; the file is foreign "
                              "or damaged, use another checkpoint") from None
    if version > VERSION:
        raise CheckpointError(f"{path} has format version {version}, newer than this metalearn ({VERSION}); upgrade metalearn")
    for key in REQUIRED[fmt]:
        if key not in state:
            raise CheckpointError(f"{path} lacks '{key}'; the file is incomplete, use another checkpoint")
    if not isinstance(state.get("step", -1), int) or not isinstance(state["config"], dict):
        raise CheckpointError(f"{path} has a malformed step or config; the file is foreign or damaged, use another checkpoint")
    return state


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """A training checkpoint (a file, or a run dir's best.pt), header checked."""
    path = resolve_checkpoint(path)
    return check_header(read_state(path), path)


def read_meta_knowledge(path: Path | str) -> dict[str, Any]:
    """A checkpoint or an export (or a run dir) as ``{config, model, image_format, step, source}``:
    what eval, predict, ``load`` and ``trainer.init_from`` need, whichever file they are given."""
    path = resolve_checkpoint(path)
    return meta_knowledge_of(read_state(path), path)


def meta_knowledge_of(state: Any, path: Path | str) -> dict[str, Any]:
    """A checkpoint's or an export's contents (read from ``path``, or given as they were read) as
    :func:`read_meta_knowledge` gives them, every part checked."""
    from metalearn_cli.data import image_format  # the data sets load only when a file is read
    from metalearn_cli.params.datasets import ImageFormat

    if not (isinstance(state, dict) and "format" not in state and {"config", "model", "image_format"} <= state.keys()):
        state = check_header(state, Path(path), (FORMAT, EXPORT_FORMAT))  # else: this function's own output, again
    step = state.get("step", -1)
    fmt = state.get("image_format")
    try:
        fmt = image_format(state["config"]["dataset"]).to_dict() if fmt is None else ImageFormat.from_dict(fmt).to_dict()
    except Exception as exc:  # a foreign config or a damaged record: any failure means the same
        raise CheckpointError(f"{path}: its image format or its config's data set is unusable ({exc}); the file is "
                              "foreign or damaged") from exc
    mean = state.get("pixel_mean")
    return {"config": state["config"], "model": state["model"], "image_format": fmt, "step": step, "source": str(path),
            "pixel_mean": float(mean) if isinstance(mean, (int, float)) else None,
            **({"unfinished": state["unfinished"]} if isinstance(state.get("unfinished"), str) else {})}  # an export's


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


def load_states(path: Path, state: dict[str, Any], parts: dict[str, Any], what: str) -> None:
    """``parts[key].load_state_dict(state[key])`` for each part (optimizer, schedule, head, ...);
    one line naming the file when one does not fit."""
    try:
        for key, part in parts.items():
            part.load_state_dict(state[key])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{path} does not match this run's {what}: {str(exc).splitlines()[0][:160]}") from exc
