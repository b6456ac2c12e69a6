"""MGD: the meta-gradient reaches the encoder, clipping bounds it, the pre-clip norm is reported."""

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from conftest import FAST, compose_config
from metalearn_cli.assemble import build_strategy
from metalearn_cli.data import DATASETS
from metalearn_cli.episodes import EpisodeSampler
from metalearn_cli.objectives import train_step
from metalearn_cli.model import build_meta_model
from metalearn_cli.optim import ClipParams
from metalearn_cli.strategies import STRATEGIES


def setup(decoder="prototype", **params):
    torch.manual_seed(0)
    data = DATASETS.build({"name": "synthetic", "train_classes": 10, "images_per_class": 6})
    cfg = OmegaConf.create({"encoder": {"name": "conv4", "width": 8}, "decoder": {"name": decoder, **params},
                            "episode": {"way": 5, "shot": 1, "query": 3}})
    model = build_meta_model(cfg, data.image_shape)
    strategy = STRATEGIES.build({"name": "mgd"}, model=model)
    batch = EpisodeSampler(data.train, 5, 1, 3, seed=0).sample(2)
    return strategy, batch


def test_meta_step_updates_every_encoder_parameter_and_reports_the_gradient_norm():
    strategy, batch = setup()
    before = [p.detach().clone() for p in strategy.model.encoder.parameters()]
    opt = torch.optim.SGD(strategy.parameters(), lr=0.1)
    out, result = train_step(strategy, batch, opt, ClipParams(norm=None))
    assert result.grad_norm > 0 and result.skipped == 0 and result.nonfinite is None
    assert out.logits.shape == (2, 15, 5) and not out.logits.requires_grad
    assert all(not torch.equal(b, p) for b, p in zip(before, strategy.model.encoder.parameters()))


def test_norm_clipping_bounds_the_step_and_keeps_the_preclip_norm():
    strategy, batch = setup()
    opt = torch.optim.SGD(strategy.parameters(), lr=1.0)
    before = torch.cat([p.detach().flatten().clone() for p in strategy.parameters()])
    _, result = train_step(strategy, batch, opt, ClipParams(norm=1e-3))
    after = torch.cat([p.detach().flatten() for p in strategy.parameters()])
    assert (after - before).norm() <= 1e-3 * 1.001
    assert result.grad_norm > 1e-3  # the recorded norm is the one before clipping


def test_the_meta_loss_is_the_query_loss_plus_the_decoders_regulariser():
    strategy, batch = setup("latent")
    torch.manual_seed(3)
    loss = strategy.meta_loss(batch).loss
    torch.manual_seed(3)
    out = strategy.model.episode_output(batch)
    task = F.cross_entropy(out.logits.flatten(0, 1), batch.query_labels.flatten())
    torch.testing.assert_close(loss, task + out.regularizer)
    # The regulariser is the decoder's weighted penalties: doubling every weight doubles it.
    doubled, _ = setup("latent", kl_weight=2e-3, orthogonality=2e-3, encoder_penalty=2e-9)
    torch.manual_seed(3)
    torch.testing.assert_close(doubled.model.episode_output(batch).regularizer, 2 * out.regularizer)


def test_training_lowers_the_query_loss():
    strategy, _ = setup()
    data = DATASETS.build({"name": "synthetic", "train_classes": 10, "images_per_class": 6})
    sampler = EpisodeSampler(data.train, 5, 1, 3, seed=1)
    opt = torch.optim.Adam(strategy.parameters(), lr=3e-3)
    losses = [train_step(strategy, sampler.sample(4), opt, ClipParams())[0].loss.item() for _ in range(25)]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5


def test_the_meta_loss_adds_a_decoders_labelled_loss_and_prediction_never_sees_query_labels(monkeypatch):
    """FEAT's contrastive term enters through the meta-loss in training, never through predict nor a
    meta-loss in evaluation mode (test-time fine-tuning's)."""
    from metalearn_cli.decoders.feat import FEATDecoder

    cfg = compose_config("train", [*FAST, "decoder=feat", "decoder.dropout=0", "decoder.attention_dropout=0"])
    data = DATASETS.build(cfg.dataset)
    strategy = build_strategy(cfg, data.image_shape, torch.device("cpu"))
    batch = EpisodeSampler(data.train, 5, 1, 3, seed=0).sample(2)
    seen = []
    real = FEATDecoder.labelled_loss

    def spy(self, *args):
        seen.append(args[3])
        return real(self, *args)

    monkeypatch.setattr(FEATDecoder, "labelled_loss", spy)
    strategy.train()  # no dropout: the two losses differ by the term alone
    with_term = strategy.meta_loss(batch).loss
    assert len(seen) == 1 and torch.equal(seen[0], batch.query_labels)
    strategy.model.decoder.p.balance = 0.0
    without = strategy.meta_loss(batch).loss
    assert with_term > without
    strategy.eval()
    strategy.meta_loss(batch)
    strategy.predict(batch)
    assert len(seen) == 2  # only the two meta-losses asked for it


def test_feats_decoder_learns_at_ten_times_the_rate_of_the_encoder():
    from metalearn_cli.objectives import EpisodicObjective
    from metalearn_cli.optim import OPTIMIZERS

    cfg = compose_config("train", [*FAST, "decoder=feat", "optimizer.lr=0.001"])
    data = DATASETS.build(cfg.dataset)
    strategy = build_strategy(cfg, data.image_shape, torch.device("cpu"))
    objective = EpisodicObjective(strategy, EpisodeSampler(data.train, 5, 1, 3, seed=0), 2, (0, 1), None)
    optimizer = OPTIMIZERS.build(cfg.optimizer, parameters=objective.param_groups)
    lrs = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert all(lrs[id(p)] == pytest.approx(0.01) for p in strategy.model.decoder.parameters())
    assert all(lrs[id(p)] == 0.001 for p in strategy.model.encoder.parameters())
    assert len(lrs) == len(objective.parameters)
    plain = build_strategy(compose_config("train", FAST), data.image_shape, torch.device("cpu"))
    assert EpisodicObjective(plain, objective.sampler, 2, (0, 1), None).param_groups == [p for p in plain.parameters()]
