"""The pre-training stage: its own run dir, the best checkpoint by episodic validation, meta-training
starting from it (or evaluating it alone), freezing that really freezes, and resuming."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import stop_after

from metalearn_cli import training
from metalearn_cli.assemble import build_strategy, initialise_from
from metalearn_cli.checkpoint import load_checkpoint
from metalearn_cli.data import DATASETS
from metalearn_cli.decoders import DECODERS
from metalearn_cli.errors import ConfigError, Interrupted
from metalearn_cli.distributed import World
from metalearn_cli.loop import TrainingRun
from metalearn_cli.objectives import SupervisedObjective
from metalearn_cli.pretrain import pretrain_stage

PRE = ["pretrain=supervised", "pretrain.iterations=6", "pretrain.batch_size=16", "pretrain.val_every=3",
       "pretrain.val_episodes=4"]


def stage_run(cfg, run_dir, data):
    """The pre-training stage of ``run_dir`` in the one loop, resumed from its last.pt when there is one."""
    stage, resume = pretrain_stage(cfg, run_dir, data, torch.device("cpu"))
    return TrainingRun(stage, torch.device("cpu"), World(), resume)


def encoder_tensors(state):
    return {k: v for k, v in state.items() if k.startswith("model.encoder.") and v.is_floating_point()}


def test_pretraining_is_a_stage_with_its_own_run_dir_and_meta_training_starts_from_its_best(compose_train, tmp_path):
    run = tmp_path / "run"
    training.train(compose_train(*PRE, "trainer.iterations=0"), run)
    stage = run / "pretrain"
    for name in ("metrics.jsonl", "results.json", "status.json", "checkpoints/best.pt", "checkpoints/last.pt", "tensorboard"):
        assert (stage / name).exists(), name
    records = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in records} == {"pretrain", "val"} and max(r["step"] for r in records) == 6
    stage_results = json.loads((stage / "results.json").read_text())
    assert stage_results["strategy"] == "pretrain" and 0 < stage_results["accuracy"] <= 1
    # trainer.iterations=0: the run's best.pt is the pre-trained encoder, unchanged, and it was tested.
    pre, final = load_checkpoint(stage / "checkpoints/best.pt")["model"], load_checkpoint(run / "checkpoints/best.pt")["model"]
    assert encoder_tensors(pre) and all(torch.equal(v, final[k]) for k, v in encoder_tensors(pre).items())
    results = json.loads((run / "results.json").read_text())
    assert results["best_step"] == 0 and results["accuracy"] == pytest.approx(stage_results["accuracy"], abs=1e-6)
    # The run's own results.json says what its stage did (its time is where an RFS-style run trained).
    assert results["pretrain"] == {"kind": "supervised", "iterations": 6, "train_seconds": stage_results["train_seconds"],
                                   "accuracy": stage_results["accuracy"], "ci95": stage_results["ci95"],
                                   "best_step": stage_results["best_step"]}
    from metalearn_cli.report import describe

    row = describe(run, tmp_path)
    assert row["pretrain"] == "supervised" and row["pretrain_accuracy"] == round(100 * stage_results["accuracy"], 2)


def test_freezing_keeps_every_encoder_weight_and_batch_norm_statistic(compose_train, tmp_path):
    run = tmp_path / "run"
    training.train(compose_train(*PRE, "decoder=latent", "trainer.freeze_encoder=true"), run)
    pre = load_checkpoint(run / "pretrain/checkpoints/best.pt")["model"]
    final = load_checkpoint(run / "checkpoints/last.pt")["model"]
    enc = encoder_tensors(pre)
    assert any("running_mean" in k for k in enc)
    assert all(torch.equal(v, final[k]) for k, v in enc.items()), "the encoder moved"
    decoder = {k: v for k, v in final.items() if ".decoder." in k}
    fresh = build_strategy(compose_train(*PRE, "decoder=latent"), DATASETS.build(compose_train().dataset).image_shape,
                           torch.device("cpu")).state_dict()
    assert any(not torch.equal(v, fresh[k]) for k, v in decoder.items()), "the decoder was not meta-trained"


def test_without_freezing_meta_training_moves_the_pretrained_encoder(compose_train, tmp_path):
    run = tmp_path / "run"
    training.train(compose_train(*PRE), run)
    pre = encoder_tensors(load_checkpoint(run / "pretrain/checkpoints/best.pt")["model"])
    final = load_checkpoint(run / "checkpoints/last.pt")["model"]
    assert any(not torch.equal(v, final[k]) for k, v in pre.items() if v.is_floating_point())


@pytest.mark.parametrize("decoder", sorted(DECODERS.names()))
def test_a_pretrained_checkpoint_loads_into_every_decoder(compose_train, tmp_path, decoder):
    run = tmp_path / "run"
    if not (run / "pretrain/checkpoints/best.pt").exists():
        training.train(compose_train(*PRE, "trainer.iterations=0"), run)
    strategy = "anil" if decoder == "linear" else "mgd"
    cfg = compose_train(f"decoder={decoder}", f"strategy={strategy}")
    built = build_strategy(cfg, DATASETS.build(cfg.dataset).image_shape, torch.device("cpu"))
    initialise_from(built, str(run / "pretrain"))
    state = built.state_dict()
    for key, value in encoder_tensors(load_checkpoint(run / "pretrain/checkpoints/best.pt")["model"]).items():
        if value.is_floating_point():
            assert torch.equal(state[key], value), key


def test_an_interrupted_stage_resumes_to_the_same_weights(compose_train, tmp_path):
    cfg = compose_train(*PRE)
    data = DATASETS.build(cfg.dataset)
    whole = tmp_path / "whole"
    torch.manual_seed(0)  # the run seeds before building (seed_everything); so do both here
    stage_run(cfg, whole, data).run({"signal": None})
    cut = tmp_path / "cut"
    torch.manual_seed(0)
    run = stage_run(cfg, cut, data)
    stop = stop_after(run, 2)
    with pytest.raises(Interrupted, match="at pre-training step 2/6.*resume="):
        run.run(stop)
    assert json.loads((cut / "pretrain/status.json").read_text())["status"] == "interrupted"
    records = [json.loads(line) for line in (cut / "pretrain/metrics.jsonl").read_text().splitlines()]
    assert not any(r["split"] == "val" and r["step"] == 2 for r in records)  # obeyed at once: no validation first
    stopped = load_checkpoint(cut / "pretrain/checkpoints/last.pt")
    assert stopped["step"] == 2 and stopped["wall_seconds"] > 0
    stage_run(cfg, cut, data).run({"signal": None})
    a = load_checkpoint(whole / "pretrain/checkpoints/last.pt")
    b = load_checkpoint(cut / "pretrain/checkpoints/last.pt")
    assert a["step"] == b["step"] == 6
    assert b["wall_seconds"] > stopped["wall_seconds"]  # the resumed stage counts on from the first process's time
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())
    assert all(torch.equal(v, b["head"][k]) for k, v in a["head"].items())


def test_resume_true_continues_a_run_interrupted_during_pretraining(compose_train, tmp_path, monkeypatch, caplog):
    run = tmp_path / "run"
    original = SupervisedObjective.step

    def interrupted(self, *args):
        out = original(self, *args)
        calls.append(1)
        if len(calls) == 3:
            raise Interrupted("SIGTERM", "SIGTERM during pre-training")
        return out

    calls: list[int] = []
    monkeypatch.setattr(SupervisedObjective, "step", interrupted)
    with pytest.raises(Interrupted):
        training.train(compose_train(*PRE), run)
    monkeypatch.setattr(SupervisedObjective, "step", original)
    assert json.loads((run / "status.json").read_text())["status"] == "interrupted"
    assert (run / "checkpoints/last.pt").is_file()  # step 0: resume=true finds the run
    first_process = load_checkpoint(run / "checkpoints/last.pt")["wall_seconds"]  # its time until the step-0 save
    with caplog.at_level("INFO", logger="metalearn_cli.loop"):
        training.train(compose_train(*PRE, "resume=true"), run)
    assert not [m for m in caplog.messages if m.startswith("resuming meta-training")]  # at 0: nothing of it to resume
    assert json.loads((run / "results.json").read_text())["wall_seconds"] > round(first_process, 2)  # both processes'
    assert json.loads((run / "pretrain/status.json").read_text())["status"] == "completed"
    assert json.loads((run / "results.json").read_text())["iterations"] == 6


def test_the_stage_augments_with_the_data_sets_own_choice(compose_train, tmp_path):
    """pretrain.augment=auto is dataset.augment; the transforms themselves are tests/test_augment.py's."""
    cfg = compose_train(*PRE, "dataset.augment=crop")
    stage, _ = pretrain_stage(cfg, tmp_path, DATASETS.build(cfg.dataset), torch.device("cpu"))
    assert stage.objective.augment is not None
    cfg = compose_train(*PRE)  # synthetic's own: none
    assert pretrain_stage(cfg, tmp_path, DATASETS.build(cfg.dataset), torch.device("cpu"))[0].objective.augment is None


def test_the_stage_runs_the_shared_loop_and_its_nan_policy(compose_train, tmp_path, monkeypatch):
    """The stage's update is the loop's: a non-finite loss is refused with the stage's own hint, and
    under trainer.nan_policy=skip that step is left out (the weights never see it) and the stage goes on."""
    from metalearn_cli import objectives
    from metalearn_cli.errors import Diverged

    real = objectives.F.cross_entropy
    calls = {"n": 0}

    def nan_on_third(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs) * (float("nan") if calls["n"] == 3 else 1.0)

    monkeypatch.setattr(objectives.F, "cross_entropy", nan_on_third)
    with pytest.raises(Diverged, match="non-finite loss at pre-training step 3.*pretrain.optimizer.lr"):
        training.train(compose_train(*PRE), tmp_path / "a")
    calls["n"] = 0
    training.train(compose_train(*PRE, "trainer.nan_policy=skip", "trainer.iterations=0"), tmp_path / "b")
    records = [json.loads(line) for line in (tmp_path / "b/pretrain/metrics.jsonl").read_text().splitlines()]
    assert sum(r["skipped"] for r in records if r["split"] == "pretrain") == 1
    assert json.loads((tmp_path / "b/pretrain/status.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("overrides,message", [
    (["trainer.iterations=0"], "trains nothing"),
    (["trainer.freeze_encoder=true"], "would keep a random encoder"),
    ([*PRE, "trainer.init_from=somewhere"], "choose one"),
    ([*PRE, "pretrain.batch_size=0"], "pretrain.batch_size"),
    ([*PRE, "pretrain.optimizer.lr=0"], "pretrain.optimizer: optimizer=sgd needs lr > 0"),
    ([*PRE, "pretrain.optimizer.momentum=abc"], "pretrain.optimizer: invalid optimizer 'sgd' config"),
    ([*PRE, "pretrain.optimizer.schedule.kind=linear"], "pretrain.optimizer"),
    ([*PRE, "pretrain.optimizer.clip.norm=0"], "pretrain.optimizer: optimizer.clip.norm=0"),
    ([*PRE, "pretrain.optimizer.name=lamb"], "unknown optimizer 'lamb'"),
    ([*PRE, "trainer.freeze_encoder=true"], "leaves nothing to meta-train in decoder=prototype"),
    ([*PRE, "trainer.freeze_encoder=true", "strategy=maml"], "would adapt the frozen encoder"),
    ([*PRE, "strategy=maml", "strategy.per_step_bn=true", "eval.bn_mode=per_step"],
     "eval.bn_mode=per_step is not possible in the pre-training stage .* trainer.init_from=RUN"),
])
def test_bad_pretraining_settings_are_one_line_errors(compose_train, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        training.train(compose_train(*overrides), tmp_path / "run")
    assert "\n" not in str(info.value) and not (tmp_path / "run" / "checkpoints").exists()


def test_an_unknown_augmentation_fails_at_compose_time(compose_train):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="augment"):
        compose_train(*PRE, "pretrain.augment=sometimes")


def test_the_stage_learns_its_encoder_moves_and_validation_beats_the_start(compose_train, tmp_path):
    """Fails when the stage's update is gone (no optimizer step, no backward): the encoder must move
    and its nearest-centroid accuracy on the fixed validation tasks must rise above the random start."""
    from metalearn_cli.evaluation import evaluate_tasks, summarize

    cfg = compose_train(*PRE, "pretrain.iterations=60", "pretrain.val_every=60", "pretrain.batch_size=32",
                        "pretrain.val_episodes=20")
    data = DATASETS.build(cfg.dataset)
    torch.manual_seed(0)
    run = stage_run(cfg, tmp_path, data)
    start = {k: v.clone() for k, v in run.strategy.state_dict().items()}
    at_start = summarize(evaluate_tasks(run.strategy, run.stage.val_sampler, cfg.pretrain.val_episodes, 10, "running"))
    run.run({"signal": None})
    best = load_checkpoint(tmp_path / "pretrain" / "checkpoints" / "best.pt")
    moved = [k for k, v in start.items() if k.startswith("model.encoder") and v.is_floating_point()
             and not torch.equal(v, best["model"][k])]
    assert len(moved) > len([k for k in start if k.startswith("model.encoder")]) // 2
    print(f"val accuracy {at_start['accuracy']:.3f} at the start, {best['best_val']:.3f} after 60 steps")
    assert best["best_val"] > at_start["accuracy"] + 0.05


def test_an_epoch_budget_sets_the_stages_steps_and_the_saved_config_holds_them(compose_train, tmp_path):
    """20 classes x 8 images = 160 training images; 2 epochs of 16 images = 20 steps."""
    run = tmp_path / "run"
    training.train(compose_train(*PRE, "pretrain.epochs=2", "pretrain.val_every=10"), run)
    records = [json.loads(line) for line in (run / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in records) == 20
    saved = load_checkpoint(run / "checkpoints" / "last.pt")["config"]["pretrain"]
    assert (saved["epochs"], saved["iterations"]) == (2.0, 20)
    training.train(compose_train("pretrain.epochs=2"), tmp_path / "no_stage")  # no stage (pretrain=none): a no-op,
    assert not (tmp_path / "no_stage" / "pretrain").exists()  # which the command line warns of (test_config_checks)


def test_printing_an_epoch_counted_config_says_its_iterations_only_turn_the_stage_on(tmp_path):
    """--cfg job prints the config as composed (pretrain=rfs: supervised's iterations: 3000 beside epochs: 100), before
    any image is counted; what runs is said beside it, as for other changes a run makes. A stage counted in
    iterations (pretrain=supervised, or debug=smoke's epochs=null) says nothing."""
    import subprocess
    import sys

    def printed(*args):
        proc = subprocess.run([sys.executable, "-m", "metalearn_cli", "train", "--cfg", "job", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc

    rfs = printed("pretrain=rfs", "pretrain.epochs=5")
    assert "  iterations: 3000\n  epochs: 5.0\n" in rfs.stdout
    assert rfs.stderr.strip().splitlines() == [
        "metalearn train: note: a run of this config changes what is printed above: pretrain.iterations=3000 only turns "
        "the stage on: pretrain.epochs=5 counts its steps, ceil(epochs x training images / pretrain.batch_size=64), once "
        "the data set is read (the run's saved config holds that count)"]
    for counted in (["pretrain=supervised"], ["pretrain=rfs", "debug=smoke"]):
        assert "pretrain.iterations" not in printed(*counted).stderr
    assert list(tmp_path.iterdir()) == []  # printing writes no run dir


def test_the_rfs_schedule_composes_as_rfs_ran(compose_train):
    cfg = compose_train("pretrain=rfs")
    o = cfg.pretrain.optimizer
    assert (cfg.pretrain.epochs, cfg.pretrain.batch_size, o.lr, o.momentum, o.nesterov, o.weight_decay) == (100, 64, 0.05, 0.9, False, 5e-4)
    assert (o.schedule.kind, list(o.schedule.milestones), o.schedule.gamma) == ("multistep", [0.6, 0.8], 0.1)


def test_a_signal_during_meta_training_after_the_stage_is_obeyed_with_a_save(compose_train, tmp_path, monkeypatch):
    """The stage's final test holds signals as "nothing left to save"; that ends with the stage, so a
    SIGTERM during meta-training still saves the step and prints the resume command."""
    import os
    import signal

    from metalearn_cli.loop import TrainingRun as Run

    real = Run.iteration

    def iteration(self):
        real(self)
        if self.stage.name == "meta-training" and self.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Run, "iteration", iteration)
    run = tmp_path / "run"
    with pytest.raises(Interrupted, match="SIGTERM at meta-iteration 2/6; saved .*resume="):
        training.train(compose_train(*PRE), run)
    assert load_checkpoint(run / "checkpoints/last.pt")["step"] == 2


def test_a_stop_during_the_stages_own_test_names_the_stage_not_the_runs_final_test(compose_train, tmp_path):
    import dataclasses

    from metalearn_cli.distributed import World
    from metalearn_cli.loop import TrainingRun
    from metalearn_cli.pretrain import pretrain_stage

    run = training.Training(compose_train(*PRE), tmp_path / "run")
    stage, resume = pretrain_stage(run.cfg, run.run_dir, run.data, run.device, run.original)
    stop, seen = {"signal": None, "now": None}, []
    test = stage.test
    stage = dataclasses.replace(stage, test=lambda: seen.append(stop["now"]) or test(), clock=run.clock)
    TrainingRun(stage, run.device, World(), resume).run(stop)
    assert seen and seen[0].startswith("during the pre-training stage's test; ") and "resume=" in seen[0], seen
