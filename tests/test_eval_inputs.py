"""eval_inputs.py: what metalearn eval takes from the checkpoint and what from the command line."""

from __future__ import annotations

from omegaconf import OmegaConf

from metalearn_cli.eval_inputs import eval_settings
from metalearn_cli.schema import EvalConfig


def choices(**given) -> dict:
    """The command line's eval.* as the eval config holds them: null unless given."""
    return {**{key: None for key in OmegaConf.structured(EvalConfig)}, **given}


def test_a_fine_tuning_option_without_steps_is_said_to_change_nothing(caplog):
    with caplog.at_level("WARNING"):
        merged = eval_settings(choices(finetune_lr=0.01, finetune_params="generated"), {"episodes": 40})
    assert merged.finetune_steps == 0 and merged.finetune_lr == 0.01
    assert "eval.finetune_lr and eval.finetune_params change nothing: test-time fine-tuning is off" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        eval_settings(choices(finetune_lr=0.01), {"finetune_steps": 5})  # the checkpoint's own steps: it applies
        eval_settings(choices(finetune_steps=0), {})
    assert "change" not in caplog.text
