"""``metalearn compare RUN_A RUN_B [...]``: paired comparisons on the same fixed test tasks.

Runs with one seed, task shape and evaluation split are scored on the *same* test tasks, so two
methods are compared task by task rather than by two intervals that overlap:

- the mean per-task accuracy difference (B - A) with a 95% bootstrap interval over tasks (10,000
  resamples, seeded, so the table repeats);
- McNemar's test on the per-query outcomes: of the queries exactly one run gets right, how often
  each one is that run (exact binomial below 25 discordant queries, chi-square with continuity
  correction above);
- a figure of the per-task differences.

The first run is the reference; every other run is compared with it. Runs and eval dirs written
since 2026-12-01 hold ``test_outcomes.npz``; an older one is re-scored with ``metalearn eval``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from metalearn_cli.console import OneLineParser
from metalearn_cli.errors import MetalearnError
from metalearn_cli.rundir import find_runs, held, read_run, refuse_replacing

SAME_TASKS = ("dataset", "split", "way", "shot", "query", "seed", "episodes", "protocol")  # what fixes the test tasks
COLUMNS = ["reference", "run", "tasks", "accuracy_reference", "accuracy_run", "difference", "ci95_low", "ci95_high",
           "only_reference_right", "only_run_right", "mcnemar_p"]


def outcomes(run: Path) -> Any:
    """The run's per-query correctness ``[tasks, queries]`` (numpy bool)."""
    import numpy as np

    path = run / "test_outcomes.npz"
    if not path.is_file():
        raise MetalearnError(f"{run} holds no test_outcomes.npz (runs before 2026-12-01); score it again with "
                             f"metalearn eval checkpoint={run} hydra.run.dir=<new dir>, then compare that dir")
    try:
        with np.load(path) as f:
            shape = tuple(int(s) for s in f["shape"])
            return np.unpackbits(f["packed"], count=int(np.prod(shape))).reshape(shape).astype(bool)
    except (OSError, ValueError, KeyError) as exc:
        raise MetalearnError(f"{path} is damaged ({exc.__class__.__name__}); score the run again with metalearn eval") from exc


def mcnemar(only_a: int, only_b: int) -> float:
    """Two-sided p-value of McNemar's test from the discordant counts."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    if n < 25:  # exact: the smaller count under Binomial(n, 1/2)
        tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n
        return min(1.0, 2 * tail)
    statistic = (abs(only_a - only_b) - 1) ** 2 / n
    return math.erfc(math.sqrt(statistic / 2))  # chi-square with one degree of freedom


def paired(a: Any, b: Any, resamples: int = 10_000, seed: int = 0) -> dict[str, float]:
    """B against A on the same tasks: mean per-task difference, its bootstrap CI95, McNemar."""
    import numpy as np

    diff = b.mean(1) - a.mean(1)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    return {"tasks": len(diff), "accuracy_reference": 100 * a.mean(), "accuracy_run": 100 * b.mean(),
            "difference": 100 * diff.mean(), "ci95_low": 100 * low, "ci95_high": 100 * high,
            "only_reference_right": only_a, "only_run_right": only_b, "mcnemar_p": mcnemar(only_a, only_b)}


def same_tasks(reference: Path, run: Path) -> None:
    a, b = read_run(reference)["results"], read_run(run)["results"]
    differ = [k for k in SAME_TASKS if a.get(k) != b.get(k)]
    if differ:
        raise MetalearnError(f"{run} was not scored on the tasks of {reference} ({', '.join(f'{k}: {a.get(k)} vs {b.get(k)}' for k in differ[:3])}); "
                             "score both on the same tasks (metalearn eval ... seed=S episode=...) to compare them")


def figure(rows: list[dict[str, Any]], diffs: list[Any], out: Path) -> Path:
    """Per-task accuracy differences (B - A, %) of each comparison, with the mean and its CI95."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.8 * len(rows)))
    ys = list(range(len(rows)))[::-1]
    for row, diff, y in zip(rows, diffs, ys):
        ax.scatter(100 * diff, [y + 0.25] * len(diff), s=4, alpha=0.15, color="grey")
        ax.errorbar([row["difference"]], [y], xerr=[[row["difference"] - row["ci95_low"]], [row["ci95_high"] - row["difference"]]],
                    fmt="o", capsize=4, color="C0")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(ys, [f"{r['run']} vs {r['reference']}\nMcNemar p = {r['mcnemar_p']:.3g}" for r in rows], fontsize=9)
    ax.set_xlabel("per-task accuracy difference (percentage points; mean, bootstrap CI95)", fontsize=10)
    fig.tight_layout()
    path = out / "compare.png"
    fig.savefig(path, dpi=200, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv: list[str]) -> int:
    parser = OneLineParser(prog="metalearn compare", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run dirs or eval dirs; the first is the reference")
    parser.add_argument("--out", type=Path, default=None, help="where to write compare.csv and compare.png "
                                                               "(default: compare/ beside the first run)")
    args = parser.parse_args(argv)
    runs = [r for path in args.runs for r in find_runs([path])]
    if len(runs) < 2:
        parser.error("give two runs or more: the first is the reference")
    reference, base = runs[0], runs[0].parent
    while held(base) and base.parent != base:  # beside the runs, never inside one
        base = base.parent
    rows, diffs = [], []
    ref = outcomes(reference)
    for run in runs[1:]:
        same_tasks(reference, run)
        other = outcomes(run)
        if other.shape != ref.shape:
            raise MetalearnError(f"{run} holds {other.shape} outcomes, {reference} {ref.shape}; score both on the same tasks")
        label = lambda p: str(p.relative_to(base)) if p.is_relative_to(base) else str(p)  # noqa: E731
        rows.append({"reference": label(reference), "run": label(run), **paired(ref, other)})
        diffs.append(other.mean(1) - ref.mean(1))
    if args.out is not None:
        refuse_replacing(args.out, "--out ")
    out = args.out or base / "compare"
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "compare.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows([{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows])
    for r in rows:
        print(f"{r['run']} vs {r['reference']}: {r['accuracy_run']:.2f}% vs {r['accuracy_reference']:.2f}% on "
              f"{r['tasks']} shared tasks; difference {r['difference']:+.2f} points, CI95 [{r['ci95_low']:+.2f}, "
              f"{r['ci95_high']:+.2f}]; McNemar p = {r['mcnemar_p']:.3g} ({r['only_run_right']} vs "
              f"{r['only_reference_right']} queries only one got right)")
    print(f"wrote {out / 'compare.csv'} and {figure(rows, diffs, out)}")
    return 0
