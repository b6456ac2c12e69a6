"""A ``metalearn train`` run's set-up: what it says before it trains."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import compose_config
from metalearn_cli import training

TINY = ["encoder=conv4", "encoder.width=8", "trainer.iterations=1", "trainer.val_every=1", "trainer.val_episodes=2",
        "eval.episodes=2", "trainer.progress=false", "device=cpu", "eval.finetune_steps=1",
        "eval.finetune_lr_search=[0,0.001]", "eval.finetune_search_episodes=1"]
SEEN = "eval.finetune_lr_search picks its rate on validation tasks of characters that also train (the run's dataset.val=trainval)"


def test_the_final_test_s_rate_search_on_trained_classes_is_warned_of_as_eval_warns(tmp_path, caplog):
    """The default data set validates on characters that also train (dataset.val=trainval): a run whose final test
    picks its fine-tuning rate there says so once, before training, as ``metalearn eval`` does; a run that validates on
    held-out alphabets (dataset=omniglot) says nothing."""
    proc = subprocess.run([sys.executable, "-m", "metalearn_cli", "train", *TINY, f"hydra.run.dir={tmp_path / 'seen'}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    said = proc.stdout + proc.stderr
    assert said.count(SEEN) == 1 and said.index(SEEN) < said.index("meta-training step 1"), said
    assert "finetune_search" in json.loads((tmp_path / "seen" / "results.json").read_text())  # the search ran
    caplog.set_level("WARNING")
    training.train(compose_config("train", [*TINY, "dataset=omniglot"]), tmp_path / "held_out")
    assert not [r for r in caplog.records if "finetune_lr_search" in r.getMessage()]


def test_results_name_the_options_picked_beside_the_components_as_the_run_began(tmp_path):
    """The default data set option is dataset=omniglot_fast, whose config (and results.json's ``dataset``) says
    omniglot: ``choices`` tells them apart, and a resume (whose own command line composes the default encoder) keeps
    the run's own."""
    from metalearn_cli.cli import main

    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "metalearn_cli", "train", *TINY[:-3], "trainer.checkpoint_every=1",
                           f"hydra.run.dir={run}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((run / "results.json").read_text())
    assert (results["dataset"], results["encoder"]) == ("omniglot", "conv4")
    picked = {"dataset": "omniglot_fast", "encoder": "conv4", "decoder": "prototype", "strategy": "mgd",
              "episode": "5way1shot", "optimizer": "adam", "pretrain": "none", "logger": "tensorboard"}
    assert results["choices"] == picked
    assert main(["train", f"resume={run}", "trainer.iterations=2"]) == 0  # composed with encoder=conv4_fast
    results = json.loads((run / "results.json").read_text())
    assert results["iterations"] == 2 and results["choices"] == picked
