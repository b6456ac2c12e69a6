"""Test-time fine-tuning (P>M>F): it changes predictions, never sees a query label, and leaves the
strategy and the checkpoint as they were."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config
from metalearn_cli import evaluation, training
from metalearn_cli.assemble import load_strategy
from metalearn_cli.checkpoint import read_meta_knowledge
from metalearn_cli.data import DATASETS
from metalearn_cli.episodes import EpisodeSampler, resident
from metalearn_cli.errors import ConfigError
from metalearn_cli.finetune import Finetuner


def tuner(strategy, steps=5, lr=0.05, params="backbone"):
    cfg = OmegaConf.create({"finetune_steps": steps, "finetune_lr": lr, "finetune_params": params, "finetune_augment": "crop"})
    return Finetuner.of(cfg, "none", (1, 28, 28), strategy)


@pytest.fixture
def trained(compose_train, tmp_path):
    training.train(compose_train(), tmp_path / "run")
    strategy, cfg = load_strategy(read_meta_knowledge(tmp_path / "run"), torch.device("cpu"))
    data = DATASETS.build(cfg.dataset)
    task = EpisodeSampler(resident(data.test, torch.device("cpu")), 5, 1, 3, seed=1).sample(1)
    return strategy, task, tmp_path / "run"


def test_it_changes_predictions_and_restores_every_weight(trained):
    strategy, task, _ = trained
    strategy.eval()
    before = {k: v.clone() for k, v in strategy.state_dict().items()}
    plain = strategy.predict(task).logits
    with tuner(strategy).adapted(strategy, task):
        tuned = strategy.predict(task).logits
        assert any(not torch.equal(v, before[k]) for k, v in strategy.state_dict().items())  # it moved
    assert not torch.allclose(plain, tuned)
    assert all(torch.equal(v, before[k]) for k, v in strategy.state_dict().items())  # and came back
    assert torch.equal(strategy.predict(task).logits, plain)


def test_it_never_sees_a_query_image_or_label(trained):
    strategy, task, _ = trained
    strategy.eval()
    wrong = task.__class__(task.support_images, task.support_labels, torch.rand_like(task.query_images),
                           task.query_labels.flip(-1), task.n_way, task.k_shot, task.n_query)
    torch.manual_seed(0)
    with tuner(strategy).adapted(strategy, task):
        right_logits = strategy.predict(task).logits
    torch.manual_seed(0)  # the same augmentations: only the queries differ
    with tuner(strategy).adapted(strategy, wrong):
        weights_seen = {k: v.clone() for k, v in strategy.state_dict().items()}
        wrong_logits = strategy.predict(task).logits  # the real queries, under weights tuned beside other queries
    torch.manual_seed(0)
    with tuner(strategy).adapted(strategy, task):
        assert all(torch.equal(v, weights_seen[k]) for k, v in strategy.state_dict().items())
    assert torch.equal(right_logits, wrong_logits)


def test_eval_with_finetuning_leaves_the_checkpoint_and_records_it(trained, tmp_path):
    _, _, run = trained
    best = run / "checkpoints" / "best.pt"
    digest = hashlib.sha256(best.read_bytes()).hexdigest()
    cfg = compose_config("eval", [f"checkpoint={run}", "eval.episodes=6", "eval.finetune_steps=3",
                                  "eval.finetune_augment=crop", "device=cpu"])
    tuned = evaluation.evaluate(cfg, tmp_path / "tuned")
    results = json.loads((tmp_path / "tuned" / "results.json").read_text())
    assert results["finetune_steps"] == 3 and results["episodes"] == 6 and 0 <= tuned <= 1
    assert results["finetune_params"] == "backbone" and results["finetune_augment"] == "crop"  # the copies it drew
    assert hashlib.sha256(best.read_bytes()).hexdigest() == digest


def test_refusals_are_one_line_before_anything_runs(trained):
    strategy, _, _ = trained
    with pytest.raises(ConfigError, match=r"names no parameter of this meta-network \(its PrototypeDecoder has none\); "
                                          r"use backbone or all \(or generated"):
        tuner(strategy, params="decoder")  # a prototype decoder has no weights; the prototypes it generates may be tuned
    cfg = OmegaConf.create({"finetune_steps": 2, "finetune_lr": 0.1, "finetune_params": "backbone", "finetune_augment": "auto"})
    with pytest.raises(ConfigError, match="finetune_augment=crop"):
        Finetuner.of(cfg, "none", (1, 28, 28), strategy)  # generated data's default: no augmentation
    assert Finetuner.of(OmegaConf.create({"finetune_steps": 0}), "none", (1, 28, 28), strategy) is None


def test_the_rate_is_chosen_on_validation_tasks_and_recorded(trained, tmp_path):
    _, _, run = trained
    cfg = compose_config("eval", [f"checkpoint={run}", "eval.episodes=4", "eval.finetune_steps=2", "eval.finetune_augment=crop",
                                  "eval.finetune_lr_search=[0,0.001,5.0]", "eval.finetune_search_episodes=3", "device=cpu"])
    evaluation.evaluate(cfg, tmp_path / "searched")
    results = json.loads((tmp_path / "searched" / "results.json").read_text())
    search = results["finetune_search"]
    assert set(search) == {"0.0", "0.001", "5.0"} and all(0 <= v <= 1 for v in search.values())
    best = max(search.values())
    assert results["finetune_lr"] == min(float(k) for k, v in search.items() if v == best)
    assert len(set(search.values())) > 1  # the rates are told apart
    plain = compose_config("eval", [f"checkpoint={run}", "split=val", "eval.episodes=3", "device=cpu"])
    assert evaluation.evaluate(plain, tmp_path / "val") == pytest.approx(search["0.0"])  # rate 0: the plain score


def test_soft_kmeans_refines_the_scoring_after_fine_tuning_never_its_steps(compose_train, tmp_path):
    """Under fomaml the fine-tuning loss passes the model's forward with the augmented copies as queries: inside
    eval.soft_kmeans_steps those steps must still move the weights exactly as without it; only the scoring
    after them is refined."""
    training.train(compose_train("strategy=fomaml", "decoder=prototype"), tmp_path / "run")
    strategy, cfg = load_strategy(read_meta_knowledge(tmp_path / "run"), torch.device("cpu"))
    task = EpisodeSampler(resident(DATASETS.build(cfg.dataset).test, torch.device("cpu")), 5, 1, 3, seed=1).sample(1)
    strategy.eval()
    tuned = {}
    for steps in (0, 1):
        torch.manual_seed(0)
        with strategy.model.refining(steps), tuner(strategy).adapted(strategy, task):
            tuned[steps] = ({k: v.clone() for k, v in strategy.state_dict().items()}, strategy.predict(task).logits)
    assert all(torch.equal(v, tuned[1][0][k]) for k, v in tuned[0][0].items())
    assert not torch.allclose(tuned[0][1], tuned[1][1])


def test_a_rate_of_zero_changes_nothing(trained):
    strategy, task, _ = trained
    strategy.eval()
    plain = strategy.predict(task).logits
    with tuner(strategy, lr=0.0).adapted(strategy, task):
        assert torch.equal(strategy.predict(task).logits, plain)


def test_a_fine_tuned_test_repeats_exactly_and_buffers_come_back(trained, tmp_path):
    """The run's own results.json is what metalearn eval gives again (seeded augmentations)."""
    _, _, run = trained
    args = [f"checkpoint={run}", "eval.episodes=4", "eval.finetune_steps=2", "eval.finetune_augment=crop", "device=cpu"]
    first = evaluation.evaluate(compose_config("eval", args), tmp_path / "one")
    torch.manual_seed(123)  # whatever the caller's stream holds
    second = evaluation.evaluate(compose_config("eval", args), tmp_path / "two")
    assert first == second


def test_maml_per_step_statistics_are_restored(compose_train, tmp_path):
    from metalearn_cli.encoders.norm import batch_norm_mode

    training.train(compose_train("strategy=maml", "decoder=linear", "strategy.per_step_bn=true", "strategy.vectorize=loop"), tmp_path / "m")
    strategy, cfg = load_strategy(read_meta_knowledge(tmp_path / "m"), torch.device("cpu"))
    data = DATASETS.build(cfg.dataset)
    task = EpisodeSampler(resident(data.test, torch.device("cpu")), 5, 1, 3, seed=1).sample(1)
    before = {k: v.clone() for k, v in strategy.state_dict().items()}
    with batch_norm_mode(strategy.model, "transductive"), tuner(strategy, steps=2, lr=0.01, params="all").adapted(strategy, task):
        strategy.predict(task)
    assert all(torch.equal(v, before[k]) for k, v in strategy.state_dict().items())


def test_generated_fine_tuning_moves_the_classifier_alone_and_never_a_weight(trained):
    """``eval.finetune_params=generated``: the prototypes' linear head moves, the network does not."""
    from metalearn_cli.ensemble import Ensemble

    strategy, task, _ = trained
    strategy.eval()
    before = {k: v.clone() for k, v in strategy.state_dict().items()}
    plain = strategy.predict(task).logits.log_softmax(-1)
    untouched = tuner(strategy, lr=0.0, params="generated").predict(Ensemble([strategy]), task, 0)
    assert torch.allclose(untouched.logits.log_softmax(-1), plain, atol=1e-4)  # rate 0: the decoder's own classifier
    tuned = tuner(strategy, steps=10, lr=0.5, params="generated").predict(Ensemble([strategy]), task, 0)
    assert not torch.allclose(tuned.logits.log_softmax(-1), plain, atol=1e-3)
    assert float(tuned.stats["head_shift"].min()) > 0
    assert all(torch.equal(v, before[k]) for k, v in strategy.state_dict().items())


def test_generated_fine_tuning_never_sees_a_query_image_or_label(trained):
    from metalearn_cli.ensemble import Ensemble

    strategy, task, _ = trained
    strategy.eval()
    wrong = task.__class__(task.support_images, task.support_labels, torch.rand_like(task.query_images),
                           task.query_labels.flip(-1), task.n_way, task.k_shot, task.n_query)
    shifts = []
    for seen in (task, wrong):
        torch.manual_seed(0)  # the same augmented copies: only the queries differ
        shifts.append(tuner(strategy, params="generated").predict(Ensemble([strategy]), seen, 0, with_stats=True).stats)
    assert torch.equal(shifts[0]["head_shift"], shifts[1]["head_shift"])
    assert float(shifts[0]["head_shift"].min()) > 0 and "prototype_norm" in shifts[0]  # the decoder's own stats beside it


@pytest.mark.parametrize("args, instead", [(("strategy=maml", "decoder=prototype"), "use backbone or all$"),
                                           (("decoder=film",), "use backbone or decoder or all$")])
def test_generated_fine_tuning_is_refused_where_no_classifier_is_generated(compose_train, args, instead):
    """An inner loop adapts its own head (the MAML family), and an amortised FiLM head is not offered; the
    refusal offers only what this network would accept (a prototype decoder has no parameter to tune)."""
    from metalearn_cli.assemble import build_strategy

    cfg = compose_train(*args)
    strategy = build_strategy(cfg, DATASETS.build(cfg.dataset).image_shape, torch.device("cpu"))
    with pytest.raises(ConfigError, match="generates none: " + instead):
        tuner(strategy, params="generated")


def test_feats_contrastive_term_stays_out_of_test_time_fine_tuning(compose_train, tmp_path, monkeypatch):
    training.train(compose_train("decoder=feat", "decoder.balance=0.5"), tmp_path / "f")
    strategy, cfg = load_strategy(read_meta_knowledge(tmp_path / "f"), torch.device("cpu"))
    task = EpisodeSampler(resident(DATASETS.build(cfg.dataset).test, torch.device("cpu")), 5, 1, 3, seed=1).sample(1)
    calls = []
    monkeypatch.setattr(type(strategy.model.decoder), "labelled_loss", lambda *a: calls.append(1))
    strategy.train()
    strategy.meta_loss(task)
    assert calls == [1]  # a training step asks for it
    strategy.eval()
    with tuner(strategy).adapted(strategy, task):
        pass
    assert calls == [1]  # fine-tuning's steps do not


def test_generated_fine_tuning_through_the_eval_command(trained, tmp_path):
    """`python -m metalearn_cli eval ... eval.finetune_params=generated`: recorded in results.json, and other
    predictions than the plain test on the same tasks."""
    import subprocess
    import sys

    import numpy as np

    _, _, run = trained
    base = [sys.executable, "-m", "metalearn_cli", "eval", f"checkpoint={run}", "eval.episodes=6", "device=cpu"]
    tuned = ["eval.finetune_steps=10", "eval.finetune_params=generated", "eval.finetune_lr=0.5", "eval.finetune_augment=crop"]
    for name, extra in (("plain", []), ("generated", tuned)):
        proc = subprocess.run([*base, *extra, f"hydra.run.dir='{tmp_path / name}'"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "generated" / "results.json").read_text())
    assert (results["finetune_params"], results["finetune_steps"], results["episodes"]) == ("generated", 10, 6)
    predicted = [np.load(tmp_path / n / evaluation.OUTCOMES)["predicted"] for n in ("plain", "generated")]
    assert (predicted[0] != predicted[1]).any()
