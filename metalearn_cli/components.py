"""The component groups of a run config and their registries, registered in Hydra's ConfigStore.

Owns the mapping "config group -> registry" (dataset, encoder, decoder, strategy, optimizer) and
:func:`register_configs`, which stores the run-level schemas and every component's parameter
dataclass as ``schema/<group>/<name>``, the base each ``configs/<group>/<name>.yaml`` extends.
"""

from __future__ import annotations

from typing import Any

from hydra.core.config_store import ConfigStore

from metalearn_cli.data import DATASETS
from metalearn_cli.decoders import DECODERS
from metalearn_cli.encoders import ENCODERS
from metalearn_cli.optim import OPTIMIZERS
from metalearn_cli.registry import Registry
from metalearn_cli.schema import SCHEMAS
from metalearn_cli.strategies import STRATEGIES

REGISTRIES: dict[str, Registry[Any]] = {
    "dataset": DATASETS,
    "encoder": ENCODERS,
    "decoder": DECODERS,
    "strategy": STRATEGIES,
    "optimizer": OPTIMIZERS,
}


def register_configs() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        cs.store(name=name, node=node)
    for group, registry in REGISTRIES.items():
        for name in registry.names():
            cs.store(group=f"schema/{group}", name=name, node=registry.get(name).params)
