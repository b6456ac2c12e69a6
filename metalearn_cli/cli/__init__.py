"""The Hydra edge: ``metalearn <subcommand> [overrides]``.

Each subcommand is its own Hydra app with its own primary config (``configs/train.yaml``,
``configs/eval.yaml``), so ``-m`` multirun, ``--help``, ``--cfg``, shell completion and launchers
work unchanged. User errors (:class:`MetalearnError`, bad overrides, invalid values) become one
line on stderr and exit code 2; anything else (a bug, or a sweeper's or launcher's own failure) is one
line with exit code 1, its traceback in a file the line names.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Optional

from metalearn_cli.cli import placement
from metalearn_cli.cli.apps import APPS, SWEEP_JOBS, register_configs, run_app
from metalearn_cli.cli.placement import config_keys, override_values, place_run, print_help, refused_config
from metalearn_cli.cli.sweep_dirs import no_empty_sweep, sweep_lock
from metalearn_cli.command_help import USAGE, shell_completion, version_line
from metalearn_cli.command_line import (
    FLAG_COMMANDS, add_override, check_debug, check_groups, expand_home, flag_present, flags_first, hydra_argv, rank, refuse_unknown_flags, sweep_requested,
)
from metalearn_cli.console import as_user_error, errors_once_under_torchrun, suggest
from metalearn_cli.errors import MetalearnError
from metalearn_cli.rundir import exclusive

__all__ = ["APPS", "main", "register_configs"]


def main(argv: Optional[list[str]] = None) -> int:
    """Console entry point: dispatch to a subcommand's Hydra app; returns the exit code. A Ctrl-C that
    lands before a command's own handling (while torch or Hydra is still being imported) is one line too."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        with errors_once_under_torchrun(rank()):
            return _dispatch(args)
    except KeyboardInterrupt:
        print(f"metalearn{' ' + args[0] if args and not args[0].startswith('-') else ''}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # outside any job (a sweeper's or launcher's own failure): one line, the traceback in a file
        return _unexpected(args, exc)


def _unexpected(args: list[str], exc: Exception) -> int:
    fd, name = tempfile.mkstemp(prefix="metalearn-error-", suffix=".txt")
    os.write(fd, traceback.format_exc().encode())
    os.close(fd)
    line = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    command = " " + args[0] if args and not args[0].startswith("-") else ""
    plugin = " (in a sweeper or launcher: check its hydra.sweeper.* or hydra.launcher.* settings)" if sweep_requested(args) else ""
    print(f"metalearn{command}: unexpected error: {type(exc).__name__}: {line}{plugin}; the traceback is in {name}",
          file=sys.stderr)
    return 1


def _dispatch(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    if args[0] in ("--version", "-V", "version"):
        print(version_line())
        return 0
    command, rest = args[0], args[1:]
    if args[-1] in ("-sc", "--shell-completion"):
        print(f"metalearn: error: {args[-1]} needs what to do: install=bash (or zsh, fish), uninstall=bash, or "
              f"query=... (e.g. eval \"$(metalearn {args[-1]} install=bash)\")", file=sys.stderr)
        return 2
    for flag in ("-sc", "--shell-completion"):
        for i, a in enumerate(args[:-1]):
            if a == flag:
                register_configs()
                return shell_completion(args[i + 1], APPS)
    if command in FLAG_COMMANDS:
        from metalearn_cli import compare, report, sample_task

        try:
            return {"report": report.main, "sample-task": sample_task.main, "compare": compare.main}[command](rest)
        except MetalearnError as exc:
            print(f"metalearn {command}: error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:  # a read-only or full folder where the command writes
            written = "--out (by default the folder beside the runs)" if command != "sample-task" else "--out"
            print(f"metalearn {command}: error: {as_user_error(exc, written)}", file=sys.stderr)
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
    placement.claimed = None  # set again only if this command claims a default dir

    register_configs()
    rest = add_override(flags_first(expand_home(rest)), "hydra.output_subdir=null")  # a job writes its .hydra/ record itself, once accepted
    if rank() > 0:  # torchrun: rank 0 alone writes the run dir
        rest = add_override(rest, "hydra/job_logging=disabled")
    if flag_present(rest, ("--help", "-h")):
        return print_help(command, rest)
    scratch: list[Path] = []
    try:
        refuse_unknown_flags(command, rest, config_keys)
        values = override_values(rest)
        check_debug(rest, values)
        check_groups(command, values)
        args, run_dir = place_run(command, rest, values, scratch)
    except MetalearnError as exc:
        print(f"metalearn {command}: error: {exc}", file=sys.stderr)
        return 2
    try:
        with no_empty_sweep(command, values, sweep_requested(rest) and run_dir is None, SWEEP_JOBS):
            try:
                held = sweep_lock(command, rest, values)  # checked again under it: a sweep begun or ended since is seen
            except MetalearnError as exc:
                print(f"metalearn {command}: error: {exc}", file=sys.stderr)
                return 2
            with held:
                code = _guarded(command, args, run_dir)
        adjusted: list[str] = []
        refused = refused_config(command, rest, adjusted) if code == 0 and flag_present(rest, ("--cfg", "-c")) else None
        for line in adjusted if _printed_job(rest) else []:  # Hydra printed the config as composed; the run changes it so
            print(f"metalearn {command}: note: a run of this config changes what is printed above: {line}", file=sys.stderr)
        if refused:  # printed as asked, and said to be refused, as a run of it would be
            print(f"metalearn {command}: error: a run of this config would be refused: {refused}", file=sys.stderr)
            return 2
        return code
    finally:
        for folder in scratch:
            shutil.rmtree(folder, ignore_errors=True)


def _printed_job(args: list[str]) -> bool:
    """Whether ``--cfg`` printed the job's config whole (``job`` or ``all``, no ``--package``): what a note on the
    run's changes to it is about."""
    for i, arg in enumerate(args):
        if arg in ("--cfg", "-c") and i + 1 < len(args):
            return args[i + 1] in ("job", "all") and not flag_present(args, ("--package", "-p"))
    return False


def _guarded(command: str, args: list[str], run_dir: Optional[Path]) -> int:
    """Run the command holding its run dir's lock (refused at once if another process holds it)."""
    try:
        with exclusive(run_dir) if run_dir is not None else contextlib.nullcontext():
            with hydra_argv([f"metalearn {command}", *args]):
                return run_app(command)
    except MetalearnError as exc:  # the lock is held by another process
        print(f"metalearn {command}: error: {exc}", file=sys.stderr)
        return 2
