"""What a running stage and a fixed test show off a terminal: lines, not frames; an estimate past warm-up."""

from __future__ import annotations

import logging

from metalearn_cli.progress import Progress, TaskBar

log = logging.getLogger("progress-test")


def test_the_time_left_waits_for_a_window_past_warm_up(caplog):
    with caplog.at_level("INFO", logger="progress-test"):
        progress = Progress("meta-training", 30, 0, True, log)
        for step in range(1, 31):  # trainer.log_every=1: a window per step, the first ones warm-up
            progress.estimate(step, 1, 100.0 if step > 3 else 1.0)
        progress.close()
    estimates = [m for m in caplog.messages if "for the remaining" in m]
    assert estimates == ["meta-training: 100.0 tasks/s: about 0 s for the remaining 20 steps, validation not included"]


def test_a_fixed_test_off_a_terminal_logs_its_progress_and_a_silent_one_does_not(caplog):
    with caplog.at_level("INFO", logger="progress-test"):
        bar = TaskBar("test", 10, True, log, every=0.0)
        for _ in range(5):
            bar.update(2)
        bar.close()
        quiet = TaskBar("test", 10, False, log, every=0.0)  # a validation: nothing
        quiet.update(4)
        quiet.close()
    lines = [m for m in caplog.messages if m.startswith("test: ")]
    assert [m.split(",")[0] for m in lines] == ["test: 2/10 tasks", "test: 4/10 tasks", "test: 6/10 tasks",
                                                 "test: 8/10 tasks"]  # the end is the result's own line
    assert all(m.endswith(" left") and "tasks/s" in m for m in lines)


def test_on_a_terminal_the_bar_runs_and_the_log_still_gets_each_tenth(caplog, monkeypatch):
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with caplog.at_level("INFO", logger="progress-test"):
        progress = Progress("meta-training", 20, 0, True, log)
        assert not progress.bar.disable
        for step in range(1, 21):
            progress.show(step, step, {"loss": 1.0, "accuracy": 0.5, "tasks_per_s": 3.0})
        progress.close()
    lines = [m.split(":")[0] for m in caplog.messages if m.startswith("meta-training ")]
    assert lines == [f"meta-training {s}/20" for s in range(2, 21, 2)]  # train.log as off a terminal


def test_progress_off_says_no_time_left_either(caplog):
    with caplog.at_level("INFO", logger="progress-test"):
        progress = Progress("meta-training", 100, 0, False, log)  # trainer.progress=false
        for step in range(10, 101, 10):
            progress.estimate(step, 1, 50.0)
        progress.close()
    assert not caplog.messages
