"""The run dir: what it holds, its canonical spelling, and the state a dead run reads as."""

from __future__ import annotations

import json
import subprocess
import sys

from metalearn_cli.run_records import read_run
from metalearn_cli.rundir import canonical, held, is_locked


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


# ----------------------------------------------------------------------------- what a run dir holds, piece by piece
def _status(path, status):
    path.mkdir(parents=True, exist_ok=True)
    (path / "status.json").write_text(json.dumps({"status": status}))


def test_held_names_every_output_and_a_status_but_not_a_bare_failure(tmp_path):
    from metalearn_cli.rundir import RunDir

    assert held(tmp_path / "new") == []
    run = tmp_path / "run"
    _status(run, "failed")
    assert held(run) == []  # refused before it wrote anything: a new run may use the dir
    (run / "metrics.jsonl").write_text("")  # empty: a run that failed as it began (below)
    assert held(run) == []
    (run / "metrics.jsonl").write_text('{"step": 0, "split": "val"}\n')
    assert held(run) == ["status.json (failed)", "metrics.jsonl"]
    files = RunDir(run)
    files.checkpoints.mkdir()
    (files.checkpoints / ".last.pt.tmp").write_bytes(b"")  # a temporary: not a checkpoint
    files.last.write_bytes(b"")
    assert held(run)[-1] == "checkpoints/last.pt" and len(held(run)) == 3
    _status(tmp_path / "live", "running")
    assert held(tmp_path / "live") == ["status.json (running)"]
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "status.json").write_text("not json")
    assert held(tmp_path / "odd") == ["status.json (unreadable)"]
    assert files.best == run / "checkpoints" / "best.pt" and files.results == run / "results.json"


def test_refusing_a_held_dir_says_whether_it_can_be_resumed(tmp_path):
    import pytest

    from metalearn_cli.errors import ConfigError
    from metalearn_cli.rundir import RunDir, refuse_held

    refuse_held(tmp_path / "new")
    run = tmp_path / "run"
    (run / "results.json").parent.mkdir(parents=True)
    (run / "results.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"already holds a run \(results.json\); it has no last.pt to resume from; use a new"):
        refuse_held(run)
    RunDir(run).checkpoints.mkdir()
    RunDir(run).last.write_bytes(b"")
    with pytest.raises(ConfigError, match="pass resume=true to continue it, or use a new hydra.run.dir"):
        refuse_held(run)
    (run / "status.json").write_text('{"status": "completed"}')
    with pytest.raises(ConfigError, match=r"it is completed and tested \(resume=true trainer.iterations=N"):
        refuse_held(run)
    import subprocess
    import sys

    from metalearn_cli.rundir import exclusive

    with exclusive(run):  # this process's own lock (a sweep job holds its dir from its first check): no other writer
        with pytest.raises(ConfigError, match=r"it is completed and tested \(resume=true trainer.iterations=N"):
            refuse_held(run)
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match="another metalearn process is writing it"):  # not "pass resume=true"
            refuse_held(run)
    finally:
        holder.kill()
        holder.wait()


def test_nothing_is_written_into_a_run_from_outside(tmp_path):
    import pytest

    from metalearn_cli.errors import ConfigError
    from metalearn_cli.rundir import refuse_replacing

    run = tmp_path / "run"
    _status(run, "completed")
    (run / "results.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"out=.*results.json is a file of the run"):
        refuse_replacing(run / "results.json")
    with pytest.raises(ConfigError, match=r"--out .*deep is inside the run .*choose --out PATH outside"):
        refuse_replacing(run / "sub" / "deep", key="--out ")
    refuse_replacing(tmp_path / "elsewhere")


def test_status_results_and_failures_are_written_whole(tmp_path):
    from metalearn_cli.rundir import record_failure, write_results, write_status

    write_status(tmp_path, "running", step=3, iterations=10)
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "running" and status["step"] == 3 and status["iterations"] == 10 and "T" in status["time"]
    write_results(tmp_path, {"accuracy": 0.5})
    assert json.loads((tmp_path / "results.json").read_text()) == {"accuracy": 0.5}
    record_failure(tmp_path / "f", "one line", "Traceback\nmore\n\n")
    assert (tmp_path / "f" / "error.txt").read_text() == "Traceback\nmore\n"
    assert json.loads((tmp_path / "f" / "status.json").read_text())["error"] == "one line"
    record_failure(tmp_path / "g", "only the message")
    assert (tmp_path / "g" / "error.txt").read_text() == "only the message\n"


def test_a_run_dir_names_its_best_checkpoint_first(tmp_path):
    import pytest

    from metalearn_cli.errors import CheckpointError
    from metalearn_cli.rundir import RunDir, resolve_checkpoint

    files = RunDir(tmp_path)
    files.checkpoints.mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoints/best.pt or last.pt"):
        resolve_checkpoint(tmp_path)
    files.last.write_bytes(b"")
    assert resolve_checkpoint(tmp_path) == files.last
    files.best.write_bytes(b"")
    assert resolve_checkpoint(tmp_path) == files.best
    assert resolve_checkpoint(files.checkpoints) == files.best  # the checkpoints/ folder itself
    assert resolve_checkpoint(files.last) == files.last  # a file names itself


def test_one_writer_at_a_time_and_the_lock_goes_with_it(tmp_path):
    from metalearn_cli.rundir import exclusive

    run = tmp_path / "run"
    run.mkdir()
    assert not is_locked(run)
    with exclusive(run):
        with exclusive(run):  # the same process again (a stage inside its run): allowed
            pass
        assert is_locked(run)
        code = ("import sys; from metalearn_cli.rundir import exclusive\n"
                "try:\n    exclusive(sys.argv[1]).__enter__()\nexcept Exception as e:\n    print(e)")
        out = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True).stdout
        assert "is being written by another metalearn process" in out
    assert not is_locked(run)


def test_the_lock_leaves_no_trace_where_nothing_was_written(tmp_path):
    from metalearn_cli.rundir import exclusive

    made, users = tmp_path / "a" / "b" / "run", tmp_path / "users"
    (users / "data").mkdir(parents=True)
    for folder in (made, users):
        with exclusive(folder):
            assert (folder / ".lock").is_file()
    assert not (tmp_path / "a").exists()  # every folder it made, gone
    assert sorted(p.name for p in users.iterdir()) == ["data"]  # a user's folder as it was
    kept = tmp_path / "kept"
    with exclusive(kept):
        (kept / "status.json").write_text("{}")
    assert (kept / ".lock").is_file() and (kept / "status.json").is_file()  # a run's lock stays with it


def test_an_eval_dir_given_as_a_checkpoint_names_the_checkpoint_it_scored(tmp_path):
    import json

    import pytest

    from metalearn_cli.errors import CheckpointError
    from metalearn_cli.rundir import resolve_checkpoint

    (tmp_path / "results.json").write_text(json.dumps({"checkpoint": "/runs/a/checkpoints/best.pt", "accuracy": 0.9}))
    with pytest.raises(CheckpointError, match=r"is the output of an eval or predict of /runs/a/checkpoints/best.pt, with no "
                                              r"checkpoint of its own; pass that checkpoint"):
        resolve_checkpoint(tmp_path)


def test_a_run_that_failed_as_it_began_holds_nothing_a_new_run_could_lose(tmp_path):
    """An unreachable logger fails a run before its first record: an empty metrics.jsonl and logger folder beside a
    failed status. Running again after the fix (as the error line says) is no overwrite of a run."""
    from metalearn_cli.rundir import held

    run = tmp_path / "run"
    (run / "mlruns" / "0").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("")
    (run / "status.json").write_text('{"status": "failed", "error": "mlflow: cannot reach the tracking server"}')
    assert held(run) == []
    (run / "metrics.jsonl").write_text('{"step": 0, "split": "val"}\n')  # one record: a run that began
    assert held(run) == ["status.json (failed)", "metrics.jsonl"]
