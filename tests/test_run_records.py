"""Reading a run dir back: whatever a kill cut or a hand damaged reads as empty, and a sweep's runs are
found without their stages."""

from __future__ import annotations

import json

import pytest

from metalearn_cli.errors import MetalearnError
from metalearn_cli.run_records import find_runs, read_run, recorded_choices


def _status(path, status):
    path.mkdir(parents=True, exist_ok=True)
    (path / "status.json").write_text(json.dumps({"status": status}))


def test_reading_a_run_back_skips_what_a_kill_cut(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 3\n")
    (run / ".hydra" / "overrides.yaml").write_text("- seed=3\n- 7\n")
    (run / "metrics.jsonl").write_text('{"step": 1, "split": "train"}\n{"step": "x"}\n[1]\n{"step": 2, "spl')
    record = read_run(run)
    assert record["config"] == {"seed": 3} and record["overrides"] == ["seed=3"]
    assert record["metrics"] == [{"step": 1, "split": "train"}] and record["status"] == "unknown"
    (run / "results.json").write_text('{"accuracy": 0.9}')
    assert read_run(run)["status"] == "completed" and read_run(run)["results"] == {"accuracy": 0.9}
    (run / ".hydra" / "config.yaml").write_text("[unclosed")
    assert read_run(run)["config"] == {}
    (run / ".hydra" / "config.yaml").write_text("- a list\n")  # YAML, but not a config
    assert read_run(run)["config"] == {}
    # a cut line in the middle (a kill, then a resume appended) and a byte that is not UTF-8
    (run / "metrics.jsonl").write_bytes(b'{"step": 1, "split": "tr\n{"step": 2, "split": "val\xff"}\n{"step": 3, "split": "val"}\n')
    assert [r["step"] for r in read_run(run)["metrics"]] == [2, 3]


def test_finding_runs_lists_runs_not_their_stages(tmp_path):
    for name in ("a", "b/c"):
        _status(tmp_path / "sweep" / name, "completed")
    _status(tmp_path / "sweep" / "a" / "pretrain", "completed")
    (tmp_path / "sweep" / "d").mkdir()
    (tmp_path / "sweep" / "d" / "results.json").write_text("{}")
    assert find_runs([tmp_path / "sweep"]) == [tmp_path / "sweep" / n for n in ("a", "b/c", "d")]
    twice = [tmp_path / "sweep" / "a", tmp_path / "sweep" / "b" / ".." / "a", tmp_path / "sweep"]  # one run, spelled 3 ways
    assert find_runs(twice) == [tmp_path / "sweep" / n for n in ("a", "b/c", "d")]  # a report counts it once
    with pytest.raises(MetalearnError, match="does not exist"):
        find_runs([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(MetalearnError, match="no run dirs"):
        find_runs([tmp_path / "empty"])


def test_a_metrics_file_with_lines_that_cannot_be_read_is_named_damaged_unless_still_being_written(tmp_path):
    import subprocess
    import sys

    run = tmp_path / "run"
    _status(run, "completed")
    (run / "metrics.jsonl").write_bytes(b'{"step": 1, "split": "train"}\n\n{"step": 2, "split": "val\xff"}\n')
    assert read_run(run)["damaged"] == []  # a blank line, a byte that is not UTF-8 inside a string: read
    for damage in (b'{"step": 3, "spl\n', b'\xbe\x00\xff\xd6\xce\xedzh\x0c\xfe\n', b'{"step": "x"}\n'):
        (run / "metrics.jsonl").write_bytes(b'{"step": 1, "split": "train"}\n' + damage + b'{"step": 4, "split": "val"}\n')
        record = read_run(run)
        assert record["damaged"] == ["metrics.jsonl"] and [r["step"] for r in record["metrics"]] == [1, 4], damage
    (run / "status.json").write_text("{")  # named beside a damaged status.json
    assert read_run(run)["damaged"] == ["status.json", "metrics.jsonl"]
    _status(run, "running")
    (run / ".lock").touch()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1]); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print(flush=True); time.sleep(60)", str(run / ".lock")],
                              stdout=subprocess.PIPE)
    try:
        holder.stdout.readline()  # a live run may be mid-line: that is no damage
        assert read_run(run)["status"] == "running" and read_run(run)["damaged"] == []
    finally:
        holder.kill()
        holder.wait()
    assert read_run(run)["status"] == "interrupted" and read_run(run)["damaged"] == ["metrics.jsonl"]


def test_the_recorded_choices_are_the_command_s_groups_as_the_run_began(tmp_path):
    """results.json's ``choices``: each group's option from .hydra/hydra.yaml (not Hydra's own groups, nor a group left
    unpicked); a resume's record beside it is not read; none where the record is missing or damaged."""
    run = tmp_path / "run"
    (run / ".hydra" / "resume-2026").mkdir(parents=True)
    assert recorded_choices(run) == {}
    (run / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n  runtime:\n    choices:\n      dataset: omniglot_fast\n      encoder: conv4_fast\n      experiment: null\n"
        "      hydra/launcher: basic\n      debug/encoder@encoder: smoke_conv4_fast\n")
    (run / ".hydra" / "resume-2026" / "hydra.yaml").write_text("hydra:\n  runtime:\n    choices:\n      encoder: conv4\n")
    assert recorded_choices(run) == {"dataset": "omniglot_fast", "encoder": "conv4_fast"}
    assert recorded_choices(run, "eval") == {}  # eval's one group, episode, was not picked here
    (run / ".hydra" / "hydra.yaml").write_text("hydra: [unclosed")
    assert recorded_choices(run) == {}
