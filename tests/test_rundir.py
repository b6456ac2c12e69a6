"""The run dir: what it holds, its canonical spelling, and the state a dead run reads as."""

from __future__ import annotations

import json
import subprocess
import sys

from metalearn_cli.rundir import canonical, held, is_locked, read_run


def test_a_killed_run_reads_as_interrupted_and_a_live_one_as_running(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "status.json").write_text(json.dumps({"status": "running", "step": 10}))
    (run / ".lock").write_text("")
    assert not is_locked(run) and read_run(run)["status"] == "interrupted"  # nobody holds the lock: killed
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); "
        "print('locked', flush=True); time.sleep(60)"), str(run / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert is_locked(run) and read_run(run)["status"] == "running"
    finally:
        holder.kill()
        holder.wait()
    assert read_run(run)["status"] == "interrupted"  # the OS released the dead holder's lock


def test_a_refused_start_holds_nothing_and_a_finished_run_holds_all_it_wrote(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "error.txt").write_text("refused")
    (run / "status.json").write_text(json.dumps({"status": "failed"}))
    assert held(run) == []
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "best.pt").write_bytes(b"x")
    assert held(run) == ["status.json (failed)", "checkpoints/best.pt"]


def test_every_spelling_of_a_run_dir_is_one_path(tmp_path, monkeypatch):
    (tmp_path / "runs" / "a").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    spellings = [tmp_path / "runs" / "a", "runs/a", "runs/../runs/a", "link/a", "./link/./a/", "link/../runs/a"]
    assert {canonical(s) for s in spellings} == {(tmp_path / "runs" / "a").resolve()}
