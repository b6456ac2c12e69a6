"""`metalearn report` over a sweep dir: table, CSV and pictures from real runs."""

import csv

from conftest import FAST, compose_config
from metalearn_cli import runner
from metalearn_cli.cli import main


def test_report_over_two_runs(tmp_path, capsys):
    for seed in (0, 1):
        runner.train(compose_config("train", [*FAST, f"seed={seed}"]), tmp_path / "sweep" / f"{seed}_job")
    (tmp_path / "sweep" / "2_failed").mkdir()
    (tmp_path / "sweep" / "2_failed" / "status.json").write_text('{"status": "failed", "error": "x"}')
    assert main(["report", str(tmp_path / "sweep")]) == 0
    out = capsys.readouterr().out
    assert out.count("| completed |") == 2 and "| failed |" in out
    rows = list(csv.DictReader((tmp_path / "sweep" / "report.csv").open()))
    assert [r["run"] for r in rows] == ["0_job", "1_job", "2_failed"]
    assert 0 <= float(rows[0]["test_accuracy"]) <= 1
    for name in ("curves.png", "accuracy.png"):
        assert (tmp_path / "sweep" / name).read_bytes()[:4] == b"\x89PNG"


def test_report_without_runs_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no run dirs" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2
