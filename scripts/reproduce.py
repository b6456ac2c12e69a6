#!/usr/bin/env python
"""Reproduce a benchmark table: run its experiment presets as Hydra multiruns, then tabulate.

    python scripts/reproduce.py --table omniglot --budget quick          # 2 CPU cores: over an hour (--dry-run estimates it)
    python scripts/reproduce.py --table omniglot --budget paper --device cuda
    python scripts/reproduce.py --table mini_imagenet --root /data/mini-imagenet --budget paper

Each cell of the table is one preset in configs/experiment/ (its header names the paper and the
published figure, which the run copies into results.json). ``paper`` runs the presets as they are
(the papers' iteration counts); ``quick`` shortens training with the overrides in ``QUICK`` below
and says so in the table. One protocol for every method: fixed test tasks from the seed, 15 queries
per class, best-on-validation checkpoint, mean accuracy with its 95% confidence interval.
Writes <out>/<table>_<budget>.md and .csv, plus `metalearn report`'s curves and bar chart.
Stopped (Ctrl-C), it exits 130 (SIGTERM: 143); the same command again, with the same --out, continues it (each
sweep it began is finished with resume=true, its completed jobs kept). A stop request this script gets is passed on
to the running sweep, which runs in its own process group (Ctrl-\\ quits both at once: exit 131).
"""

from __future__ import annotations

import argparse
import csv
import shlex
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


ROOT = Path(__file__).resolve().parents[1]
METHODS = ("protonet", "maml", "metasgd", "anil", "latent", "rfs")
TABLES = {
    "omniglot": [f"{{m}}_omniglot_{s}" for s in ("5w1s", "5w5s", "20w1s", "20w5s")],
    "mini_imagenet": [f"{{m}}_mini_{s}_{e}" for s in ("5w1s", "5w5s") for e in ("conv4", "resnet12")],
}
# Cells only some methods have: Lake et al.'s within-alphabet runs, beside the human and BPL figures.
EXTRA = {
    "omniglot": {"protonet": ["protonet_omniglot_lake20w1s"]},
}
# Reduced budgets for a 2-core CPU (about 40 min of training for the Omniglot table on the reference
# machine, plus the tests: over an hour; --dry-run estimates each cell).
# MAML's and Meta-SGD's 20-way cells also drop to 1 inner step (3 at test) and 5 training queries;
# ANIL keeps its 5 steps there (they adapt only the head: one step from a random head learns nothing).
# RFS runs 5 of its schedule's 100 epochs (6,425 steps of 64 images; the milestones stay at 60% and 80%):
# at 1,500 steps of 128 images the 4,112-way classifier had barely left its plateau (loss 8.1 -> 6.1).
QUICK_RFS = ["pretrain.epochs=5", "pretrain.val_every=1000", "pretrain.val_episodes=100", "eval.episodes=1000"]
QUICK_MGD = ["trainer.iterations=500", "trainer.val_every=250", "trainer.val_episodes=100", "eval.episodes=1000"]
QUICK_MAML = ["trainer.iterations=200", "trainer.meta_batch=4", "trainer.val_every=100", "trainer.val_episodes=50",
              "eval.episodes=300"]
QUICK_MAML_20WAY = ["trainer.iterations=100", "trainer.meta_batch=4", "trainer.val_every=50", "trainer.val_episodes=50",
                    "trainer.train_query=5", "strategy.inner_steps=1", "strategy.eval_inner_steps=3", "eval.episodes=300"]
COLUMNS = ["preset", "method", "task", "ours", "ci95", "published", "published_of", "difference", "iterations", "meta_batch",
           "episodes", "bn_mode", "inner_steps_at_test", "val_at_start", "val_best", "best_step", "precision", "seed",
           "train_s", "tasks_per_s", "wall_s", "status", "source"]
INVOCATION = "reproduce.json"  # in --out: what was asked, which the same command compares to continue it and
# --tabulate-only repeats in the table's title
ASKED = ("table", "budget", "methods", "cells", "seed", "device", "root", "extra")  # what INVOCATION records


def quick_overrides(method: str, preset: str) -> list[str]:
    if method == "rfs":  # no meta-training: a shorter pre-training stage
        return QUICK_RFS
    if method in ("protonet", "latent"):
        return QUICK_MGD
    if "_20w" not in preset:
        return QUICK_MAML
    if method == "anil":  # ANIL's inner steps touch only the head (features computed once): keep the paper's 5
        return [o for o in QUICK_MAML_20WAY if not o.startswith("strategy.")]
    return QUICK_MAML_20WAY


def commands(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """One multirun per (method, override set): presets sharing overrides run in one sweep."""
    from metalearn_cli.sweep_record import RECORD

    runs = []
    for method in args.methods:
        groups: dict[tuple[str, ...], list[str]] = {}
        for preset in [p.format(m=method) for p in TABLES[args.table]] + EXTRA.get(args.table, {}).get(method, []):
            if args.cells and not any(preset == c or f"_{c}" in preset for c in args.cells):
                continue
            smoke = "debug=smoke" in args.extra  # its own seconds-long budget, which the quick one would replace
            over = tuple(quick_overrides(method, preset) if args.budget == "quick" and not smoke else [])
            groups.setdefault(over, []).append(preset)
        # Hydra composes a sweep's shared config before applying swept values, so overrides of
        # strategy keys cannot ride along with experiment=a,b (the default strategy lacks them):
        # such presets get a sweep each.
        sweeps = [(over, [p]) for over, presets in groups.items() for p in presets if any(o.startswith("strategy.") for o in over)]
        sweeps += [(over, presets) for over, presets in groups.items() if not any(o.startswith("strategy.") for o in over)]
        for i, (over, presets) in enumerate(sweeps):
            sweep_dir = args.out / "runs" / f"{method}-{i}"
            cmd = [sys.executable, "-m", "metalearn_cli", "train", "-m", f"experiment={','.join(presets)}", *over,
                   f"device={args.device}", f"seed={args.seed}", f"hydra.sweep.dir={sweep_dir}",
                   "hydra.sweep.subdir=${hydra.job.num}_${hydra:runtime.choices.experiment}"]
            if args.root:
                cmd.append(f"dataset.root={args.root}")
            # A sweep a stopped reproduction began is finished in its dir: its completed jobs are kept as they are,
            # a stopped one resumes from its last.pt, one not begun starts (main checked that --out is this reproduction's).
            again = ["resume=true"] if (sweep_dir / RECORD).is_file() else []  # multirun.yaml: a sweep that began
            runs.append((method, cmd + list(args.extra) + again))
    return runs


# The training time --dry-run estimates per cell. Figures measured on docs/benchmarks.md's reference
# machine: 2 CPU cores, AMD EPYC with AVX512-BF16 (native bf16: precision=auto trains protonet, latent
# and rfs in bf16; MAML, Meta-SGD and ANIL are second order and stay in fp32), torch 2.14.1. Each
# figure holds for its cell at --budget quick: only counts scale (iterations x tasks per iteration,
# pre-training steps), and a cell whose per-task settings differ from the measured ones (the paper
# budget's 20-way MAML, another encoder, mini-ImageNet, debug=smoke, a GPU) gets no estimate.
#
# Meta-training tasks per second, validation included: the tasks/s column of "Reproducing published
# tables" in docs/benchmarks.md (2026-11-27). That page warns that the MAML-family rows ran partly
# beside the test suite; their 5-way figures agree with its uncontended "Meta-strategies: throughput"
# table (14.1 and 7.2 tasks/s for one inner step, 1 and 5 shots).
TRAIN_TASKS_PER_S = {
    "protonet_omniglot_5w1s": 10.75, "protonet_omniglot_5w5s": 5.39, "protonet_omniglot_20w1s": 2.84,
    "protonet_omniglot_20w5s": 5.77, "protonet_omniglot_lake20w1s": 8.34,
    "maml_omniglot_5w1s": 12.9, "maml_omniglot_5w5s": 8.04, "maml_omniglot_20w1s": 6.68, "maml_omniglot_20w5s": 2.14,
    "metasgd_omniglot_5w1s": 14.99, "metasgd_omniglot_5w5s": 7.5, "metasgd_omniglot_20w1s": 6.7,
    "metasgd_omniglot_20w5s": 2.14,  # measured 0.32 while paused for 4.5 min and sharing the CPU: MAML's figure
    # for the same tasks and one inner step (Meta-SGD's other three cells are within 16% of MAML's)
    "anil_omniglot_5w1s": 24.78, "anil_omniglot_5w5s": 20.99, "anil_omniglot_20w1s": 12.64, "anil_omniglot_20w5s": 8.7,
    "latent_omniglot_5w1s": 9.64, "latent_omniglot_5w5s": 2.66, "latent_omniglot_20w1s": 8.84, "latent_omniglot_20w5s": 2.55,
}
# RFS has no meta-training: its training time is its pre-training stage (5 epochs, 6,425 steps of 64 images, with
# the stage's validation and nearest-centroid test) and the validation of the pre-trained encoder, as steps per
# second: 1.9 / 1.9 / 2.2 / 2.6 min, measured 2026-12-06 on an Intel Xeon with AMX (2 cores, bf16), not on the
# reference EPYC (docs/benchmarks.md, "Reproducing published tables").
PRETRAIN_STEPS_PER_S = {"rfs_omniglot_5w1s": 6425 / 116.3, "rfs_omniglot_5w5s": 6425 / 115.4, "rfs_omniglot_20w1s": 6425 / 132.7,
                        "rfs_omniglot_20w5s": 6425 / 158.9}
COUNTS = ("trainer.iterations", "trainer.meta_batch", "pretrain.iterations", "pretrain.epochs")  # what the estimate scales
TRAIN_IMAGES = {"omniglot": 82_240}  # an epoch-counted stage's images per epoch: the Vinyals split, rotations included
ASIDE = ("trainer.val_every", "trainer.val_episodes", "pretrain.val_every", "pretrain.val_episodes", "eval.",
         "strategy.eval_", "trainer.progress", "trainer.log_every", "trainer.checkpoint_every", "trainer.memory_check",
         "trainer.nan_policy", "optimizer.", "pretrain.optimizer.", "pretrain.label_smoothing", "seed", "device", "threads",
         "resume", "reference.", "dataset.root", "logger")  # a training task costs the same (validation: in the figures)


def _composed(overrides: tuple[str, ...]) -> dict[str, Any]:
    """``metalearn train``'s config with these overrides, as ``{dotted.key: value}``."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from metalearn_cli.cli import register_configs
    from metalearn_cli.schema import flatten

    register_configs()
    with initialize_config_module(config_module="metalearn_cli.configs", version_base="1.3"):
        return flatten(OmegaConf.to_container(compose(config_name="train", overrides=list(overrides)), resolve=True))


def estimate(preset: str, overrides: list[str]) -> tuple[float | None, str]:
    """Seconds of training one cell will take on the reference machine (None: no measured figure fits) and how."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if any(o.startswith("device=cuda") for o in overrides):
        return None, "the measured figures are a CPU's"
    if preset not in TRAIN_TASKS_PER_S and preset not in PRETRAIN_STEPS_PER_S:
        return None, "no measured figure for this cell"
    try:
        cfg = _composed((f"experiment={preset}", *overrides))
        measured = _composed((f"experiment={preset}", *quick_overrides(preset.split("_")[0], preset)))
    except (HydraException, OmegaConfBaseException) as exc:
        return None, f"the config does not compose ({str(exc).splitlines()[0]})"
    differ = [k for k in sorted(set(cfg) | set(measured))
              if not k.startswith(COUNTS + ASIDE) and cfg.get(k) != measured.get(k)]
    if differ:
        shown = ", ".join(f"{k}={cfg.get(k)} (measured: {measured.get(k)})" for k in differ[:2])
        return None, f"its training tasks differ from the measured cell's: {shown}{', ...' if len(differ) > 2 else ''}"
    tasks, steps = cfg["trainer.iterations"] * cfg["trainer.meta_batch"], cfg["pretrain.iterations"]
    if steps and cfg.get("pretrain.epochs") and cfg["pretrain.kind"] != "episodic":  # as pretrain.resolve_budget counts them
        steps = math.ceil(cfg["pretrain.epochs"] * TRAIN_IMAGES[cfg["dataset.name"]] / cfg["pretrain.batch_size"])
    if (tasks and preset not in TRAIN_TASKS_PER_S) or (steps and preset not in PRETRAIN_STEPS_PER_S):
        return None, "no measured figure for this cell's " + ("meta-training" if tasks else "pre-training")
    seconds, how = 0.0, []
    if tasks:
        seconds += tasks / TRAIN_TASKS_PER_S[preset]
        how.append(f"{cfg['trainer.iterations']} x {cfg['trainer.meta_batch']} tasks at {TRAIN_TASKS_PER_S[preset]:g}/s")
    if steps:
        seconds += steps / PRETRAIN_STEPS_PER_S[preset]
        how.append(f"{steps} pre-training steps at {PRETRAIN_STEPS_PER_S[preset]:.1f}/s")
    return seconds, ", ".join(how) or "nothing to train"


def sweep_cells(cmd: list[str]) -> list[tuple[str, list[str]]]:
    """The cells of one planned sweep, each with the overrides its job gets (Hydra's own aside)."""
    presets = next(a for a in cmd if a.startswith("experiment=")).split("=", 1)[1].split(",")
    overrides = [a for a in cmd[cmd.index("train") + 1:]
                 if a != "-m" and not a.startswith(("experiment=", "hydra.", "resume="))]  # resume: how, not what, it runs
    return [(preset, overrides) for preset in presets]


def print_estimates(cells: list[tuple[str, float | None, str]]) -> None:
    """The plan's training time: the sum of the cells (each rounded to 0.1 min as printed, so the sum is exact)."""
    minutes = [round(s / 60, 1) for _, s, _ in cells if s is not None]
    total, missing = round(sum(minutes), 1), len(cells) - len(minutes)
    if not minutes:
        print("# no estimate for any cell: the measured figures are those of the Omniglot table's cells at --budget "
              "quick on a 2-core CPU")
        return
    print(f"# estimated training time: about {total:.1f} min{f' ({total / 60:.1f} h)' if total >= 120 else ''}, the sum "
          f"of the {len(minutes)} cell{'s' if len(minutes) > 1 else ''} with an estimate"
          + (f"; {missing} {'cells have' if missing > 1 else 'cell has'} none" if missing else ""))
    print("#   for a 2-core CPU with native bf16 (AVX512-BF16 on AMD, or AMX), as measured on docs/benchmarks.md's\n"
          "#   reference machine (an AMD EPYC); without it precision=auto trains in fp32 and the bf16 cells (protonet,\n"
          "#   latent, rfs) take about 1.6x longer, and an Intel Xeon with AVX512-BF16 but no AMX (fp32 there) took\n"
          "#   2.4x as long for the default run until 2026-12-05 (encoder=conv4, 5,000 iterations). On top: each\n"
          "#   run's start-up (about 5 s) and final test, from seconds (ProtoNet 5-way) to about 7 min (MAML 20-way\n"
          "#   5-shot: 300 tasks of 3 inner steps); see docs/benchmarks.md.")


def collect(out: Path) -> list[dict[str, Any]]:
    """One row per run dir under ``out/runs``, in table order."""
    from metalearn_cli.files import read_json
    from metalearn_cli.run_records import find_runs, read_run

    rows = []
    for run in find_runs([out / "runs"]):  # a run's pre-training stage is part of its row
        record = read_run(run)
        preset = next((o.split("=", 1)[1] for o in record["overrides"] if o.startswith("experiment=")), run.name)
        status, r = record["status"], record["results"]
        episode = (record.get("config") or {}).get("episode") or {}  # a run stopped before its test has no results:
        r = {"way": episode.get("way", "?"), "shot": episode.get("shot", "?"), **r}  # its config says what it tests
        if r.get("wall_seconds") is None:  # stopped: its status.json counts the time it ran, resumes included
            r["wall_seconds"] = read_json(run / "status.json").get("wall_seconds")
        ours = 100 * r["accuracy"] if "accuracy" in r else None
        pub = r.get("published_accuracy")
        start = next((m["accuracy"] for m in record.get("metrics", []) if m.get("split") == "val" and m["step"] == 0), None)
        rows.append({
            "preset": preset, "method": preset.split("_")[0],
            "task": f"{r.get('way', '?')}-way {r.get('shot', '?')}-shot" + (
                f" (Lake et al.'s within-alphabet runs: {r.get('episodes', '?')} drawn runs, not their 20 fixed ones)"
                if r.get("protocol") == "lake" else " (Lake et al.'s 20 original runs)" if r.get("protocol") == "lake_original" else ""),
            "ours": round(ours, 2) if ours is not None else None,
            "ci95": round(100 * r["ci95"], 2) if "ci95" in r else None,
            "published": pub, "published_of": r.get("published_of") or "", "difference": round(ours - pub, 2) if ours is not None and pub is not None else None,
            "iterations": r.get("iterations"), "meta_batch": r.get("meta_batch"), "episodes": r.get("episodes"),
            "bn_mode": r.get("bn_mode"), "precision": r.get("precision"), "seed": r.get("seed"),
            "val_at_start": round(100 * start, 2) if start is not None else None,  # the row before training
            "val_best": round(100 * r["val_accuracy"], 2) if r.get("val_accuracy") is not None else None,
            "best_step": r.get("best_step"),
            "inner_steps_at_test": r.get("inner_steps_at_test"), "train_s": _training_seconds(r),
            "tasks_per_s": r.get("train_tasks_per_s") if r.get("iterations") else None,  # RFS: no meta-training
            "wall_s": r.get("wall_seconds"), "status": status,
            "source": r.get("published_source") or "",
        })
    presets = [p.format(m=m) for m in METHODS for p in sum(TABLES.values(), [])]
    presets += [p for table in EXTRA.values() for m in METHODS for p in table.get(m, [])]
    order = {p: i for i, p in enumerate(presets)}
    return sorted(rows, key=lambda row: order.get(row["preset"], 10**6))


def _training_seconds(results: dict[str, Any]) -> float | None:
    """Meta-training's seconds and the pre-training stage's (RFS's whole training is its stage)."""
    if results.get("train_seconds") is None:
        return None
    return round(results["train_seconds"] + ((results.get("pretrain") or {}).get("train_seconds") or 0.0), 2)


def markdown(rows: list[dict[str, Any]], title: str) -> str:
    def cell(v: Any) -> str:
        return "–" if v is None or v == "" else str(v)

    lines = [title, "", "| method | task | ours (± CI95) | published | difference | iterations x tasks | test episodes | "
             "batch norm | inner steps at test | validation before training -> best (at step) | precision | training time | "
             "tasks/s |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ours = f"{r['ours']:.2f} ± {r['ci95']:.2f}" if r["ours"] is not None else f"({r['status']})"
        diff = f"{r['difference']:+.2f}" if r["difference"] is not None else "–"
        train = f"{r['train_s'] / 60:.1f} min" if r["train_s"] is not None else "–"
        published = cell(r["published"]) + (f" ({r['published_of']})" if r.get("published_of") else "")  # "95.5 (humans)"
        start = f"{r['val_at_start']:.2f}" if r.get("val_at_start") is not None else "–"
        val = f"{start} -> {r['val_best']:.2f} ({cell(r.get('best_step'))})" if r.get("val_best") is not None else "–"
        lines.append(f"| {r['method']} | {r['task']} | {ours} | {published} | {diff} | "
                     f"{cell(r['iterations'])} x {cell(r['meta_batch'])} | {cell(r['episodes'])} | {cell(r['bn_mode'])} | "
                     f"{cell(r['inner_steps_at_test'])} | {val} | {cell(r.get('precision'))} | {train} | {cell(r['tasks_per_s'])} |")
    return "\n".join(lines) + "\n"


def retabulated(args: argparse.Namespace) -> str | None:
    """--tabulate-only takes the budget, seed and overrides its --out was measured with (its reproduce.json),
    so the rebuilt table's title describes those runs; a --table or --budget that says otherwise is refused (a message)."""
    path = args.out / INVOCATION
    if not path.is_file():  # an --out made before the file was written: the command line's word is all there is
        return None
    made = json.loads(path.read_text())
    if made.get("table", args.table) != args.table:  # its rows under another table's name and published figures would be wrong
        return f"{args.out} holds a reproduction of the {made['table']} table; pass --table {made['table']} to tabulate it"
    if made["budget"] != args.budget:
        return f"{args.out} was measured with --budget {made['budget']}; pass --budget {made['budget']} to tabulate it"
    if args.extra and args.extra != made["extra"]:
        return (f"{args.out} was measured with the overrides {' '.join(made['extra']) or '(none)'}; --tabulate-only "
                "takes them from there: drop the overrides")
    args.seed, args.extra = made["seed"], made["extra"]
    return None


def asked(args: argparse.Namespace) -> dict[str, Any]:
    """What this command asks for, as INVOCATION records it: the same again continues its --out."""
    return {key: getattr(args, key) for key in ASKED}


def _spelled(key: str, value: Any) -> str:
    """One recorded setting as the command line gives it."""
    if key == "extra":
        return f"the overrides {' '.join(value)}" if value else "no overrides"
    if key == "cells" and not value:
        return "every cell"
    if value is None:
        return f"no --{key}"
    return f"--{key} {','.join(value) if isinstance(value, list) else value}"


def _script() -> str:
    """This script as its user ran it (``scripts/reproduce.py`` from the project's folder)."""
    return sys.argv[0] if Path(sys.argv[0]).name == Path(__file__).name else "scripts/reproduce.py"


def command_of(made: dict[str, Any], out: Path) -> str:
    """The command that asked for ``made`` (an INVOCATION) in ``out``: run again, it continues it."""
    defaults = {"budget": "quick", "device": "auto", "methods": list(METHODS), "seed": 0, "cells": [], "root": None}
    words = ["python", _script(), "--table", made["table"]]
    for key, default in defaults.items():
        if made[key] != default:
            words += [f"--{key}", ",".join(made[key]) if isinstance(made[key], list) else str(made[key])]
    return shlex.join([*words, "--out", str(out), *made["extra"]])


def other_reproduction(args: argparse.Namespace) -> str | None:
    """Why this command may not run in its --out, which holds runs (a message); None where they are this very
    reproduction's, which it continues."""
    try:
        made = json.loads((args.out / INVOCATION).read_text())
    except (OSError, ValueError):
        made = None
    if not isinstance(made, dict):
        return (f"--out {args.out} already holds runs, and no {INVOCATION} there says they are a reproduction to continue; "
                "pass a new --out, or --tabulate-only to rebuild its table")
    if any(key not in made for key in ASKED):  # written before reproduce.py recorded its methods and cells
        return (f"--out {args.out} already holds runs of a reproduction that did not record its methods and cells, so it "
                "cannot be continued; pass a new --out, or --tabulate-only to rebuild its table")
    now = asked(args)

    def same(key: str, value: Any) -> Any:  # --methods maml,protonet runs the sweeps of --methods protonet,maml
        return sorted(value) if key in ("methods", "cells") else value

    differ = [key for key in ASKED if same(key, made[key]) != same(key, now[key])]
    if not differ:
        return None
    return (f"--out {args.out} holds a reproduction of {', '.join(_spelled(k, made[k]) for k in differ)}, and this command "
            f"asks for {', '.join(_spelled(k, now[k]) for k in differ)}; to continue that one: {command_of(made, args.out)}; "
            "else pass a new --out")


def refused(args: argparse.Namespace, cmd: list[str]) -> str | None:
    """Why metalearn train would refuse a job of this sweep (its own checks of the composed config, as --cfg job makes
    them; the data is not read), or None."""
    from metalearn_cli.cli import register_configs
    from metalearn_cli.cli.placement import refused_config

    register_configs()
    # a dry run without --root shows mini-ImageNet's commands all the same: the check stands in a folder for it
    stand_in = ["dataset.root=DIR"] if (args.dry_run and args.table == "mini_imagenet" and not args.root and not any(
        e.startswith(("debug=", "dataset.root=")) for e in args.extra)) else []
    for preset, overrides in sweep_cells(cmd):
        why = refused_config("train", [f"experiment={preset}", *overrides, *stand_in])
        if why:
            return f"metalearn train would refuse the {preset} run: {why} (see metalearn train --help)"
    return None


def sweep_ended(cmd: list[str]) -> str:
    """How ``cmd``'s sweep left its jobs: ``stopped`` (one interrupted, or still "running": killed; a SIGTERM, as
    pre-emption, ends a sweep with 0, and the next method's sweep must not begin as if it had finished), ``failed``,
    ``none`` (no job ran: the sweep was refused before it began) or ``completed``."""
    from metalearn_cli.cli.sweep_dirs import job_dirs
    from metalearn_cli.files import read_json
    from metalearn_cli.rundir import STATUS

    sweep_dir = Path(next(a for a in cmd if a.startswith("hydra.sweep.dir=")).split("=", 1)[1])
    ended = [read_json(sweep_dir / job / STATUS).get("status") for job in job_dirs(sweep_dir, is_job=lambda p: (p / STATUS).is_file())]
    if any(status in ("interrupted", "running") for status in ended):
        return "stopped"
    return "failed" if "failed" in ended else "completed" if ended else "none"


def launch(args: argparse.Namespace, argv: list[str], plan: list[tuple[str, list[str]]]) -> tuple[int | None, bool]:
    """Run the sweeps one after another: an exit code where the reproduction ends early (stopped, killed, or a sweep
    refused before it began), else None; and whether any sweep ended other than with 0. Each sweep runs in its own
    session (and process group), and each Ctrl-C, SIGTERM or SIGHUP (as a SIGTERM) this script gets is passed on to
    that group (so a SIGTERM to this script alone, as ``kill PID`` or a container's stop sends, reaches the sweep too):
    the sweep saves its jobs and stops by itself, and no further sweep begins. Ctrl-\\ (SIGQUIT) is passed on as it is:
    the sweep quits at once, as ``metalearn`` run alone would, rather than running on unseen holding its dirs' locks. Ctrl-Z pauses this script only. Where Ctrl-C was ignored (started with ``&`` by a script), it
    stays ignored, for the sweeps too."""
    stops: list[int] = []
    sweep: list[Any] = []

    def forward(signum: int, frame: Any) -> None:
        stops.append(signum)
        if sweep and sweep[0].poll() is None:
            try:  # a hangup as a SIGTERM: metalearn saves on SIGINT and SIGTERM only
                os.killpg(sweep[0].pid, signal.SIGTERM if signum == signal.SIGHUP else signum)
            except ProcessLookupError:  # it has just ended
                pass

    caught = [s for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT) if signal.getsignal(s) is not signal.SIG_IGN]
    previous = {s: signal.signal(s, forward) for s in caught}
    failed = False
    try:
        for method, cmd in plan:
            if stops:
                return stopped(args, argv, f"before the {method} sweep", stops[0]), True
            print("$ " + shlex.join(["metalearn", *cmd[3:]]), flush=True)
            sweep[:] = [subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)]  # its own group (Python 3.10 too)
            if stops:  # a request that came as it started
                forward(stops[0], None)
            code = sweep[0].wait()
            ended = sweep_ended(cmd)
            if stops or code == 130 or (ended == "stopped" and code == 0):  # 130: Ctrl-C; 0: a SIGTERM (pre-emption)
                sent = stops[0] if stops else signal.SIGINT if code == 130 else signal.SIGTERM  # or the sweep's own
                return stopped(args, argv, f"during the {method} sweep", sent), True
            if ended == "stopped":  # killed (out of memory?): its jobs say "running"; resume=true continues them
                print(f"reproduce: the {method} sweep was killed (exit {code}) and left jobs unfinished; find why (memory?), "
                      "then run the same command again to continue it", file=sys.stderr)
                return 1, True
            if code != 0 and ended == "none":  # its line above says why; the next sweeps would be refused alike
                print(f"reproduce: the {method} sweep was refused before any job ran (the line above says why); "
                      "nothing more is launched", file=sys.stderr)
                return 2, True
            if code != 0:
                failed = True
                print(f"reproduce: the {method} sweep exited with {code}; its failed jobs are marked in the table",
                      file=sys.stderr)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return None, failed


def stopped(args: argparse.Namespace, argv: list[str], where: str, signum: int) -> int:
    """A stop request: the line that says how to continue (the same command, its --out named), and the signal's exit
    code (130 for Ctrl-C, 143 for SIGTERM)."""
    named = [] if args.out_given else ["--out", str(args.out)]  # the default --out is a new folder each time
    print(f"reproduce: stopped {where}; to continue it (completed runs are kept, stopped ones resume from their last "
          f"checkpoint), run the same command again: {shlex.join(['python', _script(), *named, *argv])}",
          file=sys.stderr, flush=True)
    return 128 + signum


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", choices=sorted(TABLES), required=True)
    parser.add_argument("--budget", choices=("quick", "paper"), default="quick")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--root", default=None, help="dataset.root (mini-ImageNet's images)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="default: outputs/reproduce/<table>-<budget>-<time>")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the commands, each cell's estimated training time and their sum, and stop")
    parser.add_argument("--tabulate-only", action="store_true", help="rebuild the table from an existing --out")
    parser.add_argument("--cells", default=None,
                        help="run only these cells: comma-separated presets or settings, e.g. 5w1s,lake20w1s or "
                             "protonet_omniglot_20w5s (default: every cell)")
    parser.add_argument("extra", nargs="*", help="more Hydra overrides for every run (e.g. threads=2)")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if not 0 <= args.seed < 2**63:  # as metalearn's own seed= check
        parser.error(f"--seed {args.seed} is out of range; use an integer from 0 to {2**63 - 1}")
    args.methods = [m for m in args.methods.split(",") if m]
    args.cells = [c for c in (args.cells or "").split(",") if c]
    known = [p.format(m=m) for m in METHODS for p in TABLES[args.table]] + [p for v in EXTRA.get(args.table, {}).values() for p in v]
    missing = [c for c in args.cells if not any(p == c or f"_{c}" in p for p in known)]
    if missing:
        parser.error(f"no cell of the {args.table} table matches {missing[0]}; give a preset (e.g. {known[0]}) or a "
                     f"setting (e.g. {known[0].rsplit('_', 1)[-1]})")
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method {unknown[0]}; choose from {', '.join(METHODS)}")
    if args.table == "mini_imagenet" and not args.root and not (args.dry_run or args.tabulate_only) and not any(e.startswith("debug=") for e in args.extra):
        parser.error("--table mini_imagenet needs --root DIR with the mini-ImageNet images")
    if args.tabulate_only and args.out is None:
        parser.error("--tabulate-only rebuilds the table of an earlier run of this script: give its --out")
    # like metalearn's own outputs/: in the folder the user runs it from, not the project's
    args.out_given = args.out is not None
    args.out = args.out or Path("outputs") / "reproduce" / f"{args.table}-{args.budget}-{time.strftime('%Y-%m-%d_%H-%M-%S')}"
    args.out = Path(args.out).resolve()  # the sweeps run from the project root: a relative path is the user's
    args.root = str(Path(args.root).resolve()) if args.root else None
    if args.tabulate_only and not (args.out / "runs").is_dir():
        parser.error(f"--tabulate-only reads the runs of an earlier --out, and {args.out} holds none")
    if args.dry_run:
        return reproduce(args, argv, parser)
    from metalearn_cli.errors import InUse, MetalearnError
    from metalearn_cli.rundir import exclusive

    try:  # one reproduction at a time in --out, decided and tabulated under its lock: the same command twice would race
        with exclusive(args.out, "--out"):
            return reproduce(args, argv, parser)
    except InUse:
        print(f"reproduce: --out {args.out} is in use by another reproduce.py run (the same command, still running?); "
              "wait for it to end, or pass a new --out", file=sys.stderr)
        return 2
    except MetalearnError as exc:  # --out a file, or not writable
        print(f"reproduce: {exc}", file=sys.stderr)
        return 2


def reproduce(args: argparse.Namespace, argv: list[str], parser: argparse.ArgumentParser) -> int:
    """The reproduction main asked for: continued or begun, run, tabulated (a dry run: its commands and estimates)."""
    continuing = not args.tabulate_only and (args.out / "runs").exists()  # a dry run says what the run itself would do
    if continuing and (why := other_reproduction(args)):
        parser.error(why)

    start, failed = time.perf_counter(), False
    if args.tabulate_only:
        made = retabulated(args)
        if isinstance(made, str):
            parser.error(made)
    else:
        plan = commands(args)
        for _, cmd in plan:  # before anything is written or launched: a refused job would fail in its sweep
            why = refused(args, cmd)
            if why:
                print(f"reproduce: {why}", file=sys.stderr)
                return 2
        if continuing:
            print(f"# {args.out} holds this reproduction's runs: the sweeps it began are finished with resume=true (their "
                  "completed jobs kept, stopped ones resumed), the others begin", flush=True)
        if args.dry_run:
            planned = []
            for _, cmd in plan:
                print("$ " + shlex.join(["metalearn", *cmd[3:]]), flush=True)  # pastes into a shell as it is
                for preset, overrides in sweep_cells(cmd):  # each cell's estimated training time, as shell comments
                    seconds, how = estimate(preset, overrides)
                    planned.append((preset, seconds, how))
                    print(f"#   {preset:<28} " + (f"about {seconds / 60:5.1f} min of training ({how})"
                                                  if seconds is not None else f"no estimate: {how}"))
            print_estimates(planned)
            return 0
        if not continuing:  # continued: what it holds is what was asked, as other_reproduction found
            (args.out / INVOCATION).write_text(json.dumps(asked(args)))
        code, failed = launch(args, argv, plan)
        if code is not None:
            return code
    rows = collect(args.out)
    if not rows:
        print(f"reproduce: no runs under {args.out / 'runs'}", file=sys.stderr)
        return 1
    runs_minutes = sum(r["wall_s"] or 0 for r in rows) / 60
    budget = "reduced training: see scripts/reproduce.py QUICK" if args.budget == "quick" else "the papers' budgets"
    title = (f"{args.table} table, budget={args.budget}, {'tabulated' if args.tabulate_only else 'measured'} {time.strftime('%Y-%m-%d')} "
             f"({budget}); "
             f"one run per cell, seed {args.seed}: ± CI95 is over that run's test tasks, not over seeds; "
             "tasks/s counts training's wall time, validations included; "
             f"the runs' wall time {runs_minutes:.1f} min (this invocation {(time.perf_counter() - start) / 60:.1f} min)"
             + (f"; every run with {' '.join(args.extra)}" if args.extra else ""))
    text = markdown(rows, title)
    stem = args.out / f"{args.table}_{args.budget}"
    stem.with_suffix(".md").write_text(text, encoding="utf-8")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    stem.with_suffix(".csv").write_text(buf.getvalue(), encoding="utf-8")
    print(text)
    subprocess.run([sys.executable, "-m", "metalearn_cli", "report", str(args.out / "runs"), "--out", str(args.out / "report")],
                   cwd=ROOT, stdout=subprocess.DEVNULL)
    print(f"wrote {stem}.md, {stem}.csv and {args.out / 'report'}/ (curves.png, accuracy.png)")
    return 0 if not failed and all(r["status"] == "completed" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
