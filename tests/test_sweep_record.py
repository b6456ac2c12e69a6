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
