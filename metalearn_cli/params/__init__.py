"""Every component's parameter dataclass, by config group and name, without importing torch.

The components (data sets, encoders, decoders, strategies, optimizers, metrics loggers) register their code with
these classes in their registries; Hydra's ConfigStore, ``--help`` and shell completion read them
from here, so composing a config never loads a model. ``tests/test_registry.py`` checks that each
registry and this table name the same classes.
"""

from __future__ import annotations

import dataclasses

from metalearn_cli.params import datasets, decoders, encoders, loggers, optimizers, strategies


def _by_name(*classes: type) -> dict[str, type]:
    return {next(f.default for f in dataclasses.fields(c) if f.name == "name"): c for c in classes}


PARAMS: dict[str, dict[str, type]] = {
    "dataset": _by_name(datasets.CifarFSParams, datasets.FolderParams, datasets.MiniImageNetParams,
                        datasets.OmniglotParams, datasets.SyntheticParams),
    "encoder": _by_name(encoders.Conv4Params, encoders.ResNet12Params, encoders.RNNParams, encoders.TransformerParams),
    "decoder": _by_name(decoders.FEATParams, decoders.FiLMParams, decoders.LatentParams, decoders.LinearParams,
                        decoders.LogisticParams, decoders.PrototypeParams),
    "strategy": _by_name(strategies.MAMLParams, strategies.FOMAMLParams, strategies.ANILParams,
                         strategies.MetaSGDParams, strategies.MGDParams),
    "optimizer": _by_name(optimizers.AdamParams, optimizers.SGDParams),
    "logger": _by_name(loggers.TensorBoardParams, loggers.CSVParams, loggers.MLflowParams),
}
