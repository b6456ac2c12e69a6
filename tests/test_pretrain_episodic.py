"""pretrain=episodic: a first stage of ProtoNet meta-training on tasks of its own shape. It is exactly
the standalone run its settings describe, meta-training starts from its best.pt, it is tested on the
run's own test (Lake's runs too), it resumes, and bad settings are one line before anything is written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import stop_after

from metalearn_cli import training
from metalearn_cli.checkpoint import load_checkpoint
from metalearn_cli.data import DATASETS
from metalearn_cli.distributed import World
from metalearn_cli.errors import ConfigError, DataError, Interrupted
from metalearn_cli.loop import TrainingRun
from metalearn_cli.objectives import EpisodicObjective
from metalearn_cli.pretrain import pretrain_stage

EPISODIC = ["pretrain=episodic", "pretrain.iterations=6", "pretrain.val_every=3", "pretrain.val_episodes=6",
            "pretrain.train_way=8", "pretrain.train_query=2"]


def model_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_the_stage_is_the_standalone_run_of_its_settings_and_meta_training_starts_from_it(compose_train, tmp_path):
    run, alone = tmp_path / "run", tmp_path / "alone"
    training.train(compose_train(*EPISODIC, "trainer.iterations=0"), run)
    training.train(compose_train("trainer.train_way=8", "trainer.train_query=2", "trainer.augment=auto"), alone)
    stage, standalone = model_tensors(run / "pretrain/checkpoints/best.pt"), model_tensors(alone / "checkpoints/best.pt")
    assert stage.keys() == standalone.keys() and all(torch.equal(v, standalone[k]) for k, v in stage.items())
    stage_results = json.loads((run / "pretrain/results.json").read_text())
    alone_results = json.loads((alone / "results.json").read_text())
    assert (stage_results["train_way"], stage_results["train_query"]) == (8, 2)
    assert stage_results["accuracy"] == pytest.approx(alone_results["accuracy"], abs=1e-6)
    records = [json.loads(line) for line in (run / "pretrain/metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in records} == {"train", "val"} and max(r["step"] for r in records) == 6
    # trainer.iterations=0: the run's best.pt is the stage's, unchanged, and tested as such.
    final = model_tensors(run / "checkpoints/best.pt")
    assert all(torch.equal(v, final[k]) for k, v in stage.items() if k.startswith("model.encoder."))
    assert json.loads((run / "results.json").read_text())["accuracy"] == pytest.approx(stage_results["accuracy"], abs=1e-6)


def test_the_stage_trains_on_its_own_task_shape_with_the_runs_optimizer(compose_train, tmp_path):
    cfg = compose_train(*EPISODIC, "pretrain.within_alphabet=0.0", "optimizer.lr=0.003", "trainer.train_way=5")
    stage, resume = pretrain_stage(cfg, tmp_path, DATASETS.build(cfg.dataset), torch.device("cpu"))
    assert resume is None and isinstance(stage.objective, EpisodicObjective)
    sampler = stage.objective.sampler
    assert (sampler.n_way, sampler.n_query, sampler.within) == (8, 2, 0.0)  # the stage's, not trainer.train_way=5
    assert stage.optimizer.lr == 0.003 and stage.optimizer_key == "optimizer" and stage.iterations == 6


def test_an_interrupted_episodic_stage_resumes_to_the_same_weights(compose_train, tmp_path):
    cfg = compose_train(*EPISODIC)
    data = DATASETS.build(cfg.dataset)

    def stage_run(run_dir: Path) -> TrainingRun:
        stage, resume = pretrain_stage(cfg, run_dir, data, torch.device("cpu"))
        return TrainingRun(stage, torch.device("cpu"), World(), resume)

    stage_run(tmp_path / "whole").run({"signal": None})
    run = stage_run(tmp_path / "cut")
    stop = stop_after(run, 2)
    with pytest.raises(Interrupted, match="at pre-training iteration 2/6.*resume="):
        run.run(stop)
    stage_run(tmp_path / "cut").run({"signal": None})
    a, b = (load_checkpoint(tmp_path / name / "pretrain/checkpoints/last.pt") for name in ("whole", "cut"))
    assert a["step"] == b["step"] == 6 and all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())


def test_resume_true_continues_a_run_stopped_during_the_episodic_stage(compose_train, tmp_path, monkeypatch):
    """A SIGTERM inside the stage: the run says so, and `resume=true` finishes the stage, then meta-trains
    from its best.pt to the same weights as a run never stopped."""
    original, calls = EpisodicObjective.step, []

    def interrupted(self, *args):
        out = original(self, *args)
        calls.append(1)
        if len(calls) == 4:
            raise Interrupted("SIGTERM", "SIGTERM during pre-training")
        return out

    monkeypatch.setattr(EpisodicObjective, "step", interrupted)
    with pytest.raises(Interrupted):
        training.train(compose_train(*EPISODIC), tmp_path / "cut")
    monkeypatch.setattr(EpisodicObjective, "step", original)
    assert json.loads((tmp_path / "cut/status.json").read_text())["status"] == "interrupted"
    training.train(compose_train(*EPISODIC, "resume=true"), tmp_path / "cut")
    training.train(compose_train(*EPISODIC), tmp_path / "whole")
    a, b = (model_tensors(tmp_path / name / "checkpoints/last.pt") for name in ("whole", "cut"))
    assert json.loads((tmp_path / "cut/pretrain/status.json").read_text())["status"] == "completed"
    assert all(torch.equal(v, b[k]) for k, v in a.items())


@pytest.mark.parametrize("overrides,error,message", [
    (["pretrain.epochs=3"], ConfigError, "pretrain=episodic counts meta-iterations .*pass pretrain.epochs=null"),
    (["pretrain.within_alphabet=1.5"], ConfigError, "pretrain.within_alphabet=1.5 is a share .* give 0 to 1"),
    (["pretrain.within_alphabet=1.0"], ConfigError, "pretrain.within_alphabet=1.0 needs an alphabet"),
    (["pretrain.train_way=500"], DataError, "pretrain=episodic: 500-way tasks .* give pretrain.train_way"),
    (["pretrain.train_query=50"], DataError, "pretrain=episodic: .* lower pretrain.train_query"),
    (["trainer.init_from=somewhere"], ConfigError, "choose one"),
    (["pretrain.max_iterations=0"], ConfigError, "pretrain.max_iterations=0 caps the stage's steps: give >= 1 or null"),
    (["eval.bn_mode=per_step"], ConfigError, "eval.bn_mode=per_step is not possible in the pre-training stage"),
])
def test_bad_stage_settings_are_one_line_errors_before_anything_is_written(compose_train, tmp_path, overrides, error, message):
    with pytest.raises(error, match=message) as info:
        training.train(compose_train(*EPISODIC, *overrides), tmp_path / "run")
    assert "\n" not in str(info.value) and not (tmp_path / "run" / "pretrain").exists()
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_lake_preset_runs_both_stages_from_the_console_script_and_tests_each_on_lakes_runs(tmp_path):
    """best_omniglot_lake20w1s on the embedded 28 px data, shrunk: the episodic stage (cross-alphabet,
    rotated classes), then within-alphabet meta-training from its best.pt; both tested on Lake's runs."""
    exe = Path(sys.executable).with_name("metalearn")
    run = tmp_path / "lake run ü"
    small = ["pretrain.iterations=2", "pretrain.val_every=1", "pretrain.val_episodes=2", "pretrain.train_way=5",
             "trainer.iterations=2", "trainer.val_every=1", "trainer.val_episodes=2", "eval.episodes=2",
             "encoder.widths=[8,8,8,8]", "trainer.progress=false"]
    proc = subprocess.run([str(exe), "train", "experiment=best_omniglot_lake20w1s", *small, f"hydra.run.dir='{run}'"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    stage, final = (json.loads((d / "results.json").read_text()) for d in (run / "pretrain", run))
    assert (stage["protocol"], stage["way"], stage["train_way"], stage["tta_shift"]) == ("lake", 20, 5, 3)
    assert (final["protocol"], final["way"], final["episodes"]) == ("lake", 20, 2)
    assert sum(v["runs"] for v in final["by_alphabet"].values()) == 2 and "by alphabet" in proc.stdout + proc.stderr
    assert isinstance(final["confused_pairs"], list) and all(p["errors"] <= p["queries"] for p in final["confused_pairs"])
    assert f"from {run.resolve() / 'pretrain' / 'checkpoints' / 'best.pt'}" in proc.stdout + proc.stderr
    paired = subprocess.run([str(exe), "compare", str(run / "pretrain"), str(run)], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)  # the stage's test outcomes pair with the run's
    assert paired.returncode == 0 and "Traceback" not in paired.stderr, paired.stderr
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    assert (config["pretrain"]["kind"], config["pretrain"]["within_alphabet"], config["trainer"]["within_alphabet"]) == \
        ("episodic", 0.0, 1.0)
    assert config["dataset"]["rotations"] == 4 and config["pretrain"]["augment"] == "auto"
