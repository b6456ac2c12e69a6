"""A sweep whose jobs run in a launcher's processes (joblib's workers, submitit's jobs), as its launching
process sees it: where the sweep is, how its jobs ended, and a Ctrl-C that lets every job save first.

Hydra tells the launching process nothing of such jobs but their return values (a failed job's is None,
as Optuna needs), and sets no :class:`HydraConfig` there; a callback (``hydra.callbacks.metalearn``,
in each command's config) records the sweep as it starts.

Under joblib (and submitit_local, whose per-job controller processes died of it with a traceback, and whose
launcher then reported the stopped jobs as its own error) a terminal's Ctrl-C reaches the launcher and its workers at once. Left alone, the launcher's
own KeyboardInterrupt has joblib kill the workers while they save, an idle worker dies of it (which breaks
the pool, and joblib kills the rest), and the first job to report its stop ends the sweep, killing the
others mid-save. So the launcher ignores SIGINT for the sweep (its workers, spawned after, inherit that),
each job takes SIGINT back while it runs, and a job stopped by it reports its stop only once the sweep's
other jobs have saved. A second Ctrl-C still stops a job at once; one that comes to a worker between its
jobs stops the next job it takes up. (One in the first seconds, while the workers start, goes unseen.)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional

from hydra.experimental.callback import Callback

from metalearn_cli.cli.sweep_dirs import how_to_finish, job_dirs, settle_stopped_jobs
from metalearn_cli.command_line import sweep_requested
from metalearn_cli.files import read_json
from metalearn_cli.rundir import STATUS, RunDir, canonical, is_locked

TAKEN_BY_JOBS = "METALEARN_JOBS_TAKE_CTRL_C"  # set by the launching process, read by its workers (inherited)
SWEEP: dict[str, str] = {}  # this process's sweep as it started: "dir", "launcher" (the launcher's _target_), "began"
OUTCOMES = ".job_outcomes"  # in the sweep dir while its command runs: how each job ended, written by the job itself
_QUIET_TRACKER = "ignore:resource_tracker:UserWarning"  # the semaphores of workers joblib killed, which it then frees


def _local_processes(launcher: str) -> bool:
    """A launcher whose jobs run in processes of this machine that a terminal's Ctrl-C reaches with the launching
    process (joblib's workers; submitit_local's, under a controller process of each job's, which would die of it
    with a traceback)."""
    return "joblib" in launcher.lower() or launcher.endswith("submitit_launcher.LocalLauncher")


class SweepStarted(Callback):
    """Records the sweep in the process that launches it, before any job; under joblib and submitit_local, leaves
    Ctrl-C to the jobs."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        SWEEP.update(dir=str(config.hydra.sweep.dir), launcher=str(config.hydra.launcher.get("_target_", "")),
                     began=str(time.time()))
        shutil.rmtree(Path(SWEEP["dir"]) / OUTCOMES, ignore_errors=True)  # a killed command's: not this sweep's
        if _local_processes(SWEEP["launcher"]) and _main_thread() and signal.getsignal(signal.SIGINT) not in (
                signal.SIG_IGN, None):  # not where it was ignored (a script's background job), nor set outside Python
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            os.environ[TAKEN_BY_JOBS] = "1"
            os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), _QUIET_TRACKER]))


def record_outcome(sweep: Path, job: str, launcher: str, status: str, why: str = "") -> None:
    """In a job's own process, at its end (``completed`` or ``failed``, and why, in one line), where the launching
    process cannot see it (any launcher but Hydra's basic one): what :func:`tally_launched_jobs` counts and
    :func:`failure_of` says. Never fails the job."""
    if launcher.endswith("BasicLauncher"):
        return
    try:
        (Path(sweep) / OUTCOMES).mkdir(exist_ok=True)
        (Path(sweep) / OUTCOMES / job).write_text(f"{status}\n{' '.join(why.split())}")
    except OSError:
        pass


def failure_of(job: str) -> str:
    """Why a job that ran in a launcher's process failed, as it recorded it ('' where it did not): a submitit job's
    output goes to its own log file, not to this console."""
    try:
        return (Path(SWEEP["dir"]) / OUTCOMES / job).read_text().partition("\n")[2].strip()
    except (KeyError, OSError):
        return ""


def jobs_ran_elsewhere() -> bool:
    """Whether this process launched a sweep whose jobs ran in other processes (not Hydra's basic launcher)."""
    return bool(SWEEP) and not SWEEP.get("launcher", "").endswith("BasicLauncher")


def begun_sweep(argv: list[str]) -> Optional[Path]:
    """The sweep dir, when some of its jobs had begun (in this process or a launcher's)."""
    from hydra.core.hydra_config import HydraConfig

    from metalearn_cli.cli.placement import override_values

    try:
        named = SWEEP.get("dir") or str(HydraConfig.get().sweep.dir)
    except Exception:  # no callback ran, and no job in this process: the one the command named
        named = override_values(argv[1:]).get("hydra.sweep.dir")
    if not named:
        return None
    found = canonical(Path(str(named)))
    return found if job_dirs(found) else None


def tally_launched_jobs(jobs: list[str], failed: list[str]) -> bool:
    """The jobs (and of them the failed ones) of a sweep whose jobs ran in a launcher's processes, as each one
    recorded its end (:func:`record_outcome`): the launching process saw only their return values (a failed
    job's is None). Whether this was such a sweep."""
    if not jobs_ran_elsewhere() or not SWEEP.get("dir"):
        return False
    folder = Path(SWEEP["dir"]) / OUTCOMES
    ended = sorted(folder.iterdir(), key=lambda p: (len(p.name), p.name)) if folder.is_dir() else []
    jobs.extend(p.name for p in ended)
    failed.extend(p.name for p in ended if p.read_text().partition("\n")[0].strip() == "failed")
    return True


def stopped_elsewhere(exc: BaseException) -> bool:
    """A launcher whose jobs run in their own processes (submitit) reports a job that a Ctrl-C or SIGTERM stopped as
    its own error (``UncompletedJobError``): a stop, not a failure, where a job of the sweep saved and marked itself
    ``interrupted``."""
    if not type(exc).__module__.startswith("submitit") or not SWEEP.get("dir"):
        return False
    folder, began = Path(SWEEP["dir"]), float(SWEEP.get("began", 0))
    return any(read_json(folder / job / STATUS).get("status") == "interrupted"
               and (folder / job / STATUS).stat().st_mtime >= began for job in job_dirs(folder))  # not an earlier attempt's


def settle_sweep(command: str, argv: list[str], again: list[str]) -> None:
    """A train sweep stopped by a signal: the jobs a launcher's killed workers left running are marked interrupted,
    and how to finish the sweep is known here too (into ``again``) when its jobs ran in those processes."""
    if command != "train" or not sweep_requested(argv) or (begun := begun_sweep(argv)) is None:
        return
    if _local_processes(SWEEP.get("launcher", "")):  # local workers, whose locks say whether they live (not a cluster's jobs)
        settle_stopped_jobs(begun)
    if not again:
        again.append(how_to_finish(begun))


def stops_not_said(said: str) -> list[str]:
    """After a stop of a sweep whose jobs ran in local processes (joblib, submitit_local): a line for each other job
    it stopped, which only its train.log told (the first job's stop ends the sweep, and only that one is printed)."""
    if not _local_processes(SWEEP.get("launcher", "")) or not SWEEP.get("dir"):
        return []
    lines = []
    for job in job_dirs(Path(SWEEP["dir"])):
        folder = Path(SWEEP["dir"]) / job
        status = read_json(folder / STATUS)
        if status.get("status") != "interrupted" or str(folder) in said:
            continue
        last = RunDir(folder).last
        lines.append(f"{job} at step {status.get('step')}/{status.get('iterations')}; saved {last}" if last.is_file()
                     else f"{job} before its first checkpoint (finishing the sweep begins it again)")
    return lines


@contextlib.contextmanager
def launching() -> Iterator[None]:
    """Around a command that may launch a sweep: what :class:`SweepStarted` changed is undone at its end."""
    SWEEP.clear()
    handler = signal.getsignal(signal.SIGINT) if _main_thread() else None
    before = {name: os.environ.get(name) for name in (TAKEN_BY_JOBS, "PYTHONWARNINGS")}
    try:
        yield
    finally:
        if SWEEP.get("dir"):
            shutil.rmtree(Path(SWEEP["dir"]) / OUTCOMES, ignore_errors=True)
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if handler is not None:
            signal.signal(signal.SIGINT, handler)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def takes_ctrl_c() -> bool:
    """Whether this job runs in such a sweep (in a worker, or in the launching process with one job at a time)."""
    return os.environ.get(TAKEN_BY_JOBS) == "1" and _main_thread()


_STOPPED: list[int] = []  # a Ctrl-C that came while this process was between two jobs of such a sweep


def _stop_between_jobs(signum: int, frame: Any) -> None:
    _STOPPED.append(signum)


@contextlib.contextmanager
def job_takes_ctrl_c() -> Iterator[None]:
    """While a job of such a sweep runs, Ctrl-C is a KeyboardInterrupt again (the training loop installs its own);
    between jobs it is kept, and the next job this process takes up stops before it begins."""
    if not takes_ctrl_c():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if _STOPPED:
            _STOPPED.clear()
            raise KeyboardInterrupt
        yield
    finally:
        signal.signal(signal.SIGINT, _stop_between_jobs if previous is signal.SIG_IGN else previous)


def wait_for_saving_jobs(sweep: Path, own_dir: Path, wait_s: float = 120.0, poll_s: float = 0.2) -> list[Path]:
    """Before a job stopped by Ctrl-C reports it (which ends the sweep): wait, up to ``wait_s``, until no live
    process holds another job dir of ``sweep`` (each job the same Ctrl-C stopped has finished its step or its
    validation, saved and let go). The job dirs still held when it gave up waiting."""
    sweep, own = Path(sweep).resolve(), Path(own_dir).resolve()
    try:  # the other jobs' dirs lie as deep as its own (hydra.sweep.subdir may hold a "/")
        pattern = "/".join(["*"] * len(own.relative_to(sweep).parts))
    except ValueError:
        return []
    others = [p for p in sweep.glob(pattern) if p.is_dir() and p.resolve() != own]
    start = time.monotonic()
    said = False
    with job_takes_ctrl_c():  # a second Ctrl-C ends the wait, and the sweep, at once
        while (busy := [p for p in others if is_locked(p)]) and time.monotonic() - start < wait_s:
            if not said and time.monotonic() - start > 3:
                print(f"metalearn: {own.name} stopped; waiting up to {wait_s:.0f} s for the sweep's other jobs to save "
                      f"({', '.join(p.name for p in busy[:3])}); Ctrl-C again stops them at once", file=sys.stderr)
                said = True
            time.sleep(poll_s)
    return busy
