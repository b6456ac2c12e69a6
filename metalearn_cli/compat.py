"""Files written by earlier versions of metalearn: the one place that knows what was renamed.

Checkpoints and exports keep their config and tensor names; when a refactor renames one, the
mapping lives here, so an old run still evaluates, resumes and exports.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn


def migrate_config(config: dict[str, Any]) -> dict[str, Any]:
    """A saved config in today's layout: ``strategy.clip`` moved to ``optimizer.clip``;
    ``episode.protocol``, ``pretrain``, ``trainer.freeze_encoder`` and the transformer's ``stem`` (files
    before it hold the patch stem) were added on 2026-11-27; ``pretrain.lr`` and ``weight_decay`` moved
    into ``pretrain.optimizer``, ``logger`` was added, and FEAT took its code's recipe, on 2026-12-01; a Conv-4's
    ``width`` is null beside ``widths`` since 2026-12-05. Options added to a data set, the trainer, a strategy,
    pre-training or evaluation since a file was written take their defaults, which keep what the run did then."""
    from metalearn_cli.schema import PretrainConfig

    config = copy.deepcopy(config)
    if "trainer" in config and "pretrain" not in config:  # a training run's config from before the pre-training stage
        config["pretrain"] = {}  # every option its default, enums as their names (_fill_added_options)
        if isinstance(config["trainer"], dict):
            config["trainer"].setdefault("freeze_encoder", False)
    if isinstance(config.get("episode"), dict):  # episode.protocol added on 2026-11-27
        config["episode"].setdefault("protocol", "random")
    decoder = config.get("decoder")
    if isinstance(decoder, dict) and decoder.get("name") == "feat" and "attention_dropout" not in decoder:
        # FEAT's code's recipe since 2026-12-01; before it, one dropout for both places, no contrastive term, one rate
        decoder.update(attention_dropout=decoder.get("dropout", 0.5), balance=0.0, temperature2=16.0, lr_mul=1.0)
    if isinstance(decoder, dict) and decoder.get("name") == "latent" and "code_std" not in decoder:
        decoder["code_std"] = "logvar"  # LEO's code noise since 2026-12-01 (the KL a mean, dropout in every loss: docs)
    encoder = config.get("encoder")
    if isinstance(encoder, dict) and encoder.get("name") == "transformer":  # the conv stem became the default on 2026-11-27
        encoder.setdefault("stem", "patch")
    if isinstance(encoder, dict) and encoder.get("name") == "conv4" and encoder.get("widths"):
        encoder["width"] = None  # unused beside widths, and refused there since 2026-12-05
    pretrain = config.get("pretrain")
    if isinstance(pretrain, dict) and "optimizer" not in pretrain:  # an optimizer node since 2026-12-01
        node = copy.deepcopy(PretrainConfig().optimizer)
        node.update({k: pretrain.pop(k) for k in ("lr", "weight_decay") if k in pretrain})
        pretrain["optimizer"] = node
    _fill_added_options(config)
    if "trainer" in config:  # the logger group since 2026-12-01 (TensorBoard, as before)
        config.setdefault("logger", {"name": "tensorboard"})
    strategy, optimizer = config.get("strategy"), config.get("optimizer")
    if isinstance(strategy, dict) and "clip" in strategy:
        clip = strategy.pop("clip")
        if isinstance(optimizer, dict):
            optimizer.setdefault("clip", clip)
    return config


def _fill_added_options(config: dict[str, Any]) -> None:
    """Options added to a node since a file was written take their defaults, which keep what the run did then."""
    from metalearn_cli.params import PARAMS
    from metalearn_cli.params.optimizers import ScheduleParams
    from metalearn_cli.schema import EvalConfig, PretrainConfig, TrainerConfig

    dataset = config.get("dataset")
    if isinstance(dataset, dict) and dataset.get("name") in PARAMS["dataset"]:  # a data set's options added since: their defaults
        _fill(dataset, PARAMS["dataset"][dataset["name"]])
    if isinstance(config.get("trainer"), dict):  # trainer options added since (within_alphabet, augment, ...): their defaults
        _fill(config["trainer"], TrainerConfig)
    for node in (config.get("optimizer"), (config.get("pretrain") or {}).get("optimizer")):  # schedule.milestones since 2026-12-01
        if isinstance(node, dict) and isinstance(node.get("schedule"), dict):
            _fill(node["schedule"], ScheduleParams)
    if isinstance(config.get("eval"), dict):  # eval options added since (tta_shift, ...): their defaults
        _fill(config["eval"], EvalConfig)
    if isinstance(config.get("pretrain"), dict):  # pretrain options added since (epochs): their defaults
        _fill(config["pretrain"], PretrainConfig)
    strategy = config.get("strategy")
    if isinstance(strategy, dict) and strategy.get("name") in PARAMS["strategy"]:  # adapt_norm, inner_loss since 2026-12-07
        _fill(strategy, PARAMS["strategy"][strategy["name"]])


def refuse_changed_recipe(saved: dict[str, Any], path: Any) -> None:
    """A run whose method changed since it was written loads and evaluates as it ran, but cannot be
    continued: its objective would change mid-run. LEO took its code's recipe on 2026-12-01 (the KL a
    mean, dropout in every loss, a latent rate per code dimension)."""
    from metalearn_cli.errors import CheckpointError

    decoder = saved.get("decoder")
    if isinstance(decoder, dict) and decoder.get("name") == "latent" and "code_std" not in decoder:
        raise CheckpointError(f"{path} was trained with the latent decoder as it was before 2026-12-01 (LEO's recipe changed "
                              "since); it evaluates and predicts as before, but cannot be resumed: start a new run, "
                              f"trainer.init_from={path} starts it from these weights")


def _fill(node: dict[str, Any], schema: type) -> None:
    """``node``'s missing keys from ``schema``'s defaults (enums as their names, as saved configs hold them)."""
    from omegaconf import OmegaConf

    for key, value in OmegaConf.to_container(OmegaConf.structured(schema), enum_to_str=True).items():
        node.setdefault(key, value)


def rename_on_load(module: nn.Module, renamed: dict[str, str]) -> None:
    """Load state dicts whose keys under ``module`` still use old sub-module names (``{old.: new.}``)."""
    def hook(state: dict[str, Any], prefix: str, *_: Any) -> None:
        for key in [k for k in state if k.startswith(prefix)]:
            for old, new in renamed.items():
                if key[len(prefix):].startswith(old):
                    state[prefix + new + key[len(prefix) + len(old):]] = state.pop(key)

    module._register_load_state_dict_pre_hook(hook)
