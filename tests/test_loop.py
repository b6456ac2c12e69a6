"""The training loop end to end on generated data: run dir contents, train -> eval equality, resume."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from omegaconf import OmegaConf

from metalearn_cli import training
from metalearn_cli.config_checks import validate_train_config
from metalearn_cli.checkpoint import load_checkpoint
from metalearn_cli.rundir import write_status
from metalearn_cli.errors import CheckpointError, ConfigError, DataError


def test_train_writes_a_complete_run_dir(compose_train, run_dir):
    best_val = training.train(compose_train(), run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    assert 0.0 <= best_val <= 1.0 and results["val_accuracy"] == best_val
    assert results["episodes"] == 10 and results["split"] == "test" and results["bn_mode"] == "running"
    assert 0.0 <= results["accuracy"] <= 1.0 and results["ci95"] >= 0.0 and results["seed"] == 0
    assert results["train_seconds"] > 0 and results["wall_seconds"] >= results["train_seconds"]
    assert results["train_seconds"] == round(results["train_seconds"], 2) and isinstance(results["train_tasks_per_s"], float)
    tasks, seconds = 6 * results["meta_batch"], results["train_seconds"]  # seconds rounded to 0.01: the rate within
    assert tasks / (seconds + 0.005) - 0.005 <= results["train_tasks_per_s"] <= tasks / max(seconds - 0.005, 1e-9) + 0.005
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"best.pt", "last.pt"}
    assert any((run_dir / "tensorboard").iterdir())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    assert train_steps == [2, 4, 6]
    assert [r["step"] for r in records if r["split"] == "val"] == [0, 3, 6]  # step 0: the starting weights are a candidate
    assert all(r["grad_norm"] > 0 and r["tasks_per_s"] > 0 for r in records if r["split"] == "train")
    speeds = [r["tasks_per_s"] for r in records if r["split"] == "train"]
    assert speeds[0] > 1e-3 * speeds[-1]  # the first window (warm-up included) is timed from its start, not from the epoch
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert last["step"] == 6 and last["config"]["trainer"]["iterations"] == 6


def test_synthetic_training_beats_chance_clearly(compose_train, run_dir):
    cfg = compose_train("trainer.iterations=30", "trainer.val_every=30", "trainer.checkpoint_every=30",
                        "eval.episodes=40", "encoder.width=32")
    training.train(cfg, run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["accuracy"] > 0.6  # chance is 0.2 for 5-way


def test_resume_continues_the_step_count_and_matches_an_uninterrupted_run(compose_train, tmp_path):
    # A constant schedule does not depend on trainer.iterations, so 3 + 3 steps must equal 6 steps.
    constant = "optimizer.schedule.kind=constant"
    full = tmp_path / "full"
    training.train(compose_train(constant), full)
    part = tmp_path / "part"
    training.train(compose_train(constant, "trainer.iterations=3"), part)
    assert load_checkpoint(part / "checkpoints" / "last.pt")["step"] == 3
    training.train(compose_train(constant, "resume=true"), part)
    last = load_checkpoint(part / "checkpoints" / "last.pt")
    assert last["step"] == 6
    steps = [json.loads(line)["step"] for line in (part / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 6
    reference = load_checkpoint(full / "checkpoints" / "last.pt")["model"]
    for key, value in reference.items():
        torch.testing.assert_close(last["model"][key], value, msg=key)


def test_a_fresh_run_never_overwrites_checkpoints(compose_train, run_dir):
    training.train(compose_train(), run_dir)
    stamp = (run_dir / "checkpoints" / "last.pt").stat().st_mtime_ns
    with pytest.raises(ConfigError, match=r"already holds a run .*it is completed and tested \(resume=true trainer.iterations=N"):
        training.train(compose_train(), run_dir)
    assert (run_dir / "checkpoints" / "last.pt").stat().st_mtime_ns == stamp


def test_resume_without_a_checkpoint_or_with_another_config(compose_train, run_dir):
    with pytest.raises(CheckpointError, match="resume=true but .* does not exist"):
        training.train(compose_train("resume=true"), run_dir)
    training.train(compose_train("trainer.iterations=3"), run_dir)
    with pytest.raises(CheckpointError, match="trained with another config .*encoder.width"):
        training.train(compose_train("resume=true", "encoder.width=8"), run_dir)


@pytest.mark.parametrize(
    "override,error,match",
    [
        ("episode.way=30", DataError, "30-way episodes need 30 classes"),
        ("episode.query=10", DataError, "need 11 images per class"),
        ("trainer.iterations=0", ConfigError, "trains nothing"),
        ("device=tpu", ConfigError, "device=tpu"),
    ],
)
def test_bad_values_fail_before_training(compose_train, run_dir, override, error, match):
    with pytest.raises(error, match=match):
        training.train(compose_train(override), run_dir)
    assert not (run_dir / "checkpoints").exists()


def test_saved_config_rebuilds_without_hydra(compose_train, run_dir):
    training.train(compose_train(), run_dir)
    saved = load_checkpoint(run_dir / "checkpoints" / "best.pt")["config"]
    cfg = validate_train_config(saved)
    assert OmegaConf.to_container(cfg.encoder) == {"name": "conv4", "width": 16, "blocks": 4, "widths": None,
                                                   "global_pool": False}


def test_compile_is_refused_for_second_order(compose_train, run_dir):
    with pytest.raises(ConfigError, match="trainer.compile=true cannot be used with second-order"):
        training.train(compose_train("strategy=maml", "decoder=linear", "trainer.compile=true"), run_dir)


@pytest.mark.slow
def test_compiled_encoder_trains_and_keeps_checkpoint_keys(compose_train, run_dir):
    training.train(compose_train("trainer.compile=true"), run_dir)
    keys = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"].keys()
    assert "model.encoder.net.0.weight" in keys and not any("_orig_mod" in k for k in keys)


def test_init_from_copies_the_matching_tensors_of_another_run(compose_train, tmp_path):
    training.train(compose_train(), tmp_path / "proto")
    source = load_checkpoint(tmp_path / "proto" / "checkpoints" / "best.pt")["model"]
    cfg = compose_train("decoder=latent", f"trainer.init_from={tmp_path / 'proto'}", "trainer.iterations=1",
                        "optimizer=sgd", "optimizer.lr=1e-12")  # one negligible step: the start is visible in last.pt
    training.train(cfg, tmp_path / "latent")
    started = load_checkpoint(tmp_path / "latent" / "checkpoints" / "last.pt")["model"]
    encoder = [k for k in source if k.startswith("model.encoder.") and source[k].is_floating_point()]
    assert encoder and all(torch.allclose(started[k], source[k], atol=1e-9) for k in encoder if "running" not in k)
    assert any(k.startswith("model.decoder.") for k in started)  # the latent decoder kept its own initialisation
    with pytest.raises(ConfigError, match="shares no parameter"):
        training.train(compose_train("encoder.width=8", f"trainer.init_from={tmp_path / 'proto'}"), tmp_path / "narrow")
    assert json.loads((tmp_path / "latent" / "results.json").read_text())["init_from"] == str((tmp_path / "proto").resolve())


def test_init_from_a_stopped_run_says_its_weights_are_not_the_finished_runs(compose_train, tmp_path, caplog):
    training.train(compose_train(), tmp_path / "proto")
    (tmp_path / "proto" / "status.json").write_text(json.dumps({"status": "interrupted", "step": 4, "iterations": 9}))
    with caplog.at_level("WARNING"):
        training.train(compose_train(f"trainer.init_from={tmp_path / 'proto'}", "trainer.iterations=1"), tmp_path / "next")
    assert "trainer.init_from: " in caplog.text and "stopped before its end (step 4 of 9)" in caplog.text


def test_a_run_whose_every_step_hurts_keeps_its_starting_weights(compose_train, tmp_path):
    """Fine-tuning that only destroys (lr 50, no clipping) leaves best.pt = the weights it started from."""
    training.train(compose_train("trainer.iterations=20", "trainer.val_every=10", "encoder.width=32"), tmp_path / "good")
    cfg = compose_train(f"trainer.init_from={tmp_path / 'good'}", "optimizer=sgd", "optimizer.lr=50",
                        "optimizer.clip.norm=null", "trainer.nan_policy=skip", "encoder.width=32")
    training.train(cfg, tmp_path / "hurt")
    hurt = json.loads((tmp_path / "hurt" / "results.json").read_text())
    good = json.loads((tmp_path / "good" / "results.json").read_text())
    records = [json.loads(line) for line in (tmp_path / "hurt" / "metrics.jsonl").read_text().splitlines()]
    val = {r["step"]: r["accuracy"] for r in records if r["split"] == "val"}
    assert min(val) == 0 and all(val[0] > acc for step, acc in val.items() if step > 0)  # every later validation is worse
    assert hurt["best_step"] == 0 and hurt["accuracy"] == good["accuracy"]  # the same weights on the same test tasks
    start = load_checkpoint(tmp_path / "good" / "checkpoints" / "best.pt")["model"]
    kept = load_checkpoint(tmp_path / "hurt" / "checkpoints" / "best.pt")["model"]
    assert all(torch.equal(kept[k], v) for k, v in start.items() if not k.endswith("num_batches_tracked"))


def test_a_validation_at_100_percent_before_training_is_said(compose_train, run_dir, caplog, monkeypatch):
    """Validation that no step can beat (two easy classes in a small folder's split) keeps best.pt at the
    untrained weights without a word, unless it is said."""
    from metalearn_cli import loop

    monkeypatch.setattr(loop, "summarize", lambda values: {"accuracy": 1.0, "ci95": 0.0, "episodes": 6})
    training.train(compose_train("trainer.iterations=3"), run_dir)
    said = [r.getMessage() for r in caplog.records if "validation scores 100% before any training" in r.getMessage()]
    assert len(said) == 1 and "best.pt stays the weights the stage started from" in said[0], said


def test_channels_last_defaults_to_nhwc_on_cpus_and_nchw_on_cuda():
    """Measured: NHWC ~2x faster convolutions on CPU (oneDNN), NCHW 1.3-1.4x faster on an H100."""
    from metalearn_cli.model import resolve_channels_last

    assert resolve_channels_last(None, torch.device("cpu")) is True
    assert resolve_channels_last(None, torch.device("cuda")) is False
    assert resolve_channels_last(True, torch.device("cuda")) is True
    assert resolve_channels_last(False, torch.device("cpu")) is False


def test_off_a_terminal_progress_is_a_log_line_about_every_tenth_of_the_run(compose_train, run_dir, caplog):
    with caplog.at_level("INFO", logger="metalearn_cli.loop"):
        training.train(compose_train("trainer.progress=true", "trainer.iterations=20", "trainer.log_every=1",
                                 "trainer.val_every=20", "trainer.checkpoint_every=20"), run_dir)
    lines = [r.getMessage() for r in caplog.records if re.match(r"meta-training \d+/", r.getMessage())]
    assert [line.split(":")[0] for line in lines] == [f"meta-training {s}/20" for s in range(2, 21, 2)]


def test_a_resumed_stage_knows_its_checkpoint_and_its_training_time(compose_train, run_dir, caplog):
    """Restored, before a step: a stop now names the last.pt it resumed from, the time trained so far
    and the throughput window are the saved ones (results.json's train_seconds covers every session)."""
    from metalearn_cli.errors import Interrupted

    settings = ("trainer.log_every=2", "trainer.val_every=100", "optimizer.schedule.kind=constant")  # best: step 0
    first = training.Training(compose_train(*settings), run_dir).meta

    statuses = []

    class StopAfterThree(dict):  # a SIGTERM seen after step 3: saved mid-window (steps 3-4 are one record)
        def __getitem__(self, key):
            statuses.append(json.loads((run_dir / "status.json").read_text()))
            return "SIGTERM" if key == "signal" and first.step >= 3 else super().__getitem__(key)

    with pytest.raises(Interrupted):
        first.run(StopAfterThree(signal=None, now=None))
    assert {k: statuses[0][k] for k in ("status", "step", "iterations")} == {"status": "running", "step": 0, "iterations": 6}
    saved = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    with caplog.at_level("INFO", logger="metalearn_cli.loop"):
        meta = training.Training(compose_train("resume=true", *settings), run_dir).meta
    assert saved["best_step"] == 0
    best = f"best val {100 * saved['best_val']:.2f}% at 0"
    assert f"resuming meta-training from {run_dir / 'checkpoints' / 'last.pt'} at meta-iteration 3 ({best})" in caplog.messages
    restored = meta.window.state()
    assert saved["window"]["steps"] == 1 and restored["steps"] == 1 and restored["counts"] == saved["window"]["counts"]
    assert restored["sums"].keys() == saved["window"]["sums"].keys() and all(
        torch.equal(v, saved["window"]["sums"][k]) for k, v in restored["sums"].items())
    assert meta.step == 3 and meta.saved_step == 3
    assert meta.kept() == f"the last good checkpoint {run_dir / 'checkpoints' / 'last.pt'} (meta-iteration 3) is kept"
    assert saved["train_seconds"] > 0 and meta.train_seconds() == saved["train_seconds"]
    meta.run({"signal": None, "now": None})
    results = json.loads((run_dir / "results.json").read_text())
    assert results["train_seconds"] > round(saved["train_seconds"], 2)
    # the wall clock too spans both processes: the first one's time is in its last.pt and counted on
    assert saved["wall_seconds"] >= saved["train_seconds"] and results["wall_seconds"] > round(saved["wall_seconds"], 2)
    assert results["wall_seconds"] >= results["train_seconds"]


def test_a_resume_at_or_past_the_end_is_tested_or_refused(compose_train, run_dir):
    training.train(compose_train("trainer.iterations=3"), run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    message = (f"{run_dir} is completed (3 meta-iterations, tested); to train it further pass trainer.iterations=N "
               "with N > 3 (a new learning-rate schedule over N: not the same as a longer run from the start)")
    with pytest.raises(ConfigError) as refused:
        training.Training(compose_train("resume=true", "trainer.iterations=3"), run_dir)
    assert str(refused.value) == message
    (run_dir / "results.json").unlink()  # stopped during its final test: resuming at the end only tests
    write_status(run_dir, "interrupted", step=3, iterations=3, wall_seconds=1000.0)  # as a process stopped there says
    stamp = last.stat().st_mtime_ns
    training.train(compose_train("resume=true", "trainer.iterations=3"), run_dir)
    assert json.loads((run_dir / "results.json").read_text())["iterations"] == 3
    assert json.loads((run_dir / "results.json").read_text())["wall_seconds"] > 1000  # that process's time counted
    assert load_checkpoint(last)["step"] == 3 and last.stat().st_mtime_ns == stamp  # no step taken, nothing re-saved
    (run_dir / "results.json").unlink()
    with pytest.raises(ConfigError) as below:
        training.Training(compose_train("resume=true", "trainer.iterations=2"), run_dir)
    assert str(below.value) == f"trainer.iterations=2 is below the step of {last} (3); resume with trainer.iterations >= 3"


def test_the_final_test_is_logged_at_best_pts_step_and_the_status_says_completed(compose_train, run_dir, caplog):
    import csv

    meta, stop, seen = training.Training(compose_train("logger=csv"), run_dir).meta, {"signal": None, "now": None}, []
    test = meta.stage.test
    meta.stage.test = lambda: seen.append(stop["now"]) or test()  # what a signal during the final test is told
    with caplog.at_level("INFO", logger="metalearn_cli.loop"):
        meta.run(stop)
    assert seen == [f"during the final test; {run_dir / 'checkpoints' / 'last.pt'} holds the finished training; "
                    f"test it with: metalearn train resume={run_dir}"] and stop["now"] is None
    assert not any(re.match(r"meta-training \d+/", m) for m in caplog.messages)  # trainer.progress=false: no progress lines
    results = json.loads((run_dir / "results.json").read_text())
    with open(run_dir / "metrics.csv", newline="", encoding="utf-8") as f:
        test = {r["metric"]: (int(r["step"]), float(r["value"])) for r in csv.DictReader(f) if r["split"] == "test"}
    best = results["best_step"]  # the test scores best.pt: its point sits at the step it was saved
    assert test == {"accuracy": (best, results["accuracy"]), "ci95": (best, results["ci95"])}
    status = json.loads((run_dir / "status.json").read_text())
    assert (status["status"], status["step"], status["iterations"], status["accuracy"]) == ("completed", 6, 6, results["accuracy"])
    assert (status["processes"], status["wall_seconds"]) == (1, results["wall_seconds"])
    line = (f"meta-training: test accuracy {100 * results['accuracy']:.2f}% ± {100 * results['ci95']:.2f}% over 10 tasks "
            f"(best val {100 * results['val_accuracy']:.2f}% at step {results['best_step']}); {run_dir}")
    assert line in caplog.messages
    assert caplog.messages[0].startswith("meta-training on cpu (") and caplog.messages[0].endswith(f"; run dir {run_dir}")


def test_nothing_non_finite_is_saved_and_a_save_marks_the_run_running(compose_train, run_dir):
    from metalearn_cli.errors import Diverged

    meta = training.Training(compose_train(), run_dir).meta
    meta.save_last()
    status = json.loads((run_dir / "status.json").read_text())
    assert (status["status"], status["step"], status["iterations"]) == ("running", 0, 6) and meta.saved_step == 0
    stamp = (run_dir / "checkpoints" / "last.pt").stat().st_mtime_ns
    with torch.no_grad():
        next(meta.strategy.parameters())[0] = float("nan")
    with pytest.raises(Diverged, match=r"non-finite values in model\.encoder\..* at meta-iteration 0; nothing non-finite was saved"):
        meta.save_last()
    assert (run_dir / "checkpoints" / "last.pt").stat().st_mtime_ns == stamp


def test_a_loss_far_above_a_uniform_guess_at_chance_accuracy_is_warned_once(compose_train, run_dir, caplog):
    """MAML's inner loop at too large an inner_lr diverges to finite losses in the thousands: no NaN stops it,
    so the loop says so (once) and names the rates to lower; a large loss with accuracy above chance is not it."""
    meta = training.Training(compose_train("strategy=maml", "trainer.iterations=4"), run_dir).meta
    chance = meta.objective.chance_loss
    assert chance == pytest.approx(math.log(meta.objective.sampler.n_way))
    with caplog.at_level("WARNING", logger="metalearn_cli.loop"):
        meta.warn_if_diverging({"loss": 11 * chance, "accuracy": 0.9})  # large (a regulariser) yet learning
        assert not caplog.messages
        meta.warn_if_diverging({"loss": 2000.0, "accuracy": 1.1 * math.exp(-chance)})
        meta.warn_if_diverging({"loss": 3000.0, "accuracy": 0.01})
    assert len(caplog.messages) == 1 and "diverging" in caplog.messages[0]
    assert "optimizer.lr" in caplog.messages[0] and "strategy.inner_lr" in caplog.messages[0]


def test_same_drawers_on_data_without_drawers_is_said(compose_train, run_dir, caplog):
    with caplog.at_level("WARNING", logger="metalearn_cli.training"):
        training.Training(compose_train("trainer.same_drawers=true"), run_dir)
    assert "trainer.same_drawers=true on dataset synthetic: only Omniglot keeps" in caplog.text
