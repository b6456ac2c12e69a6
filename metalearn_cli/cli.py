"""The Hydra edge: ``metalearn <subcommand> [overrides]``.

Each subcommand is its own Hydra app with its own primary config (``configs/train.yaml``,
``configs/eval.yaml``), so ``-m`` multirun, ``--help``, ``--cfg``, shell completion and launchers
work unchanged. User errors (:class:`MetalearnError`, bad overrides, invalid values) become one
line on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from metalearn_cli.console import as_user_error, one_line, suggest
from metalearn_cli.errors import ConfigError, Interrupted, MetalearnError
from metalearn_cli.rundir import RunGuard, exclusive, is_training_run, record_failure, run_dir_of

CONFIG_PATH = "pkg://metalearn_cli.configs"
log = logging.getLogger("metalearn")

USAGE = """\
usage: metalearn <command> [key=value ...] [group=option ...] [hydra flags]

Meta-learning experiments for few-shot image recognition, configured with Hydra.

commands:
  train     meta-train a meta-network on episodes, validate, test best.pt, write a run dir
  eval      test a checkpoint on fixed tasks of any episode shape
  predict   adapt a trained meta-network to your own support images and classify query images
  export    write a checkpoint's meta-knowledge alone, for metalearn_cli.load() and predict
  report    one table (markdown + CSV) and plots over run dirs or sweep dirs
  sample-task  write a small Omniglot task folder (support/, query/) to try predict on

examples:
  metalearn train                                    # ProtoNet on Omniglot 5-way 1-shot (embedded data, CPU ok)
  metalearn train dataset=omniglot strategy=mgd episode=20way1shot trainer.iterations=2000 seed=3
  metalearn train debug=smoke                        # seconds, on generated data
  metalearn train experiment=maml_omniglot_5w1s      # a published table cell (configs/experiment/)
  metalearn train -m seed=0,1,2                      # a multirun sweep: one run dir per job
  metalearn train resume=outputs/train/<run>         # continue an interrupted run in its own dir
  metalearn eval checkpoint=outputs/train/<run>/checkpoints/best.pt episode=5way5shot
  metalearn predict checkpoint=<run>/checkpoints/best.pt support=task/support query=task/query
  metalearn export checkpoint=<run>/checkpoints/best.pt out=meta_knowledge.pt
  metalearn report outputs/multirun/train/<time>     # table, learning curves, accuracy chart
  metalearn sample-task --out my_task                # then: metalearn predict ... support=my_task/support query=my_task/query
  metalearn --version
  metalearn train --help                             # config groups, options and the composed config
  metalearn train --cfg job                          # print the composed config and exit

Run dirs go to outputs/<command>/...; each holds .hydra/, checkpoints/, metrics.jsonl,
tensorboard/ and results.json. Errors print one line and exit with code 2.
"""


class _JobFailed(BaseException):
    """Carries a single run's user error past Hydra, which would add its own report to an Exception."""

    def __init__(self, error: MetalearnError) -> None:
        super().__init__(str(error))
        self.error = error


class InternalError(MetalearnError):
    """A bug: its traceback is in a file, the console gets one line (exit code 1)."""


_guard = RunGuard(None)  # set by main() for the run dir a command names


def _run_job(job: Callable[[], float], run_dir: Path) -> float:
    """Run one job; record failures in the run dir (never in an existing run it refused: that one is
    put back as it was). In a sweep a failing job fails alone and the sweep goes on."""
    try:
        try:
            return job()
        except (OSError, OmegaConfBaseException) as exc:
            raise as_user_error(exc) from exc
    except Interrupted as exc:
        raise _JobFailed(exc) from exc  # an interrupt ends the whole sweep; the loop saved and marked it
    except MetalearnError as exc:
        error: MetalearnError = exc
        if _guard.protects:
            _guard.undo()
        else:
            record_failure(run_dir, str(exc))
    except Exception as exc:
        details = traceback.format_exc()
        where = run_dir / "error.txt"
        if _guard.protects:
            _guard.undo()
            fd, name = tempfile.mkstemp(prefix="metalearn-error-", suffix=".txt")
            os.write(fd, details.encode())
            os.close(fd)
            where = Path(name)
        else:
            record_failure(run_dir, "unexpected error; see error.txt", details)
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        error = InternalError(f"{type(exc).__name__}: {line[:200]}; this is a bug, the traceback is in {where}; please report it")
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        log.error("job failed: %s", error)
        return float("nan")  # sweepers record a failed trial (Optuna: FAIL) and go on
    raise _JobFailed(error)


@hydra.main(config_path=CONFIG_PATH, config_name="train", version_base="1.3")
def train_app(cfg: DictConfig) -> float:
    """Returns the best validation accuracy: the objective a sweeper maximises."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)

    def job() -> float:
        from metalearn_cli.loop import TrainingRun, resumed_config

        config = resumed_config(cfg, run_dir, _typed_keys(list(HydraConfig.get().overrides.task)))
        run = TrainingRun(config, run_dir)  # every check; a refusal leaves an existing run as it was
        _guard.accept()
        return run.run()

    return _run_job(job, run_dir)


@hydra.main(config_path=CONFIG_PATH, config_name="eval", version_base="1.3")
def eval_app(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)

    def job() -> float:
        from metalearn_cli.evaluation import evaluate

        _required(cfg, "eval", "checkpoint")
        return evaluate(cfg, run_dir)

    return _run_job(job, run_dir)


def _required(cfg: DictConfig, command: str, *keys: str) -> None:
    missing = [k for k in keys if OmegaConf.is_missing(cfg, k)]
    if missing:
        raise ConfigError(f"metalearn {command} needs {' and '.join(f'{k}=...' for k in missing)} (see metalearn {command} --help)")


@hydra.main(config_path=CONFIG_PATH, config_name="predict", version_base="1.3")
def predict_app(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)

    def job() -> float:
        from metalearn_cli.predict import predict

        _required(cfg, "predict", "checkpoint", "support", "query")
        return predict(cfg, run_dir)

    return _run_job(job, run_dir)


@hydra.main(config_path=CONFIG_PATH, config_name="export", version_base="1.3")
def export_app(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)

    def job() -> float:
        from metalearn_cli.export import export_command

        _required(cfg, "export", "checkpoint", "out")
        return export_command(cfg, run_dir)

    return _run_job(job, run_dir)


APPS: dict[str, Callable[[], Any]] = {"train": train_app, "eval": eval_app, "predict": predict_app, "export": export_app}


MODIFIERS = ("experiment", "debug", "sweep")  # groups whose options set keys anywhere (@package _global_)


def _typed_keys(overrides: list[str]) -> list[str]:
    """The config keys (or groups) a command line sets; ``"*"`` when a modifier may set any key."""
    keys = []
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if key in MODIFIERS:
            keys.append("*")
        elif key != "resume" and not key.startswith("hydra"):
            keys.append(key.split("@", 1)[0])
    return keys


def _resume_overrides(args: list[str]) -> list[str]:
    """``resume=<run dir or checkpoint>`` continues in that run dir unless hydra.run.dir is given."""
    if any(a.startswith("hydra.run.dir=") for a in args):
        return args
    for a in args:
        if a.startswith("resume="):
            value = a.split("=", 1)[1]
            path = Path(value)
            if value.lower() not in ("true", "false", "null", "none", "") and path.exists():
                return [*args, f"hydra.run.dir={run_dir_of(path)}"]
    return args


def _shell_completion(request: str) -> int:
    """Hydra's shell completion for the whole command: the script names ``metalearn`` and each query
    goes to the app of the subcommand typed so far (Hydra alone would take ``train`` for an override)."""
    words = os.environ.get("COMP_LINE", "").split(" ")
    if request.startswith("query="):
        if len(words) <= 2:  # still typing the subcommand
            print(" ".join(c for c in APPS if c.startswith(words[-1] if len(words) == 2 else "")))
            return 0
        if words[1] not in APPS:
            return 0
        command = words[1]
        os.environ["COMP_LINE"] = " ".join([words[0], *words[2:]])
    else:
        command = "train"  # install/uninstall: any app prints the same script
    from metalearn_cli.components import register_configs

    register_configs()
    saved_argv = sys.argv
    sys.argv = ["metalearn", "--shell-completion", request]
    try:
        APPS[command]()
    finally:
        sys.argv = saved_argv
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """Console entry point: dispatch to a subcommand's Hydra app; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    if args[0] in ("--version", "-V", "version"):
        from metalearn_cli import __version__

        print(f"metalearn {__version__}")
        return 0
    command, rest = args[0], args[1:]
    for flag in ("-sc", "--shell-completion"):
        for i, a in enumerate(args[:-1]):
            if a == flag:
                return _shell_completion(args[i + 1])
    if command in ("report", "sample-task"):
        from metalearn_cli import report, sample_task

        try:
            return {"report": report.main, "sample-task": sample_task.main}[command](rest)
        except MetalearnError as exc:
            print(f"metalearn {command}: error: {exc}", file=sys.stderr)
            return 2
    if command not in APPS:
        hint = suggest(command, [*APPS, "report", "sample-task"])
        print(f"metalearn: error: unknown command '{command}'; {hint}choose one of: {', '.join([*APPS, 'report', 'sample-task'])} "
              "(see metalearn --help)",
              file=sys.stderr)
        return 2
    from metalearn_cli.components import register_configs

    register_configs()
    if int(os.environ.get("RANK", "0")) > 0:  # torchrun: rank 0 alone writes the run dir
        rest = [*rest, "hydra.output_subdir=null", "hydra/job_logging=disabled"]
    args = _resume_overrides(rest)
    if any(a in ("--help", "-h") for a in args):
        return _help(command, args)
    try:
        _check_debug(args)
        run_dir = _named_run_dir(command, args)
    except MetalearnError as exc:
        print(f"metalearn {command}: error: {exc}", file=sys.stderr)
        return 2
    return _guarded(command, args, run_dir)


def _check_debug(args: list[str]) -> None:
    """``debug=smoke`` runs on generated data: a data set chosen on the same command line cannot be honoured."""
    if "debug=smoke" in args:
        chosen = [a for a in args if a.startswith("dataset=") and a != "dataset=synthetic"]
        if chosen:
            raise ConfigError(f"debug=smoke runs on generated data (dataset=synthetic), so {chosen[0]} cannot apply; "
                              "drop one of them (for a short run on real data: trainer.iterations=50 eval.episodes=100)")
        if any(a.startswith("experiment=") for a in args):
            print("metalearn train: note: debug=smoke replaces the preset's data set by generated 28x28 images and "
                  "shrinks its budget; its figures are not comparable with the published one", file=sys.stderr)


def _named_run_dir(command: str, args: list[str]) -> Optional[Path]:
    """The run dir named with ``hydra.run.dir=`` (None: Hydra's fresh default, or a sweep), checked
    before Hydra writes anything into it."""
    if any(a in ("-m", "--multirun") for a in args):
        return None
    given = [a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")]
    if not given:
        return None
    if not given[-1].strip():
        raise ConfigError("hydra.run.dir is empty; name a folder for the run, or leave it out for outputs/<command>/<time>")
    run_dir = Path(given[-1])
    if command != "train" and is_training_run(run_dir):
        raise ConfigError(f"{run_dir} is a training run; metalearn {command} writes its own files, so give it another "
                          f"hydra.run.dir (or leave it out: outputs/{command}/<time>)")
    return run_dir


GROUPS = {  # the config groups each command accepts (its --help lists only these)
    "train": ("dataset", "episode", "encoder", "decoder", "strategy", "optimizer", "pretrain", "experiment", "sweep", "debug"),
    "eval": ("episode",), "predict": (), "export": (),
}


def _help(command: str, args: list[str]) -> int:
    """Hydra's --help, listing only the groups ``command`` accepts (not the internal ``schema/*``)."""
    out, code = io.StringIO(), 0
    try:
        with contextlib.redirect_stdout(out), _hydra_argv([f"metalearn {command}", *args]):
            code = _run_app(command)
    except SystemExit as exc:  # Hydra exits after printing the help
        code = int(exc.code or 0)
    for line in out.getvalue().splitlines():
        group = line.split(":", 1)[0] if ": " in line and " " not in line.split(":", 1)[0] else None
        if group is None or group in GROUPS[command] or not _is_group_line(group):
            print(line)
    return code


def _is_group_line(name: str) -> bool:
    return name.startswith("schema/") or name in GROUPS["train"]


def _guarded(command: str, args: list[str], run_dir: Optional[Path]) -> int:
    """Run the command holding its run dir's lock; an existing run it refuses is left as it was."""
    global _guard
    _guard = RunGuard(run_dir)
    try:
        with exclusive(run_dir) if run_dir is not None else contextlib.nullcontext():
            with _hydra_argv([f"metalearn {command}", *args]):
                return _run_app(command)
    except MetalearnError as exc:  # the lock is held by another process
        print(f"metalearn {command}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        _guard = RunGuard(None)


@contextlib.contextmanager
def _hydra_argv(argv: list[str]) -> Iterator[None]:
    """``sys.argv`` as Hydra reads it, and Hydra's errors raised to us instead of its multi-line report."""
    saved_env, saved_argv = os.environ.get("HYDRA_FULL_ERROR"), sys.argv
    os.environ["HYDRA_FULL_ERROR"] = "1"
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved_argv
        if saved_env is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_env


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
