"""bn_modes.py: the one table of batch-norm modes. Each row's properties are checked against what the
model does in that mode, so a row that says "inductive" or "one task at a time is not needed" and is
wrong fails here; which modes a strategy offers follows from what it stores."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from metalearn_cli.bn_modes import AUTO, MODES, available, resolve
from metalearn_cli.data import DATASETS
from metalearn_cli.encoders.norm import batch_norm_mode
from metalearn_cli.episodes import EpisodeSampler
from metalearn_cli.errors import ConfigError
from metalearn_cli.model import build_meta_model
from metalearn_cli.schema import BNMode
from metalearn_cli.strategies import STRATEGIES


def built(mode: str):
    """A strategy that offers ``mode`` (the MAML family with per-step statistics for per_step), in
    fp64, with non-trivial running statistics, and a batch of 3 tasks."""
    torch.manual_seed(0)
    data = DATASETS.build({"name": "synthetic", "train_classes": 10, "images_per_class": 6, "image_size": 16})
    maml = MODES[mode].needs == "per_step"
    cfg = OmegaConf.create({"encoder": {"name": "conv4", "width": 4}, "decoder": {"name": "linear" if maml else "prototype"},
                            "episode": {"way": 3, "shot": 1, "query": 2}})
    model = build_meta_model(cfg, data.image_shape).double()
    params = {"name": "maml", "vectorize": "loop", "inner_steps": 2, "per_step_bn": True} if maml else {"name": "mgd"}
    strategy = STRATEGIES.build(params, model=model)
    sampler = EpisodeSampler(data.train, 3, 1, 2, seed=0)
    batch = sampler.sample(3)
    batch = type(batch)(batch.support_images.double(), batch.support_labels, batch.query_images.double(),
                        batch.query_labels, 3, 1, 2)
    with torch.no_grad():  # running statistics that are not the identity, so "running" is not "no normalisation"
        strategy.model(batch.support_images, batch.support_labels, batch.query_images, 3)
    strategy.eval()
    return strategy, batch


def test_the_schema_offers_auto_and_every_mode_of_the_table():
    assert [m.value for m in BNMode] == [AUTO, *MODES]


@pytest.mark.parametrize("mode", sorted(MODES))
def test_a_mode_is_inductive_exactly_when_its_row_says_so(mode):
    strategy, batch = built(mode)
    changed = batch.query_images.clone()
    changed[:, 0] = torch.rand_like(changed[:, 0])
    other = type(batch)(batch.support_images, batch.support_labels, changed, batch.query_labels, 3, 1, 2)
    with batch_norm_mode(strategy.model, mode):
        a, b = strategy.predict(batch).logits, strategy.predict(other).logits
    assert not torch.allclose(a[:, 0], b[:, 0])
    assert torch.allclose(a[:, 1:], b[:, 1:]) == MODES[mode].inductive


@pytest.mark.parametrize("mode", sorted(MODES))
def test_tasks_share_statistics_in_one_batch_exactly_when_the_row_says_they_mix(mode):
    strategy, batch = built(mode)  # per_step: MAML, which also keeps tasks apart itself
    with batch_norm_mode(strategy.model, mode):
        together = strategy.predict(batch).logits
        alone = torch.cat([strategy.predict(type(batch)(batch.support_images[t:t + 1], batch.support_labels[t:t + 1],
                                                        batch.query_images[t:t + 1], batch.query_labels[t:t + 1], 3, 1, 2)).logits
                           for t in range(3)])
    assert (not torch.allclose(together, alone)) == MODES[mode].mixes_tasks


@pytest.mark.parametrize("mode", sorted(MODES))
def test_evaluating_in_a_mode_leaves_the_model_as_it_was(mode):
    strategy, batch = built(mode)
    before = {k: v.clone() for k, v in strategy.state_dict().items()}
    strategy.train()
    with batch_norm_mode(strategy.model, mode):
        strategy.predict(batch)
    assert strategy.training and strategy.model.training
    assert all(torch.equal(v, strategy.state_dict()[k]) for k, v in before.items())


def test_which_modes_a_strategy_offers_follows_from_what_it_stores():
    assert available("running", ("running",)) == ("running", "support", "transductive", "transductive_joint")
    assert available("transductive", ()) == ("transductive", "support", "transductive_joint")
    assert "per_step" in available("transductive", ("per_step",)) and "running" not in available("transductive", ("per_step",))
    maml, _ = built("per_step")
    assert maml.bn_modes[0] == "transductive" and "per_step" in maml.bn_modes  # MAML++'s own: batch statistics
    mgd, _ = built("running")
    assert mgd.bn_modes[0] == "running" and "per_step" not in mgd.bn_modes


def test_resolving_a_mode():
    modes = available("running", ("running",))
    assert resolve("auto", modes) == "running" and resolve(BNMode.auto, modes) == "running"
    assert resolve(BNMode.support, modes) == "support"
    with pytest.raises(ConfigError, match="eval.bn_mode=per_step is not possible with this strategy; use running or"):
        resolve("per_step", modes)
    from types import SimpleNamespace

    from metalearn_cli.assemble import resolve_bn_mode

    # a MAML run trained without MAML++'s per-step statistics: that is what it lacks, not the strategy
    without = SimpleNamespace(bn_modes=available("transductive", ()), params_=SimpleNamespace(per_step_bn=False))
    with pytest.raises(ConfigError, match="as trained: it needs a run trained with strategy.per_step_bn=true"):
        resolve_bn_mode("per_step", without)
