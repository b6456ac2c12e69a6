"""The run directory: its layout and every write into it.

Owns: the canonical spelling of a run dir, what a run dir holds that no command may replace, the
run dir's lock (one writer at a time), snapshots that put a run dir back as it was after a refused
command, ``status.json`` / ``results.json`` / ``error.txt`` (written atomically through
:mod:`metalearn_cli.files`), which checkpoint a path means (a run dir -> its ``best.pt``, else
``last.pt``). Reading a finished run back is :mod:`metalearn_cli.run_records`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from metalearn_cli.errors import CheckpointError, ConfigError, InUse, WriteError
from metalearn_cli.files import read_json, write_json

CHECKPOINTS = "checkpoints"
STATUS, RESULTS, ERROR, METRICS, LOCK = "status.json", "results.json", "error.txt", "metrics.jsonl", ".lock"
BEST, LAST = "best.pt", "last.pt"


@dataclass(frozen=True)
class RunDir:
    """A run's (or a stage's) directory and its files by role: the one place their names are spelled."""

    path: Path

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def best(self) -> Path:
        """The checkpoint validation chose (what the final test scores)."""
        return self.path / CHECKPOINTS / BEST

    @property
    def last(self) -> Path:
        """The latest checkpoint, with everything a resume needs."""
        return self.path / CHECKPOINTS / LAST

    @property
    def results(self) -> Path:
        return self.path / RESULTS
_HELD: dict[Path, list[int]] = {}  # run dir -> [fd, depth]: the locks this process holds


@contextlib.contextmanager
def exclusive(run_dir: Path, key: str = "hydra.run.dir") -> Iterator[None]:
    """Hold ``run_dir/.lock`` exclusively (``flock``) while the block runs: a second process that
    wants the same run dir is refused at once. The OS releases the lock when a process dies.
    Re-entrant within one process (the CLI and the training loop both take it). ``key``: the option that
    named the folder (``hydra.sweep.dir`` for a sweep's own lock), as the messages spell it."""
    noun = {"hydra.run.dir": "run dir", "hydra.sweep.dir": "sweep dir"}.get(key, "folder")
    path = Path(run_dir).resolve()
    if path in _HELD:
        _HELD[path][1] += 1
        try:
            yield
        finally:
            _HELD[path][1] -= 1
        return
    if path.exists() and not path.is_dir():
        raise ConfigError(f"the {noun} {run_dir} is a file; name a folder for {key} (a new or empty one)")
    made = next((p for p in reversed([path, *path.parents]) if not p.exists()), None)  # the topmost folder made here
    lock_made = not (path / LOCK).exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        what = f"write in the {noun}" if made is None else f"create the {noun}"  # it was there: not writable
        raise WriteError(f"cannot {what} {run_dir} ({exc.strerror or exc}); choose a writable {key}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise InUse(f"{run_dir} is being written by another metalearn process; wait for it to end (for a new run, "
                          "choose a new hydra.run.dir)") from None
    _HELD[path] = [fd, 1]
    try:
        yield
    finally:
        del _HELD[path]
        try:
            if lock_made:  # removed while still held: a process that opened it a moment before is refused, rather
                _remove_an_unused_lock(path, made)  # than given a lock on a file that is then gone (two holders)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _remove_an_unused_lock(path: Path, made: Optional[Path]) -> None:
    """A command refused before it wrote anything leaves no lock file, nor any folder it made, behind
    (a user's folder it was refused from included)."""
    with contextlib.suppress(OSError):
        if any(p.name in (".hydra", CHECKPOINTS, *OUTPUTS, *TRACES) and p.name != LOCK for p in path.iterdir()):
            return
        (path / LOCK).unlink()
        for folder in [path, *path.parents] if made is not None else []:
            folder.rmdir()  # OSError (not empty) ends it
            if folder == made:
                return


def canonical(path: Path | str) -> Path:
    """The one spelling of a run dir: absolute, symlinks and ``..`` resolved as the OS will when the
    folder is created (relative paths are taken from the working directory, as Hydra does). Every
    guard compares and locks this path, so no spelling of a run dir gets around them."""
    return Path(path).resolve()


def is_locked(run_dir: Path) -> bool:
    """Whether a live process holds ``run_dir``'s lock (the OS releases a dead process's)."""
    try:
        fd = os.open(Path(run_dir) / LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def held_elsewhere(run_dir: Path) -> bool:
    """Whether a live process other than this one holds ``run_dir``'s lock (a sweep job holds its own
    from its first check: :func:`exclusive`)."""
    return Path(run_dir).resolve() not in _HELD and is_locked(run_dir)


STAGE = "pretrain"  # the pre-training stage's sub-directory of a run (a run dir of its own, without .hydra/)
OUTPUTS = (RESULTS, METRICS, "predictions.csv", "predictions.json", "export.json", "tensorboard", "metrics.csv",
           "mlruns", "mlflow.json", STAGE)


def held(path: Path) -> list[str]:
    """What a run dir holds that a new command must never replace: results, metrics, any checkpoint,
    a stage, a status other than a failure before anything was written. Empty for a new folder, or for
    one whose only trace is a command refused before it wrote anything (``.hydra/``, ``error.txt``)."""
    path = Path(path)
    found = [name for name in OUTPUTS if (path / name).exists() and not _empty(path / name)]  # a run failed at its start
    if (path / CHECKPOINTS).is_dir():
        found += [f"{CHECKPOINTS}/{p.name}" for p in sorted((path / CHECKPOINTS).iterdir()) if not p.name.startswith(".")]
    status = read_json(path / STATUS).get("status") if (path / STATUS).exists() else None
    if (path / STATUS).exists() and (status != "failed" or found):
        found.insert(0, f"{STATUS} ({status or 'unreadable'})")
    return found


def _empty(path: Path) -> bool:
    """An empty file, or a folder holding no file at any depth: what a run that failed as it began (its logger
    unreachable) leaves, and nothing a new run could lose."""
    if path.is_file():
        return path.stat().st_size == 0
    return path.is_dir() and not any(p.is_file() for p in path.rglob("*"))


TRACES = (STATUS, ERROR, LOCK, "train.log", "eval.log", "predict.log", "export.log")  # what a refused command may leave


def foreign(path: Path) -> list[str]:
    """What a folder that holds no run holds besides a refused command's traces: a user's own files
    (hidden ones aside), which a run must not be mixed with."""
    path = Path(path)
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if not p.name.startswith(".") and p.name not in TRACES)


def refuse_held(run_dir: Path) -> None:
    """A new run never writes into a dir that holds another run's output (a finished run whose
    ``last.pt`` was deleted included); only a resume continues one."""
    found = held(run_dir)
    if found:
        last, state = RunDir(Path(run_dir)).last, read_json(Path(run_dir) / STATUS).get("status")
        hint = ("another metalearn process is writing it (wait for it, or stop it); use" if held_elsewhere(Path(run_dir))
                else "it has no last.pt to resume from; use" if not last.is_file()
                else "it is completed and tested (resume=true trainer.iterations=N trains it further); use" if state == "completed"
                else "pass resume=true to continue it, or use")
        raise ConfigError(f"{run_dir} already holds a run ({', '.join(found[:3])}); {hint} a new hydra.run.dir")


def refuse_replacing(out: Path | str, key: str = "out=") -> None:
    """What a command writes outside its run dir (``export out=``, ``sample-task --out``, ``report
    --out``) never goes into a run dir, however spelled: a file of the run would be replaced, or the
    run would hold files it did not write."""
    path = Path(out)
    run = next((d for d in [canonical(path), *canonical(path).parents] if held(d)), None)
    if run is not None:
        what = "a file of" if path.exists() and not path.is_dir() else "inside"
        raise ConfigError(f"{key}{out} is {what} the run {run}, which would be replaced or mixed with files it did not "
                          f"write; choose {key}PATH outside run dirs")


def write_status(run_dir: Path, status: str, **extra: Any) -> None:
    """``status.json``: running | completed | interrupted | failed, for people and sweep tools."""
    write_json(Path(run_dir) / STATUS, {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra})


def mark_interrupted(run_dir: Path, only_if_dead: bool = False) -> bool:
    """A run (and its pre-training stage) whose ``status.json`` still says running, stopped where it could not say
    so itself (a second Ctrl-C, a launcher killing its workers), is marked interrupted, its recorded step kept, so
    no tool or scheduler waits on it. ``only_if_dead``: not while a live process holds its lock. Whether it marked."""
    marked = False
    for where in (Path(run_dir), Path(run_dir) / STAGE):
        status = read_json(where / STATUS) if (where / STATUS).is_file() else {}
        if status.get("status") == "running" and not (only_if_dead and is_locked(Path(run_dir))):
            write_status(where, "interrupted", **{k: v for k, v in status.items() if k not in ("status", "time")})
            marked = True
    return marked


SET_ASIDE = ("failed-", "stopped-")  # an earlier attempt's files inside a run dir that began again (set_aside)


def set_aside(run_dir: Path, ended: str = "failed") -> Path:
    """Move an attempt's files (all but its ``.hydra/`` record of what was asked, and its lock) into
    ``<run>/<ended>-<time>/`` (``failed`` or ``stopped``, before its first ``last.pt``), so the run can start again
    in its own dir with nothing lost; the folder it made."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    kept = next(Path(run_dir) / name for name in (f"{ended}-{stamp}", *(f"{ended}-{stamp}_{i}" for i in range(1, 1000)))
                if not (Path(run_dir) / name).exists())
    kept.mkdir()
    for entry in sorted(Path(run_dir).iterdir()):
        if entry != kept and entry.name not in (".hydra", LOCK) and not entry.name.startswith(SET_ASIDE):
            entry.rename(kept / entry.name)
    return kept


def put_back(kept: Path) -> None:
    """Undo :func:`set_aside`: the attempt's files return to their run dir (none there is replaced)."""
    for entry in sorted(kept.iterdir()):
        if not (kept.parent / entry.name).exists():
            entry.rename(kept.parent / entry.name)
    if not any(kept.iterdir()):
        kept.rmdir()


def write_results(run_dir: Path, results: dict[str, Any]) -> None:
    write_json(Path(run_dir) / RESULTS, results)


def record_failure(run_dir: Path, message: str, details: Optional[str] = None) -> None:
    """``error.txt`` (the message, or a traceback) and a ``failed`` status, which keeps the step of the run's last
    save (so a note on its checkpoint can tell a run that failed at once from one whose test alone failed)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ERROR).write_text((details or message).rstrip("\n") + "\n", encoding="utf-8")
    was = read_json(run_dir / STATUS) if (run_dir / STATUS).is_file() else {}
    write_status(run_dir, "failed", error=message, **{k: was[k] for k in ("step", "iterations", "processes") if k in was})


# ----------------------------------------------------------------------------- which checkpoint
def resolve_checkpoint(path: Path | str) -> Path:
    """A run dir names its ``checkpoints/best.pt`` (else ``last.pt``); a file names itself."""
    path = Path(path)
    if path.is_dir():
        for candidate in (RunDir(path).best, path / BEST, RunDir(path).last, path / LAST):  # a checkpoints/ dir given itself too
            if candidate.is_file():
                return candidate
        scored = read_json(path / RESULTS).get("checkpoint") or read_json(path / "predictions.json").get("checkpoint")
        if scored:  # an eval or predict dir: it names the checkpoint it used
            raise CheckpointError(f"{path} is the output of an eval or predict of {scored}, with no checkpoint of its own; "
                                  "pass that checkpoint")
        raise CheckpointError(f"{path} holds no checkpoints/best.pt or last.pt; pass a checkpoint file or a run dir")
    return path


def remove_empty(folder: Path, kept: frozenset[Path] = frozenset()) -> None:
    """``folder`` and the folders above it, while empty, below the working directory and not in ``kept``
    (the folders that were there before the command: a user's empty folder stays)."""
    cwd = Path.cwd().resolve()
    for path in [folder.resolve(), *folder.resolve().parents]:
        if path == cwd or cwd not in path.parents or path in kept:
            return
        try:
            path.rmdir()
        except OSError:
            return
