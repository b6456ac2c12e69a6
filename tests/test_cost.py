"""Estimates of what a run costs: debug=smoke stays seconds-long for every encoder x strategy."""

from __future__ import annotations

import pytest

from metalearn_cli.cost import estimated_flops, profile
from metalearn_cli.data import image_format
from metalearn_cli.params import PARAMS
from conftest import compose_config

SMOKE_BOUND = 150e9  # encoder FLOPs of a whole smoke run; ~10 s of 2-core CPU work at ~15 GFLOP/s


def smoke(*overrides: str):
    cfg = compose_config("train", ["debug=smoke", *overrides])
    return cfg, image_format(cfg.dataset).shape


@pytest.mark.parametrize("encoder", sorted(PARAMS["encoder"]))
@pytest.mark.parametrize("strategy", sorted(PARAMS["strategy"]))
def test_smoke_is_small_for_every_encoder_and_strategy(encoder, strategy):
    decoder = "prototype" if strategy == "mgd" else "linear"
    cfg, shape = smoke(f"encoder={encoder}", f"strategy={strategy}", f"decoder={decoder}")
    flops = estimated_flops(cfg, shape)
    assert flops is not None and 1e8 < flops < SMOKE_BOUND, f"{flops / 1e9:.0f} GFLOP"


def test_the_bound_would_catch_a_full_size_encoder_under_smoke():
    """ResNet-12 at its full widths under debug=smoke took 10 minutes; the estimate says so."""
    cfg, shape = smoke("encoder=resnet12", "strategy=maml", "decoder=linear", "encoder.channels=[64,160,320,640]")
    assert estimated_flops(cfg, shape) > 10 * SMOKE_BOUND


def test_the_estimate_grows_with_what_the_run_does():
    cfg, shape = smoke()
    base = estimated_flops(cfg, shape)
    longer, _ = smoke("trainer.iterations=40")
    pretrained, _ = smoke("pretrain=supervised", "pretrain.iterations=10")
    assert estimated_flops(longer, shape) > base and estimated_flops(pretrained, shape) > base
    episodic, _ = smoke("pretrain=episodic", "pretrain.iterations=10")
    wider, _ = smoke("pretrain=episodic", "pretrain.iterations=10", "pretrain.train_way=40")
    assert base < estimated_flops(episodic, shape) < estimated_flops(wider, shape)  # the stage's tasks, not batch_size
    second, _ = smoke("strategy=maml", "decoder=linear")
    first, _ = smoke("strategy=fomaml", "decoder=linear")
    assert estimated_flops(second, shape) > estimated_flops(first, shape)  # second order keeps twice the graph


def test_profile_counts_the_encoder_and_its_parameters():
    cfg, shape = smoke("encoder.width=16")
    small = profile(cfg, shape)
    cfg, shape = smoke("encoder.width=32")
    large = profile(cfg, shape)
    assert small and large and large.flops > 2 * small.flops and large.params > 2 * small.params
