"""The Hydra apps, one per subcommand, and the guard each job runs under."""

from __future__ import annotations

import contextlib
import importlib
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import metalearn_cli.cli.placement as placement
from metalearn_cli.cli.sweep_dirs import how_to_finish, launched
from metalearn_cli.cli.launched_jobs import (failure_of, job_takes_ctrl_c, jobs_ran_elsewhere, launching, record_outcome, settle_sweep,
                                             stopped_elsewhere, stops_not_said,
                                             takes_ctrl_c, tally_launched_jobs, wait_for_saving_jobs)
from metalearn_cli.command_line import rank, refuse_foreign_target, required, sweep_requested, typed_keys
from metalearn_cli.console import as_user_error, one_line
from metalearn_cli.errors import InUse, InternalError, Interrupted, MetalearnError
from metalearn_cli.params import PARAMS
from metalearn_cli.run_guard import RunGuard
from metalearn_cli.cli.job_endings import JobFailed, after_ctrl_c, internal_error
from metalearn_cli.rundir import ERROR, canonical, exclusive
from metalearn_cli.schema import SCHEMAS


CONFIG_PATH = "pkg://metalearn_cli.configs"
log = logging.getLogger("metalearn")


def _hydra_record(cfg: DictConfig) -> dict[str, str]:
    """The ``.hydra/`` files Hydra would write, written by the job itself once it is accepted (``cfg``:
    the config the job runs with)."""
    hc = HydraConfig.get()
    # a job a resumed sweep starts anew (cfg.resume cleared) is recorded as the new run it is, without resume=
    overrides = [o for o in hc.overrides.task if cfg.get("resume") or not o.startswith("resume=")]
    return {"config.yaml": OmegaConf.to_yaml(cfg),
            "hydra.yaml": OmegaConf.to_yaml(OmegaConf.create({"hydra": OmegaConf.to_container(hc)})),
            "overrides.yaml": OmegaConf.to_yaml(OmegaConf.create(overrides))}


FAILED_JOBS: list[str] = []  # the numbers of this sweep's failed jobs (a sweep none of whose jobs ran exits 2)
SWEEP_JOBS: list[str] = []
TERMINATED: list[int] = []  # SIGTERM stopped eval, predict or export (terminate_as_interrupt)
SWEEP_AGAIN: list[str] = []  # how to finish the running sweep: the command (its overrides, its dir, resume=true)


def _record_end(hc: Any, status: str, why: str = "") -> None:
    """A sweep job's end (and why it failed), where a launching process that ran it elsewhere reads it."""
    if hc.mode == RunMode.MULTIRUN:
        record_outcome(canonical(hc.sweep.dir), str(hc.job.num), str(hc.launcher.get("_target_", "")), status, why)


@contextlib.contextmanager
def _sweep_job_lock(hc: Any, run_dir: Path, guard: RunGuard) -> Iterator[None]:
    """A sweep job holds its dir's lock from its first check, as a single command does from the start (its dir is
    known only now): a sweep run again while it still runs leaves the dirs its jobs hold untouched."""
    if hc.mode != RunMode.MULTIRUN or rank() > 0:
        yield
        return
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(exclusive(run_dir))
        except InUse:
            guard.writer = False  # another process's dir: this job's refusal is said, never written there
            raise
        yield


def _run_job(job: Callable[[Callable[..., None]], float], cfg: DictConfig, disposable: bool = False) -> Optional[float]:
    """Run one job under its run dir's guard: it writes nothing until ``accept()``; a failure is
    recorded only in a dir that held no run (``disposable``: not in a default dir either, :class:`RunGuard`).
    In a sweep a failing job fails alone and the sweep goes on."""
    hc, began = HydraConfig.get(), time.time()
    if hc.mode == RunMode.MULTIRUN:
        SWEEP_JOBS.append(str(hc.job.num))
        if not SWEEP_AGAIN:
            SWEEP_AGAIN.append(how_to_finish(canonical(hc.sweep.dir)))
    run_dir = Path(hc.runtime.output_dir)
    guard = RunGuard(run_dir, claimed=placement.claimed == canonical(run_dir), writer=rank() == 0, disposable=disposable,
                     sweep=hc.mode == RunMode.MULTIRUN)
    record = _hydra_record(cfg)
    log_name = hc.job.name if hc.runtime.choices.get("hydra/job_logging") == "metalearn" else None
    held = contextlib.ExitStack()  # a sweep job's lock, kept until its failure or stop is recorded
    try:
        try:
            with job_takes_ctrl_c():
                held.enter_context(_sweep_job_lock(hc, run_dir, guard))
                value = job(lambda ran=None: guard.accept(_hydra_record(ran) if ran is not None else record, log_name))
            _record_end(hc, "completed")
            return value
        except (OSError, OmegaConfBaseException) as exc:
            raise as_user_error(exc, "hydra.sweep.dir" if hc.mode == RunMode.MULTIRUN else "hydra.run.dir") from exc
    except Interrupted as exc:
        guard.log_end(f"stopped: {exc}")
        held.close()  # the loop marked it; the sweep's other jobs wait for no job dir to be held (below)
        if exc.signal_name == "SIGINT" and takes_ctrl_c():  # reported once the sweep's other jobs saved: it ends the sweep
            wait_for_saving_jobs(canonical(hc.sweep.dir), run_dir)
        raise JobFailed(exc) from exc  # an interrupt ends the whole sweep; the loop saved and marked it
    except KeyboardInterrupt:  # eval, predict, export, or a train job stopped before its loop: no loop to mark it
        held.close()
        if takes_ctrl_c():
            wait_for_saving_jobs(canonical(hc.sweep.dir), run_dir)
        return after_ctrl_c(hc.job.name, run_dir, guard)
    except MetalearnError as exc:
        error: MetalearnError = exc
        guard.log_end(f"error: {exc}")
        guard.failed(str(exc), None, record)
    except Exception as exc:
        error = internal_error(exc, guard, record, run_dir)
    finally:
        guard.close()
        held.close()
    if hc.mode == RunMode.MULTIRUN:
        return _failed_in_sweep(hc, error, run_dir, began)
    raise JobFailed(error)


def _failed_in_sweep(hc: Any, error: Exception, run_dir: Path, began: float) -> None:
    """A sweep's job failed alone: counted, said, recorded for a launching process elsewhere; no value, which Optuna
    records as a failed trial (a NaN it would refuse to be told) and the study goes on."""
    FAILED_JOBS.append(str(hc.job.num))
    said = str(error).replace("a new hydra.run.dir", "a new hydra.sweep.dir (or hydra.sweep.subdir)")  # a job's dir
    written = (run_dir / ERROR).is_file() and (run_dir / ERROR).stat().st_mtime >= began  # this attempt's, not an older one
    _record_end(hc, "failed", said + (f"; {run_dir / ERROR}" if written else ""))
    log.error("job failed: %s", said)


@hydra.main(config_path=CONFIG_PATH, config_name="train", version_base="1.3")
def train_app(cfg: DictConfig) -> Optional[float]:
    """Returns the best validation accuracy: the objective a sweeper maximises."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)

    def job(accept: Callable[..., None]) -> float:
        from metalearn_cli.training import Training
        from metalearn_cli.config_checks import check_typed_pretrain_keys, seen_class_validation
        from metalearn_cli.resume import begun_again, resume_value, resumed_config, resumed_sweep_job
        from metalearn_cli.smoke import keep_what_was_asked

        refuse_foreign_target("train", run_dir, resuming=True)  # inside another run: refused (held: by the loop)
        resumed_sweep = HydraConfig.get().mode == RunMode.MULTIRUN and resume_value(cfg.resume) == "true"
        if resumed_sweep:
            kept = resumed_sweep_job(cfg, run_dir)
            if kept is not None:
                log.info("job %s: %s completed before; the resumed sweep keeps it as it is", HydraConfig.get().job.num, run_dir)
                return kept
        typed = typed_keys(list(HydraConfig.get().overrides.task))
        config = resumed_config(cfg, run_dir, typed)
        choices = HydraConfig.get().runtime.choices
        check_typed_pretrain_keys(config, typed, choices.get("pretrain"))
        keep_what_was_asked(config, choices, typed)
        if HydraConfig.get().mode == RunMode.MULTIRUN and (why := seen_class_validation(config)):
            log.warning("metalearn train -m: %s", why)
        with begun_again(run_dir, resumed_sweep):  # a job that failed before its first last.pt: its attempt set aside
            run = Training(config, run_dir)  # every check; a refusal leaves an existing run as it was
            accept(config)  # a resume records the config it continues with, not the command line's defaults
        return run.run()

    return _run_job(job, cfg)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler, ``timeout``) stops eval, predict and export as Ctrl-C does: its dir is
    tidied or marked interrupted, and the command says so (training has its own, saving first)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        TERMINATED.append(signum)  # said as SIGTERM, with its exit code (143), not as a Ctrl-C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _tool_app(command: str, keys: tuple[str, ...], target: str, check: str = "") -> Callable[[], Any]:
    """eval, predict and export: the same guards around their own ``module:function`` (imported when run); ``check``:
    a ``module:function`` of the config that refuses before the run dir is written."""

    @hydra.main(config_path=CONFIG_PATH, config_name=command, version_base="1.3")
    def app(cfg: DictConfig) -> Optional[float]:
        run_dir = Path(HydraConfig.get().runtime.output_dir)

        def job(accept: Callable[..., None]) -> float:
            required(cfg, command, *keys)
            refuse_foreign_target(command, run_dir, resuming=False)  # also under -m, -cd, ...
            if check:
                module, function = check.split(":")
                getattr(importlib.import_module(module), function)(cfg)
            accept()
            module, function = target.split(":")
            with terminate_as_interrupt():
                return getattr(importlib.import_module(module), function)(cfg, run_dir)

        return _run_job(job, cfg, disposable=True)

    return app


APPS: dict[str, Callable[[], Any]] = {
    "train": train_app, "eval": _tool_app("eval", ("checkpoint",), "metalearn_cli.evaluation:evaluate",
                                          "metalearn_cli.eval_inputs:check_typed_eval"),
    "predict": _tool_app("predict", ("checkpoint", "support", "query"), "metalearn_cli.predict:predict"),
    "export": _tool_app("export", ("checkpoint", "out"), "metalearn_cli.export:export_command")}


def register_configs() -> None:
    """Store the run schemas and every component's parameters in Hydra's ConfigStore as
    ``schema/<group>/<name>`` (what ``configs/<group>/<name>.yaml`` extends); idempotent, torch-free."""
    store = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        store.store(name=name, node=node)
    for group, entries in PARAMS.items():
        for name, params in entries.items():
            store.store(group=f"schema/{group}", name=name, node=params)


def _stopped_line(command: str) -> str:
    """The line for a Ctrl-C or SIGTERM no job handled: how to finish what it stopped, where that is known."""
    what = "stopped by SIGTERM" if TERMINATED else "interrupted"
    again = (f"; to finish it, run the same metalearn {command} again" if command != "train"
             else f"; {SWEEP_AGAIN[0]}" if SWEEP_AGAIN
             else ("; its jobs ran in the launcher's processes: if its hydra.sweep.dir holds job folders, add resume=true "
                   "to the same command to finish it, else run the same command again") if launched(sys.argv) or jobs_ran_elsewhere()
             else "; no job had begun: run the same command again to start the sweep" if sweep_requested(sys.argv) else "")
    return f"metalearn {command}: {what} before its end{again}"


def _sweep_failures(command: str) -> int:
    """A sweep some of whose jobs failed says which, and exits so: 2 if all failed, else 1 (a script or scheduler
    sees it); 0 for none (and for a single run)."""
    elsewhere = not SWEEP_JOBS and tally_launched_jobs(SWEEP_JOBS, FAILED_JOBS)  # jobs in a launcher's processes
    if not FAILED_JOBS:
        return 0
    print(f"metalearn {command}: {len(FAILED_JOBS)} of {len(SWEEP_JOBS)} sweep jobs failed ({_why_failed(elsewhere)})",
          file=sys.stderr)
    return 2 if len(FAILED_JOBS) == len(SWEEP_JOBS) else 1


def _why_failed(elsewhere: bool) -> str:
    """Which jobs failed and why: said above by jobs run in this process (and joblib's, whose output is this
    console's); a launcher's jobs whose output goes elsewhere (submitit's log files) each recorded why."""
    named = [job for job in FAILED_JOBS[:3] if elsewhere and failure_of(job)]
    if not named:
        where = "each job's output says why" if elsewhere else "each says why above"
        return f"job {', '.join(FAILED_JOBS[:10])}; {where}"
    rest = [job for job in FAILED_JOBS[:10] if job not in named]
    return "; ".join(f"job {job}: {failure_of(job)}" for job in named) + (f"; also job {', '.join(rest)}" if rest else "")


def run_app(command: str) -> int:
    """Run one subcommand's Hydra app; every user error becomes one line on stderr and its exit code."""
    FAILED_JOBS.clear()
    TERMINATED.clear()
    SWEEP_JOBS.clear()
    SWEEP_AGAIN.clear()
    try:
        with launching():
            try:
                APPS[command]()
            except JobFailed as failed:
                raise failed.error from None
            if failures := _sweep_failures(command):
                return failures
    except Interrupted as exc:
        return _stopped(command, exc)
    except InternalError as exc:
        print(f"metalearn {command}: internal error: {exc}", file=sys.stderr)
        return 1
    except MetalearnError as exc:
        print(f"metalearn {command}: error: {exc}", file=sys.stderr)
        return 2
    except (HydraException, OmegaConfBaseException) as exc:
        print(f"metalearn {command}: config error: {one_line(exc)} (see metalearn {command} --help)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        settle_sweep(command, sys.argv, SWEEP_AGAIN)
        print(_stopped_line(command), file=sys.stderr)
        return 143 if TERMINATED else 130
    except ImportError as exc:  # a sweeper's or launcher's own package broken or missing (hydra/launcher=joblib, ...)
        print(f"metalearn {command}: error: cannot import {exc.name or 'a module'} ({one_line(exc)}), which a sweeper or "
              'launcher plugin needs; reinstall its extra: pip install -e ".[sweep]" (optuna, joblib) or ".[cluster]" '
              "(submitit)", file=sys.stderr)
        return 2
    except ValueError as exc:  # Hydra's own flags given a value it cannot use (--experimental-rerun FILE, ...)
        print(f"metalearn {command}: error: {one_line(exc)} (see metalearn {command} --help)", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system refused before the job ran (Hydra writing multirun.yaml, ...)
        written = "hydra.sweep.dir" if SWEEP_JOBS or sweep_requested(sys.argv) else "hydra.run.dir"  # argv: what Hydra reads
        print(f"metalearn {command}: error: {as_user_error(exc, written)}", file=sys.stderr)
        return 2
    except Exception as exc:
        return _stopped_in_launcher(command, exc)
    return 0


def _stopped(command: str, exc: Interrupted) -> int:
    """A job's stop: its line, the other jobs the same signal stopped in a launcher's processes, how to finish the
    sweep; SIGTERM (pre-emption) exits 0, as an orderly stop, SIGINT 130, a lost peer 1."""
    if rank() == 0:  # under torchrun every rank stops; rank 0 alone saved, and says so
        print(f"metalearn {command}: stopped: {exc}", file=sys.stderr)
    settle_sweep(command, sys.argv, SWEEP_AGAIN)
    for line in stops_not_said(str(exc)):
        print(f"metalearn {command}: also stopped: {line}", file=sys.stderr)
    if SWEEP_AGAIN and command == "train":
        print(f"metalearn {command}: {SWEEP_AGAIN[0]}", file=sys.stderr)
    return {"SIGTERM": 0, "SIGINT": 130}.get(exc.signal_name, 1)


def _stopped_in_launcher(command: str, exc: Exception) -> int:
    """A sweep's jobs stopped in a launcher's processes, reported as the launcher's own error: said as a stop, with
    how to finish it; any other exception is the launcher's own failure (one line, the traceback in a file)."""
    if not stopped_elsewhere(exc):
        raise exc
    settle_sweep(command, sys.argv, SWEEP_AGAIN)
    for line in stops_not_said(""):
        print(f"metalearn {command}: stopped: {line}", file=sys.stderr)
    print(_stopped_line(command), file=sys.stderr)
    return 0 if "SIGTERM" in str(exc) else 130  # as a stop in this process: pre-emption is an orderly stop
