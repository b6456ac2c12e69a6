"""`metalearn eval` and the scoring behind every results.json: fixed tasks, batch-norm modes, task
statistics, and every kind of file the command accepts (checkpoint, run dir, export)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import compose_config
from metalearn_cli import evaluation, training
from metalearn_cli.checkpoint import load_checkpoint
from metalearn_cli.errors import CheckpointError
from metalearn_cli.export import export

def test_eval_of_best_checkpoint_reproduces_results_exactly(compose_train, run_dir, tmp_path):
    training.train(compose_train(), run_dir)
    cfg = compose_config("eval", [f"checkpoint={run_dir / 'checkpoints' / 'best.pt'}", "device=cpu",
                                  "eval.episodes=10", "eval.batch_tasks=4"])
    accuracy = evaluation.evaluate(cfg, tmp_path / "eval")
    ours, theirs = (json.loads(p.read_text()) for p in (run_dir / "results.json", tmp_path / "eval" / "results.json"))
    for key in ("accuracy", "ci95", "episodes", "way", "shot", "query", "seed", "bn_mode"):
        assert ours[key] == theirs[key], key
    assert accuracy == ours["accuracy"]


def test_eval_takes_the_runs_own_test_settings_unless_the_command_line_sets_them(compose_train, run_dir, tmp_path):
    """The default run tests with shifted copies (eval.tta_shift=2): `metalearn eval checkpoint=R` alone must
    reproduce its results.json, and a typed eval.* (even the schema's default, 0) must win."""
    training.train(compose_train("eval.tta_shift=1", "eval.episodes=12"), run_dir)
    trained = json.loads((run_dir / "results.json").read_text())
    assert evaluation.evaluate(compose_config("eval", [f"checkpoint={run_dir}", "device=cpu"]),
                               tmp_path / "own") == trained["accuracy"]
    own = json.loads((tmp_path / "own" / "results.json").read_text())
    assert (own["tta_shift"], own["episodes"]) == (1, 12)
    evaluation.evaluate(compose_config("eval", [f"checkpoint={run_dir}", "device=cpu", "eval.tta_shift=0"]),
                        tmp_path / "typed")
    typed = json.loads((tmp_path / "typed" / "results.json").read_text())
    assert (typed["tta_shift"], typed["episodes"]) == (0, 12)


def test_eval_on_another_shape_and_a_run_dir(compose_train, run_dir, tmp_path):
    training.train(compose_train(), run_dir)
    cfg = compose_config("eval", [f"checkpoint={run_dir}", "episode=5way5shot", "episode.query=2", "device=cpu",
                                  "eval.episodes=6", "eval.bn_mode=transductive"])
    evaluation.evaluate(cfg, tmp_path / "eval")
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert (results["way"], results["shot"], results["query"]) == (5, 5, 2)
    assert results["bn_mode"] == "transductive" and results["episodes"] == 6


def test_transductive_eval_does_not_change_the_model(compose_train, run_dir, tmp_path):
    training.train(compose_train(), run_dir)
    ckpt = run_dir / "checkpoints" / "best.pt"
    before = load_checkpoint(ckpt)["model"]
    for mode in ("transductive", "running"):
        evaluation.evaluate(compose_config("eval", [f"checkpoint={ckpt}", "device=cpu", "eval.episodes=4",
                                                f"eval.bn_mode={mode}"]), tmp_path / mode)
    modes = {m: json.loads((tmp_path / m / "results.json").read_text())["bn_mode"] for m in ("transductive", "running")}
    assert modes == {"transductive": "transductive", "running": "running"}
    assert all(torch.equal(v, load_checkpoint(ckpt)["model"][k]) for k, v in before.items())


def test_checkpoint_with_mismatched_weights_is_refused(compose_train, run_dir, tmp_path):
    training.train(compose_train(), run_dir)
    state = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    state["model"] = {k: v for k, v in state["model"].items() if "net.0" not in k}
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match="does not match"):
        evaluation.evaluate(compose_config("eval", [f"checkpoint={bad}", "device=cpu"]), tmp_path / "eval")


@pytest.mark.parametrize("decoder, strategy, columns", [
    ("latent", "mgd", {"code_norm", "initial_code_norm", "weight_norm"}),
    ("film", "mgd", {"gamma_norm", "beta_norm", "weight_norm"}),
    ("prototype", "mgd", {"prototype_norm"}),
    ("linear", "maml", {"weight_norm"}),
])
def test_eval_writes_per_task_stats_of_what_the_decoder_generated(compose_train, tmp_path, decoder, strategy, columns):
    import csv

    extra = ["decoder.latent_steps=2"] if decoder == "latent" else []
    training.train(compose_train(f"decoder={decoder}", f"strategy={strategy}", *extra), tmp_path / "run")
    last = tmp_path / "run" / "checkpoints" / "last.pt"  # trained (best.pt may be the zero-initialised start)
    cfg = compose_config("eval", [f"checkpoint={last}", "eval.episodes=7", "eval.batch_tasks=3",
                                  "eval.save_task_stats=true", "device=cpu"])
    evaluation.evaluate(cfg, tmp_path / "eval")
    assert b"\r" not in (tmp_path / "eval" / "task_stats.csv").read_bytes()
    with open(tmp_path / "eval" / "task_stats.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 7 and columns | {"episode", "accuracy"} == set(rows[0])
    assert all(float(r[c]) > 0 for r in rows for c in columns)
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert sum(float(r["accuracy"]) for r in rows) / 7 == pytest.approx(results["accuracy"])
    assert results["task_stats"] == "task_stats.csv"  # results.json says where the rows are (trial G: no trace)
    assert "task_stats" not in json.loads((tmp_path / "run" / "results.json").read_text())  # not asked for: not said
    # Per-task rows, not one row repeated: tasks differ, so do their generated parameters.
    assert len({r[sorted(columns)[0]] for r in rows}) > 1



def test_eval_accepts_an_export_and_reproduces_the_run(compose_train, run_dir, tmp_path):
    training.train(compose_train(), run_dir)
    export(run_dir, tmp_path / "knowledge.pt")
    cfg = compose_config("eval", [f"checkpoint={tmp_path / 'knowledge.pt'}", "device=cpu", "eval.episodes=10",
                                  "eval.batch_tasks=4"])
    assert evaluation.evaluate(cfg, tmp_path / "eval") == json.loads((run_dir / "results.json").read_text())["accuracy"]
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    trained = json.loads((run_dir / "results.json").read_text())
    assert results["checkpoint"].endswith("knowledge.pt") and results["checkpoint_step"] == trained["best_step"]


def test_ci95_is_1_96_sample_std_over_root_n():
    accs = torch.tensor([1.0, 0.0, 1.0, 1.0])  # mean 0.75, sample std 0.5
    summary = evaluation.summarize(accs)
    assert summary["accuracy"] == 0.75 and summary["episodes"] == 4
    assert summary["ci95"] == pytest.approx(1.96 * 0.5 / 2)
    assert evaluation.summarize(torch.tensor([0.6]))["ci95"] == 0.0


def _mgd(compose_train, tmp_path):
    from metalearn_cli.assemble import load_strategy
    from metalearn_cli.checkpoint import read_meta_knowledge
    from metalearn_cli.data import DATASETS
    from metalearn_cli.episodes import EpisodeSampler

    run = tmp_path / "run"
    training.train(compose_train(), run)
    knowledge = read_meta_knowledge(run)
    strategy, cfg = load_strategy(knowledge, torch.device("cpu"))
    data = DATASETS.build(cfg.dataset)
    return strategy, EpisodeSampler(data.test, 5, 1, 3, seed=7)


@pytest.mark.parametrize("mode", ["running", "support"])
def test_in_inductive_modes_one_query_never_changes_another(compose_train, tmp_path, mode):
    from metalearn_cli.encoders.norm import batch_norm_mode

    strategy, sampler = _mgd(compose_train, tmp_path)
    batch = sampler.sample(2)
    changed = batch.query_images.clone()
    changed[:, 0] = torch.rand_like(changed[:, 0])
    other = type(batch)(batch.support_images, batch.support_labels, changed, batch.query_labels, 5, 1, 3)
    with batch_norm_mode(strategy.model, mode):
        a, b = strategy.predict(batch).logits, strategy.predict(other).logits
    torch.testing.assert_close(a[:, 1:], b[:, 1:])
    assert not torch.allclose(a[:, 0], b[:, 0])
    with batch_norm_mode(strategy.model, "transductive"):  # batch statistics: the queries are one batch
        a, b = strategy.predict(batch).logits, strategy.predict(other).logits
    assert not torch.allclose(a[:, 1:], b[:, 1:])


def test_support_mode_normalises_with_the_support_sets_statistics(compose_train, tmp_path):
    """``support`` equals running mode on a model whose running statistics are set to the support
    set's own (biased) statistics, layer by layer."""
    from metalearn_cli.encoders.norm import batch_norm_mode

    strategy, sampler = _mgd(compose_train, tmp_path)
    strategy.model.autocast_dtype = None  # fp32 throughout: compare the statistics, not bf16 rounding
    batch = sampler.sample(1)
    with batch_norm_mode(strategy.model, "support"):
        got = strategy.predict(batch).logits
    norms = [m for m in strategy.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    stats = {}

    def keep(m, args):
        x = args[0].float()
        stats[m] = (x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False))

    hooks = [m.register_forward_pre_hook(keep) for m in norms]
    with batch_norm_mode(strategy.model, "transductive"), torch.no_grad():
        strategy.model.embed(batch.support_images)  # the support set alone, layer by layer
    for h in hooks:
        h.remove()
    for m in norms:
        m.running_mean.copy_(stats[m][0])
        m.running_var.copy_(stats[m][1])
    with batch_norm_mode(strategy.model, "running"):
        expected = strategy.predict(batch).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["transductive", "transductive_joint", "running", "support"])
def test_batching_tasks_never_mixes_their_statistics(compose_train, tmp_path, mode):
    strategy, sampler = _mgd(compose_train, tmp_path)
    one = evaluation.evaluate_tasks(strategy, sampler, 8, 1, mode)
    four = evaluation.evaluate_tasks(strategy, sampler, 8, 4, mode)
    torch.testing.assert_close(one, four)


def test_eval_runs_lake_et_al_s_protocol_on_a_background_split_model(tmp_path):
    run = tmp_path / "run"
    training.train(compose_config("train", ["dataset.split=background", "encoder=conv4", "encoder.width=8", "trainer.iterations=3",
                                        "trainer.val_every=3", "trainer.val_episodes=4", "trainer.train_way=20",
                                        "eval.episodes=4", "trainer.progress=false", "device=cpu"]), run)
    cfg = compose_config("eval", [f"checkpoint={run}", "episode=lake20way1shot", "eval.episodes=6", "device=cpu"])
    evaluation.evaluate(cfg, tmp_path / "lake")
    results = json.loads((tmp_path / "lake" / "results.json").read_text())
    assert (results["protocol"], results["way"], results["shot"], results["query"], results["episodes"]) == ("lake", 20, 1, 1, 6)
    by = results["by_alphabet"]  # the runs of each alphabet, whose accuracies average to the whole
    assert sum(v["runs"] for v in by.values()) == 6 and all("/" not in name for name in by)
    assert sum(v["runs"] * v["accuracy"] for v in by.values()) / 6 == pytest.approx(results["accuracy"], abs=1e-6)
    # the pairs mistaken for each other account for wrong answers only, as test_outcomes.npz holds them
    predicted = np.load(tmp_path / "lake" / "test_outcomes.npz")["predicted"]
    wrong = int((predicted != np.arange(20)).sum())
    pairs = results["confused_pairs"]
    assert 0 < len(pairs) <= 10 and sum(p["errors"] for p in pairs) <= wrong
    assert all(p["classes"][0].split("/")[0] == p["classes"][1].split("/")[0] for p in pairs)  # one alphabet
    assert all(0 < p["errors"] <= p["queries"] <= 12 for p in pairs)
    assert results["one_class_tasks"] == 0
    vinyals = tmp_path / "vinyals"
    training.train(compose_config("train", ["encoder=conv4", "encoder.width=8", "trainer.iterations=1", "trainer.val_every=1",
                                        "trainer.val_episodes=2", "eval.episodes=2", "trainer.progress=false",
                                        "device=cpu"]), vinyals)
    with pytest.raises(Exception, match="they score a network trained with dataset=omniglot_background"):
        evaluation.evaluate(compose_config("eval", [f"checkpoint={vinyals}", "episode=lake20way1shot", "device=cpu"]),
                            tmp_path / "bad")


def test_test_time_augmentation_through_the_eval_command(compose_train, run_dir, tmp_path):
    """`python -m metalearn_cli eval ... eval.tta_shift=2` scores the same fixed tasks with each image
    embedded over its shifted copies, and ``eval.tta_rotate/scale/shear`` over turned, scaled and
    sheared ones: recorded in results.json, other predictions than the plain test; a negative shift is
    one line before anything runs."""
    import subprocess
    import sys

    import numpy as np

    training.train(compose_train(), run_dir)
    base = [sys.executable, "-m", "metalearn_cli", "eval", f"checkpoint={run_dir}", "eval.episodes=8", "device=cpu"]
    runs = (("plain", []), ("tta", ["eval.tta_shift=2"]), ("affine", ["eval.tta_rotate=10", "eval.tta_scale=0.1", "eval.tta_shear=0.2"]))
    for name, extra in runs:
        proc = subprocess.run([*base, *extra, f"hydra.run.dir='{tmp_path / name}'"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    plain, tta, affine = (json.loads((tmp_path / n / "results.json").read_text()) for n, _ in runs)
    assert (plain["tta_shift"], tta["tta_shift"], tta["episodes"]) == (0, 2, 8)
    assert [affine[f"tta_{k}"] for k in ("shift", "rotate", "scale", "shear")] == [0, 10, 0.1, 0.2] and plain["tta_rotate"] == 0
    predicted = [np.load(tmp_path / n / evaluation.OUTCOMES)["predicted"] for n, _ in runs]
    assert predicted[0].shape == predicted[1].shape and (predicted[0] != predicted[1]).any()
    assert (predicted[2] != predicted[0]).any() and (predicted[2] != predicted[1]).any()
    bad = subprocess.run([*base, "eval.tta_shift=-1", f"hydra.run.dir='{tmp_path / 'bad'}'"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "eval.tta_shift=-1" in bad.stderr.strip().splitlines()[-1]
    off = subprocess.run([*base, "eval.tta_shift=500", f"hydra.run.dir='{tmp_path / 'off'}'"], capture_output=True, text=True, timeout=300)
    assert off.returncode != 0 and "moves every copy off" in off.stderr.strip().splitlines()[-1] and not (tmp_path / "off" / "results.json").exists()



def test_soft_kmeans_through_the_eval_command(compose_train, run_dir, tmp_path):
    """`python -m metalearn_cli eval ... eval.soft_kmeans_steps=1` refines each task's prototypes with its queries:
    other predictions than the run's own test on the same tasks, recorded in results.json; the checkpoint is
    untouched; a negative count is one line. A training run whose decoder has no prototypes is refused before
    it trains, and so is the combination with fine-tuning the prototypes as a linear head."""
    import subprocess
    import sys

    from metalearn_cli.errors import ConfigError

    training.train(compose_train("eval.episodes=10"), run_dir)
    before = (run_dir / "checkpoints" / "best.pt").read_bytes()
    base = [sys.executable, "-m", "metalearn_cli", "eval", f"checkpoint={run_dir}", "device=cpu"]
    proc = subprocess.run([*base, "eval.soft_kmeans_steps=1", f"hydra.run.dir='{tmp_path / 'skm'}'"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    own, refined = (json.loads((d / "results.json").read_text()) for d in (run_dir, tmp_path / "skm"))
    assert (own["soft_kmeans_steps"], refined["soft_kmeans_steps"], refined["episodes"]) == (0, 1, 10)
    predicted = [np.load(d / evaluation.OUTCOMES)["predicted"] for d in (run_dir, tmp_path / "skm")]
    assert predicted[0].shape == predicted[1].shape and (predicted[0] != predicted[1]).any()
    assert (run_dir / "checkpoints" / "best.pt").read_bytes() == before
    bad = subprocess.run([*base, "eval.soft_kmeans_steps=-1", f"hydra.run.dir='{tmp_path / 'bad'}'"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "eval.soft_kmeans_steps=-1" in bad.stderr.strip().splitlines()[-1]
    with pytest.raises(ConfigError, match="eval.soft_kmeans_steps=1 refines prototypes"):
        training.train(compose_train("decoder=logistic", "eval.soft_kmeans_steps=1"), tmp_path / "logistic")
    assert not (tmp_path / "logistic" / "checkpoints").exists()
    with pytest.raises(ConfigError, match="finetune_params=generated .* eval.soft_kmeans_steps=1"):
        evaluation.evaluate(compose_config("eval", [f"checkpoint={run_dir}", "device=cpu", "eval.soft_kmeans_steps=1",
                                                    "eval.finetune_steps=1", "eval.finetune_params=generated"]),
                            tmp_path / "generated")


def test_a_run_tested_with_soft_kmeans_validates_without_it_and_an_ensemble_records_each_members(compose_train, tmp_path):
    """Validation during training never refines: two runs apart only in eval.soft_kmeans_steps validate alike
    and pick the same best.pt (the same weights), then test differently; results.json says 1. An ensemble
    of runs tested with and without it scores each member with its own setting and records both."""
    runs = {steps: tmp_path / f"skm{steps}" for steps in (0, 1)}
    for steps, run in runs.items():
        training.train(compose_train(f"eval.soft_kmeans_steps={steps}", "eval.episodes=10"), run)
    val = {s: [(r["step"], r["accuracy"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
               if r["split"] == "val"] for s, run in runs.items()}
    assert val[0] == val[1] and len(val[0]) >= 2
    results = {s: json.loads((r / "results.json").read_text()) for s, r in runs.items()}
    assert (results[0]["soft_kmeans_steps"], results[1]["soft_kmeans_steps"]) == (0, 1)
    predicted = [np.load(r / evaluation.OUTCOMES)["predicted"] for r in runs.values()]
    assert (predicted[0] != predicted[1]).any()
    training.train(compose_train("eval.soft_kmeans_steps=1", "seed=1"), tmp_path / "other")  # other weights
    evaluation.evaluate(compose_config("eval", [f"checkpoint={runs[0]}", f"ensemble=['{tmp_path / 'other'}']", "device=cpu"]),
                        tmp_path / "ensemble")
    ensemble = json.loads((tmp_path / "ensemble" / "results.json").read_text())
    assert (ensemble["soft_kmeans_steps"], ensemble["ensemble_soft_kmeans_steps"]) == (0, [0, 1])


def test_a_training_run_refuses_a_shift_off_the_image_before_it_trains(compose_train, run_dir):
    from metalearn_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="eval.tta_shift=28 moves every copy off"):
        training.train(compose_train("eval.tta_shift=28"), run_dir)
    assert not (run_dir / "checkpoints" / "best.pt").exists()


def test_rfs_support_copies_fit_the_classifier_on_augmented_support_images(compose_train, run_dir, tmp_path):
    """``eval.support_copies=N`` (RFS's n_aug_support_samples): each test task's support images replaced by N
    random draws of dataset.augment; the logistic regression then predicts otherwise, the same test twice gives
    the same predictions (the draws come from the test's seed), and results.json records N. A data set without
    an augmentation is refused in one line."""
    import numpy as np

    from metalearn_cli.errors import ConfigError

    training.train(compose_train("experiment=rfs_omniglot_5w1s", "dataset=synthetic", "dataset.augment=crop",
                                 "pretrain.epochs=null", "pretrain.iterations=4", "pretrain.val_every=4"), run_dir)
    outs = {}
    for name, extra in (("plain", ["eval.support_copies=0"]), ("copies", ["eval.support_copies=3"]),
                        ("again", ["eval.support_copies=3"])):
        evaluation.evaluate(compose_config("eval", [f"checkpoint={run_dir}", "device=cpu", "eval.episodes=8", *extra]),
                            tmp_path / name)
        outs[name] = (json.loads((tmp_path / name / "results.json").read_text()),
                      np.load(tmp_path / name / evaluation.OUTCOMES)["predicted"])
    assert (outs["plain"][0]["support_copies"], outs["copies"][0]["support_copies"]) == (0, 3)
    assert (outs["plain"][1] != outs["copies"][1]).any()
    assert (outs["copies"][1] == outs["again"][1]).all() and outs["copies"][0]["accuracy"] == outs["again"][0]["accuracy"]
    plain = tmp_path / "no_augment"
    training.train(compose_train("trainer.iterations=1"), plain)  # synthetic data: augment none
    with pytest.raises(ConfigError, match="eval.support_copies=2 draws augmented copies"):
        evaluation.evaluate(compose_config("eval", [f"checkpoint={plain}", "device=cpu", "eval.support_copies=2"]),
                            tmp_path / "refused")


def test_eval_of_an_unfinished_runs_checkpoint_says_so(compose_train, run_dir, tmp_path, caplog, capsys):
    """best.pt of a stopped run is the best validated so far: the eval says so and how to finish the run."""
    from metalearn_cli.resume import unfinished_note
    from metalearn_cli.rundir import write_status

    training.train(compose_train(), run_dir)
    assert unfinished_note(run_dir / "checkpoints" / "best.pt") is None  # finished
    write_status(run_dir, "interrupted", step=3, iterations=10)
    evaluation.evaluate(compose_config("eval", [f"checkpoint={run_dir / 'checkpoints' / 'best.pt'}", "device=cpu",
                                                "eval.episodes=4"]), tmp_path / "eval")
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("which stopped before its end (step 3 of 10)" in w and f"resume={run_dir}" in w for w in warned), warned
    (recorded,) = json.loads((tmp_path / "eval" / "results.json").read_text())["unfinished"]  # and so says results.json
    assert "stopped before its end (step 3 of 10)" in recorded
    from metalearn_cli.report import describe

    assert describe(tmp_path / "eval", tmp_path)["status"] == "completed (of an unfinished run)"  # report says so
    from metalearn_cli.knowledge import load

    caplog.clear()
    load(run_dir, "cpu")  # the Python API (and predict, through it) and export say the same
    export(run_dir / "checkpoints" / "last.pt", tmp_path / "mk.pt")
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warned[0].startswith(f"{run_dir} stopped before its end") and "last.pt is from" in warned[1], warned
    caplog.clear()  # the export says it wherever it goes: an eval of it, load() of it
    evaluation.evaluate(compose_config("eval", [f"checkpoint={tmp_path / 'mk.pt'}", "device=cpu", "eval.episodes=4"]),
                        tmp_path / "eval_export")
    load(tmp_path / "mk.pt", "cpu")
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    said = f"{tmp_path / 'mk.pt'} is an export of a run that had not finished when exported: "
    assert len([w for w in warned if w.startswith(said) and "stopped before its end" in w]) == 2, warned
    assert json.loads((tmp_path / "eval_export" / "results.json").read_text())["unfinished"][0].startswith(said)
    other = tmp_path / "other"  # as an ensemble member, too
    training.train(compose_train("trainer.iterations=1", "seed=1"), other)
    caplog.clear()
    evaluation.evaluate(compose_config("eval", [f"checkpoint={other}", f"ensemble=[{tmp_path / 'mk.pt'}]", "device=cpu",
                                                "eval.episodes=4"]), tmp_path / "eval_ensemble")
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert [w for w in warned if w.startswith(said)], warned
    assert json.loads((tmp_path / "eval_ensemble" / "results.json").read_text())["unfinished"][0].startswith(said)
    import os

    here = os.getcwd()
    try:  # a relative spelling: the line names the run absolute, since an export carries it to other folders
        os.chdir(run_dir.parent)
        assert f"resume={run_dir}" in unfinished_note(os.path.join(run_dir.name, "checkpoints", "last.pt"))
    finally:
        os.chdir(here)
    write_status(run_dir, "interrupted", step=3, iterations=10, processes=2)  # a torchrun run goes on as one
    assert f"torchrun --nproc-per-node=2 -m metalearn_cli train resume={run_dir}" in unfinished_note(run_dir)
    from metalearn_cli.rundir import exclusive

    write_status(run_dir, "running", step=3, iterations=10)
    with exclusive(run_dir):  # still training: waited for, not resumed (a resume would be refused by its lock)
        note = unfinished_note(run_dir)
    assert "is still training (step 3 of 10)" in note and note.endswith("let it finish, then test it again"), note
    # stopped in its pre-training stage: the run's checkpoints are its starting weights; the stage goes on with its run
    write_status(run_dir, "interrupted", step=0, iterations=10)
    write_status(run_dir / "pretrain", "interrupted", step=4, iterations=50)
    note = unfinished_note(run_dir)
    assert "stopped before its end in its pre-training stage" in note and f"checkpoint={run_dir / 'pretrain'}" in note
    assert unfinished_note(run_dir / "pretrain").endswith(f"finish the run with: metalearn train resume={run_dir}")
    write_status(run_dir, "failed", error="non-finite values ...")  # a failed run's best.pt may be its first weights
    note = unfinished_note(run_dir / "checkpoints" / "best.pt")
    assert note.startswith(f"{run_dir / 'checkpoints' / 'best.pt'} is from {run_dir}, which failed before its end"), note
    assert "may be the weights it began with" in note, note
    from metalearn_cli.rundir import record_failure

    write_status(run_dir, "running", step=10, iterations=10)  # its training ended, then its test failed
    record_failure(run_dir, "out of memory")
    note = unfinished_note(run_dir)
    assert "failed after its training ended, in its test" in note and "began with" not in note, note
    write_status(run_dir, "running", step=4, iterations=10)  # saved at step 4, then failed
    record_failure(run_dir, "non-finite values")
    assert "failed before its end (last saved at step 4 of 10)" in unfinished_note(run_dir)
    from metalearn_cli.cli import main

    assert main(["train", f"resume={run_dir / 'pretrain'}"]) == 2
    assert f"a stage goes on with its run: metalearn train resume={run_dir}" in capsys.readouterr().err


def test_an_eval_setting_out_of_range_is_refused_before_the_eval_dir_is_written(trained_run, tmp_path, capsys):
    """As train's range checks: the named dir is not created, so nothing of a refused command is left (trial G)."""
    from metalearn_cli.cli import main

    target = tmp_path / "eval dir"
    assert main(["eval", f"checkpoint={trained_run}", "eval.tta_shift=-2", f"hydra.run.dir='{target}'"]) == 2
    assert "eval.tta_shift=-2: give the pixels to shift" in capsys.readouterr().err
    assert not target.exists()


def test_eval_says_what_the_command_line_changed_of_the_checkpoint_s_test(trained_run, tmp_path, capfd):
    """A soft k-means score is not to be read as the run's own inductive test (trial G)."""
    from metalearn_cli.cli import main

    assert main(["eval", f"checkpoint={trained_run}", "eval.soft_kmeans_steps=1", "eval.episodes=4", "device=cpu",
                 f"hydra.run.dir={tmp_path / 'e'}"]) == 0
    shown = "".join(capfd.readouterr())
    assert "the command line changes the checkpoint's test: eval.soft_kmeans_steps=1 (its own: 0)" in shown
    assert "eval.episodes=4 (its own" not in shown  # how many tasks is not how each is tested


@pytest.mark.parametrize("typed,said", [("eval.finetune_steps=-3", "eval.finetune_steps=-3: give a count of steps >= 0"),
                                        ("eval.finetune_lr=-0.1", "eval.finetune_lr=-0.1: give a learning rate >= 0"),
                                        ("eval.finetune_lr_search=[0.1,-1]", "eval.finetune_lr_search=[0.1, -1.0]: give")])
def test_a_fine_tuning_value_out_of_range_is_named_alone(trained_run, tmp_path, capsys, typed, said):
    from metalearn_cli.cli import main

    assert main(["eval", f"checkpoint={trained_run}", typed, f"hydra.run.dir={tmp_path / 'e'}"]) == 2
    assert said in capsys.readouterr().err and not (tmp_path / "e").exists()


def test_eval_warns_where_the_validation_split_holds_classes_the_run_trained_on(tmp_path, caplog):
    """The default run validates on characters that also train (dataset.val=trainval): split=val scores no held-out
    classes, and eval.finetune_lr_search picks its rate on them (trial G). A held-out validation says nothing."""
    from metalearn_cli.params.datasets import seen_validation

    run = tmp_path / "run"
    training.train(compose_config("train", ["encoder=conv4", "encoder.width=8", "trainer.iterations=1", "trainer.val_every=1",
                                            "trainer.val_episodes=2", "eval.episodes=2", "trainer.progress=false",
                                            "device=cpu"]), run)
    assert json.loads((run / "results.json").read_text())["dataset"] == "omniglot"
    caplog.set_level("WARNING")
    evaluation.evaluate(compose_config("eval", [f"checkpoint={run}", "split=val", "eval.episodes=2", "eval.finetune_steps=1",
                                                "eval.finetune_lr_search=[0,0.001]", "eval.finetune_search_episodes=1",
                                                "device=cpu"]), tmp_path / "val")
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(m.startswith("split=val scores characters that also train (the run's dataset.val=trainval)") for m in said), said
    assert any(m.startswith("eval.finetune_lr_search picks its rate on validation tasks of characters that also train")
               for m in said), said
    caplog.clear()
    evaluation.evaluate(compose_config("eval", [f"checkpoint={run}", "eval.episodes=2", "device=cpu"]), tmp_path / "test")
    assert not [r for r in caplog.records if "dataset.val=" in r.getMessage()]
    assert seen_validation("drawers") == "new drawings of the training characters" and seen_validation("alphabets") is None
