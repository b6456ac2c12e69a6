"""MGD: the meta-gradient reaches the encoder, clipping bounds it, the pre-clip norm is reported."""

import pytest
import torch

from metalearn_cli.episodes import EpisodeSampler
from metalearn_cli.data import DATASETS
from metalearn_cli.errors import ConfigError
from metalearn_cli.model import build_meta_model
from metalearn_cli.strategies import STRATEGIES, ClipParams, NonFiniteError, clip_and_step
from omegaconf import OmegaConf


def setup(clip):
    torch.manual_seed(0)
    data = DATASETS.build({"name": "synthetic", "train_classes": 10, "images_per_class": 6})
    cfg = OmegaConf.create({"encoder": {"name": "conv4", "width": 8}, "decoder": {"name": "prototype"}})
    model = build_meta_model(cfg, data.image_shape)
    strategy = STRATEGIES.build({"name": "mgd", "clip": clip}, model=model)
    batch = EpisodeSampler(data.train, 5, 1, 3, seed=0).sample(2)
    return strategy, batch


def test_meta_step_updates_every_encoder_parameter_and_reports_metrics():
    strategy, batch = setup({"norm": None, "value": None})
    before = [p.detach().clone() for p in strategy.model.encoder.parameters()]
    opt = torch.optim.SGD(strategy.parameters(), lr=0.1)
    out = strategy.meta_train_step(batch, opt)
    assert set(out) == {"loss", "accuracy", "grad_norm", "skipped"} and out["grad_norm"] > 0 and out["skipped"] == 0
    assert all(not torch.equal(b, p) for b, p in zip(before, strategy.model.encoder.parameters()))


def test_norm_clipping_bounds_the_step_and_keeps_the_preclip_norm():
    strategy, batch = setup({"norm": 1e-3, "value": None})
    opt = torch.optim.SGD(strategy.parameters(), lr=1.0)
    before = torch.cat([p.detach().flatten().clone() for p in strategy.parameters()])
    out = strategy.meta_train_step(batch, opt)
    after = torch.cat([p.detach().flatten() for p in strategy.parameters()])
    assert (after - before).norm() <= 1e-3 * 1.001
    assert out["grad_norm"] > 1e-3  # the recorded norm is the one before clipping


def test_value_clipping_bounds_each_component():
    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.tensor([5.0, -3.0, 0.1, 0.0])
    opt = torch.optim.SGD([p], lr=1.0)
    norm, skipped = clip_and_step([p], opt, ClipParams(norm=None, value=0.5), torch.tensor(1.0))
    assert torch.allclose(p.detach(), torch.tensor([-0.5, 0.5, -0.1, 0.0]))
    assert norm == pytest.approx(float(torch.tensor([5.0, -3.0, 0.1]).norm())) and skipped == 0


def test_nonpositive_clip_is_a_config_error():
    p = torch.nn.Parameter(torch.zeros(1))
    p.grad = torch.ones(1)
    with pytest.raises(ConfigError, match="clip"):
        clip_and_step([p], torch.optim.SGD([p], lr=1.0), ClipParams(norm=0.0), torch.tensor(1.0))


def test_training_lowers_the_query_loss():
    strategy, _ = setup({"norm": 10.0, "value": None})
    data = DATASETS.build({"name": "synthetic", "train_classes": 10, "images_per_class": 6})
    sampler = EpisodeSampler(data.train, 5, 1, 3, seed=1)
    opt = torch.optim.Adam(strategy.parameters(), lr=3e-3)
    losses = [strategy.meta_train_step(sampler.sample(4), opt)["loss"].item() for _ in range(25)]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5


@pytest.mark.parametrize("loss,grad,quantity", [(float("nan"), 1.0, "loss"), (1.0, float("inf"), "meta-gradient")])
def test_non_finite_values_never_reach_the_weights(loss, grad, quantity):
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([grad, 0.0])
    with pytest.raises(NonFiniteError) as info:
        clip_and_step([p], torch.optim.SGD([p], lr=1.0), ClipParams(), torch.tensor(loss))
    assert info.value.quantity == quantity and torch.equal(p.detach(), torch.zeros(2))


@pytest.mark.parametrize("make", [
    lambda ps: torch.optim.Adam(ps, lr=0.1, fused=True),
    lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, fused=True),
], ids=["adam", "sgd"])
def test_a_fused_optimizer_skips_a_non_finite_step_on_the_device(make):
    """The CUDA path (fused optimizers, no host sync): a flagged step changes neither the weights nor
    the optimizer's moments or step count, and the next finite step proceeds as if it never happened."""
    def run(steps):
        p = torch.nn.Parameter(torch.ones(3))
        opt = make([p])
        flags = []
        for g, loss in steps:
            p.grad = torch.tensor(g)
            flags.append(float(clip_and_step([p], opt, ClipParams(), torch.tensor(loss))[1]))
        return p.detach(), opt.state_dict()["state"], flags

    good = [([1.0, -2.0, 0.5], 1.0), ([0.3, 0.1, -1.0], 0.9)]
    bad = [([float("nan"), 1.0, 1.0], 1.0), ([1.0, 1.0, 1.0], float("inf"))]
    clean_p, clean_state, _ = run(good)
    p, state, flags = run([good[0], *bad, good[1]])
    assert flags == [0.0, 1.0, 1.0, 0.0]
    assert torch.equal(p, clean_p)
    for k, v in clean_state[0].items():
        assert torch.equal(torch.as_tensor(state[0][k]), torch.as_tensor(v)), k


def test_a_skipped_step_reads_zero_and_says_so():
    from metalearn_cli.strategies import step_record

    out = step_record(torch.tensor(1.0), loss=torch.tensor(float("nan")), grad_norm=torch.tensor(float("inf")))
    assert out["loss"] == 0 and out["grad_norm"] == 0 and out["skipped"] == 1
    out = step_record(torch.tensor(0.0), loss=torch.tensor(2.5))
    assert out["loss"] == 2.5 and out["skipped"] == 0
