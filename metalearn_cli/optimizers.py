"""Outer-loop (meta) optimizers and their learning-rate schedules, chosen by ``optimizer=...``."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Iterable

import torch

from metalearn_cli.errors import ConfigError
from metalearn_cli.registry import Registry


class Schedule(enum.Enum):
    constant = "constant"
    cosine = "cosine"  # cosine decay to min_lr_ratio * lr over the run
    step = "step"  # multiply by gamma every step_size meta-iterations (Snell et al.: 0.5 every 2000)


@dataclass
class ScheduleParams:
    kind: Schedule = Schedule.cosine
    warmup: int = 0  # meta-iterations of linear warm-up from 0
    min_lr_ratio: float = 0.0  # cosine: final lr as a fraction of lr
    step_size: int = 2000  # step: meta-iterations between decays
    gamma: float = 0.5  # step: decay factor


@dataclass
class AdamParams:
    name: str = "adam"
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    schedule: ScheduleParams = field(default_factory=ScheduleParams)


@dataclass
class SGDParams:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: ScheduleParams = field(default_factory=ScheduleParams)


OPTIMIZERS: Registry[torch.optim.Optimizer] = Registry("optimizer")


def _fused(parameters: list[torch.nn.Parameter]) -> bool:
    """Fused kernels on CUDA: one launch per step, and they skip a flagged non-finite step on the
    device (see ``strategies.clip_and_step``), so meta-training never waits for the host."""
    return bool(parameters) and all(p.is_cuda and p.is_floating_point() for p in parameters)


@OPTIMIZERS.register("adam", params=AdamParams)
def build_adam(params: AdamParams, parameters: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if params.lr <= 0 or len(params.betas) != 2:
        raise ConfigError("optimizer=adam needs lr > 0 and two betas")
    parameters = list(parameters)
    return torch.optim.Adam(parameters, lr=params.lr, betas=tuple(params.betas), weight_decay=params.weight_decay,
                            fused=_fused(parameters) or None)


@OPTIMIZERS.register("sgd", params=SGDParams)
def build_sgd(params: SGDParams, parameters: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if params.lr <= 0:
        raise ConfigError("optimizer=sgd needs lr > 0")
    parameters = list(parameters)
    return torch.optim.SGD(
        parameters, lr=params.lr, momentum=params.momentum, nesterov=params.nesterov and params.momentum > 0,
        weight_decay=params.weight_decay, fused=_fused(parameters) or None,
    )


def build_schedule(params: ScheduleParams, optimizer: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-meta-iteration multiplier of the base learning rate."""
    if params.warmup < 0 or params.step_size < 1 or not 0 <= params.min_lr_ratio <= 1:
        raise ConfigError("optimizer.schedule needs warmup >= 0, step_size >= 1 and 0 <= min_lr_ratio <= 1")

    def factor(step: int) -> float:
        if step < params.warmup:
            return (step + 1) / params.warmup
        if params.kind is Schedule.cosine:
            progress = min(1.0, (step - params.warmup) / max(1, total - params.warmup))
            return params.min_lr_ratio + (1 - params.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if params.kind is Schedule.step:
            return params.gamma ** (step // params.step_size)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
