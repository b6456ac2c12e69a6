"""The run directory: its layout, every write into it, and reading a finished run back.

Owns: atomic file writes (temp file, fsync, ``os.replace``: a file is whole or untouched, for
checkpoints, caches and JSON alike), ``status.json`` / ``results.json`` / ``error.txt``, which
checkpoint a path means (a run dir -> its ``best.pt``, else ``last.pt``; resume -> ``last.pt``),
and :func:`read_run`, the one parser of a run dir used by ``metalearn report`` and
``scripts/reproduce.py``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional

import yaml

from metalearn_cli.errors import CheckpointError, MetalearnError, WriteError

CHECKPOINTS = "checkpoints"
STATUS, RESULTS, ERROR, METRICS = "status.json", "results.json", "error.txt", "metrics.jsonl"


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


def write_status(run_dir: Path, status: str, **extra: Any) -> None:
    """``status.json``: running | completed | interrupted | failed, for people and sweep tools."""
    write_json(Path(run_dir) / STATUS, {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra})


def write_results(run_dir: Path, results: dict[str, Any]) -> None:
    write_json(Path(run_dir) / RESULTS, results)


def record_failure(run_dir: Path, message: str, details: Optional[str] = None) -> None:
    """``error.txt`` (the message, or a traceback) and a ``failed`` status."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ERROR).write_text((details or message).rstrip("\n") + "\n", encoding="utf-8")
    write_status(run_dir, "failed", error=message)


# ----------------------------------------------------------------------------- which checkpoint
def resolve_checkpoint(path: Path | str) -> Path:
    """A run dir names its ``checkpoints/best.pt`` (else ``last.pt``); a file names itself."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / CHECKPOINTS / "best.pt", path / "best.pt", path / CHECKPOINTS / "last.pt", path / "last.pt"):
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"{path} holds no checkpoints/best.pt or last.pt; pass a checkpoint file or a run dir")
    return path


def resume_checkpoint(resume: Optional[str], run_dir: Path) -> Optional[Path]:
    """The checkpoint ``resume=`` continues: ``true`` -> this run's ``last.pt``; a run dir -> its ``last.pt``."""
    if resume is None or str(resume).lower() in ("false", "none", "null", ""):
        return None
    if str(resume).lower() == "true":
        path = Path(run_dir) / CHECKPOINTS / "last.pt"
        if not path.is_file():
            raise CheckpointError(f"resume=true but {path} does not exist; pass resume=<run dir or checkpoint> or drop resume")
        return path
    path = Path(resume)
    if path.is_dir():
        path = path / CHECKPOINTS / "last.pt" if (path / CHECKPOINTS).is_dir() else path / "last.pt"
    return path


def run_dir_of(path: Path) -> Path:
    """The run dir a checkpoint path or run dir belongs to."""
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == CHECKPOINTS else path.parent


# ----------------------------------------------------------------------------- reading a run back
def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return {}
    return value if isinstance(value, dict) else {}


def _yaml(path: Path, default: Any) -> Any:
    try:
        value = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else default
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        return default
    return value if isinstance(value, type(default)) else default


def read_run(run: Path) -> dict[str, Any]:
    """A run dir as ``{config, overrides, results, status, metrics}``; damaged files read as empty."""
    run = Path(run)
    metrics = []
    if (run / METRICS).is_file():
        for line in (run / METRICS).read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                metrics.append(record)
    results, status = _json(run / RESULTS), _json(run / STATUS)
    return {
        "config": _yaml(run / ".hydra" / "config.yaml", {}),
        "overrides": [o for o in _yaml(run / ".hydra" / "overrides.yaml", []) if isinstance(o, str)],
        "results": results,
        "status": status.get("status", "completed" if results else "unknown"),
        "metrics": metrics,
    }


def find_runs(paths: list[Path]) -> list[Path]:
    """Every run dir (a dir holding status.json or results.json) under the given paths, sorted."""
    runs: set[Path] = set()
    for path in paths:
        if not Path(path).exists():
            raise MetalearnError(f"{path} does not exist; pass run dirs or sweep dirs (e.g. outputs/multirun/train/<time>)")
        for marker in (STATUS, RESULTS):
            runs.update(p.parent for p in Path(path).rglob(marker))
    if not runs:
        raise MetalearnError(f"no run dirs (with status.json or results.json) under {', '.join(map(str, paths))}")
    return sorted(runs)
