"""Batch-norm modes of evaluation: the one table of modes and their properties (torch-free: the
config schema's ``eval.bn_mode`` choices come from it).

Owns: each mode's name, which statistics normalise, how a task's images pass through the encoder,
whether it is inductive, whether one batch's statistics would mix tasks, what a strategy must have
stored for it, and resolving ``eval.bn_mode`` (``auto`` is the strategy's own protocol) against a
strategy. The statistics themselves are computed by the batch-norm layer
(:mod:`metalearn_cli.encoders.norm`, with :func:`~metalearn_cli.encoders.norm.batch_norm_mode`). A
new mode is a row here and its statistics there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from metalearn_cli.errors import ConfigError


@dataclass(frozen=True)
class BatchNormMode:
    mode: str
    statistics: str  # what normalises: "running" (stored in training), "batch", "support" (each task's support set), "per_step" (stored per inner step)
    embed: str  # how a task passes through the encoder (MetaModel.statistics): "joint" (support + query), "separate", "support"
    inductive: bool  # a query never affects another query's prediction
    mixes_tasks: bool  # a batch of several tasks would share statistics: evaluate one task at a time
    needs: Optional[str]  # what the strategy must have stored ("running", "per_step"); None: nothing
    about: str  # one line for the docs and errors


MODES: dict[str, BatchNormMode] = {m.mode: m for m in (
    BatchNormMode("running", "running", "joint", True, False, "running",
                  "the running statistics stored by meta-training"),
    BatchNormMode("support", "support", "support", True, False, None,
                  "each task's support-set statistics normalise its support and query images"),
    BatchNormMode("per_step", "per_step", "joint", True, False, "per_step",
                  "the MAML family's stored statistics of each inner step (MAML++'s BNRS, strategy.per_step_bn)"),
    BatchNormMode("transductive", "batch", "separate", False, True, None,
                  "each task's own batch statistics: the support set alone, then the query set alone (Finn et al.'s MAML code)"),
    BatchNormMode("transductive_joint", "batch", "joint", False, True, None,
                  "each task's support and query images in one batch (Snell et al.'s training pass)"),
)}
AUTO = "auto"  # the strategy's own protocol


def available(auto: str, stored: tuple[str, ...]) -> tuple[str, ...]:
    """The modes a strategy can honour, its ``auto`` first: those needing nothing stored, or what it stores."""
    fits = [m for m, spec in MODES.items() if spec.needs is None or spec.needs in stored]
    return (auto, *[m for m in fits if m != auto])


def resolve(bn_mode: Any, modes: tuple[str, ...], why_not: str = "") -> str:
    """``eval.bn_mode`` (an enum member or a name) -> a mode of ``modes`` (``auto``: the first); a
    mode the strategy cannot honour is a config error (``why_not``: what the strategy lacks for it)."""
    name = getattr(bn_mode, "value", str(bn_mode))
    if name == AUTO:
        return modes[0]
    if name not in modes:
        raise ConfigError(f"eval.bn_mode={name} is not possible with this strategy{why_not}; use {' or '.join(modes)} (or auto)")
    return name
