"""Where ``compare`` and ``report`` write when no ``--out`` is given: beside the runs they read.

Their outputs are derived from runs, yet a table a researcher looked at yesterday is not to be
replaced by today's comparison of other runs. So the default folder (``compare/``, ``report/``)
records which runs made it (``inputs.txt``): the same command over the same runs refreshes it, and
another set of runs gets the next free ``compare-2/``, ``compare-3/``, ... A hidden ``.written`` names the
files the commands wrote there, so a user's own file beside them is never taken for one.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from metalearn_cli.console import first_names
from metalearn_cli.errors import ConfigError
from metalearn_cli.rundir import canonical, held

INPUTS = "inputs.txt"
WRITTEN = ".written"  # the names of the files the commands wrote into a folder (a user's files may sit beside them)


def outside_runs(folder: Path) -> Path:
    """``folder``, or the nearest folder above it that is not inside a run dir."""
    folder = Path(folder)
    while held(folder) and folder.parent != folder:
        folder = folder.parent
    return folder


def _listing(inputs: list[Path]) -> str:
    return "".join(f"{canonical(p)}\n" for p in inputs)


def _made_from(out: Path, inputs: list[Path], grown: bool = False) -> bool:
    """Whether ``out``'s ``inputs.txt`` names exactly these runs (``grown``: or some of them, none other)."""
    record = Path(out) / INPUTS
    if not record.is_file():
        return False
    text = record.read_text(encoding="utf-8", errors="replace")
    return text == _listing(inputs) or (grown and bool(text) and set(text.splitlines()) <= set(_listing(inputs).splitlines()))


def default_output(base: Path, name: str, inputs: list[Path], grown: bool = False) -> Path:
    """``base/name`` if it is free or holds this same set of runs' earlier output, else ``base/name-N``.
    ``grown``: the output of some of these runs and no other is refreshed too (a report of a sweep that
    has since finished, or of a folder with more runs in it, supersedes the partial one)."""
    for n in itertools.count(1):
        out = Path(base) / (name if n == 1 else f"{name}-{n}")
        if not out.exists() or _made_from(out, inputs, grown):
            return out
    raise AssertionError("unreachable")


def refuse_other_output(out: Path, written: tuple[str, ...], inputs: list[Path]) -> None:
    """An ``--out`` folder that holds any file this command writes there (``written``: names or glob
    patterns) is not replaced unless this same set of runs made it (``inputs.txt``): the same runs
    refresh it; other runs, or a user's own files of those names, need another folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; pass a folder (the command writes {first_names(list(written), 2)} "
                          "and the rest into it)")
    if not out.is_dir():
        return
    found = sorted({p.name for pattern in written for p in out.glob(pattern) if p.is_file()})
    ours = written_here(out) if (out / WRITTEN).is_file() else None
    if _made_from(out, inputs):  # these runs' output: what a command wrote there is replaced (all, where unrecorded)
        found = [] if ours is None else [n for n in found if n not in ours]
    if not found:
        return
    whose = ("not written by this command over these runs" if _made_from(out, inputs)  # e.g. a compare's inputs.txt
             else f"made from other runs ({INPUTS} names them)" if (out / INPUTS).is_file()
             else f"not written by this command over these runs (no {INPUTS} names its runs)")
    raise ConfigError(f"--out {out} holds {first_names(found, 4)}, {whose}, which this "
                      "one would replace; choose another --out, or leave it out for a new folder beside the runs")


def record_inputs(out: Path, inputs: list[Path]) -> None:
    """Name the runs an output folder was made from (what :func:`default_output` reads back)."""
    (Path(out) / INPUTS).write_text(_listing(inputs), encoding="utf-8")


def record_written(out: Path, files: list[Path]) -> None:
    """Add the files a command wrote to the folder's record of them (:data:`WRITTEN`): a later command over the same
    runs replaces those, never a user's own file of a name it writes (one a compare's ``inputs.txt`` would vouch for)."""
    record = Path(out) / WRITTEN
    names = written_here(out)
    record.write_text("".join(f"{n}\n" for n in sorted(names | {Path(f).name for f in files})), encoding="utf-8")


def written_here(out: Path) -> set[str]:
    """The names of the files the commands wrote into ``out`` (empty where none were recorded)."""
    record = Path(out) / WRITTEN
    return set(record.read_text(encoding="utf-8").splitlines()) if record.is_file() else set()
