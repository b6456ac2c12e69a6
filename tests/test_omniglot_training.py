"""Slow: real Omniglot training reaches a meaningful accuracy (run with `pytest -m slow`)."""

import json

import pytest

from metalearn_cli import training


@pytest.mark.slow
def test_short_protonet_run_on_embedded_omniglot(compose_train, run_dir):
    cfg = compose_train("trainer.iterations=300", "trainer.val_every=300", "trainer.checkpoint_every=300",
                        "trainer.log_every=50", "trainer.progress=false", "eval.episodes=200", fast=False)
    training.train(cfg, run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["dataset"] == "omniglot" and results["episodes"] == 200
    assert results["accuracy"] > 0.95  # 5-way 1-shot; chance is 0.20
