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


def test_episodic_augmentation_reaches_every_support_and_query_image():
    """The strategy's meta-loss sees the augmented support and query images, never the raw ones."""
    objective = episodic()
    seen = []
    objective.augment = lambda images: 1.0 - images  # a visible transform: every pixel inverted
    raw = objective.sampler.get_state()
    meta_loss = objective.strategy.meta_loss
    objective.strategy.meta_loss = lambda batch: seen.append(batch) or meta_loss(batch)
    objective.step(torch.optim.SGD(objective.parameters, lr=0.0), ClipParams())
    objective.sampler.set_state(raw)
    plain = objective.sampler.sample(objective.per_step, part=objective.part)
    (batch,) = seen
    torch.testing.assert_close(batch.support_images, 1.0 - plain.support_images)
    torch.testing.assert_close(batch.query_images, 1.0 - plain.query_images)
    torch.testing.assert_close(batch.query_labels, plain.query_labels)


def test_train_step_measures_the_parameters_given_or_else_all_and_counts_applied_steps_only():
    """The list given is what the meta-gradient norm (and clipping) covers; without one, every parameter."""
    from metalearn_cli.objectives import train_step

    objective = episodic()
    strategy, batch = objective.strategy, objective.sampler.sample(2)
    chosen = [p for n, p in strategy.named_parameters() if n.endswith("net.0.weight")]
    optimizer = torch.optim.SGD(list(strategy.parameters()), lr=0.0)
    counted = []
    strategy.step_done = lambda: counted.append(1)
    _, result = train_step(strategy, batch, optimizer, ClipParams(norm=None), chosen)
    assert len(chosen) == 1 and result.grad_norm.item() == torch.linalg.vector_norm(chosen[0].grad).item()
    _, result = train_step(strategy, batch, optimizer, ClipParams(norm=None))  # unclipped: .grad is what was measured
    every = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in strategy.parameters()]))
    assert result.grad_norm.item() == every.item() > torch.linalg.vector_norm(chosen[0].grad).item()
    assert counted == [1, 1]
    meta_loss = strategy.meta_loss

    def poisoned(b):
        out = meta_loss(b)
        return out._replace(loss=out.loss * float("nan"))

    strategy.meta_loss = poisoned
    optimizer = torch.optim.SGD(list(strategy.parameters()), lr=0.1)
    weights = [p.detach().clone() for p in strategy.parameters()]
    _, result = train_step(strategy, batch, optimizer, ClipParams())
    assert result.nonfinite == "loss" and counted == [1, 1]  # not applied, not counted
    assert all(torch.equal(a, b) for a, b in zip(weights, strategy.parameters()))


def test_the_supervised_accuracy_is_the_share_of_its_batch_predicted_right():
    objective = supervised()
    state = objective.generator.get_state()
    values, _ = objective.step(torch.optim.SGD(objective.parameters, lr=0.0), ClipParams())
    objective.generator.set_state(state)
    images, labels = objective.batch()
    with torch.no_grad():
        expected = (objective.head(objective.strategy.model.embed(images)).argmax(-1) == labels).float().mean()
    assert values["accuracy"].item() == expected.item()


def test_feats_decoder_trains_at_its_rate_multiple_and_everything_else_at_the_rate():
    """FEAT's optimizer: the attention (the decoder) at lr_mul x the rate, each parameter in exactly one group."""
    cfg = compose_config("train", [*FAST, "decoder=feat"])
    data = DATASETS.build(cfg.dataset)
    strategy = build_strategy(cfg, data.image_shape, torch.device("cpu"))
    objective = EpisodicObjective(strategy, EpisodeSampler(resident(data.train, torch.device("cpu")), 5, 1, 3, seed=11),
                                  2, (0, 1), None)
    plain, fast = objective.param_groups
    decoder = {id(p) for p in strategy.model.decoder.parameters()}
    assert "lr_scale" not in plain and fast["lr_scale"] == strategy.model.decoder.lr_mul == 10
    assert decoder and {id(p) for p in fast["params"]} == decoder and not decoder & {id(p) for p in plain["params"]}
    assert len(plain["params"]) + len(fast["params"]) == len(objective.parameters)
    proto = episodic()  # lr_mul 1: one plain list, no groups
    assert proto.param_groups is proto.parameters
