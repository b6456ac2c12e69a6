"""The figures of ``metalearn report`` (matplotlib, headless), ready for a paper: learning curves
and test accuracy per *setting* (runs that differ only in their seed are one setting), each setting
one colour in every panel and every series in the legend, labels from what differs between the runs'
configs, seeds aggregated (mean with a CI95 band / bar), in PNG, PDF or SVG."""

from __future__ import annotations

import contextlib
import re
import sys
import textwrap
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from metalearn_cli.derived import written_here
from metalearn_cli.paired_stats import t975
from metalearn_cli.run_records import read_run
from metalearn_cli.run_settings import by_setting

FONT = 10  # readable at a column's width


def _series(run: Path) -> tuple[dict[int, float], dict[int, float]]:
    """Training loss and validation accuracy (%) by step."""
    records = read_run(run)["metrics"]
    loss = {r["step"]: r["loss"] for r in records if r.get("split") == "train" and isinstance(r.get("loss"), (int, float))}
    val = {r["step"]: 100 * r["accuracy"] for r in records
           if r.get("split") == "val" and isinstance(r.get("accuracy"), (int, float))}
    return loss, val


def groups_of(runs: list[Path], rows: list[dict[str, Any]], settings: list[str]) -> dict[str, list[int]]:
    """Setting label -> the indices of its runs (in the order they come); a repeated seed stands alone
    (:func:`~metalearn_cli.run_settings.by_setting`)."""
    labels = settings if len(runs) > 1 else [rows[0]["run"]]
    return by_setting(labels, [row.get("seed") for row in rows], [row["run"] for row in rows],
                      [row["test_accuracy"] is not None for row in rows])


def colours(labels: list[str]) -> dict[str, Any]:
    """One colour per setting, the same in every panel and figure."""
    import matplotlib

    cycle = matplotlib.colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {label: cycle(i % cycle.N) for i, label in enumerate(labels)}


def _band(ax: Any, members: list[dict[int, float]], colour: Any, bounds: tuple[float, float] | None = None) -> bool:
    """The mean over a setting's runs at the steps they all logged, shaded by its CI95 over seeds (kept within
    ``bounds``: an accuracy's interval is cut at 0 and 100%, a loss's at 0); whether there was anything to draw."""
    steps = sorted(set.intersection(*(set(m) for m in members))) if members else []
    if not steps:
        return False
    import numpy as np

    values = np.array([[m[s] for s in steps] for m in members])
    mean = values.mean(0)
    ax.plot(steps, mean, color=colour, marker="o" if len(steps) < 20 else None, markersize=4)
    if len(members) > 1:
        half = t975(len(members) - 1) * values.std(0, ddof=1) / len(members) ** 0.5
        low, high = (mean - half, mean + half) if bounds is None else (np.clip(mean - half, *bounds), np.clip(mean + half, *bounds))
        ax.fill_between(steps, low, high, color=colour, alpha=0.2, linewidth=0)
    return True


def _legend(fig: Any, labels: dict[str, str], palette: dict[str, Any]) -> None:
    """Every setting, whatever each panel logged, below the panels (never over a point)."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=palette[s], marker="o", label=textwrap.fill(text, 90)) for s, text in labels.items()]
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=1 if len(handles) > 2 else len(handles),
               fontsize=FONT - 1, frameon=False)  # below the panels (saved with bbox_inches="tight")


def curves_figure(runs: list[Path], rows: list[dict[str, Any]], settings: list[str]) -> Any:
    """Training loss and validation accuracy per setting: the mean over its seeds with a CI95 band."""
    import matplotlib.pyplot as plt

    groups = groups_of(runs, rows, settings)
    palette = colours(list(groups))
    fig, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(10, 4))
    drawn = set()
    for setting, members in groups.items():
        series = [_series(runs[i]) for i in members]
        if _band(loss_ax, [s[0] for s in series], palette[setting], (0, float("inf"))) | _band(val_ax, [s[1] for s in series], palette[setting], (0, 100)):
            drawn.add(setting)
    several = any(len(m) > 1 for m in groups.values())
    loss_ax.set_xlabel("meta-iteration", fontsize=FONT)
    loss_ax.set_ylabel("training loss", fontsize=FONT)
    val_ax.set_xlabel("meta-iteration", fontsize=FONT)
    val_ax.set_ylabel("validation accuracy (%)", fontsize=FONT)
    loss_ax.set_title("training loss" + (" (mean, CI95 over seeds)" if several else ""), fontsize=FONT)
    val_ax.set_title("validation accuracy" + (" (mean, CI95 over seeds)" if several else ""), fontsize=FONT)
    from matplotlib.ticker import MaxNLocator

    for ax in (loss_ax, val_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # meta-iterations are whole: no 0.5 ticks on a short run
        ax.tick_params(labelsize=FONT - 1)
        ax.grid(alpha=0.3)
    shown = displayed(list(groups))
    labels = {s: f"{shown[s]} (n={len(m)})" if several else shown[s] for s, m in groups.items()
              if s in drawn}  # an eval dir's setting has no curve: no legend entry without a line
    _legend(fig, labels, palette)
    fig.tight_layout()
    return fig


def accuracy_figure(rows: list[dict[str, Any]], settings: list[str]) -> Any:
    """Test accuracy (%) per setting: one seed -> its CI95 over the test tasks; several -> their mean
    with the CI95 over seeds, each seed a small dot; the published figure as a cross. A predict dir's
    accuracy (the user's own labelled queries, no test tasks) stays in the table, out of this chart."""
    import matplotlib.pyplot as plt

    every = groups_of(list(range(len(rows))), rows, settings)  # type: ignore[arg-type]
    palette = colours(list(every))  # as in the curves: a setting keeps its colour in every figure
    groups = {s: [i for i in m if rows[i]["test_accuracy"] is not None and rows[i]["command"] != "predict"]
              for s, m in every.items()}
    groups = {s: m for s, m in groups.items() if m}
    shown = displayed(list(every))  # numbered as in the curves, where two long labels are cut alike
    lines = sum(len(textwrap.wrap(shown[s], 48)) or 1 for s in groups)
    fig, ax = plt.subplots(figsize=(10, 1.4 + 0.3 * max(lines, 1) + 0.15 * len(groups)))
    ys = list(range(len(groups)))[::-1]
    lows, highs = [], []
    for (setting, members), y in zip(groups.items(), ys):
        accs = [rows[i]["test_accuracy"] for i in members]
        mean = sum(accs) / len(accs)
        if len(accs) > 1:
            std = (sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) ** 0.5
            half = t975(len(accs) - 1) * std / len(accs) ** 0.5
            ax.scatter(accs, [y] * len(accs), s=12, color=palette[setting], alpha=0.5, zorder=2)
        else:
            half = rows[members[0]]["ci95"] or 0.0
        low, high = max(mean - half, 0.0), min(mean + half, 100.0)  # a few seeds' interval, cut where accuracy ends
        ax.errorbar([mean], [y], xerr=[[mean - low], [high - mean]], fmt="o", capsize=4, color=palette[setting], zorder=3)
        published = rows[members[0]].get("published")
        if published is not None:
            ax.scatter([published], [y], marker="x", s=60, color="black", zorder=4)
            lows.append(published)
            highs.append(published)
        lows.append(low)
        highs.append(high)
    ax.set_yticks(ys, [textwrap.fill(f"{shown[s]} (n={len(m)})" if len(m) > 1 else shown[s], 48) for s, m in groups.items()],
                  fontsize=FONT - 1)
    ax.set_xlabel("test accuracy (%)" + ("; × published" if any(r.get("published") is not None for r in rows) else ""),
                  fontsize=FONT)
    if lows:
        span = max(max(highs) - min(lows), 1.0)
        ax.set_xlim(max(0.0, min(lows) - 0.15 * span), min(100.0, max(highs) + 0.15 * span))
    ax.tick_params(axis="x", labelsize=FONT - 1)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("test accuracy (mean, CI95)", fontsize=FONT)
    fig.tight_layout()
    return fig


def save(fig: Any, stem: Path, formats: list[str]) -> list[Path]:
    import matplotlib.pyplot as plt

    paths = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        fig.savefig(path, dpi=200 if fmt == "png" else None, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


@contextlib.contextmanager
def missing_glyphs_said() -> Iterator[None]:
    """Matplotlib warns once per character its font lacks (a run named in CJK), with a line of its own source: one
    note says which characters the figures show as boxes instead. Other warnings pass as they came."""
    with warnings.catch_warnings(record=True) as caught:  # the filters as they are: ignored ones stay ignored
        yield
    missing: dict[str, str] = {}
    for w in caught:
        found = re.search(r"Glyph (\d+) .*missing from font\(s\) (.+?)\.?$", str(w.message))
        if found:
            missing.setdefault(chr(int(found.group(1))), found.group(2))
        else:  # through the restored filters again (once per place, an error under -W error)
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if missing:
        print(f"note: the figures show {' '.join(missing)} as empty boxes: their font ({next(iter(missing.values()))}) "
              "lacks those characters; the tables and file names spell them right", file=sys.stderr)


def plot(runs: list[Path], rows: list[dict[str, Any]], settings: list[str], out: Path,
         formats: tuple[str, ...] = ("png",)) -> list[Path]:
    with missing_glyphs_said():
        return _plot(runs, rows, settings, out, formats)


def _plot(runs: list[Path], rows: list[dict[str, Any]], settings: list[str], out: Path,
          formats: tuple[str, ...]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    ours = written_here(out)
    for name in [f"{name}.{fmt}" for name in ("curves", "accuracy") for fmt in FIGURE_FORMATS]:
        if name in ours:  # a refreshed report keeps no figure of an earlier one, in any format; a user's own file stays
            (out / name).unlink(missing_ok=True)
    curves: list[Path] = []
    if any(read_run(run)["metrics"] for run in runs):  # eval and predict dirs log no training curve
        curves = save(curves_figure(runs, rows, settings), out / "curves", list(formats))
    if any(r["test_accuracy"] is not None and r["command"] != "predict" for r in rows):  # else no empty chart (the
        return [*curves, *save(accuracy_figure(rows, settings), out / "accuracy", list(formats))]  # table says why)
    return curves


FIGURE_FORMATS = ("png", "pdf", "svg")  # report --format's choices
LABEL_CHARS = 200  # a label longer than this (runs of unlike recipes) is cut in the figures; the tables hold it whole


def displayed(settings: list[str]) -> dict[str, str]:
    """Each setting as a figure shows it: cut at :data:`LABEL_CHARS` (numbered where two cut labels would read
    alike), so runs of many unlike recipes still make a readable figure."""
    cut = {s: s if len(s) <= LABEL_CHARS else s[:LABEL_CHARS].rsplit(" ", 1)[0] + " ... (report.md: all)" for s in settings}
    counts = Counter(cut.values())
    seen: Counter = Counter()
    for s in settings:
        if counts[cut[s]] > 1 and cut[s] != s:
            seen[cut[s]] += 1
            cut[s] = f"{cut[s]} [{seen[cut[s]]}]"
    return cut
