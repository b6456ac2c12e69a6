"""What ``metalearn compare`` says: each comparison's line, the notes on what limits it (said once however
many rows they concern), the figure, and why runs of one setting are no comparison. Kept apart from the pairing
of runs (:mod:`metalearn_cli.compare`), whose statistics are :mod:`metalearn_cli.paired_stats`."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

from metalearn_cli.run_records import read_run
from metalearn_cli.run_settings import bookkeeping, setting_config
from metalearn_cli.same_tasks import published

FEW_TASKS = 100  # below this, a bootstrap over tasks has too few distinct resamples to trust


def say_mixed(name: str, runs: list[Path]) -> None:
    """A note where the runs named as one setting differ in more than seed and bookkeeping (a pre-training given in
    two ways is such a case, and fine; lr 1e-3 beside 1e-2 is not): the keys, so a slip is seen before it is pooled."""
    configs = [setting_config(run) for run in runs]
    keys = sorted({k for c in configs for k in c if not bookkeeping(k) and len({repr(c.get(k)) for c in configs}) > 1})
    if len(runs) > 1 and keys:
        shown = ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
        print(f"note: the runs of --setting {name} differ in {shown}; they are pooled as one setting as asked", file=sys.stderr)


def p_text(p: float) -> str:
    """``= 0.018``, or a bound where the exact test's tail is below the smallest double (printed as 0)."""
    return f"= {p:.3g}" if p > 0 else "< 1e-300"


def figure(rows: list[dict[str, Any]], diffs: list[Any], out: Path) -> Path:
    """Each comparison's accuracy differences (B - A, %) with the mean and its CI95. The dots are what the interval
    is over: the per-task differences of one seed, or each seed's mean difference where the interval is over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 1.4 + 1.1 * len(rows)))
    ys = list(range(len(rows)))[::-1]
    for row, diff, y in zip(rows, diffs, ys):
        seeds = row["seeds"] > 1
        ax.scatter(100 * diff, [y + 0.25] * len(diff), s=24 if seeds else 4, alpha=0.8 if seeds else 0.15,
                   color="C1" if seeds else "grey", marker="D" if seeds else "o")
        ax.errorbar([row["difference"]], [y], xerr=[[row["difference"] - row["ci95_low"]], [row["ci95_high"] - row["difference"]]],
                    fmt="o", capsize=4, color="C0")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_ylim(-0.6, len(rows) - 0.4)  # each row's dots just above it, never along the frame (one row included)
    labels = [textwrap.fill(f"{r['run']} vs {r['reference']}", 48) + f"\nsign test over tasks p {p_text(r['sign_p'])}"
              + (f"\n(these networks; CI over {r['seeds']} seeds, one diamond each)" if r["seeds"] > 1 else "") for r in rows]
    ax.set_yticks(ys, labels, fontsize=8)  # settings can be long: wrapped, so the plot keeps its width
    ax.set_xlabel("accuracy difference (percentage points): grey dots tasks, diamonds seeds' means; mean and CI95: "
                  "bootstrap over tasks, or Student's t over seeds", fontsize=9)
    fig.tight_layout()
    path = out / "compare.png"
    fig.savefig(path, dpi=200, bbox_inches="tight")
    plt.close(fig)
    return path


def result_line(r: dict[str, Any]) -> str:
    """A comparison in one line. The interval is over tasks (one seed) or seeds; the sign test counts tasks, the units
    drawn independently; McNemar's test counts queries, which share their task's support set, so its p-value is the
    smaller and the less honest. Over several seeds both tests pool the seeds' tasks and say so: they are about these
    networks, the interval about the setting."""
    seeds = r["seeds"] > 1
    shared = f"{r['tasks']} shared tasks" + (f" x {r['seeds']} seeds" if seeds else "")
    interval = f"CI95 [{r['ci95_low']:+.2f}, {r['ci95_high']:+.2f}]" + (" over seeds (Student's t)" if seeds else "")
    units = "task-seed pairs" if seeds else "tasks"  # Lake's published runs: the same 20 under every seed
    tests = (f"better on {r['run_better_tasks']} vs {r['reference_better_tasks']} {units} (sign test p {p_text(r['sign_p'])}); "
             f"McNemar p {p_text(r['mcnemar_p'])} over queries ({r['only_run_right']} vs {r['only_reference_right']} "
             "queries only one got right)")
    return (f"{r['run']} vs {r['reference']}: {r['accuracy_run']:.2f}% vs {r['accuracy_reference']:.2f}% on {shared}; "
            f"difference {r['difference']:+.2f} points, {interval}; " + ("for these networks, seeds pooled: " if seeds else "")
            + tests + (f"; {r['predictions_differ']} of {r['predictions']} predictions differ" if r["predictions_differ"] is not None else ""))


def notes(rows: list[dict[str, Any]], reference: Path) -> list[str]:
    """What limits the comparison, each said once however many rows it concerns: too few tasks (one seed: the interval
    is over tasks); two seeds (the interval is over seeds)."""
    out = []
    fewest = min((r["tasks"] for r in rows if r["seeds"] == 1), default=FEW_TASKS)
    if fewest < FEW_TASKS:
        out.append(few_tasks_note(fewest, reference))
    if any(r["seeds"] == 2 and r["ci95_low"] <= 0 <= r["ci95_high"] for r in rows):
        out.append("note: an interval over 2 seeds has 1 degree of freedom (t = 12.7), which is why it holds 0 here; "
                   "a third seed of each setting narrows it")
    return out


def few_tasks_note(tasks: int, reference: Path) -> str:
    """What to do when a comparison rests on too few tasks: score more, or (Lake et al.'s published runs, all
    there are) compare more seeds."""
    how = ("Lake et al. published only these runs: compare more seeds of each setting (--setting RUN ...)"
           if published(read_run(reference)["results"]) else
           f"score {FEW_TASKS} or more (metalearn eval checkpoint=RUN eval.episodes=1000)")
    return f"note: {tasks} tasks are too few for a trustworthy interval or p-value; {how}"


def one_setting(runs: dict[int, Path]) -> str:
    """Why runs of one setting are no comparison, and how to compare their weights all the same."""
    if all(published(read_run(run)["results"]) for run in runs.values()):  # the same 20 runs whatever the seed
        return ("the runs given are seeds of one setting; to compare their weights on Lake et al.'s published runs, "
                "which every seed is tested on, name each as a setting: --setting A --setting B")
    return ("the runs given are seeds of one setting, and each seed is tested on tasks of its own; give runs of two "
            "settings or more, or, to compare these runs' weights, score each on one seed's tasks (metalearn eval "
            f"checkpoint=RUN seed={min(runs)}) and compare the eval dirs")
