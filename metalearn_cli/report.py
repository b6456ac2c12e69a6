"""``metalearn report PATH...``: one table of configs x metrics over run dirs or sweep dirs, plus
learning curves and a bar chart of test accuracy with CI95 error bars (matplotlib, headless)."""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path
from typing import Any

from metalearn_cli.errors import MetalearnError
from metalearn_cli.rundir import find_runs, read_run

COLUMNS = ["run", "overrides", "dataset", "encoder", "decoder", "strategy", "episode", "seed", "status",
           "test_accuracy", "ci95", "published", "val_accuracy", "train_seconds", "tasks_per_s"]
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


def describe(run: Path, base: Path) -> dict[str, Any]:
    """One row: the run's choices (from .hydra/config.yaml) and its measured figures."""
    record = read_run(run)
    cfg, results = record["config"], record["results"]
    ep = cfg.get("episode") if isinstance(cfg.get("episode"), dict) else {}
    name = lambda group: (cfg.get(group) or {}).get("name", "") if isinstance(cfg.get(group), dict) else ""  # noqa: E731
    return {
        "run": str(run.relative_to(base)) if run.is_relative_to(base) else str(run),
        "overrides": " ".join(o for o in record["overrides"] if not o.startswith("hydra.")),
        "dataset": name("dataset"), "encoder": name("encoder"), "decoder": name("decoder"),
        "strategy": strategy_label(cfg),
        "episode": f"{ep.get('way', '?')}w{ep.get('shot', '?')}s" if ep else "", "seed": cfg.get("seed"),
        "status": record["status"],
        "test_accuracy": results.get("accuracy"), "ci95": results.get("ci95"),
        "published": results.get("published_accuracy"),
        "val_accuracy": results.get("val_accuracy"), "train_seconds": results.get("train_seconds"),
        "tasks_per_s": results.get("train_tasks_per_s"),
    }


def across_seeds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs that differ only in ``seed=``: mean and sample std of their test accuracy (in %)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["test_accuracy"] is None:
            continue
        setting = " ".join(o for o in row["overrides"].split() if not o.startswith("seed=")) or "(defaults)"
        groups.setdefault(f"{setting} [{row['dataset']} {row['encoder']} {row['decoder']} {row['strategy']} {row['episode']}]",
                          []).append(row)
    out = []
    for setting, members in groups.items():
        if len(members) < 2:
            continue
        accs = [100 * m["test_accuracy"] for m in members]
        mean = sum(accs) / len(accs)
        std = (sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) ** 0.5
        out.append({"setting": setting, "seeds": ",".join(str(m["seed"]) for m in members),
                    "mean_accuracy": round(mean, 2), "std_accuracy": round(std, 2), "runs": len(members)})
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    def cell(key: str, value: Any) -> str:
        if value is None:
            return "–"
        if key in ("test_accuracy", "val_accuracy", "ci95") and isinstance(value, float):
            return f"{100 * value:.2f}"
        return f"{value:.1f}" if isinstance(value, float) else str(value)

    out = io.StringIO()
    out.write("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n")
    for row in rows:
        out.write("| " + " | ".join(cell(k, row[k]) for k in COLUMNS) + " |\n")
    return out.getvalue()


def plot(runs: list[Path], rows: list[dict[str, Any]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for run, row in zip(runs, rows):
        records = read_run(run)["metrics"]
        train = [(r["step"], r["loss"]) for r in records if r.get("split") == "train" and "loss" in r]
        val = [(r["step"], r["accuracy"]) for r in records if r.get("split") == "val"]
        if train:
            loss_ax.plot(*zip(*train), marker="o" if len(train) < 20 else None, label=row["run"])  # short runs: visible points
        if val:
            val_ax.plot(*zip(*val), marker="o", label=row["run"])
    loss_ax.set(xlabel="meta-iteration", ylabel="train loss", title="training loss")
    val_ax.set(xlabel="meta-iteration", ylabel="validation accuracy", title="validation accuracy")
    val_ax.legend(fontsize=7)
    fig.tight_layout()
    curves = out / "curves.png"
    fig.savefig(curves, dpi=110)
    plt.close(fig)

    done = [r for r in rows if r["test_accuracy"] is not None]
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(done) + 2), 4))
    ax.bar(range(len(done)), [100 * r["test_accuracy"] for r in done], yerr=[100 * (r["ci95"] or 0) for r in done], capsize=4)
    published = [(i, r["published"]) for i, r in enumerate(done) if r.get("published") is not None]
    if published:  # the paper's figure beside ours, where a preset names one
        ax.scatter(*zip(*published), marker="_", s=400, color="crimson", zorder=3, label="published")
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xticks(range(len(done)), [r["run"] for r in done], rotation=30, ha="right", fontsize=7)
    ax.set(ylabel="test accuracy (%) ± CI95", title="test accuracy")
    if done:
        low = min([100 * (r["test_accuracy"] - (r["ci95"] or 0)) for r in done] + [p for _, p in published])
        ax.set_ylim(max(0, low - 5), 100)
    fig.tight_layout()
    bars = out / "accuracy.png"
    fig.savefig(bars, dpi=110)
    plt.close(fig)
    return [curves, bars]


def main(argv: list[str]) -> int:
    """``metalearn report PATH... [--out DIR]``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="metalearn report", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run dirs and/or sweep dirs")
    parser.add_argument("--out", type=Path, help="where to write report.md, report.csv and the PNGs (default: the first PATH)")
    args = parser.parse_args(argv)
    runs = find_runs(args.paths)
    base = args.paths[0] if args.paths[0].is_dir() else args.paths[0].parent
    rows = [describe(run, base) for run in runs]
    out = args.out or base
    if out.exists() and not out.is_dir():
        raise MetalearnError(f"--out {out} is a file; pass a folder for report.md, report.csv and the pictures")
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(rows)
    (out / "report.md").write_text(table, encoding="utf-8")
    with open(out / "report.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    seeds = across_seeds(rows)
    if seeds:
        table += ("\n### Across training seeds (test accuracy %, mean ± sample std)\n\n| setting | seeds | mean | std | runs |\n"
                  "|---|---|---|---|---|\n" + "".join(f"| {g['setting']} | {g['seeds']} | {g['mean_accuracy']:.2f} | "
                                                       f"{g['std_accuracy']:.2f} | {g['runs']} |\n" for g in seeds))
        (out / "report.md").write_text(table, encoding="utf-8")
        with open(out / "seeds.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=SEED_COLUMNS)
            writer.writeheader()
            writer.writerows(seeds)
    pictures = plot(runs, rows, out)
    print(table, end="")
    print(f"\n{len(rows)} runs; wrote {out / 'report.md'}, {out / 'report.csv'}, " + ", ".join(map(str, pictures)))
    return 0
