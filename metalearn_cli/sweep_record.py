"""What a sweep dir's ``multirun.yaml`` records: the sweep's overrides, how many jobs they make, and the
command that finishes the sweep. The stop line, the resumed sweep's check, ``report`` and ``compare`` all
read a sweep through here, so each says the same about it."""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from metalearn_cli.console import first_names, shell_override
from metalearn_cli.files import read_json
from metalearn_cli.rundir import ERROR, STATUS, RunDir

RECORD = "multirun.yaml"  # Hydra writes it into the sweep dir before the first job


def recorded_sweep(folder: Path) -> list[str]:
    """The overrides a sweep dir's ``multirun.yaml`` records for the whole sweep (``a,b`` as typed); none without one."""
    record = Path(folder) / RECORD
    return [str(o) for o in OmegaConf.load(record).hydra.overrides.task] if record.is_file() else []


def recorded_launcher(folder: Path) -> list[str]:
    """The launcher a sweep dir's jobs ran under (``hydra/launcher=joblib hydra.launcher.n_jobs=2``): a job's
    threads, and so its numbers, follow from it, so the sweep is finished under the same one."""
    record = Path(folder) / RECORD
    try:
        hydra = [str(o) for o in OmegaConf.load(record).hydra.overrides.hydra] if record.is_file() else []
    except (OSError, OmegaConfBaseException):
        return []
    return [o for o in hydra if o.startswith(("hydra/launcher=", "hydra.launcher."))]


def sweep_again(folder: Path) -> str:
    """The command that finishes the sweep in ``folder``: its overrides as Hydra recorded them for the whole
    sweep (a job's own are one value each), its launcher, its dir, ``resume=true``."""
    again = [shlex.quote(o) for o in [*recorded_sweep(folder), *recorded_launcher(folder)] if not o.startswith("resume=")]
    return " ".join(["metalearn train -m", *again, shell_override("hydra.sweep.dir", folder), "resume=true"])


def planned_jobs(folder: Path) -> Optional[int]:
    """How many jobs the sweep in ``folder`` was asked for: the product of its swept values under Hydra's
    basic sweeper; None where that is not known (another sweeper draws its trials, or an unreadable record)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        record = OmegaConf.load(Path(folder) / RECORD)
        if "BasicSweeper" not in str(OmegaConf.select(record, "hydra.sweeper._target_", default="")):
            return None
        parsed = OverridesParser.create().parse_overrides([str(o) for o in record.hydra.overrides.task])
        return math.prod(len(list(o.sweep_string_iterator())) for o in parsed if o.is_sweep_override())
    except (OSError, OmegaConfBaseException, HydraException, ValueError):
        return None


def unfinished_jobs(jobs: list[Path]) -> list[Path]:
    """The job dirs without test results (``results.json``): stopped, failed, or still running."""
    return [job for job in jobs if not RunDir(job).results.is_file()]


def failed_and_stopped(unfinished: list[Path]) -> tuple[list[Path], list[Path]]:
    """Runs without test results, told apart: those that failed (rerun as they are, they fail again) and the rest."""
    failed = [run for run in unfinished if read_json(run / STATUS).get("status") == "failed"]
    return failed, [run for run in unfinished if run not in failed]


def failed_note(folder: Path, jobs: list[Path]) -> Optional[str]:
    """A folder of runs without ``multirun.yaml`` (a sweeper that keeps none, as Optuna's): its failed runs, said."""
    failed, _ = failed_and_stopped(unfinished_jobs(jobs))
    return (f"{folder}: {len(failed)} of its {len(jobs)} runs failed ({first_names([j.name for j in failed])}; each "
            f"{ERROR} says why)") if failed and len(jobs) > 1 else None


def sweep_note(folder: Path, jobs: list[Path]) -> Optional[str]:
    """One line for a sweep dir whose jobs did not all finish: which stopped before their test, how many never
    started (of ``jobs``, the job dirs found in it), and the command that finishes it; None when all finished."""
    if not (Path(folder) / RECORD).is_file():
        return None
    failed, stopped = failed_and_stopped(unfinished_jobs(jobs))
    planned = planned_jobs(folder)
    missing = planned - len(jobs) if planned is not None else 0
    parts = [f"{len(stopped)} job{'s' if len(stopped) > 1 else ''} stopped before {'their' if len(stopped) > 1 else 'its'} test "
             f"({first_names([j.name for j in stopped])})"] if stopped else []
    if failed:  # run again as they were, they fail again: the cause is fixed first
        parts.append(f"{len(failed)} job{'s' if len(failed) > 1 else ''} failed ({first_names([j.name for j in failed])}; "
                     f"each {ERROR} says why)")
    if missing > 0:
        parts.append(f"{missing} of its {planned} jobs never started")
    fix = "once what failed is fixed, " if failed else ""
    again = (" (a job whose own swept value is what failed fails again; the others finish; a cause in an override every "
             "job shares is fixed by a new sweep without it, in a new hydra.sweep.dir)") if failed else ""
    return f"{folder}: {' and '.join(parts)}; {fix}finish the sweep with: {sweep_again(folder)}{again}" if parts else None
