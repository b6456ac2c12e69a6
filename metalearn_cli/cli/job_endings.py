"""How a job ends other than by finishing: a Ctrl-C (or eval's, predict's, export's SIGTERM) the training loop
did not handle, and a bug. Split from :mod:`metalearn_cli.cli.apps`, whose job wrapper calls these."""

from __future__ import annotations

import math
import os
import tempfile
import traceback
from pathlib import Path

from metalearn_cli.console import shell_override
from metalearn_cli.errors import InternalError, Interrupted, MetalearnError
from metalearn_cli.files import read_json
from metalearn_cli.run_guard import RunGuard
from metalearn_cli.rundir import STAGE, STATUS, RunDir, mark_interrupted, write_status


class JobFailed(BaseException):
    """Carries a single run's user error past Hydra, which would add its own report to an Exception."""

    def __init__(self, error: MetalearnError) -> None:
        super().__init__(str(error))
        self.error = error


def _saved_before(run_dir: Path) -> Interrupted | None:
    """A training run stopped by a Ctrl-C the loop did not catch (a second one while the first was being
    handled, or one between its stages): how to continue, when a checkpoint was saved before."""
    saved = [p for p in (RunDir(run_dir).last, RunDir(run_dir / STAGE).last) if p.is_file()]
    if not saved:
        return None
    return Interrupted("SIGINT", f"SIGINT: stopped at once; {saved[0]} was saved before; continue with: "
                                 f"metalearn train {shell_override('resume', run_dir)}")


DONE = {"eval": "results.json", "predict": "predictions.json", "export": "export.json"}  # each written last but status


def _finished(command: str, run_dir: Path) -> bool:
    """Whether ``command`` had written its results when a Ctrl-C or SIGTERM came (marked completed if its
    status was still to be written): a stop a moment after the work was done is no failure."""
    if command not in DONE or not (run_dir / DONE[command]).is_file():
        return False
    if (run_dir / STATUS).is_file() and read_json(run_dir / STATUS).get("status") != "completed":
        write_status(run_dir, "completed")
    return True


def after_ctrl_c(command: str, run_dir: Path, guard: RunGuard) -> float:
    """A Ctrl-C (or eval's, predict's, export's SIGTERM) the training loop did not handle: the work stands if it
    was written; else the dir is marked interrupted, and a training run that saved says how to resume."""
    if _finished(command, run_dir):  # the signal came after the work was written
        guard.log_end("finished before the interrupt came")
        return math.nan
    guard.interrupted()
    if command == "train" and (stopped := _saved_before(run_dir)) is not None:  # a Ctrl-C outside the loop's watch
        if guard.writer:
            mark_interrupted(run_dir)  # the run's own process: its lock is held
        guard.log_end(f"stopped: {stopped}")
        raise JobFailed(stopped) from None
    raise KeyboardInterrupt


def internal_error(exc: Exception, guard: RunGuard, record: dict[str, str], run_dir: Path) -> InternalError:
    """A bug: its traceback recorded (in the run dir where that may be written, else a temporary file), one line said."""
    details = traceback.format_exc()
    where = run_dir / "error.txt"
    if not guard.failed("unexpected error; see error.txt", details, record):
        fd, name = tempfile.mkstemp(prefix="metalearn-error-", suffix=".txt")
        os.write(fd, details.encode())
        os.close(fd)
        where = Path(name)
    line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    error = InternalError(f"{type(exc).__name__}: {line[:200]}; this is a bug, the traceback is in {where}; please report it")
    guard.log_end(f"internal error: {error}")
    return error
