"""Multirun through the installed CLI: the basic sweeper, Optuna, joblib and submitit launchers."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from metalearn_cli.cli import main

EXE = str(Path(sys.executable).parent / "metalearn")
TINY = ["debug=smoke", "trainer.iterations=2", "trainer.val_every=2", "trainer.val_episodes=4", "eval.episodes=4",
        "encoder.width=8", "device=cpu"]


def sweep(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[Path]]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run([EXE, "train", "-m", *TINY, *args, f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    jobs = sorted(p for p in (tmp_path / "sweep").glob("*") if p.is_dir() and not p.name.startswith("."))
    return proc, jobs


def ctrl_c_of_two_jobs(tmp_path: Path, *launcher: str) -> tuple[subprocess.Popen, str, list[Path]]:
    """A sweep of two long jobs under ``launcher``, given a terminal's Ctrl-C (the whole process group) once both
    have logged: the process, its stderr and the job dirs."""
    import signal
    import time

    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    args = [EXE, "train", "-m", *TINY, "trainer.log_every=1", "trainer.val_every=1000", "trainer.checkpoint_every=1000",
            "trainer.iterations=3000", "seed=0,1", *launcher, f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and len([p for p in (tmp_path / "sweep").glob("*/metrics.jsonl") if p.stat().st_size]) < 2:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    return proc, err, sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and not p.name.startswith("."))


def plugin(name: str) -> bool:
    return importlib.util.find_spec(f"hydra_plugins.{name}") is not None


def test_a_2x2_grid_gives_four_run_dirs(tmp_path):
    proc, jobs = sweep(tmp_path, "episode=5way1shot,5way5shot", "seed=0,1", "episode.query=5")
    assert proc.returncode == 0, proc.stderr
    assert len(jobs) == 4
    shapes = {(r["shot"], r["seed"]) for r in (json.loads((j / "results.json").read_text()) for j in jobs)}
    assert shapes == {(1, 0), (1, 1), (5, 0), (5, 1)}
    assert all(json.loads((j / "status.json").read_text())["status"] == "completed" for j in jobs)


def test_a_sweep_dir_named_through_a_symlink_is_written_and_recorded_by_its_one_spelling(tmp_path):
    (tmp_path / "real sweeps é").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real sweeps é")
    proc = subprocess.run([EXE, "train", "-m", *TINY, "seed=0", "hydra.sweep.dir=link/../link/s"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    real = tmp_path / "real sweeps é" / "s"
    assert yaml.safe_load((real / "multirun.yaml").read_text())["hydra"]["sweep"]["dir"] == str(real)
    assert f"{real}/0_" in proc.stdout + proc.stderr and f"{tmp_path}/link" not in proc.stdout + proc.stderr


def test_a_sweep_ranking_by_seen_classes_says_so(tmp_path):
    """The default data set option validates on characters that also train: a sweep would rank by them."""
    args = ["dataset=omniglot_trainval", "encoder=conv4", "encoder.width=8", "trainer.iterations=1", "trainer.val_every=1",
            "trainer.val_episodes=2", "trainer.train_way=5", "eval.episodes=2", "device=cpu", "seed=0"]
    proc = subprocess.run([EXE, "train", "-m", *args, f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "dataset.val=trainval" in proc.stdout + proc.stderr and "ranks its trials by seen classes" in proc.stdout + proc.stderr


@pytest.mark.skipif(not plugin("hydra_optuna_sweeper"), reason='needs the sweep extra: pip install -e ".[sweep]"')
def test_optuna_study_maximises_validation_accuracy(tmp_path):
    proc, jobs = sweep(tmp_path, "sweep=optuna_protonet", "hydra.sweeper.n_trials=2", "trainer.train_way=5")
    assert proc.returncode == 0, proc.stderr
    assert len(jobs) == 2
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    vals = [json.loads((j / "results.json").read_text())["val_accuracy"] for j in jobs]
    assert best["best_value"] == pytest.approx(max(vals))
    assert "Best value" in proc.stdout and "alembic" not in proc.stdout + proc.stderr  # its set-up lines are noise


@pytest.mark.skipif(not plugin("hydra_optuna_sweeper"), reason='needs the sweep extra: pip install -e ".[sweep]"')
def test_a_failing_trial_is_recorded_and_the_study_goes_on(tmp_path):
    """Seed 0's TPE draws trainer.train_way=60 for trial 1, more classes than the generated data has: that
    trial fails (no value, which Optuna records as failed; a NaN it refuses to be told) and trial 2 still runs."""
    proc, jobs = sweep(tmp_path, "sweep=optuna_protonet", "hydra.sweeper.n_trials=3")
    assert proc.returncode == 1, proc.stderr  # the study finished, one trial failed: a script can tell
    states = [json.loads((j / "status.json").read_text())["status"] for j in jobs]
    assert states == ["completed", "failed", "completed"], states
    assert "1 of 3 sweep jobs failed (job 1" in proc.stderr
    assert (tmp_path / "sweep" / "optimization_results.yaml").is_file()


@pytest.mark.skipif(not plugin("hydra_optuna_sweeper"), reason='needs the sweep extra: pip install -e ".[sweep]"')
def test_a_study_continues_from_its_storage_and_a_storage_it_cannot_open_is_one_line(tmp_path):
    """``hydra.sweeper.storage=sqlite:///FILE`` (the README's way to continue a study) works as installed by the
    sweep extra; a storage the sweeper cannot open is the sweeper's own failure: one line, exit 1, the traceback in a file."""
    proc, jobs = sweep(tmp_path, "sweep=optuna_protonet", "hydra.sweeper.n_trials=1", "trainer.train_way=5",
                       "hydra.sweeper.storage=sqlite:///study.db")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "study.db").stat().st_size > 0 and len(jobs) == 1
    storage = f"hydra.sweeper.storage=sqlite:///{tmp_path / 'study.db'}"  # continued: the seeded TPE would draw trial 0 again
    (tmp_path / "next").mkdir()
    proc, jobs = sweep(tmp_path / "next", "sweep=optuna_protonet", "hydra.sweeper.n_trials=1", "trainer.train_way=5", storage,
                       "optimizer.lr=tag(log, interval(0.0001, 0.01))")  # a swept override on the command line too
    assert proc.returncode == 2 and not jobs and not (tmp_path / "next" / "sweep").exists(), proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert "holds 1 trials of study protonet_lr_way, and hydra.sweeper.sampler.seed=0 would draw the same points" in line
    fix = line.split("add ", 1)[1].split(" ")[0]
    proc, jobs = sweep(tmp_path / "next", "sweep=optuna_protonet", "hydra.sweeper.n_trials=1", "trainer.train_way=5", storage, fix)
    assert proc.returncode == 0 and len(jobs) == 1, proc.stderr[-2000:]
    import optuna

    trials = optuna.load_study(study_name="protonet_lr_way", storage=storage.split("=", 1)[1]).trials
    assert len(trials) == 2 and trials[0].params != trials[1].params  # a new point
    (tmp_path / "again").mkdir()
    proc, _ = sweep(tmp_path / "again", "sweep=optuna_protonet", "hydra.sweeper.n_trials=1",
                    "hydra.sweeper.storage=sqlite:////nonexistent folder/study.db")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and "unexpected error: OperationalError" in lines[-1] and "hydra.sweeper" in lines[-1]
    assert "Traceback" not in proc.stderr and Path(lines[-1].rsplit("the traceback is in ", 1)[1]).is_file()


@pytest.mark.skipif(not plugin("hydra_joblib_launcher"), reason='needs the sweep extra: pip install -e ".[sweep]"')
def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path):
    proc, jobs = sweep(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1")
    assert proc.returncode == 0, proc.stderr
    assert len(jobs) == 2 and all((j / "results.json").is_file() for j in jobs)


@pytest.mark.skipif(not plugin("hydra_joblib_launcher"), reason='needs the sweep extra: pip install -e ".[sweep]"')
def test_a_joblib_sweep_says_which_of_its_jobs_failed_and_exits_so(tmp_path):
    """Its jobs fail in joblib's workers, whose counts the launching process never sees (it exited 0 and said
    nothing): it reads how each job ended from its dir, as a sweep in one process counts them."""
    proc, jobs = sweep(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "trainer.train_way=5,60")
    why = f"60-way episodes need 60 classes but the train split of synthetic has 48; lower the way (trainer.train_way=...); {jobs[1] / 'error.txt'}"
    assert proc.returncode == 1 and f"1 of 2 sweep jobs failed (job 1: {why})" in proc.stderr, proc.stderr
    assert [json.loads((j / "status.json").read_text())["status"] for j in jobs] == ["completed", "failed"]


@pytest.mark.skipif(not plugin("hydra_joblib_launcher"), reason='needs the sweep extra: pip install -e ".[sweep]"')
def test_a_ctrl_c_of_a_joblib_sweep_lets_every_job_save_first(tmp_path):
    """Ctrl-C reaches the whole process group (the launcher and its workers). Each job saves its checkpoint and
    is marked interrupted at its step before the sweep ends (joblib, left to itself, kills its workers while
    they save); the sweep says how to finish it."""
    proc, err, jobs = ctrl_c_of_two_jobs(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert proc.returncode == 130 and any("to finish the sweep" in ln and "resume=true" in ln for ln in err.splitlines()), err
    statuses = [json.loads((j / "status.json").read_text()) for j in jobs]
    assert [s["status"] for s in statuses] == ["interrupted"] * 2, err
    assert all(s["step"] > 0 and (j / "checkpoints" / "last.pt").is_file() for s, j in zip(statuses, jobs)), (statuses, err)
    assert all(str(j / "checkpoints" / "last.pt") in err for j in jobs), err  # each job's stop is said, not only the first's
    assert "Traceback" not in err, err


@pytest.mark.skipif(not plugin("hydra_submitit_launcher"), reason='needs the cluster extra: pip install -e ".[cluster]"')
def test_a_ctrl_c_of_a_submitit_local_sweep_is_a_stop_that_says_how_to_finish(tmp_path):
    """Its jobs save and are marked interrupted; the sweep exits 130 with the command that finishes it (it ended as
    ``unexpected error: UncompletedJobError``, exit 1, with each job controller's KeyboardInterrupt traceback)."""
    proc, err, jobs = ctrl_c_of_two_jobs(tmp_path, "threads=1", "hydra/launcher=submitit_local")
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].endswith(f"hydra.sweep.dir={tmp_path / 'sweep'} resume=true"), err
    assert [json.loads((j / "status.json").read_text())["status"] for j in jobs] == ["interrupted"] * 2, err
    assert all(str(j / "checkpoints" / "last.pt") in err for j in jobs), err  # each job's stop, from its own log file


@pytest.mark.skipif(not plugin("hydra_submitit_launcher"), reason='needs the cluster extra: pip install -e ".[cluster]"')
def test_submitit_local_launcher(tmp_path):
    """Its jobs run in processes of their own, which log to submitit's files: a failed one is still counted, and
    why it failed is said on this console (its output is in a file), with its error.txt."""
    proc, jobs = sweep(tmp_path, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "trainer.train_way=5,60")
    why = f"60-way episodes need 60 classes but the train split of synthetic has 48; lower the way (trainer.train_way=...); {jobs[1] / 'error.txt'}"
    assert proc.returncode == 1 and f"1 of 2 sweep jobs failed (job 1: {why})" in proc.stderr, proc.stderr
    results = [j for j in jobs if (j / "results.json").is_file()]
    assert len(results) == 1 and json.loads((jobs[1] / "status.json").read_text())["status"] == "failed"


@pytest.mark.skipif(not plugin("hydra_submitit_launcher"), reason='needs the cluster extra: pip install -e ".[cluster]"')
def test_the_documented_slurm_launcher_config_composes():
    from hydra import compose, initialize_config_module

    from metalearn_cli.cli import register_configs

    register_configs()
    with initialize_config_module(config_module="metalearn_cli.configs", version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.gpus_per_node == 1 and launcher.partition == "gpu"


def test_a_sweep_refused_before_its_jobs_leaves_nothing(tmp_path):
    """Hydra writes multirun.yaml before it composes the jobs; a typo in a swept key must not leave it."""
    user = tmp_path / "mine"
    user.mkdir()
    exe = Path(sys.executable).with_name("metalearn")
    for extra in ([], [f"hydra.sweep.dir={user}"], [f"hydra.sweep.dir={user / 'new' / 'sweep'}"]):
        proc = subprocess.run([str(exe), "train", "-m", "debug=smoke", "trainer.iteratons=3,4", *extra],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert proc.returncode == 2 and "did you mean 'iterations'" in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"] and list(user.iterdir()) == []


def test_an_interrupted_sweep_is_finished_in_its_own_dir_with_resume_true(tmp_path):
    """Ctrl-C in job 1 of 3 ends the sweep; the same command with resume=true keeps job 0 as it was,
    continues job 1 from its last.pt and starts job 2; another sweep into that dir is still refused."""
    import signal
    import time

    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    args = [EXE, "train", "-m", *TINY, "trainer.log_every=1", "trainer.val_every=1000", "trainer.checkpoint_every=1000",
            "trainer.iterations=3,1500,2", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not [p for p in (tmp_path / "sweep").glob("1_*/metrics.jsonl") if p.stat().st_size]:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    again = next(ln for ln in err.splitlines() if "to finish the sweep" in ln).split(": ", 2)[2]
    assert shlex.split(again) == ["metalearn", *args[1:], "resume=true"], again  # the command, pasted as printed
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert [json.loads((j / "status.json").read_text())["status"] for j in jobs] == ["completed", "interrupted"]
    first = (jobs[0] / "results.json").read_bytes()
    assert main(["report", str(tmp_path / "sweep"), "--out", str(tmp_path / "report")]) == 0  # the stopped sweep, reported
    note = (tmp_path / "report" / "report.md").read_text().rsplit("Note: ", 1)[1]
    assert f"1 job stopped before its test ({jobs[1].name})" in note and "1 of its 3 jobs never started" in note
    assert note.strip().endswith(again)  # the same command as the stop line
    stopped = next(r for r in csv.DictReader((tmp_path / "report" / "report.csv").open()) if r["status"] == "interrupted")
    assert stopped["val_accuracy"] and not stopped["test_accuracy"]  # step 0's validation: the best so far

    other = subprocess.run([*args[:-1], "seed=5", args[-1], "resume=true"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=120)
    assert other.returncode == 2 and "repeat its overrides as they were" in other.stderr, other.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    nowhere = subprocess.run([*args[:-1], f"hydra.sweep.dir={tmp_path / 'none'}", "resume=true"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
    assert nowhere.returncode == 2 and "holds none" in nowhere.stderr and not (tmp_path / "none").exists()
    done = subprocess.run([EXE, *shlex.split(again)[1:]], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert [json.loads((j / "status.json").read_text())["status"] for j in jobs] == ["completed"] * 3
    assert (jobs[0] / "results.json").read_bytes() == first and "completed before" in done.stdout + done.stderr
    steps = [json.loads(line)["step"] for line in (jobs[1] / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 1500  # continued, each step once
    assert json.loads((jobs[2] / "results.json").read_text())["iterations"] == 2
    assert not [o for o in yaml.safe_load((jobs[2] / ".hydra" / "overrides.yaml").read_text()) if o.startswith("resume")]


@pytest.mark.parametrize("command, hint", [("train", True), ("eval", False)])
def test_a_used_sweep_dir_is_refused_with_a_way_out_the_command_has(tmp_path, capsys, command, hint):
    """Only train finishes a sweep with resume=true; eval has no resume key to suggest."""
    (tmp_path / "sweep" / "0_a").mkdir(parents=True)
    (tmp_path / "sweep" / "0_a" / "status.json").write_text('{"status": "completed"}')
    extra = ["checkpoint=nowhere"] if command == "eval" else []
    assert main([command, "-m", *extra, "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}"]) == 2
    err = capsys.readouterr().err
    assert "already holds a sweep's runs (0_a)" in err and ("resume=true" in err) == hint


def test_report_of_a_sweep_with_a_failed_job_says_it_failed_not_stopped(tmp_path, capsys):
    """A job that failed (its error.txt) would fail again if rerun as it was: report says so, not "stopped"."""
    sweep_dir = tmp_path / "sweep"
    assert main(["train", "-m", *TINY, "episode.way=500,2", "episode.query=2", f"hydra.sweep.dir={sweep_dir}"]) == 1
    failed = next(j for j in sweep_dir.iterdir() if j.name.startswith("0_"))
    assert json.loads((failed / "status.json").read_text())["status"] == "failed"
    capsys.readouterr()
    assert main(["report", str(sweep_dir), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert f"1 job failed ({failed.name}; each error.txt says why)" in out and "stopped before its test" not in out
    assert "once what failed is fixed, finish the sweep with: metalearn train -m" in out
    assert ("resume=true (a job whose own swept value is what failed fails again; the others finish; a cause in an override "
            "every job shares is fixed by a new sweep without it, in a new hydra.sweep.dir)") in out


@pytest.mark.skipif(not plugin("hydra_joblib_launcher"), reason='needs the sweep extra: pip install -e ".[sweep]"')
def test_a_broken_launcher_package_is_one_line_naming_the_extra(tmp_path):
    """A joblib that cannot be imported (here one that raises on import, first on the path): one line, not a traceback."""
    (tmp_path / "block").mkdir()
    (tmp_path / "block" / "joblib.py").write_text('raise ImportError("broken install", name="joblib")\n')
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "block")}
    proc = subprocess.run([EXE, "train", "-m", "seed=0", *TINY, "hydra/launcher=joblib", f"hydra.sweep.dir={tmp_path / 's'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "cannot import joblib (broken install)" in proc.stderr and 'pip install -e ".[sweep]"' in proc.stderr


def test_a_stopped_sweep_offers_resume_true_only_where_hydra_recorded_it(tmp_path):
    """Optuna's sweeper writes no multirun.yaml, and resume=true is refused there: its stop line says so."""
    from metalearn_cli.cli.sweep_dirs import how_to_finish

    assert "resume=true cannot finish its study" in how_to_finish(tmp_path)
    (tmp_path / "multirun.yaml").write_text("hydra:\n  overrides:\n    task: [seed=0,1]\n")
    line = how_to_finish(tmp_path)
    assert line.startswith("to finish the sweep (each job continued or kept): metalearn train -m") and "resume=true" in line


def test_a_resumed_sweep_needs_its_swept_keys_in_their_order_since_jobs_are_numbered_by_it(tmp_path):
    from omegaconf import OmegaConf

    from metalearn_cli.cli.sweep_dirs import check_resumed_sweep
    from metalearn_cli.errors import ConfigError

    OmegaConf.save({"hydra": {"overrides": {"task": ["debug=smoke", "strategy=mgd,fomaml", "seed=0,1"]}}},
                   tmp_path / "multirun.yaml")
    check_resumed_sweep(str(tmp_path), ["debug=smoke", "strategy=mgd,fomaml", "seed=0,1"])
    check_resumed_sweep(str(tmp_path), ["strategy=mgd,fomaml", "seed=0,1", "debug=smoke"])  # a fixed key anywhere
    with pytest.raises(ConfigError, match=r"numbered in the order of the swept keys \(strategy, seed\).*this command has seed, strategy"):
        check_resumed_sweep(str(tmp_path), ["debug=smoke", "seed=0,1", "strategy=mgd,fomaml"])
    listed = ["encoder.widths=[8,8,8,8]", "strategy=mgd,fomaml", "seed=0,1"]  # a list's commas do not make a sweep
    OmegaConf.save({"hydra": {"overrides": {"task": listed}}}, tmp_path / "multirun.yaml")
    check_resumed_sweep(str(tmp_path), [*listed[1:], listed[0]])


def test_resume_of_a_sweep_dir_gives_the_command_that_finishes_the_sweep(tmp_path, capsys):
    from omegaconf import OmegaConf

    OmegaConf.save({"hydra": {"overrides": {"task": ["debug=smoke", "seed=0,1"], "hydra": []}}}, tmp_path / "multirun.yaml")
    assert main(["train", f"resume={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "is a sweep's dir, not one run's; finish the sweep with: metalearn train -m debug=smoke seed=0,1 " in err, err
    assert err.strip().endswith("resume=true") and err.strip().count("\n") == 0


def _hold_lock(run_dir: Path) -> subprocess.Popen:
    """Another live process holding ``run_dir``'s lock, as a running job's process does."""
    run_dir.mkdir(parents=True, exist_ok=True)
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run_dir / ".lock")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_sweep_still_running_is_neither_resumed_nor_written_into(tmp_path, capsys, monkeypatch):
    """A second sweep into a sweep dir a live process still writes (resume=true, as the refusal of a new sweep
    there suggests) is refused before Hydra rewrites its multirun.yaml; and a job whose dir another process
    holds fails without writing its refusal into that dir (status.json, error.txt, .hydra/)."""
    args = ["train", "-m", *TINY, "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra.sweep.subdir=job${hydra.job.num}"]
    assert main(args) == 0
    recorded = (tmp_path / "sweep" / "multirun.yaml").read_bytes()
    job = tmp_path / "sweep" / "job1"
    (job / "status.json").write_text('{"status": "running", "step": 1, "iterations": 2}')
    holder = _hold_lock(job)
    try:
        capsys.readouterr()
        assert main([*args, "resume=true"]) == 2
        assert "is still running (another metalearn process is writing job1)" in capsys.readouterr().err
        assert (tmp_path / "sweep" / "multirun.yaml").read_bytes() == recorded and not (job / "error.txt").exists()
        holder.kill()
        holder.wait()
        holder = _hold_lock(tmp_path / "sweep" / "job2")  # a job still checking: its lock, nothing else written yet
        assert main(["eval", "-m", "checkpoint=nowhere", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}"]) == 2
        err = capsys.readouterr().err
        assert "is still running (another metalearn process is writing job2)" in err and "resume=true" not in err, err
        fresh = tmp_path / "fresh"  # a job dir another process takes after the sweep's own check (a race)
        holder.kill()
        holder.wait()
        holder = _hold_lock(fresh / "job0")
        import metalearn_cli.cli.sweep_dirs as sweep_dirs

        monkeypatch.setattr(sweep_dirs, "refuse_running_sweep", lambda *a, **k: None)
        capsys.readouterr()
        assert main([*args[:-2], f"hydra.sweep.dir={fresh}", args[-1]]) == 1
        said = capsys.readouterr()
        assert "being written by another metalearn process" in said.out + said.err
        assert "hydra.run.dir" not in said.out + said.err  # a sweep's way out: a new hydra.sweep.dir
        assert sorted(p.name for p in (fresh / "job0").iterdir()) == [".lock"]  # nothing of the refused job
        assert json.loads((fresh / "job1" / "status.json").read_text())["status"] == "completed"
    finally:
        holder.kill()
        holder.wait()


def test_a_sweep_begun_before_the_first_ones_first_job_took_its_lock_is_refused(tmp_path, capsys):
    """The launching process holds the named sweep dir's own lock while its sweep runs: a second sweep there is
    refused before Hydra writes anything, even where no job of the first has locked its dir yet."""
    folder = tmp_path / "sweep dir"
    holder = _hold_lock(folder)  # as the first sweep's process holds it between multirun.yaml and its first job
    try:
        assert main(["train", "-m", *TINY, "seed=0,1", f"hydra.sweep.dir={folder}"]) == 2
        assert "is in use by another metalearn sweep" in capsys.readouterr().err
        assert sorted(p.name for p in folder.iterdir()) == [".lock"]  # no multirun.yaml, no job
    finally:
        holder.kill()
        holder.wait()
    assert main(["train", "-m", *TINY, "seed=0,1", f"hydra.sweep.dir={folder}"]) == 0  # the first sweep gone: it runs
    assert (folder / "multirun.yaml").is_file()
    fresh = tmp_path / "fresh"  # a sweep's own lock goes with it
    assert main(["train", "-m", *TINY, "seed=0,1", f"hydra.sweep.dir={fresh}"]) == 0
    assert not (fresh / ".lock").exists() and (fresh / "multirun.yaml").is_file()
    holder = _hold_lock(folder)  # a sweep between its jobs: "in use", not "holds a sweep's runs ... resume=true"
    try:
        assert main(["train", "-m", *TINY, "seed=0,1", f"hydra.sweep.dir={folder}", "resume=true"]) == 2
        assert "is in use by another metalearn sweep" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    (tmp_path / "afile").write_text("x")
    assert main(["train", "-m", *TINY, "seed=0,1", f"hydra.sweep.dir={tmp_path / 'afile'}"]) == 2
    assert "is a file; name a folder for hydra.sweep.dir" in capsys.readouterr().err
