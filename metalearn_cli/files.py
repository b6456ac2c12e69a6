"""The ground floor of files: a file is written whole or left untouched, and read back as empty if damaged.

Atomic writes (temp file in the same folder, fsync, ``os.replace``) for checkpoints, caches, JSON
and metrics alike. Imports nothing of the project but its errors, so every layer (data caches,
checkpoints, the run dir) can write through it without import circles.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import yaml

from metalearn_cli.errors import WriteError


def atomic_write(path: Path, write: Callable[[BinaryIO], None], what: str, remedy: str) -> None:
    """Write ``path`` through ``write(file)`` via a temp file, fsync and ``os.replace``.

    A failure is one line naming ``what`` was written and ending in ``remedy``; no temp file is left.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes files private; these are ordinary files
        os.replace(tmp, path)
    except OSError as exc:
        kept = "the previous one is kept" if path.exists() else "no earlier file exists"
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):  # not a full disk: the folder refuses writes
            elsewhere = remedy.split(" or ", 1)[1] if remedy.startswith("free disk space or ") else ""
            remedy = f"{path.parent} is not writable: make it writable" + (f", or {elsewhere}" if elsewhere else "")
        raise WriteError(f"could not write {what} {path} ({exc.strerror or exc}); {kept}; {remedy}") from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def remove_stale_temporaries(directory: Path) -> None:
    """Temp files left by a process killed mid-write (the files themselves are never partial)."""
    for stale in Path(directory).glob(".*.tmp"):
        stale.unlink(missing_ok=True)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    text = (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode("utf-8")
    atomic_write(path, lambda f: f.write(text), Path(path).name, "free disk space or choose another hydra.run.dir")


def save_torch(path: Path, payload: dict[str, Any], what: str, remedy: str) -> None:
    """``torch.save`` atomically: ``path`` is whole or untouched."""
    import torch  # only when a tensor file is written: the CLI's usage answers without torch

    atomic_write(path, lambda f: torch.save(payload, f), what, remedy)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file; a missing, damaged or other file reads as empty."""
    try:
        value = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return {}
    return value if isinstance(value, dict) else {}


def read_yaml(path: Path, default: Any) -> Any:
    """A YAML file of ``default``'s type; a missing, damaged or other file reads as ``default``."""
    try:
        value = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else default
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        return default
    return value if isinstance(value, type(default)) else default
