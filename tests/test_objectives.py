"""objectives.py: what each stage optimises. A step moves the weights through the shared update; the
state an objective saves makes a restored copy draw exactly the batches the original would have."""

from __future__ import annotations

import torch

from conftest import FAST, compose_config
from metalearn_cli.assemble import build_strategy
from metalearn_cli.data import DATASETS
from metalearn_cli.episodes import EpisodeSampler, resident
from metalearn_cli.objectives import EpisodicObjective, SupervisedObjective
from metalearn_cli.optim import ClipParams


def parts(seed: int = 0):
    cfg = compose_config("train", FAST)
    data = DATASETS.build(cfg.dataset)
    torch.manual_seed(seed)
    return cfg, data, build_strategy(cfg, data.image_shape, torch.device("cpu"))


def episodic(seed: int = 0) -> EpisodicObjective:
    cfg, data, strategy = parts(seed)
    sampler = EpisodeSampler(resident(data.train, torch.device("cpu")), 5, 1, 3, seed=11)
    return EpisodicObjective(strategy, sampler, 2, (0, 1), None)


def supervised(seed: int = 0) -> SupervisedObjective:
    cfg, data, strategy = parts(seed)
    return SupervisedObjective(strategy, resident(data.train, torch.device("cpu")).images, 16, 0.0, None, seed=5)


def test_an_episodic_step_updates_the_weights_and_reports_its_loss_and_accuracy():
    objective = episodic()
    before = [p.detach().clone() for p in objective.parameters]
    optimizer = torch.optim.SGD(objective.parameters, lr=0.1)
    values, result = objective.step(optimizer, ClipParams())
    assert result.nonfinite is None and torch.isfinite(values["loss"]) and 0 <= values["accuracy"] <= 1
    assert any(not torch.equal(a, b) for a, b in zip(before, objective.parameters))


def test_the_supervised_head_covers_every_training_class_and_is_trained_with_the_encoder():
    objective = supervised()
    classes = objective.images.shape[0]
    assert objective.head.out_features == classes
    head = objective.head.weight.detach().clone()
    encoder = [p.detach().clone() for p in objective.strategy.model.encoder.parameters()]
    optimizer = torch.optim.SGD(objective.parameters, lr=0.1)
    for _ in range(3):
        values, _ = objective.step(optimizer, ClipParams())
    assert not torch.equal(head, objective.head.weight)
    assert any(not torch.equal(a, b) for a, b in zip(encoder, objective.strategy.model.encoder.parameters()))
    images, labels = objective.batch()
    assert images.shape[0] == 16 and int(labels.max()) < classes and images.dtype == torch.float32


def test_a_restored_objective_draws_the_batches_the_original_would_have():
    for make in (episodic, supervised):
        a = make()
        for _ in range(2):
            a.step(torch.optim.SGD(a.parameters, lr=0.0), ClipParams())
        state = a.state()
        b = make()
        b.load_state(state, path="unused")
        if isinstance(a, SupervisedObjective):
            assert torch.equal(a.head.weight, b.head.weight)
            assert all(torch.equal(x, y) for x, y in zip(a.batch(), b.batch()))
        else:
            x, y = a.sampler.sample(2), b.sampler.sample(2)
            assert torch.equal(x.support_images, y.support_images) and torch.equal(x.query_labels, y.query_labels)
