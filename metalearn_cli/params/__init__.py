"""Every component's parameter dataclass, by config group and name, without importing torch.

The components (data sets, encoders, decoders, strategies, optimizers, metrics loggers) register
their code with these classes in their registries; Hydra's ConfigStore, ``--help`` and shell
completion read them from here, so composing a config never loads a model. A new component's
parameters are found by being defined in its group's module (a dataclass with a ``name`` field);
``tests/test_registry.py`` checks that each registry and this table name the same classes.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType

from metalearn_cli.params import datasets, decoders, encoders, loggers, optimizers, strategies


def _defined_in(module: ModuleType) -> dict[str, type]:
    """``{name default: dataclass}`` for each dataclass defined in ``module`` with a ``name`` field."""
    found = {}
    for value in vars(module).values():
        if isinstance(value, type) and dataclasses.is_dataclass(value) and value.__module__ == module.__name__:
            name = next((f.default for f in dataclasses.fields(value) if f.name == "name"), None)
            if isinstance(name, str):
                found[name] = value
    return found


PARAMS: dict[str, dict[str, type]] = {
    "dataset": _defined_in(datasets),
    "encoder": _defined_in(encoders),
    "decoder": _defined_in(decoders),
    "strategy": _defined_in(strategies),
    "optimizer": _defined_in(optimizers),
    "logger": _defined_in(loggers),
}
