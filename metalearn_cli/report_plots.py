"""The pictures of ``metalearn report`` (matplotlib, headless): learning curves, mean ± std over the
seeds of each setting, and test accuracy as points with CI95 error bars, all in percent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metalearn_cli.rundir import read_run


def _series(run: Path) -> tuple[dict[int, float], dict[int, float]]:
    """Training loss and validation accuracy (%) by step."""
    records = read_run(run)["metrics"]
    loss = {r["step"]: r["loss"] for r in records if r.get("split") == "train" and isinstance(r.get("loss"), (int, float))}
    val = {r["step"]: 100 * r["accuracy"] for r in records
           if r.get("split") == "val" and isinstance(r.get("accuracy"), (int, float))}
    return loss, val


def _band(ax: Any, members: list[dict[int, float]], label: str) -> None:
    """One line per setting: the mean over its runs, shaded ± std where there are several."""
    steps = sorted(set.intersection(*(set(m) for m in members))) if members else []
    if not steps:
        return
    import numpy as np

    values = np.array([[m[s] for s in steps] for m in members])
    mean = values.mean(0)
    line = ax.plot(steps, mean, marker="o" if len(steps) < 20 else None, label=f"{label} (n={len(members)})")[0]
    if len(members) > 1:
        std = values.std(0, ddof=1)
        ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)


def curves(runs: list[Path], rows: list[dict[str, Any]], settings: list[str], out: Path) -> Path:
    """Loss and validation curves; runs of one setting (differing only in their seed) are one mean ± std band."""
    import matplotlib.pyplot as plt

    groups: dict[str, list[Path]] = {}
    for run, row, setting in zip(runs, rows, settings):
        groups.setdefault(setting if len(runs) > 1 else row["run"], []).append(run)
    several = any(len(m) > 1 for m in groups.values())
    labels = {s: (s if several else rows[runs.index(m[0])]["run"]) for s, m in groups.items()}
    fig, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for setting, members in groups.items():
        series = [_series(r) for r in members]
        _band(loss_ax, [s[0] for s in series], labels[setting])
        _band(val_ax, [s[1] for s in series], labels[setting])
    loss_ax.set(xlabel="meta-iteration", ylabel="train loss", title="training loss" + (" (mean ± std over seeds)" if several else ""))
    val_ax.set(xlabel="meta-iteration", ylabel="validation accuracy (%)", title="validation accuracy")
    handles, names = val_ax.get_legend_handles_labels()
    if handles:  # below the plots: never over a point
        fig.legend(handles, names, loc="lower center", ncol=1, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.06 * min(len(handles), 6) + 0.02, 1, 1))
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def accuracy(rows: list[dict[str, Any]], out: Path) -> Path:
    """Test accuracy (%) of each run as a point with its CI95, runs on the vertical axis (labels in full)."""
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["test_accuracy"] is not None]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.4 * max(len(done), 1)))
    ys = list(range(len(done)))[::-1]
    ax.errorbar([r["test_accuracy"] for r in done], ys, xerr=[r["ci95"] or 0 for r in done], fmt="o", capsize=4,
                label="ours ± CI95")
    published = [(r["published"], y) for r, y in zip(done, ys) if r.get("published") is not None]
    if published:  # the paper's figure beside ours, where a preset names one
        ax.scatter(*zip(*published), marker="x", s=60, color="crimson", zorder=3, label="published")
    ax.set_yticks(ys, [r["run"] for r in done], fontsize=8)
    ax.set(xlabel="test accuracy (%)")
    ax.set_title("test accuracy", loc="right")
    if done:
        low = min([r["test_accuracy"] - (r["ci95"] or 0) for r in done] + [p for p, _ in published])
        ax.set_xlim(max(0.0, low - 5), 100)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2, frameon=False)
    fig.tight_layout()
    path = out / "accuracy.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot(runs: list[Path], rows: list[dict[str, Any]], settings: list[str], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    return [curves(runs, rows, settings, out), accuracy(rows, out)]
