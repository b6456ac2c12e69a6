"""The component groups of a run config and their registries: "config group -> registry" (dataset,
encoder, decoder, strategy, optimizer, logger). Importing it imports every component, torch included; the
torch-free table of their parameters is :data:`metalearn_cli.params.PARAMS` (what Hydra composes).
"""

from __future__ import annotations

from typing import Any

from metalearn_cli.data import DATASETS
from metalearn_cli.decoders import DECODERS
from metalearn_cli.encoders import ENCODERS
from metalearn_cli.loggers import LOGGERS
from metalearn_cli.optim import OPTIMIZERS
from metalearn_cli.registry import Registry
from metalearn_cli.strategies import STRATEGIES

REGISTRIES: dict[str, Registry[Any]] = {
    "dataset": DATASETS,
    "encoder": ENCODERS,
    "decoder": DECODERS,
    "strategy": STRATEGIES,
    "optimizer": OPTIMIZERS,
    "logger": LOGGERS,
}

