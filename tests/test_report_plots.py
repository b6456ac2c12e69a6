"""The report's figures, read from the figure objects: one colour per setting in every panel, every
setting in the legend, labels from what differs, seeds aggregated, vector formats."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import pytest

from conftest import FAST
from metalearn_cli.cli import main
from metalearn_cli.report import describe
from metalearn_cli.run_records import common_base
from metalearn_cli.run_settings import config_labels
from metalearn_cli.report_plots import accuracy_figure, curves_figure
from metalearn_cli.run_records import find_runs

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """Two settings x two seeds, and a third setting whose run logged no validation."""
    root = tmp_path_factory.mktemp("plots")
    for width in (8, 16):
        for seed in (0, 1):
            assert main(["train", *FAST, f"encoder.width={width}", f"seed={seed}",
                         f"hydra.run.dir={root / f'w{width}-s{seed}'}"]) == 0
    assert main(["train", *FAST, "encoder.width=4", f"hydra.run.dir={root / 'w4'}"]) == 0
    metrics = root / "w4" / "metrics.jsonl"
    metrics.write_text("".join(line + "\n" for line in metrics.read_text().splitlines() if '"val"' not in line))
    return root


def rows_of(root: Path):
    runs = find_runs([root])
    rows = [describe(run, common_base(runs)) for run in runs]
    return runs, rows, config_labels(runs, rows)


def test_every_setting_has_one_colour_in_both_panels_and_a_place_in_the_legend(sweep):
    runs, rows, settings = rows_of(sweep)
    fig = curves_figure(runs, rows, settings)
    loss_ax, val_ax = fig.axes
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["encoder.width=16 (n=2)", "encoder.width=4 (n=1)", "encoder.width=8 (n=2)"]
    colour = {text: handle.get_color() for text, handle in zip(legend, fig.legends[0].legend_handles)}
    assert len({tuple(c) for c in colour.values()}) == 3
    loss_colours = [tuple(line.get_color()) for line in loss_ax.get_lines()]
    val_colours = [tuple(line.get_color()) for line in val_ax.get_lines()]
    assert len(loss_colours) == 3 and len(val_colours) == 2  # the run without validation is in the legend all the same
    assert set(val_colours) <= set(loss_colours)
    assert len(val_ax.collections) == 2  # CI95 bands over the two seeds of each aggregated setting


def test_a_curve_of_one_point_has_whole_meta_iterations_on_its_axes(sweep, tmp_path):
    import shutil

    run = tmp_path / "one"
    shutil.copytree(sweep / "w8-s0", run)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    kept = [next(r for r in records if r.get("split") == split) for split in ("train", "val")]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    runs, rows, settings = rows_of(run)
    fig = curves_figure(runs, rows, settings)
    fig.canvas.draw()
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)


def test_accuracy_aggregates_seeds_and_labels_by_what_differs(sweep):
    runs, rows, settings = rows_of(sweep)
    fig = accuracy_figure(rows, settings)
    (ax,) = fig.axes
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert sorted(labels) == ["encoder.width=16 (n=2)", "encoder.width=4", "encoder.width=8 (n=2)"]
    assert len(ax.containers) == 3  # one error bar per setting, not per run
    means = sorted(c.lines[0].get_xdata()[0] for c in ax.containers)
    by_width = {}
    for row, setting in zip(rows, settings):
        by_width.setdefault(setting, []).append(row["test_accuracy"])
    assert means == pytest.approx(sorted(sum(v) / len(v) for v in by_width.values()))
    assert ax.get_xlim()[1] <= 100


def test_report_writes_each_requested_format(sweep, tmp_path, capsys):
    assert main(["report", str(sweep), "--out", str(tmp_path / "r"), "--format", "png,pdf,svg"]) == 0
    written = sorted(p.name for p in (tmp_path / "r").iterdir() if p.suffix in (".png", ".pdf", ".svg"))
    assert written == ["accuracy.pdf", "accuracy.png", "accuracy.svg", "curves.pdf", "curves.png", "curves.svg"]
    assert (tmp_path / "r" / "curves.pdf").read_bytes()[:4] == b"%PDF"
    assert main(["report", str(sweep), "--out", str(tmp_path / "r2"), "--format", "gif"]) == 2
    assert main(["report", str(sweep / "w4"), "--format", "svg"]) == 0  # one run, then all of them, in report/ beside
    capsys.readouterr()
    assert main(["report", str(sweep), "--format", "PNG,png"]) == 0
    written = sorted(p.name for p in (sweep / "report").iterdir() if p.suffix in (".png", ".pdf", ".svg"))
    assert written == ["accuracy.png", "curves.png"]  # the one run's figures are gone, in every format
    assert capsys.readouterr().out.count("curves.png") == 1
    (sweep / "report" / "accuracy.pdf").write_text("my edited figure")  # a user's own file there stays
    assert main(["report", str(sweep)]) == 0 and (sweep / "report" / "accuracy.pdf").read_text() == "my edited figure"
    assert json.loads((sweep / "w4" / "status.json").read_text())["status"] == "completed"


def test_long_labels_are_cut_in_figures_and_stay_distinct():
    """Runs of unlike recipes differ in dozens of keys: the figures cut each label, numbering cut labels
    that would read alike; short labels are shown whole."""
    from metalearn_cli.report_plots import LABEL_CHARS, displayed

    common = " ".join(f"key{i}=value{i}" for i in range(40))
    long_a, long_b, short = common + " seed_like=a", common + " seed_like=b", "encoder.width=8"
    shown = displayed([long_a, long_b, short])
    assert shown[short] == short and len({*shown.values()}) == 3
    assert all(len(shown[s]) < LABEL_CHARS + 40 and "(report.md: all)" in shown[s] for s in (long_a, long_b))


def test_a_report_of_runs_without_a_test_draws_no_empty_accuracy_chart(tmp_path, capsys):
    """A run stopped before its test (its results.json not written) has curves but no accuracy to chart."""
    run = tmp_path / "stopped"
    assert main(["train", *FAST, f"hydra.run.dir={run}"]) == 0
    (run / "results.json").unlink()
    (run / "status.json").write_text(json.dumps({"status": "interrupted"}))
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    assert not (tmp_path / "rep" / "accuracy.png").exists() and (tmp_path / "rep" / "curves.png").is_file()
    assert "interrupted" in (tmp_path / "rep" / "report.md").read_text()


def test_a_predict_dirs_accuracy_is_kept_out_of_the_test_accuracy_chart(sweep, tmp_path):
    runs, rows, settings = rows_of(sweep)
    predicted = {**rows[0], "command": "predict", "test_accuracy": 80.0, "ci95": None}
    (ax,) = accuracy_figure([*rows, predicted], [*settings, "my own task"]).axes
    assert "my own task" not in [t.get_text() for t in ax.get_yticklabels()] and len(ax.containers) == 3
    from metalearn_cli.report_plots import plot

    out = tmp_path / "predicted only"
    out.mkdir()
    assert plot([], [predicted], ["my own task"], out) == [] and not list(out.iterdir())  # no empty chart


def test_an_accuracy_band_stays_between_0_and_100_percent():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metalearn_cli.report_plots import _band

    fig, ax = plt.subplots()
    assert _band(ax, [{0: 2.0, 1: 98.0}, {0: 30.0, 1: 99.9}], "C0", (0, 100)) and not _band(ax, [{}], "C1")
    (band,) = ax.collections
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.min() >= 0 and ys.max() <= 100  # a t-interval over two seeds reaches far past both ends, unclipped
    plt.close(fig)
