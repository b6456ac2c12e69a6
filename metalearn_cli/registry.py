"""Name -> component registries: the only link from a YAML choice to code.

Each component registers itself beside its class with the dataclass of its parameters, e.g.
``@ENCODERS.register("conv4", params=Conv4Params)``. Configs name entries, never import paths,
so saved run configs survive refactors and loading a config never imports code named in a file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from omegaconf import DictConfig, OmegaConf

from metalearn_cli.errors import ConfigError, MetalearnError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered component: its factory and the dataclass of its parameters."""

    name: str
    factory: Callable[..., T]
    params: type


class Registry(Generic[T]):
    """A named family of components (encoders, decoders, strategies, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, params: type) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering ``factory(params, **wiring)`` under ``name``."""
        if not dataclasses.is_dataclass(params) or "name" not in {f.name for f in dataclasses.fields(params)}:
            raise TypeError(f"{self.kind} '{name}': params must be a dataclass with a 'name' field")

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise TypeError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = Entry(name, factory, params)
            return factory

        return decorator

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> Entry[T]:
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} '{name}'; choose one of: {', '.join(self.names())}")
        return self._entries[name]

    def params_of(self, cfg: Any) -> Any:
        """Validate a config node against the entry's dataclass and return a typed instance."""
        if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
            return cfg
        name = cfg["name"] if isinstance(cfg, (dict, DictConfig)) else None
        if name is None:
            raise ConfigError(f"the {self.kind} config has no 'name'; choose one of: {', '.join(self.names())}")
        entry = self.get(str(name))
        try:
            merged = OmegaConf.merge(OmegaConf.structured(entry.params), cfg)
            return OmegaConf.to_object(merged)
        except MetalearnError:  # a component's own check (its __post_init__) already says what and how
            raise
        except Exception as exc:  # omegaconf raises several types; all mean a bad value here
            raise ConfigError(f"invalid {self.kind} '{name}' config: {str(exc).splitlines()[0]}") from exc

    def build(self, cfg: Any, **wiring: Any) -> T:
        """Build the component named by ``cfg.name``, passing derived values as ``wiring``."""
        params = self.params_of(cfg)
        return self.get(params.name).factory(params, **wiring)
