"""``metalearn report PATH...``: one table of configs x metrics over run dirs or sweep dirs (accuracies
in percent throughout), plus learning curves and a chart of test accuracy with CI95 error bars
(:mod:`metalearn_cli.report_plots`). Written to ``report/`` beside the inputs, never inside a run."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Optional

from metalearn_cli.console import OneLineParser, folder_arg, help_text
from metalearn_cli.derived import INPUTS, default_output, outside_runs, record_inputs, record_written, refuse_other_output
from metalearn_cli.run_records import common_base, find_runs
from metalearn_cli.rundir import METRICS, refuse_replacing
from metalearn_cli.run_settings import (bookkeeping, by_setting, config_labels, record_of, setting_config, setting_of,
                                        setting_overrides, trained_by)
from metalearn_cli.sweep_record import failed_note, sweep_note

COLUMNS = ["run", "command", "overrides", "dataset", "encoder", "decoder", "strategy", "episode", "seed", "status",
           "test_accuracy", "ci95", "published", "published_of", "val_accuracy", "train_seconds", "tasks_per_s",
           "pretrain", "pretrain_accuracy", "pretrain_seconds"]  # the pre-training stage, where the run had one
SEED_COLUMNS = ["setting", "seeds", "mean_accuracy", "std_accuracy", "runs"]


def strategy_label(cfg: dict[str, Any]) -> str:
    """The strategy's registry name; runs saved before the variants had names of their own said
    ``maml`` for all four, so those are told apart by their flags."""
    strategy = cfg.get("strategy") or {}
    name = str(strategy.get("name", ""))
    if name == "maml":
        if strategy.get("adapt") == "head":
            return "anil"
        if strategy.get("learn_inner_lr"):
            return "metasgd"
        if strategy.get("first_order"):
            return "fomaml"
    return name


def _percent(value: Any, low: float = -math.inf) -> Optional[float]:
    """A fraction as a percentage; anything else (a damaged file: text, inf, NaN, below ``low``) as missing."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= low
    return round(100 * value, 2) if ok else None


def task_shape(record: dict[str, Any], episode: dict[str, Any]) -> str:
    """``5w1s``: an eval dir's own tasks (with its split unless ``test``; Lake et al.'s runs, drawn or
    published, named), a predict dir's folder task (its classes and support images per class), a training run's test episode."""
    results = record["results"]
    if record["command"] == "predict":
        shots = sorted(set((results.get("support_per_class") or {}).values()))
        way = len(results.get("classes") or [])
        return f"{way}w{'-'.join(map(str, shots[:1] + shots[1:][-1:]))}s" if way and shots else ""
    way, shot = (results.get("way"), results.get("shot")) if record["command"] == "eval" else (episode.get("way"), episode.get("shot"))
    split = results.get("split") if record["command"] == "eval" and results.get("split") not in (None, "test") else None
    shape = f"{way or '?'}w{shot or '?'}s" if way or shot else ""
    shape += {"lake": " Lake runs", "lake_original": " Lake's published runs"}.get(results.get("protocol"), "") if shape else ""
    return f"{shape} ({split})" if split else shape


def stage_columns(stage: Any, recipe: Optional[str] = None) -> dict[str, Any]:
    """The pre-training stage's option (``rfs``, a ``supervised`` stage on RFS's schedule) or kind, nearest-centroid
    test accuracy (%) and training time; empty cells without one."""
    stage = stage if isinstance(stage, dict) else {}
    return {"pretrain": (recipe if stage else None) or stage.get("kind") or "", "pretrain_accuracy": _percent(stage.get("accuracy")),
            "pretrain_seconds": stage.get("train_seconds")}


def best_validation(metrics: list[dict[str, Any]]) -> Optional[float]:
    """The best validation accuracy a run's metrics.jsonl holds: an unfinished run's, which has no results.json."""
    values = [m["accuracy"] for m in metrics if m.get("split") == "val" and isinstance(m.get("accuracy"), (int, float))]
    return max(values) if values else None


def sweep_notes(paths: list[Path], runs: list[Path]) -> list[str]:
    """A line for each sweep dir named whose jobs did not all finish (:func:`~metalearn_cli.sweep_record.sweep_note`)."""
    inside = [[run for run in runs if run.parent == Path(path)] for path in paths]  # a folder without multirun.yaml
    notes = [sweep_note(Path(path), jobs) or failed_note(Path(path), jobs) for path, jobs in zip(paths, inside)]  # (Optuna's)
    return [note for note in notes if note]


def damaged_note(runs: list[Path], rows: list[dict[str, Any]]) -> list[str]:
    """A line naming the runs' damaged files: results and status read as empty (their rows lack what they held), a
    metrics.jsonl without its unreadable lines (its curves lack their records)."""
    damaged = [str(run / name) for run, row in zip(runs, rows) for name in row["_damaged"] if name != METRICS]
    cut = [str(run / METRICS) for run, row in zip(runs, rows) if METRICS in row["_damaged"]]
    notes = [f"damaged (read as empty, so the row lacks what it held): {', '.join(damaged[:5])}"
             f"{f' and {len(damaged) - 5} more' if len(damaged) > 5 else ''}; restore each, or score the run again "
             "with metalearn eval checkpoint=RUN"] if damaged else []
    return notes + ([f"lines of {', '.join(cut[:5])}{f' and {len(cut) - 5} more' if len(cut) > 5 else ''} cannot be "
                     "read (cut or garbled), so the curves lack their records (a run killed mid-write loses its last line; "
                     "a garbled file may be restored from a copy)"] if cut else [])


def _below(run: Path, base: Path) -> str:
    """A run's name in the table: its path below the runs' common folder, however it was spelled
    (``pA/pretrain`` and ``pB/pretrain``, not two rows named ``pretrain``)."""
    where = run.resolve()
    return str(where.relative_to(base)) if where != base and where.is_relative_to(base) else run.name


def describe(run: Path, base: Path) -> dict[str, Any]:
    """One row: the run's choices (from .hydra/config.yaml; an eval or predict dir's from the run that
    trained its checkpoint) and its measured figures (accuracies in %)."""
    record = record_of(run)
    results = record["results"]
    trained = trained_by(record)
    cfg, choices = (trained or record)["config"], (trained or record)["choices"]
    if not trained and record["command"] == "eval":  # its training run is gone: what its results.json kept
        cfg = {**{group: {"name": results[group]} for group in ("dataset", "encoder", "decoder", "strategy")
                  if isinstance(results.get(group), str)}, **cfg}

    def name(group: str) -> str:  # the config file picked (conv4_fast), else the component's registry name (conv4)
        picked = choices.get(group)
        if isinstance(picked, str) and picked:
            return picked
        return str((cfg.get(group) or {}).get("name", "")) if isinstance(cfg.get(group), dict) else ""

    stage = (trained or record).get("stage_of") is not None  # <run>/pretrain (or an eval of its checkpoint): nearest-centroid on the stage's encoder
    picked = choices.get("pretrain")  # the option (rfs), where the config's kind says supervised
    recipe = picked if isinstance(picked, str) and picked not in ("", "none") else None
    seed = results.get("seed") if record["command"] == "eval" and "seed" in results else record["config"].get("seed")
    typed = [o for o in record["overrides"] if isinstance(o, str) and not o.startswith(("hydra.", "resume="))]  # bookkeeping aside
    return {
        "run": _below(run, base),
        "command": record["command"],
        "overrides": " ".join(typed),
        "_overrides": typed,  # not a column: each override whole (a value may hold spaces), for swept()
        "dataset": name("dataset"), "encoder": name("encoder"), "decoder": "prototype" if stage else name("decoder"),
        "strategy": f"pretrain={recipe or (cfg.get('pretrain') or {}).get('kind', '')}" if stage else strategy_label(cfg),
        "episode": task_shape(record, cfg.get("episode") if isinstance(cfg.get("episode"), dict) else {}),
        "seed": seed, "status": record["status"] + (" (of an unfinished run)" if results.get("unfinished") else ""),
        "test_accuracy": _percent(results.get("accuracy")), "ci95": _percent(results.get("ci95"), low=0),
        "published": results.get("published_accuracy"), "published_of": results.get("published_of") or "",
        "val_accuracy": _percent(results.get("val_accuracy", best_validation(record["metrics"]))),  # unfinished: so far
        "train_seconds": results.get("train_seconds"),
        "tasks_per_s": results.get("train_tasks_per_s") if results.get("iterations") != 0 else None,  # none meta-trained
        **stage_columns(results.get("pretrain"), recipe),
        "_damaged": record["damaged"],  # not a column: named in a note
        "_setting_overrides": setting_overrides(record, trained),  # not a column: the seeds table's label
        "_setting": repr(sorted((k, repr(v)) for k, v in setting_config(run, record, trained).items() if not bookkeeping(k))),  # not a column
    }


def across_seeds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs that differ only in ``seed=``: mean and sample std of their test accuracy (in %); a run repeating a
    seed its setting holds stands alone (a rerun, another process count: no spread over seeds), as in the charts."""
    groups = by_setting([row.get("_setting") or setting_of(row) for row in rows],  # equal configs, however typed
                        [row["seed"] for row in rows], [row["run"] for row in rows],
                        [row["test_accuracy"] is not None for row in rows])  # as the charts group them
    out = []
    for indices in groups.values():
        members = [rows[i] for i in indices if rows[i]["test_accuracy"] is not None and rows[i]["seed"] is not None]
        if len(members) < 2:
            continue
        setting = setting_of(members[0])
        accs = [m["test_accuracy"] for m in members]
        mean = sum(accs) / len(accs)
        std = (sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) ** 0.5
        out.append({"setting": setting, "seeds": ",".join(str(m["seed"]) for m in members),
                    "mean_accuracy": round(mean, 2), "std_accuracy": round(std, 2), "runs": len(members)})
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "–"
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    out = io.StringIO()
    header = [f"{c} (%)" if c in ("test_accuracy", "ci95", "published", "val_accuracy", "pretrain_accuracy") else c for c in COLUMNS]
    out.write("| " + " | ".join(header) + " |\n|" + "---|" * len(COLUMNS) + "\n")
    for row in rows:
        out.write("| " + " | ".join(cell(row[k]) for k in COLUMNS) + " |\n")
    return out.getvalue()


def default_out(runs: list[Path]) -> Path:
    """``report/`` beside the inputs: in the folder holding them all, never inside a run, never over
    the report of other runs (:mod:`metalearn_cli.derived`); a report of some of these runs is refreshed."""
    return default_output(outside_runs(common_base(runs)), "report", runs, grown=True)


def swept(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The command-line keys whose values differ between the runs (a sweep's axes, an Optuna study's parameters), each
    with every row's value (empty where a run was not given it): columns of their own in report.csv, so a table tool
    reads ``optimizer.lr`` as a number rather than parsing the overrides. ``seed`` has its own column."""
    given = [dict(o.split("=", 1) for o in row.get("_overrides", row["overrides"].split()) if "=" in o) for row in rows]
    keys = dict.fromkeys(k.lstrip("+~") for g in given for k in g)
    columns = {k: [next((v for g_key, v in g.items() if g_key.lstrip("+~") == k), "") for g in given] for k in keys}
    return {k: values for k, values in columns.items() if k not in COLUMNS and len(set(values)) > 1}


def write_tables(rows: list[dict[str, Any]], out: Path, notes: list[str]) -> str:
    """report.md, report.csv and (for runs that differ only in their seed) seeds.csv; returns the markdown,
    ``notes`` below its tables (a sweep's jobs that did not finish: the table alone hides those that never ran)."""
    table = markdown(rows)
    axes = swept(rows)
    with open(out / "report.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS + list(axes), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows([{**row, **{k: values[i] for k, values in axes.items()}} for i, row in enumerate(rows)])
    seeds = across_seeds(rows)
    if seeds:
        table += ("\n### Across training seeds (test accuracy %, mean ± sample std)\n\n| setting | seeds | mean | std | runs |\n"
                  "|---|---|---|---|---|\n" + "".join(f"| {g['setting']} | {g['seeds']} | {g['mean_accuracy']:.2f} | "
                                                       f"{g['std_accuracy']:.2f} | {g['runs']} |\n" for g in seeds))
        with open(out / "seeds.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=SEED_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(seeds)
    else:
        (out / "seeds.csv").unlink(missing_ok=True)  # a refreshed report keeps no table of an earlier one
    table += "".join(f"\nNote: {note}\n" for note in notes)
    (out / "report.md").write_text(table, encoding="utf-8")
    return table


def main(argv: list[str]) -> int:
    """``metalearn report PATH... [--out DIR]``; returns the exit code."""
    from metalearn_cli.report_plots import FIGURE_FORMATS, plot

    parser = OneLineParser(prog="metalearn report", description=help_text(__doc__))
    parser.add_argument("paths", nargs="+", type=Path, help="run dirs and/or sweep dirs")
    parser.add_argument("--out", type=folder_arg, help="where to write report.md, report.csv and the figures "
                                                 "(default: report/ in the folder holding the runs; report-2/, ... when report/ holds other runs' report)")
    parser.add_argument("--format", default="png", help="figure formats, comma-separated: png, pdf, svg (default: png)")
    args = parser.parse_args(argv)
    formats = list(dict.fromkeys(f.strip().lower() for f in args.format.split(",") if f.strip()))  # PNG,png: once
    if not formats or any(f not in FIGURE_FORMATS for f in formats):
        parser.error(f"--format {args.format}: choose from png, pdf, svg (comma-separated)")
    for path in args.paths:  # key=value, the Hydra commands' grammar, where a flag is meant
        if "=" in str(path) and not Path(path).exists():
            parser.error(f"unrecognized arguments: {path}")
    runs = find_runs(args.paths)
    base = common_base(runs)
    rows = [describe(run, base) for run in runs]
    if args.out is not None:
        refuse_replacing(args.out, "--out ")
        refuse_other_output(args.out, ("report.md", "report.csv", "seeds.csv", INPUTS, "curves.*", "accuracy.*"), runs)
    out = args.out or default_out(runs)
    out.mkdir(parents=True, exist_ok=True)
    record_inputs(out, runs)
    table = write_tables(rows, out, sweep_notes(args.paths, runs) + damaged_note(runs, rows))
    pictures = plot(runs, rows, config_labels(runs, rows), out, tuple(formats))
    print(table, end="")
    tables = [out / name for name in ("report.md", "report.csv", "seeds.csv", "inputs.txt") if (out / name).is_file()]
    record_written(out, [*tables, *pictures])
    print(f"\n{len(rows)} run{'s' if len(rows) != 1 else ''}; wrote " + ", ".join(map(str, [*tables, *pictures])))
    return 0
