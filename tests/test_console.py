"""What the console shows: one line per error, once per command even under torchrun."""

from __future__ import annotations

import sys

from metalearn_cli import console
from metalearn_cli.console import errors_once_under_torchrun, whole_number


def test_rank_zero_prints_at_once(capsys):
    with errors_once_under_torchrun(0, pause=0):
        print("metalearn train: error: x", file=sys.stderr)
        assert capsys.readouterr().err == "metalearn train: error: x\n"


def test_another_rank_holds_its_error_lines_and_marks_them_with_its_rank(capsys, monkeypatch):
    pauses = []
    monkeypatch.setattr(console.time, "sleep", pauses.append)
    with errors_once_under_torchrun(3, pause=2.5):
        print("metalearn train: error: refused", file=sys.stderr)
        sys.stderr.write("a warning\nanother")
        assert capsys.readouterr().err == "a warning\n"  # not ours: passed on at once
    assert capsys.readouterr().err == "another\n[rank 3] metalearn train: error: refused\n"
    assert pauses == [2.5]  # torchrun ends this process in that time when rank 0 failed too


def test_a_rank_without_errors_does_not_wait(capsys, monkeypatch):
    monkeypatch.setattr(console.time, "sleep", lambda s: (_ for _ in ()).throw(AssertionError("waited")))
    with errors_once_under_torchrun(1):
        print("progress", file=sys.stderr)
    assert capsys.readouterr().err == "progress\n"


def test_a_whole_number_written_as_a_float_is_given_back_as_an_integer():
    message = "Error merging override trainer.iterations=1e3 Value '1000.0' of type 'float' could not be converted to Integer"
    assert whole_number(message) == "write it as an integer: trainer.iterations=1000"
    assert whole_number(message.replace("1000.0", "2.5")) is None


def test_an_out_folder_with_a_leading_tilde_is_in_the_home_folder(tmp_path, monkeypatch, capsys):
    from metalearn_cli.cli import main

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert main(["sample-task", "--out", "~/task é"]) == 0
    assert (tmp_path / "home" / "task é" / "support").is_dir() and not (tmp_path / "~").exists()
    assert str(tmp_path / "home" / "task é") in capsys.readouterr().out  # the printed predict command names it
