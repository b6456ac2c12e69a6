"""What a sweep dir's multirun.yaml says: the command that finishes the sweep repeats its overrides and its launcher."""

from __future__ import annotations

import shlex

from omegaconf import OmegaConf

from metalearn_cli.sweep_record import RECORD, sweep_again


def test_the_finishing_command_keeps_the_sweeps_launcher(tmp_path):
    """A job's thread count follows from its launcher (joblib gives each of 2 jobs one of 2 cores), and with it
    its numbers: a sweep stopped under joblib is finished under joblib."""
    folder = tmp_path / "sweep ü"
    folder.mkdir()
    OmegaConf.save({"hydra": {"overrides": {
        "task": ["seed=0,1", "debug=smoke"],
        "hydra": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={folder}", "hydra.mode=MULTIRUN"]}}},
        folder / RECORD)
    words = shlex.split(sweep_again(folder))
    assert words[:3] == ["metalearn", "train", "-m"] and words[-1] == "resume=true"
    assert {"seed=0,1", "debug=smoke", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"} <= set(words)
    assert not any(w.startswith("hydra.mode") for w in words)
    OmegaConf.save({"hydra": {"overrides": {"task": ["seed=0,1"], "hydra": ["hydra.mode=MULTIRUN"]}}}, folder / RECORD)
    assert "launcher" not in sweep_again(folder)


def test_a_sweep_without_multirun_yaml_still_names_its_failed_jobs(tmp_path):
    """Optuna's sweeper keeps no multirun.yaml: report still says which trials failed (no finishing command)."""
    import json

    from metalearn_cli.sweep_record import failed_note, sweep_note

    jobs = [tmp_path / f"{i}_job" for i in range(3)]
    for job, status in zip(jobs, ("failed", "completed", "failed")):
        job.mkdir()
        (job / "status.json").write_text(json.dumps({"status": status}))
    (jobs[1] / "results.json").write_text("{}")
    assert sweep_note(tmp_path, jobs) is None  # no record of the sweep: no finishing command
    note = failed_note(tmp_path, jobs)
    assert note is not None and "2 of its 3 runs failed (0_job, 2_job; each error.txt says why)" in note, note
    assert failed_note(tmp_path, jobs[1:2]) is None
