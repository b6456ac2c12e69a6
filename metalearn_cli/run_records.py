"""Reading a run dir back: its config, overrides, results, status and metrics, as ``metalearn report``,
``metalearn compare`` and ``scripts/reproduce.py`` see it, damaged files read as empty; and finding the
run dirs under a sweep dir."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from metalearn_cli.command_line import GROUPS
from metalearn_cli.errors import MetalearnError
from metalearn_cli.files import read_json, read_yaml
from metalearn_cli.rundir import METRICS, RESULTS, STATUS, is_locked


def read_run(run: Path) -> dict[str, Any]:
    """A run dir as ``{command, config, choices, overrides, cwd, results, status, metrics, damaged}``; damaged files
    read as empty, and ``damaged`` names them. A predict dir's ``results`` are its ``predictions.json``."""
    run = Path(run)
    lines, unreadable = read_metrics(run / METRICS)
    results, status = read_json(run / RESULTS), read_json(run / STATUS)
    state = status.get("status", "completed" if results else "unknown")
    if state == "running" and not is_locked(run):
        state = "interrupted"  # killed (kill -9, power loss): no live process holds its lock
    runtime = _runtime(run)
    choices = runtime.get("choices")
    config = read_yaml(run / ".hydra" / "config.yaml", {})
    if (run / "predictions.json").is_file() and not results:
        results = read_json(run / "predictions.json")  # predict's summary: its checkpoint, and accuracy when labelled
    return {
        "command": command_of(run, config),
        "config": config,
        "choices": choices if isinstance(choices, dict) else {},  # group -> the config file picked (encoder: conv4_fast)
        "overrides": [o for o in read_yaml(run / ".hydra" / "overrides.yaml", []) if isinstance(o, str)],
        "cwd": runtime.get("cwd") if isinstance(runtime.get("cwd"), str) else None,  # where its relative paths lead
        "results": results,
        "status": state,
        "metrics": [record for _, record in lines],
        "damaged": [name for name in (RESULTS, STATUS) if (run / name).is_file() and not read_json(run / name)]
                   + ([METRICS] if unreadable and state != "running" else []),  # a running one may be mid-line
    }


def _runtime(run: Path) -> dict[str, Any]:
    """``hydra.runtime`` as the run's ``.hydra/hydra.yaml`` recorded it when the run began (a resume's record is
    kept beside it, in ``.hydra/resume-<time>/``); empty where there is none or it is damaged."""
    hydra = read_yaml(Path(run) / ".hydra" / "hydra.yaml", {}).get("hydra")
    return hydra.get("runtime") if isinstance(hydra, dict) and isinstance(hydra.get("runtime"), dict) else {}


def recorded_choices(run: Path, command: str = "train") -> dict[str, str]:
    """The option picked in each of ``command``'s config groups, as the run began (``dataset: omniglot_fast`` where its
    config and results.json name the component, ``omniglot``): what results.json records as ``choices``. Empty for a
    run without a ``.hydra/`` record (``train()`` called from Python); a resume's own command line does not change it."""
    choices = _runtime(run).get("choices")
    if not isinstance(choices, dict):
        return {}
    return {group: choices[group] for group in GROUPS.get(command, ()) if isinstance(choices.get(group), str)}


def read_metrics(path: Path) -> tuple[list[tuple[str, dict[str, Any]]], int]:
    """``metrics.jsonl``'s records, each with its line, and how many of its lines could not be read (cut by a
    kill, garbled, not a record); a missing file holds none. Bytes that are not UTF-8 read as U+FFFD: a line
    with one in a string is still read, and a line of such bytes is no JSON."""
    lines, unreadable = [], 0
    if not path.is_file():
        return lines, unreadable
    for line in path.read_bytes().decode("utf-8", errors="replace").split("\n"):  # not splitlines: garbage holds \x0c
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            lines.append((line, record))
        elif line.strip():
            unreadable += 1
    return lines, unreadable


def command_of(run: Path, config: Any) -> str:
    """Which command made a run dir: ``predict`` and ``export`` by the files they write or their config's own
    keys; ``eval`` by its ``checkpoint`` key (training has none); ``train`` otherwise."""
    if (run / "predictions.json").is_file() or isinstance(config, dict) and "support" in config:
        return "predict"  # a failed or interrupted one wrote no predictions.json: its config says what it was
    if (run / "export.json").is_file() or isinstance(config, dict) and "out" in config and "checkpoint" in config:
        return "export"
    return "eval" if isinstance(config, dict) and "checkpoint" in config else "train"


def find_runs(paths: list[Path]) -> list[Path]:
    """Every run dir (a dir holding status.json or results.json) under the given paths, sorted; a
    run's own stages (``<run>/pretrain``) belong to their run and are listed only when named."""
    runs: dict[Path, Path] = {}  # one entry per folder, however spelled (relative, absolute, with .., a link)
    empty = []
    for path in paths:
        if not Path(path).exists():
            raise MetalearnError(f"{path} does not exist; pass run dirs or sweep dirs (e.g. outputs/multirun/train/<time>)")
        if not Path(path).is_dir():
            raise MetalearnError(f"{path} is a file; pass run dirs or sweep dirs (folders holding status.json or results.json)")
        found = {Path(path)} if any((Path(path) / m).is_file() for m in (STATUS, RESULTS)) else set()
        for marker in (STATUS, RESULTS):
            found.update(p.parent for p in Path(path).rglob(marker)
                         if not any((p.parent.parent / m).is_file() for m in (STATUS, RESULTS)))
        empty += [] if found else [path]
        for run in sorted(found):
            runs.setdefault(run.resolve(), run)
    if not runs:
        raise MetalearnError(f"no run dirs (with status.json or results.json) under {', '.join(map(str, paths))}")
    if empty:  # named, yet it would be left out without a word (an export's folder: its file is tested by eval)
        raise MetalearnError(f"{empty[0]} holds no run dir (no status.json or results.json under it); drop it, or for an "
                             "exported file: metalearn eval checkpoint=FILE, then pass that eval dir")
    return sorted(runs.values())


def common_base(runs: list[Path]) -> Path:
    """The deepest folder holding every run: labels are paths below it, so they show what differs."""
    base = Path(os.path.commonpath([str(r.resolve()) for r in runs]))
    return base.parent if len(runs) == 1 else base
