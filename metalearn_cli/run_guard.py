"""The guard a job runs under: what it may write into its run dir, and when.

Split from :mod:`metalearn_cli.rundir` (which owns the run dir's layout, lock and records) because
only the CLI's job wrapper (:mod:`metalearn_cli.cli.apps`) uses it.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Optional

from metalearn_cli.errors import WriteError
from metalearn_cli.files import atomic_write
from metalearn_cli.rundir import ERROR, held, record_failure, remove_empty, write_status


class _Held(logging.Handler):
    """Holds the records a job logs before its run dir is accepted (at most a few hundred)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < 500:
            self.records.append(record)


class RunGuard:
    """What one job may write into its run dir: nothing until it is accepted.

    Hydra writes nothing into a run dir itself (the CLI turns its ``.hydra/`` and its log file off);
    a job checks first, then :meth:`accept` writes the command's record (``.hydra/``, or
    ``.hydra/resume-<time>/`` in the run an accepted resume continues) and starts its log file. So
    however a command reaches a dir (a sweep, ``-cd``, a colliding sub-dir), a refused one changes
    nothing in a run that was there. A failure is recorded only in a dir that held no run, and only once
    the job began (a sweep's jobs: also when refused, so the sweep's dir lists them); a default
    dir the CLI claimed for a refused command is removed again, and so is one of a ``disposable`` command
    (eval, predict, export) that failed: it holds nothing but the error, and ``report`` would list a typo as a run."""

    def __init__(self, run_dir: Path, claimed: bool = False, writer: bool = True, disposable: bool = False,
                 sweep: bool = False) -> None:
        self.run_dir, self.claimed, self.writer, self.disposable = Path(run_dir), claimed, writer, disposable
        self.sweep = sweep  # a sweep job's refusal is recorded in its dir (report lists the job as failed)
        self.existing = held(self.run_dir)
        self.accepted = False
        self.handler: Optional[logging.Handler] = None
        self.early = _Held()  # what the job logs while it checks (a data set's warnings): the log file gets it too
        logging.getLogger().addHandler(self.early)

    def accept(self, record: dict[str, str], log_name: Optional[str]) -> None:
        if self.accepted or not self.writer:
            return
        self.accepted = True
        folder = self.run_dir / ".hydra"
        if self.existing:
            stamp = "resume-" + time.strftime("%Y-%m-%d_%H-%M-%S")
            folder = next(folder / name for name in (stamp, *(f"{stamp}_{i}" for i in range(1, 1000)))
                          if not (folder / name).exists())  # two resumes in one second keep a record each
        else:
            (self.run_dir / ERROR).unlink(missing_ok=True)  # an earlier refusal's record: this run is what the dir holds now
        for name, text in record.items():
            atomic_write(folder / name, lambda f, t=text: f.write(t.encode("utf-8")), name, "free disk space")  # type: ignore[misc]
        if log_name is not None:
            self.handler = logging.FileHandler(self.run_dir / f"{Path(log_name).name}.log", encoding="utf-8")
            self.handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
            logging.getLogger().addHandler(self.handler)
            for line in self.early.records:
                self.handler.handle(line)
        self._drop_early()

    def log_end(self, line: str) -> None:
        """The line the terminal gets at the end (``stopped: SIGINT ...``, ``error: ...``), also in the run's
        log file, written there alone: the console prints it once, as the command's last line."""
        if self.handler is not None:
            self.handler.handle(logging.makeLogRecord({"name": "metalearn", "levelno": logging.WARNING,
                                                       "levelname": "WARNING", "msg": line}))

    def _drop_early(self) -> None:
        logging.getLogger().removeHandler(self.early)
        self.early.records.clear()

    def close(self) -> None:
        self._drop_early()
        if self.handler is not None:
            logging.getLogger().removeHandler(self.handler)
            self.handler.close()
            self.handler = None

    def remove_claimed(self) -> None:
        """The default dir this command claimed, and the folders above it that it left empty (below the
        working directory: ``outputs/train/<name>/``)."""
        shutil.rmtree(self.run_dir, ignore_errors=True)
        remove_empty(self.run_dir.parent)

    @property
    def protects(self) -> bool:
        """True while a failure must leave the run dir untouched (a run was there, or this is not rank 0)."""
        return not self.writer or (bool(self.existing) and not self.accepted)

    def interrupted(self) -> None:
        """A command stopped by Ctrl-C before it began (it wrote nothing), or a disposable one stopped at all: the
        default dir it claimed goes (a stray empty dir under ``outputs/`` would be listed as a run); a named one
        says so in ``status.json``."""
        if self.claimed and self.writer and not self.accepted and not self.existing:
            self.close()
            self.remove_claimed()
            return
        if not self.disposable or not self.accepted or self.protects:
            return
        self.close()
        if self.claimed:
            self.remove_claimed()
        else:
            write_status(self.run_dir, "interrupted")

    def failed(self, message: str, details: Optional[str], record: dict[str, str]) -> bool:
        """Record a failure where it belongs; returns whether it was written into the run dir."""
        if self.protects:
            return False
        if self.claimed and (not self.accepted or self.disposable):  # a default dir with nothing but the failure
            self.close()  # the log file's handle, before its folder goes
            self.remove_claimed()
            return False
        if not self.accepted and not self.sweep:  # refused before it began: the line says why, the dir stays as it was
            return False
        try:
            self.accept(record, None)  # what was asked, beside why it failed (report lists the run as failed)
            record_failure(self.run_dir, message, details)
        except (OSError, WriteError):  # the run dir itself is what failed (not writable, full): the line says so
            return False
        return True
