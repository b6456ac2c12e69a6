"""Meta-strategies: how the meta-network is trained across tasks and adapted to a new one.

One registry entry per named method (``mgd``, ``maml``, ``fomaml``, ``anil``, ``metasgd``), each
with its own parameter dataclass and defaults; the protocol is :mod:`metalearn_cli.strategies.base`.
"""

from __future__ import annotations

from metalearn_cli.registry import Registry
from metalearn_cli.strategies.base import Prediction, StepOutput, Strategy, query_accuracy

STRATEGIES: Registry[Strategy] = Registry("strategy")

from metalearn_cli.strategies import maml, mgd  # noqa: E402,F401  (registers the strategies)

__all__ = ["STRATEGIES", "Prediction", "StepOutput", "Strategy", "query_accuracy"]
