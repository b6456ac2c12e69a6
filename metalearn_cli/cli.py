"""The Hydra edge: ``metalearn <subcommand> [overrides]``.

Each subcommand is its own Hydra app with its own primary config (``configs/train.yaml``,
``configs/eval.yaml``), so ``-m`` multirun, ``--help``, ``--cfg``, shell completion and launchers
work unchanged. User errors (:class:`MetalearnError`, bad overrides, invalid values) become one
line on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from metalearn_cli.console import as_user_error, one_line, suggest
from metalearn_cli.errors import ConfigError, InternalError, Interrupted, MetalearnError
from metalearn_cli.command_line import (
    CONFIG_FLAGS, FLAG_COMMANDS, version_line, PRINTING_FLAGS, add_override, USAGE, VALUE_FLAGS, check_debug, claim_fresh, flag_present, hydra_argv, print_help, rank, refuse_foreign_target,
    refuse_unknown_flags, required,
    shell_completion, typed_keys, with_run_dir,
)
from metalearn_cli.rundir import RunGuard, canonical, exclusive, held, refuse_replacing
from metalearn_cli.schema import flatten

CONFIG_PATH = "pkg://metalearn_cli.configs"
log = logging.getLogger("metalearn")

class _JobFailed(BaseException):
    """Carries a single run's user error past Hydra, which would add its own report to an Exception."""

    def __init__(self, error: MetalearnError) -> None:
        super().__init__(str(error))
        self.error = error


_claimed: Optional[Path] = None  # the default run dir main() made for this command (removed if refused)


def _hydra_record(cfg: DictConfig) -> dict[str, str]:
    """The ``.hydra/`` files Hydra would write, written by the job itself once it is accepted."""
    hc = HydraConfig.get()
    return {"config.yaml": OmegaConf.to_yaml(cfg),
            "hydra.yaml": OmegaConf.to_yaml(OmegaConf.create({"hydra": OmegaConf.to_container(hc)})),
            "overrides.yaml": OmegaConf.to_yaml(OmegaConf.create(list(hc.overrides.task)))}


def _run_job(job: Callable[[Callable[[], None]], float], cfg: DictConfig) -> float:
    """Run one job under its run dir's guard: it writes nothing until ``accept()``; a failure is
    recorded only in a dir that held no run. In a sweep a failing job fails alone and the sweep goes on."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    guard = RunGuard(run_dir, claimed=_claimed == canonical(run_dir), writer=rank() == 0)
    record = _hydra_record(cfg)
    log_name = hc.job.name if hc.runtime.choices.get("hydra/job_logging") == "metalearn" else None
    try:
        try:
            return job(lambda: guard.accept(record, log_name))
        except (OSError, OmegaConfBaseException) as exc:
            raise as_user_error(exc) from exc
    except Interrupted as exc:
        raise _JobFailed(exc) from exc  # an interrupt ends the whole sweep; the loop saved and marked it
    except MetalearnError as exc:
        error: MetalearnError = exc
        guard.failed(str(exc), None, record)
    except Exception as exc:
        details = traceback.format_exc()
        where = run_dir / "error.txt"
        if not guard.failed("unexpected error; see error.txt", details, record):
            fd, name = tempfile.mkstemp(prefix="metalearn-error-", suffix=".txt")
            os.write(fd, details.encode())
            os.close(fd)
            where = Path(name)
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        error = InternalError(f"{type(exc).__name__}: {line[:200]}; this is a bug, the traceback is in {where}; please report it")
    finally:
        guard.close()
    if hc.mode == RunMode.MULTIRUN:
        log.error("job failed: %s", error)
        return float("nan")  # sweepers record a failed trial (Optuna: FAIL) and go on
    raise _JobFailed(error)


@hydra.main(config_path=CONFIG_PATH, config_name="train", version_base="1.3")
def train_app(cfg: DictConfig) -> float:
    """Returns the best validation accuracy: the objective a sweeper maximises."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)

    def job(accept: Callable[[], None]) -> float:
        from metalearn_cli.loop import TrainingRun
        from metalearn_cli.resume import resumed_config

        refuse_foreign_target("train", run_dir, resuming=True)  # inside another run: refused (held: by the loop)
        config = resumed_config(cfg, run_dir, typed_keys(list(HydraConfig.get().overrides.task)))
        run = TrainingRun(config, run_dir)  # every check; a refusal leaves an existing run as it was
        accept()
        return run.run()

    return _run_job(job, cfg)


@hydra.main(config_path=CONFIG_PATH, config_name="eval", version_base="1.3")
def eval_app(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)

    def job(accept: Callable[[], None]) -> float:
        from metalearn_cli.evaluation import evaluate

        required(cfg, "eval", "checkpoint")
        refuse_foreign_target("eval", run_dir, resuming=False)  # also under -m, -cd, ...
        accept()
        return evaluate(cfg, run_dir)

    return _run_job(job, cfg)


@hydra.main(config_path=CONFIG_PATH, config_name="predict", version_base="1.3")
def predict_app(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)

    def job(accept: Callable[[], None]) -> float:
        from metalearn_cli.predict import predict

        required(cfg, "predict", "checkpoint", "support", "query")
        refuse_foreign_target("predict", run_dir, resuming=False)  # also under -m, -cd, ...
        accept()
        return predict(cfg, run_dir)

    return _run_job(job, cfg)


@hydra.main(config_path=CONFIG_PATH, config_name="export", version_base="1.3")
def export_app(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)

    def job(accept: Callable[[], None]) -> float:
        from metalearn_cli.export import export_command

        required(cfg, "export", "checkpoint", "out")
        refuse_foreign_target("export", run_dir, resuming=False)  # also under -m, -cd, ...
        accept()
        return export_command(cfg, run_dir)

    return _run_job(job, cfg)


APPS: dict[str, Callable[[], Any]] = {"train": train_app, "eval": eval_app, "predict": predict_app, "export": export_app}


def main(argv: Optional[list[str]] = None) -> int:
    """Console entry point: dispatch to a subcommand's Hydra app; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    if args[0] in ("--version", "-V", "version"):
        print(version_line())
        return 0
    command, rest = args[0], args[1:]
    for flag in ("-sc", "--shell-completion"):
        for i, a in enumerate(args[:-1]):
            if a == flag:
                return shell_completion(args[i + 1], APPS)
    if command in FLAG_COMMANDS:
        from metalearn_cli import compare, report, sample_task

        try:
            return {"report": report.main, "sample-task": sample_task.main, "compare": compare.main}[command](rest)
        except MetalearnError as exc:
            print(f"metalearn {command}: error: {exc}", file=sys.stderr)
            return 2
    if command not in APPS:
        hint = suggest(command, [*APPS, *FLAG_COMMANDS])
        print(f"metalearn: error: unknown command '{command}'; {hint}choose one of: {', '.join([*APPS, *FLAG_COMMANDS])} "
              "(see metalearn --help)",
              file=sys.stderr)
        return 2
    return _hydra_command(command, rest)


def _hydra_command(command: str, rest: list[str]) -> int:
    """A Hydra subcommand: its run dir placed and checked, then the app run under the run dir's lock."""
    from metalearn_cli.components import register_configs

    global _claimed
    _claimed = None  # set again only if this command claims a default dir

    register_configs()
    rest = add_override(rest, "hydra.output_subdir=null")  # a job writes its .hydra/ record itself, once accepted
    if rank() > 0:  # torchrun: rank 0 alone writes the run dir
        rest = add_override(rest, "hydra/job_logging=disabled")
    if flag_present(rest, ("--help", "-h")):
        return print_help(command, rest, _run_app)
    scratch: list[Path] = []
    try:
        refuse_unknown_flags(command, rest, _config_keys)
        values = _override_values(rest)
        check_debug(rest, values)
        args, run_dir = _place_run(command, rest, values, scratch)
    except MetalearnError as exc:
        print(f"metalearn {command}: error: {exc}", file=sys.stderr)
        return 2
    try:
        return _guarded(command, args, run_dir)
    finally:
        for folder in scratch:
            shutil.rmtree(folder, ignore_errors=True)


def _override_values(args: list[str]) -> dict[str, Any]:
    """The value of each ``key=value`` override as Hydra reads it (quotes removed, escapes applied)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, values = OverridesParser.create(), {}
    for before, arg in zip(["", *args], args):
        if arg.startswith("-") or (before.startswith("-") and before.split("=", 1)[0] in VALUE_FLAGS):
            continue
        if "=" not in arg:
            raise ConfigError(f"{arg!r} is not key=value; if it is the rest of a value with spaces, quote the whole value "
                              "inside the shell's quotes: 'key=\"my folder\"' (see docs/faq.md)")
        try:
            override = parser.parse_override(arg)
        except HydraException as exc:
            raise ConfigError(f"cannot read {arg!r} ({one_line(exc)}); a value with spaces or non-ASCII characters "
                              "needs quotes inside the shell's: 'key=\"my folder/ü\"' (see docs/faq.md)") from None
        if not override.is_delete() and not override.is_sweep_override():
            values[override.key_or_group] = override.value()
    return values


def _place_run(command: str, args: list[str], values: dict[str, Any], scratch: list[Path]) -> tuple[list[str], Optional[Path]]:
    """The run dir a single job will write, in its canonical spelling, and the arguments that hand
    Hydra exactly that path (None: a sweep, or a flag that writes no run dir). A default dir is
    claimed fresh; a dir named on the command line is checked before Hydra writes anything in it."""
    from metalearn_cli.resume import refuse_another_dir, resume_value, run_dir_of

    multirun = str(values.get("hydra.mode", "")).upper() == "MULTIRUN"  # the same as -m: each job checks its own dir
    if multirun or flag_present(args, ("-m", "--multirun", *PRINTING_FLAGS)) or flag_present(args, CONFIG_FLAGS):
        return args, None
    named = values.get("hydra.run.dir")
    if named is not None and (not isinstance(named, (str, int, float)) or str(named).strip() in ("", "???")):
        raise ConfigError(f"hydra.run.dir={named!r} is not a folder; name a folder for the run, or leave it out for "
                          "outputs/<command>/<time>")
    named = None if named is None else str(named)
    resume = resume_value(values.get("resume"))
    if resume not in (None, "true") and Path(resume).exists():
        if not held(run_dir_of(Path(resume))):
            raise ConfigError(f"resume={resume} is not a run dir or a checkpoint inside one; pass the run dir a "
                              "training run wrote (or its checkpoints/last.pt)")
        named = named or str(run_dir_of(Path(resume)))  # resume=<run> continues in that run's own dir
    if rank() > 0 and named is None:
        scratch.append(Path(tempfile.mkdtemp(prefix="metalearn-rank-")))  # Hydra creates its run dir; rank 0 writes the real one
        return with_run_dir(args, scratch[-1]), None
    if named is None or "${" in str(named):
        resolved = _composed_run_dir(command, args)
        if resolved is None:
            return args, None  # the config does not compose: Hydra reports why before writing anything
        if named is None:
            global _claimed  # noqa: PLW0603
            _claimed = claim_fresh(canonical(resolved))
            return with_run_dir(args, _claimed), _claimed
        named = resolved
    run_dir = canonical(named)
    if command == "export" and isinstance(values.get("out"), str):
        refuse_replacing(values["out"])
    if resume not in (None, "true"):
        refuse_another_dir(resume, Path(resume), run_dir)
    if rank() > 0:
        return with_run_dir(args, run_dir), None
    refuse_foreign_target(command, run_dir, resuming=resume is not None)
    return with_run_dir(args, run_dir), run_dir


def _config_keys(command: str) -> list[str]:
    """Every dotted key of ``command``'s default config (for "write it as key=value" hints)."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="metalearn_cli.configs", version_base="1.3"):
        return list(flatten(OmegaConf.to_container(compose(config_name=command), resolve=False)))


def _composed_run_dir(command: str, args: list[str]) -> Optional[str]:
    """``hydra.run.dir`` resolved as Hydra will resolve it (interpolations, the default's time)."""
    from hydra import compose, initialize_config_module

    overrides = [a for a in args if not a.startswith("-")]
    try:
        with initialize_config_module(config_module="metalearn_cli.configs", version_base="1.3"):
            cfg = compose(config_name=command, overrides=overrides, return_hydra_config=True)
            HydraConfig.instance().set_config(cfg)
            return str(OmegaConf.select(cfg, "hydra.run.dir"))
    except (HydraException, OmegaConfBaseException, ValueError):
        return None


def _guarded(command: str, args: list[str], run_dir: Optional[Path]) -> int:
    """Run the command holding its run dir's lock (refused at once if another process holds it)."""
    try:
        with exclusive(run_dir) if run_dir is not None else contextlib.nullcontext():
            with hydra_argv([f"metalearn {command}", *args]):
                return _run_app(command)
    except MetalearnError as exc:  # the lock is held by another process
        print(f"metalearn {command}: error: {exc}", file=sys.stderr)
        return 2


def _run_app(command: str) -> int:
    """Run one subcommand's Hydra app; every user error becomes one line on stderr and its exit code."""
    try:
        try:
            APPS[command]()
        except _JobFailed as failed:
            raise failed.error from None
    except Interrupted as exc:
        print(f"metalearn {command}: stopped: {exc}", file=sys.stderr)
        return 0 if exc.signal_name == "SIGTERM" else 130  # pre-emption is an orderly stop
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
        print(f"metalearn {command}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # the file system refused before the job ran (Hydra writing .hydra/, ...)
        print(f"metalearn {command}: error: {as_user_error(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
