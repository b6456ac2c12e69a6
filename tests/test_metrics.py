"""metrics.jsonl on resume: records past the resumed step are dropped, and so are lines that cannot be read
(cut by a kill, garbled, bytes that are not UTF-8), with one warning naming the file and how many."""

from __future__ import annotations

import json
import logging

from conftest import FAST
from metalearn_cli.cli import main
from metalearn_cli.metrics import MetricsLog

GARBAGE = b"\xbe\x00\xff\xd6\xce\xedzh\x0c\xfe\n\x83A|\x1f3\xe2H"  # random bytes: no UTF-8, no JSON, a form feed


def test_a_resume_drops_unreadable_lines_and_says_how_many(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1, "split": "train"}\n{"step": 2, "spl\n\n{"step": 3, "split": "val\xff"}\n'
                     + GARBAGE + b'\n{"step": 4, "split": "train"}\n{"step": 9, "split": "train"}\n')
    with caplog.at_level(logging.WARNING, logger="metalearn_cli.metrics"):
        MetricsLog(tmp_path, resume_step=4, logger={"name": "csv"}).close()
    assert [json.loads(line)["step"] for line in path.read_text(encoding="utf-8").splitlines()] == [1, 3, 4]
    (warning,) = caplog.records  # one, for the cut line and the two lines of garbage; step 9 is logged again
    assert f"{path}: dropped 3 unreadable lines" in warning.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="metalearn_cli.metrics"):
        MetricsLog(tmp_path, resume_step=3, logger={"name": "csv"}).close()
    assert not caplog.records and [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 3]


def test_resuming_a_run_whose_metrics_hold_bytes_that_are_not_utf8_goes_on(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *FAST, "trainer.iterations=3", f"hydra.run.dir={run}"]) == 0
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(GARBAGE)  # as a disk fault or a stray write would leave it
    assert main(["train", *FAST, f"resume={run}"]) == 0
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    steps = [r["step"] for r in records]
    assert steps == sorted(steps) and steps[0] == 0 and steps[-1] == 6 and 2 in steps
    log = (run / "train.log").read_text(encoding="utf-8")
    assert log.count("unreadable line") == 1 and f"{run / 'metrics.jsonl'}: dropped 2 unreadable lines" in log
