"""A sweep's dir before Hydra runs: what ``-m`` may be given with, a sweep dir in use refused, a sweep
resumed only as it was begun (its jobs are numbered by its swept keys), a sweep refused before any job
leaving nothing behind; after a stop, its jobs left marked as they are and how to finish it."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from hydra.errors import HydraException

from metalearn_cli.command_line import PRINTING_FLAGS, flag_present, rank, sweep_requested
from metalearn_cli.console import shell_override
from metalearn_cli.errors import ConfigError, InUse
from metalearn_cli.rundir import LOCK, canonical, exclusive, held, held_elsewhere, is_locked, mark_interrupted, remove_empty
from metalearn_cli.sweep_record import RECORD, recorded_sweep, sweep_again


def check_sweep(command: str, args: list[str], values: dict[str, Any]) -> bool:
    """Whether this is a sweep (``-m``), after what no sweep may be given: an empty ``resume=`` (a
    sweep of the default run), ``hydra.run.dir`` (one run's folder), a sweep dir in use."""
    if isinstance(values.get("resume"), str) and not values["resume"].strip():
        raise ConfigError("resume= is empty (an unset shell variable?); pass resume=<run dir>, or leave resume out "
                          "(or resume=false) for a new run")
    multirun = sweep_requested(args)  # each job checks its own dir
    if multirun and not flag_present(args, PRINTING_FLAGS):
        if "hydra.run.dir" in values:
            raise ConfigError(f"hydra.run.dir={values['hydra.run.dir']} names the folder of one run, and a sweep (-m) "
                              "writes each job into a sub-folder of hydra.sweep.dir named after its number (by default "
                              f"under outputs/multirun/{command}/<time>/); pass hydra.sweep.dir={values['hydra.run.dir']} instead")
        if _resumes(values):
            check_resumed_sweep(values.get("hydra.sweep.dir"), sweep_overrides(args))
        else:
            refuse_used_sweep_dir(values.get("hydra.sweep.dir"), command)
    return multirun


def _resumes(values: dict[str, Any]) -> bool:
    return str(values.get("resume", "")).strip().lower() == "true"


def sweep_overrides(args: list[str]) -> list[str]:
    """A sweep's own overrides as Hydra records them in ``multirun.yaml`` (``hydra.overrides.task``),
    without ``resume=``: what a resumed sweep must repeat."""
    return [a for a in args if "=" in a and not a.startswith("-")
            and not a.split("=", 1)[0].lstrip("+~").startswith(("hydra.", "hydra/", "resume"))]


def _swept_keys(overrides: list[str]) -> list[str]:
    """The keys given several values, in command-line order: the order Hydra numbers a sweep's jobs by.
    Read by Hydra's own parser, so a list value (``x=[1,2]``) or a quoted comma is one value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:  # Hydra refuses such a line itself, with its own message: no order to check
        return []
    return [o.input_line.split("=", 1)[0] for o in parsed if o.is_sweep_override()]


@contextlib.contextmanager
def no_empty_sweep(command: str, values: dict[str, Any], sweep: bool, jobs: list[Any]) -> Iterator[None]:
    """A sweep refused before any job began (a typo in a swept key) leaves nothing: Hydra writes the sweep
    dir's ``multirun.yaml`` before it composes the jobs, so that file goes again, with the folders this
    command made for it (a user's folders stay, empty or not)."""
    named = values.get("hydra.sweep.dir")
    named = canonical(str(named)) if isinstance(named, str) and "${" not in named else None
    parent = named.parent if named is not None else Path("outputs/multirun") / command
    was = set(parent.iterdir()) if sweep and parent.is_dir() else set()
    if named is not None and named.is_dir() and not any(named.iterdir()):
        was.discard(named)  # a user's empty folder: what the sweep writes there goes, the folder stays
    kept = frozenset(p.resolve() for p in ([named] if named is not None else []) + [parent, *parent.parents] if p.exists())
    try:
        yield
    finally:
        if sweep and not jobs and parent.is_dir():
            for folder in set(parent.iterdir()) - was:
                if (named is None or folder == named) and folder.is_dir() and [p.name for p in folder.iterdir()] == ["multirun.yaml"]:
                    (folder / "multirun.yaml").unlink()
                    remove_empty(folder, kept)


def refuse_running_sweep(folder: Path, named: Any, command: str = "train") -> None:
    """A sweep dir whose jobs a live process still writes: a second sweep there (new, or ``resume=true``) would
    rewrite its ``multirun.yaml`` and fail the jobs the first holds. A job holds its dir's lock from its first
    check, before it has written anything else, so every folder's lock is looked at. Rank 0 alone asks under
    torchrun: the other ranks would find rank 0's own jobs' locks."""
    if rank() > 0:
        return
    if held_elsewhere(folder):  # the launching process of a sweep there, between its jobs too (sweep_lock)
        raise sweep_in_use(named)
    busy = job_dirs(folder, is_job=lambda p: (p / LOCK).is_file() and is_locked(p))  # a job still checking too
    if busy:
        then = (", then run it again with resume=true to finish any job it left" if command == "train"
                and (folder / "multirun.yaml").is_file() else "")
        raise ConfigError(f"hydra.sweep.dir={named} is still running (another metalearn process is writing "
                          f"{busy[0]}); wait for that sweep to end (or stop it){then}")


def sweep_in_use(named: Any) -> ConfigError:
    """A sweep dir whose own lock another process holds: a sweep there still runs (between its jobs too)."""
    return ConfigError(f"hydra.sweep.dir={named} is in use by another metalearn sweep; wait for that sweep to end (or "
                       "stop it), or choose a new hydra.sweep.dir")


def sweep_lock(command: str, args: list[str], values: dict[str, Any]) -> contextlib.ExitStack:
    """A named sweep dir's own lock, taken by the launching process (rank 0) and held while the sweep runs (``with``
    the returned stack): a second sweep there is refused at once, even before the first one's first job took its
    own lock (Hydra writes ``multirun.yaml`` before). The checks of :func:`check_sweep` are made again once it is
    held, so a sweep that ended between them and the lock is not written over."""
    held = contextlib.ExitStack()
    named = values.get("hydra.sweep.dir")
    if (rank() > 0 or not sweep_requested(args) or flag_present(args, PRINTING_FLAGS) or named is None
            or "${" in str(named)):
        return held
    try:
        held.enter_context(exclusive(canonical(str(named)), "hydra.sweep.dir"))
    except InUse:
        raise sweep_in_use(named) from None
    try:
        check_sweep(command, args, values)
    except BaseException:
        held.close()
        raise
    return held


def refuse_used_sweep_dir(named: Any, command: str = "train") -> None:
    """A sweep writes ``multirun.yaml`` into its dir before any job checks its own: a sweep dir that
    already holds a sweep (or a run) would lose its record, so a new sweep needs a new one."""
    if named is None or "${" in str(named):
        return  # the default: outputs/multirun/<command>/<time>, new
    folder = canonical(str(named))
    refuse_running_sweep(folder, named, command)
    found = held(folder)
    if not found and folder.is_dir():  # a sweep none of whose jobs ran (a typo in every job) may be run again
        found = job_dirs(folder)[:3]
    if found:
        recorded = (folder / "multirun.yaml").exists()
        finish = ("" if command != "train" else " (or, to finish that sweep, run it again as it was with resume=true)"
                  if recorded else " (that sweep wrote no multirun.yaml, as an Optuna study does not, so resume=true "
                  "cannot finish it)")
        raise ConfigError(f"hydra.sweep.dir={named} already holds a sweep's runs ({', '.join(found[:3])})"
                          f"{' (and its multirun.yaml)' if recorded else ''}; a sweep writes multirun.yaml and a run dir "
                          f"per job there, so choose a new hydra.sweep.dir{finish}")


def job_dirs(folder: Path, depth: int = 4, is_job: Callable[[Path], Any] = held) -> list[str]:
    """The run dirs a sweep dir holds (its jobs'; ``is_job``: those holding a run, or another test), relative to
    it: ``hydra.sweep.subdir`` may nest them (``${hydra.job.num}/seed``), so folders that are not jobs are
    searched, to ``depth`` levels, hidden ones (``.hydra``, the launcher's records) never."""
    found: list[str] = []
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        if not p.is_dir() or p.name.startswith("."):
            continue
        if is_job(p):
            found.append(p.name)
        elif depth > 1:
            found.extend(f"{p.name}/{inner}" for inner in job_dirs(p, depth - 1, is_job))
    return found


def check_resumed_sweep(named: Any, overrides: list[str]) -> None:
    """``-m ... resume=true`` finishes the sweep recorded in ``hydra.sweep.dir`` (its ``multirun.yaml``), run
    again with the same overrides: each job then continues its own run dir
    (:func:`metalearn_cli.resume.resumed_sweep_job`). Anything else is refused, never a new sweep begun."""
    if named is None or "${" in str(named):
        raise ConfigError("resume=true in a sweep finishes the sweep of hydra.sweep.dir: name it (hydra.sweep.dir=DIR, as "
                          "the stop line printed it), or drop resume=true for a new sweep")
    folder = canonical(str(named))
    if held(folder):
        raise ConfigError(f"hydra.sweep.dir={named} is one run's dir, not a sweep's; continue it with: metalearn train "
                          f"{shell_override('resume', folder)}")
    if not (folder / "multirun.yaml").is_file():
        jobs = folder.is_dir() and bool(job_dirs(folder))
        raise ConfigError(f"resume=true finishes the sweep in hydra.sweep.dir={named}, which " + (
            "holds a sweep's runs but no multirun.yaml (Optuna's sweeper writes none), so its jobs cannot be told again; "
            "start a new sweep in a new hydra.sweep.dir (an Optuna study given hydra.sweeper.storage=sqlite:///FILE "
            "continues from that file in a new sweep)" if jobs else
            "holds none (no multirun.yaml); check the path, or drop resume=true for a new sweep"))
    refuse_running_sweep(folder, named)
    before = sweep_overrides(recorded_sweep(folder))
    if sorted(before) != sorted(overrides):
        raise ConfigError(f"hydra.sweep.dir={named} holds a sweep of {' '.join(before) or 'the defaults'}; resume=true "
                          f"finishes that sweep, so repeat its overrides as they were (this command has "
                          f"{' '.join(overrides) or 'none'}), or choose a new hydra.sweep.dir for a new sweep")
    if _swept_keys(before) != _swept_keys(overrides):  # job N would be another job's settings: a duplicate run
        raise ConfigError(f"hydra.sweep.dir={named} holds a sweep of {' '.join(before)}; its jobs are numbered in the order "
                          f"of the swept keys ({', '.join(_swept_keys(before))}), so resume=true needs them in that order "
                          f"(this command has {', '.join(_swept_keys(overrides))})")


def settle_stopped_jobs(sweep_dir: Optional[Path], wait_s: float = 15.0) -> list[Path]:
    """After a Ctrl-C of a sweep whose jobs ran in a launcher's processes (joblib's workers, which it may kill
    before they record their stop): each job dir still marked running is marked interrupted once no live process
    holds it, waiting up to ``wait_s`` for workers still saving. The job dirs it marked."""
    if sweep_dir is None or not sweep_dir.is_dir():
        return []
    jobs = [sweep_dir / name for name in job_dirs(sweep_dir)]
    deadline = time.monotonic() + wait_s
    while any(is_locked(job) for job in jobs) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [job for job in jobs if mark_interrupted(job, only_if_dead=True)]


def how_to_finish(sweep_dir: Path) -> str:
    """What finishes a stopped sweep: ``resume=true`` where Hydra recorded the sweep (``multirun.yaml``);
    Optuna's sweeper records none, so its study cannot be told again."""
    if (sweep_dir / RECORD).is_file():
        return f"to finish the sweep (each job continued or kept): {sweep_again(sweep_dir)}"
    return ("this sweeper (Optuna's) records no multirun.yaml, so resume=true cannot finish its study: continue the "
            "stopped job with the line above (metalearn train resume=JOB), or start a new sweep in a new hydra.sweep.dir")


def launched(argv: list[str]) -> bool:
    """A sweep whose jobs run in another launcher's processes (joblib, submitit), not this one."""
    return sweep_requested(argv) and any(a.startswith("hydra/launcher=") and a != "hydra/launcher=basic" for a in argv)
