"""Resume: which checkpoint ``resume=`` names, and the config a resumed run continues with.

A resume continues *the same* run in *its own* run dir: the saved config wins, and only the
:data:`RESUMABLE` keys (bookkeeping, never what is learned or how) may be changed on the command
line. One parser of ``resume=`` values and one config diff serve the CLI and the loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Optional

from omegaconf import OmegaConf

from metalearn_cli.checkpoint import load_checkpoint
from metalearn_cli.compat import migrate_config
from metalearn_cli.console import shell_override
from metalearn_cli.errors import CheckpointError, ConfigError
from metalearn_cli.files import read_json, read_yaml
from metalearn_cli.run_records import command_of
from metalearn_cli.rundir import (CHECKPOINTS, LAST, RESULTS, STAGE, STATUS, RunDir, canonical, held, held_elsewhere,
                                  is_locked, put_back, set_aside)
from metalearn_cli.schema import flatten

log = logging.getLogger(__name__)

# Keys a resumed run may change: bookkeeping, never what is learned or how.
RESUMABLE = {"resume", "device", "threads", "trainer.progress", "trainer.log_every", "trainer.val_every",
             "trainer.checkpoint_every", "trainer.iterations", "trainer.nan_policy", "eval", "reference", "logger",
             "dataset.root",  # where the data set lies (moved since): a folder's recorded split still has to be there
             "dataset.cache"}  # whether its conversion is kept beside it: the same images either way


def resume_value(resume: Any) -> Optional[str]:
    """``resume=`` as ``"true"``, a path, or None (false, none, null, empty): the one parser of it."""
    if resume is None or str(resume).strip().lower() in ("false", "none", "null", ""):
        return None
    return "true" if str(resume).strip().lower() == "true" else str(resume)


def run_dir_of(path: Path) -> Path:
    """The run dir a checkpoint path or run dir belongs to."""
    path = Path(path)
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == CHECKPOINTS else path.parent


def unfinished_note(checkpoint: Path | str, read: Optional[dict[str, Any]] = None) -> Optional[str]:
    """A line for a checkpoint whose run has not finished (stopped, failed, or still training): its ``best.pt`` is
    the best validated so far, not what the finished run would test; None for a finished run. An export says what
    its source's line said when it was exported (``read``: the file as read, :func:`read_meta_knowledge`)."""
    if read is not None and read.get("unfinished"):
        return f"{checkpoint} is an export of a run that had not finished when exported: {read['unfinished']}"
    run = Path(os.path.abspath(run_dir_of(Path(checkpoint))))  # its commands work pasted anywhere (an export travels)
    owner = run.parent if run.name == STAGE and (run.parent / STATUS).is_file() else run  # a stage goes on with its run
    status = read_json(run / STATUS)
    subject = f"{run}" if Path(checkpoint).is_dir() else f"{checkpoint} is from {run}, which"
    if status.get("status") == "failed":
        return f"{subject} {failed_how(status)}"
    if status.get("status") not in ("running", "interrupted"):
        return None
    state = "is still training" if status["status"] == "running" and is_locked(run) else "stopped before its end"
    where = f" (step {status['step']} of {status['iterations']})" if {"step", "iterations"} <= status.keys() else ""
    then = ("let it finish, then test it again" if state == "is still training" else
            f"finish the run with: {continue_command(owner, int(status.get('processes') or 1))}")
    if owner == run and read_json(run / STAGE / STATUS).get("status") in ("running", "interrupted"):
        return (f"{subject} {state} in its pre-training stage: its checkpoints hold the weights it began with, not trained "
                f"ones; test the stage so far with {shell_override('checkpoint', run / STAGE)}, or {then}")
    return (f"{subject} {state}{where}: its weights are not the finished run's (best.pt holds the best validated so far); "
            f"{then}")


def failed_how(status: dict[str, Any]) -> str:
    """How far a failed run got, from its status.json (the step of its last save): one whose test alone failed
    keeps what its training chose; one that failed at once (e.g. diverged) may keep the weights it began with."""
    step, iterations = status.get("step"), status.get("iterations")
    if step is not None and step == iterations:
        return ("failed after its training ended, in its test (its status.json says why): best.pt is what its "
                "validation chose, but the run has no test results")
    where = f" (last saved at step {step} of {iterations})" if step is not None and iterations is not None else ""
    began = ", which may be the weights it began with," if not step else ""
    return (f"failed before its end{where} (its status.json says why): best.pt holds the best validated before it "
            f"failed{began} and the run has no test results")


def resume_checkpoint(resume: Any, run_dir: Path) -> Optional[Path]:
    """The checkpoint ``resume=`` continues: ``true`` -> this run's ``last.pt``; a run dir -> its
    ``last.pt``; a file -> itself. A resume writes into the run it continues, never elsewhere."""
    value = resume_value(resume)
    if value is None:
        return None
    if value == "true":
        path = RunDir(Path(run_dir)).last
        if not path.is_file():
            raise CheckpointError(f"resume=true but {path} does not exist; pass resume=<run dir or checkpoint> or drop resume")
        return path
    path = Path(value)
    if path.is_dir():
        refuse_other_command(value, path)
        run, path = RunDir(path), RunDir(path).last if RunDir(path).checkpoints.is_dir() else path / LAST
        if not path.exists() and run.best.is_file():
            raise CheckpointError(f"{value} has no {LAST} to resume from (stopped before its first save, or it was "
                                  f"deleted); its best.pt is there: {shell_override('resume', run.best)}")
        if not path.exists() and (run.path / STATUS).is_file():
            raise CheckpointError(f"{value} stopped before it saved a checkpoint, so there is nothing to continue; run "
                                  "the same command anew in another hydra.run.dir (or delete this one first: it holds "
                                  "only the stopped run's record and log)")
    refuse_another_dir(value, path, run_dir)
    refuse_rewinding(value, path)
    return path


def refuse_other_command(value: str, folder: Path) -> None:
    """``resume=`` names the dir of an eval, predict or export: it holds that command's results, no training to go on."""
    config = read_yaml(folder / ".hydra" / "config.yaml", {})
    command = command_of(folder, config)
    if command != "train":
        scored = read_json(folder / RESULTS).get("checkpoint") or config.get("checkpoint")
        raise CheckpointError(f"{value} is the dir of a metalearn {command}, not of a training run; resume= continues a "
                              f"run of metalearn train" + (f" (that {command} read {scored})" if scored else ""))


_SAID_DAMAGED: set[Path] = set()  # best.pt files a resume was warned of (last.pt damaged) in this process


def refuse_rewinding(value: str, path: Path) -> None:
    """A resume from an earlier checkpoint of the run (``best.pt``) would train on from its step and overwrite
    ``last.pt``: the steps after it would be lost without a word. A new run from those weights keeps them."""
    last = path.parent / LAST
    if path.name == LAST or path.parent.name != CHECKPOINTS or not last.is_file() or not path.is_file():
        return
    if RunDir(path.parent.parent).results.is_file():  # a completed run: the loop says what resuming it means
        return
    behind = int(load_checkpoint(path).get("step", 0))
    try:
        ahead = int(load_checkpoint(last).get("step", 0))
    except CheckpointError as exc:  # a damaged last.pt: best.pt is what is left to train on from
        if path not in _SAID_DAMAGED:  # the config's resolution and the run each read it: said once
            _SAID_DAMAGED.add(path)
            log.warning("%s; resuming from %s (step %d), as asked: the steps after it are trained again and last.pt is "
                        "replaced at the next save", str(exc).split("; ")[0], path.name, behind)  # not its "use best.pt"
        return
    if ahead > behind:
        raise CheckpointError(f"resume={value} would train on from step {behind} and overwrite {last} (step {ahead}): "
                              f"the run's last {ahead - behind} steps would be lost; {shell_override('resume', path.parent.parent)} "
                              f"continues from {LAST}, or start a new run from these weights with "
                              f"{shell_override('trainer.init_from', value)}")


def refuse_another_dir(value: str, path: Path, run_dir: Path) -> None:
    """A resume writes into the run it continues: ``resume=A hydra.run.dir=B`` would train in B
    without A's ``best.pt`` and fail at the final test."""
    if path.exists() and canonical(run_dir_of(path)) != canonical(run_dir):
        raise ConfigError(f"resume={value} continues the run in {run_dir_of(path)}, but hydra.run.dir is {run_dir}; drop "
                          f"hydra.run.dir (or, for a new run that starts from its weights, pass trainer.init_from={value})")


def _under(key: str, prefixes: Any) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


RECORDED_BY_RUN = ("dataset.classes",)  # filled in by the run (a folder's split): empty on any command line
SAVED_ABSOLUTE = ("dataset.root", "dataset.split_file", "eval.lake_runs")  # paths a run saves absolute (Training)


def _recorded_by_run(key: str, saved: Any, typed: Any) -> bool:
    """Whether a typed key differs from the run's only as the run recorded it: a split it filled in itself (the
    command line leaves it empty), or a path typed relative that the run saved absolute. Such a key is not a
    change, so a resume that repeats the run's overrides (a sweep's ``resume=true``) is not refused for it."""
    if _under(key, RECORDED_BY_RUN):
        return typed in (None, {}, [])
    if key in SAVED_ABSOLUTE and isinstance(saved, str) and isinstance(typed, str):
        return canonical(os.path.expanduser(typed)) == canonical(saved)
    return False


def config_diff(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The dotted keys whose values differ between a saved run config and ``current``."""
    a, b = flatten(migrate_config(saved)), flatten(current)
    return [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and k != "resume"]


def last_config(run: Path, first: dict[str, Any]) -> dict[str, Any]:
    """The config a run last ran with: ``first`` (its ``.hydra/config.yaml``), or its latest resume record
    (``.hydra/resume-<time>/config.yaml``) that changed only :data:`RESUMABLE` keys. Records written before
    2026-12-05 held the command line's composition, not the config the run continued with: they differ
    elsewhere, and are passed over."""
    config = first
    for path in sorted((Path(run) / ".hydra").glob("resume-*/config.yaml")) if first else []:
        record = read_yaml(path, {})
        if record and not [k for k in config_diff(config, record) if not _under(k, RESUMABLE)]:
            config = record
    return config


def last_overrides(run: Path, first: list[str]) -> list[str]:
    """The command line a run last ran with: ``first`` (its ``.hydra/overrides.yaml``), each key a resume
    typed (``.hydra/resume-<time>/overrides.yaml``) replaced by the resume's value, ``resume=`` aside."""
    typed = {o.split("=", 1)[0]: o for o in first}
    for path in sorted((Path(run) / ".hydra").glob("resume-*/overrides.yaml")):
        record = read_yaml(path, [])
        typed.update({o.split("=", 1)[0]: o for o in record if isinstance(o, str) and not o.startswith("resume=")}
                     if isinstance(record, list) else {})
    return list(typed.values())


def resumed_config(cfg: Any, run_dir: Path, typed: dict[str, str] | list[str]) -> Any:
    """The config a resumed run continues with: its own, saved in its checkpoint, changed only where
    the user typed a key (``typed``: dotted keys or groups, each with the override as typed; ``"*"``
    for a modifier such as ``experiment=``) and only in the :data:`RESUMABLE` keys. So the printed
    resume command works as printed, and a resume never takes the command line's defaults for the
    run's settings."""
    from metalearn_cli.config_checks import validate_train_config

    path = resume_checkpoint(cfg.resume, run_dir)
    if path is None:
        return cfg
    saved = migrate_config(load_checkpoint(path)["config"])
    current = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    saved_flat, flat = flatten(saved), flatten(current)
    wanted = [k for k in config_diff(saved, current) if ("*" in typed or _under(k, typed))
              and not _recorded_by_run(k, saved_flat.get(k), flat.get(k))]
    refused = [k for k in wanted if not _under(k, RESUMABLE)]
    if refused:
        values, spelled = flatten(saved), typed if isinstance(typed, dict) else {k: k for k in typed}
        culprits = list(dict.fromkeys(spelled.get(next((t for t in spelled if t != "*" and _under(k, [t])), "*"), k)
                                      for k in refused))  # what the user typed: encoder=conv4, not encoder.widths
        raise CheckpointError(
            f"{path} was trained with {', '.join(f'{k}={values.get(k)!r}' for k in refused[:3])}"
            f"{f' (and {len(refused) - 3} more)' if len(refused) > 3 else ''}; a resume continues the run with its own "
            f"settings, so drop {', '.join(culprits[:3])} from the command, or start a new run")
    merged = OmegaConf.create(saved)
    for key in wanted:
        OmegaConf.update(merged, key, flat.get(key), merge=False)
    before, after = (saved.get("logger") or {}).get("name"), (current.get("logger") or {}).get("name")
    if before != after and any(_under(k, ["logger"]) for k in wanted):
        log.warning("%s logged with logger=%s and continues with logger=%s: its curves before this resume stay in the "
                    "first logger's files", run_dir_of(path), before, after)
    if "dataset.root" in wanted:  # made absolute with the rest of the run's paths (training.Training)
        log.warning("%s continues on the data set in dataset.root=%s (it trained on %s): the same images, moved, "
                    "or the run's numbers mix two data sets", run_dir_of(path), flat.get("dataset.root"),
                    saved["dataset"].get("root"))
    merged.resume = cfg.resume
    return validate_train_config(merged)


def check_same_run(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Resuming continues *the same* run: only the :data:`RESUMABLE` keys may differ."""
    changed = config_diff(saved, current)
    diff = [k for k in changed if not _under(k, RESUMABLE)]
    values = flatten(migrate_config(saved))
    if tests := [k for k in changed if _under(k, {"eval"})]:  # allowed, but the test is not the one the run began with
        now = flatten(current)
        log.warning("the test's settings differ from the run's start (%s): its final test uses the new ones",
                    ", ".join(f"{k}={now.get(k)!r}, was {values.get(k)!r}" for k in tests[:3]))
    if diff:
        raise CheckpointError(
            f"{path} was trained with another config ({', '.join(f'{k}={values.get(k)!r}' for k in diff[:3])}); "
            "resume with the same settings, or start a new run"
        )


def resumed_sweep_job(cfg: Any, run_dir: Path) -> Optional[float]:
    """A job of a sweep run again with ``resume=true`` (the same overrides, the same ``hydra.sweep.dir``):
    one that completed is kept as it is, and its best validation accuracy returned for the sweeper; one
    that never saved a ``last.pt`` (it had not begun) starts afresh (``cfg.resume`` cleared); None for a
    job to run, resumed or new."""
    from omegaconf import open_dict

    files = RunDir(Path(run_dir))
    if read_json(files.path / STATUS).get("status") == "completed" and files.results.is_file():
        return float(read_json(files.results).get("val_accuracy", float("nan")))
    if not files.last.is_file():
        with open_dict(cfg):
            cfg.resume = None
    return None


@contextlib.contextmanager
def begun_again(run_dir: Path, sweep_resumed: bool) -> Iterator[None]:
    """A resumed sweep's job that failed, or was stopped or killed, before its first ``last.pt`` begins again in its own
    dir, as the printed "finish the sweep" line promises (a joblib worker killed as its sweep ended leaves one marked
    ``interrupted`` with nothing to resume from, a SIGKILL one still marked ``running``): its files are set aside (``failed-<time>/``, ``stopped-<time>/``)
    while the new attempt is checked, and put back if that is refused or stopped before it begins. Not while a live
    process holds the job."""
    files = RunDir(Path(run_dir))
    ended = read_json(files.path / STATUS).get("status")  # "running" with no live process: killed (out of memory?)
    if not (sweep_resumed and not files.last.is_file() and ended in ("failed", "interrupted", "running")
            and held(files.path) and not held_elsewhere(files.path)):
        yield
        return
    how = "failed" if ended == "failed" else "stopped"
    kept = set_aside(files.path, how)
    try:
        yield
    except BaseException:
        put_back(kept)
        raise
    log.warning("%s %s before its first checkpoint and begins again; that attempt is kept in %s", files.path,
                how if how == "failed" else "was stopped", kept)


def warn_changed_course(state: dict[str, Any], iterations: int, iterations_key: str, where: str, processes: int) -> None:
    """A resume that goes on, but not as the run would have: another length (a new learning-rate schedule
    from here) or another number of processes than the checkpoint's (``state``) trained it. From step 0 (a
    run stopped in its pre-training stage, which runs in one process) it goes on exactly as a new run of those
    settings would, in any number of processes."""
    if state.get("step") == 0:
        return
    began = (state["config"].get("trainer") or {}).get("iterations")  # the stage's own config holds its length there
    if isinstance(began, int) and began != iterations:
        log.warning("%s=%d where the run began with %d: from %s the learning rate follows a schedule over %d steps "
                    "(neither the one it had nor what a run of %d from the start would have)", iterations_key,
                    iterations, began, where, iterations, iterations)
    before = int(state.get("processes", 1))
    if before != processes:
        log.warning("the run was trained by %d process%s and continues in %d: its remaining steps split each meta-batch "
                    "otherwise (with per-rank batch-norm statistics under mgd), so it will not end as it would have; "
                    "for that, resume it %s", before, "es" if before > 1 else "", processes,
                    f"with torchrun --nproc-per-node={before}" if before > 1 else "in one process, without torchrun")


def continue_command(run_dir: Path, processes: int) -> str:
    """The command that continues a stopped run: under torchrun, with as many processes as it had (one
    process continues it too, but not as they would have: see :func:`warn_changed_course`)."""
    resume = shell_override("resume", run_dir)
    return f"torchrun --nproc-per-node={processes} -m metalearn_cli train {resume}" if processes > 1 else f"metalearn train {resume}"
