"""The parameters of each outer-loop optimizer, its schedule and clipping
(``configs/optimizer/<name>.yaml`` extends them); torch-free."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Optional


class Schedule(enum.Enum):
    constant = "constant"
    cosine = "cosine"  # cosine decay to min_lr_ratio * lr over the run
    step = "step"  # multiply by gamma every step_size meta-iterations (Snell et al.: 0.5 every 2000)
    multistep = "multistep"  # multiply by gamma at each milestone, a fraction of the run (RFS: 0.1 at 60% and 80%)


@dataclass
class ScheduleParams:
    kind: Schedule = Schedule.cosine
    warmup: int = 0  # meta-iterations of linear warm-up from 0
    min_lr_ratio: float = 0.0  # cosine: final lr as a fraction of lr
    step_size: int = 2000  # step: meta-iterations between decays
    gamma: float = 0.5  # step, multistep: decay factor
    milestones: list[float] = field(default_factory=lambda: [0.6, 0.8])  # multistep: where, as fractions of the run


@dataclass
class ClipParams:
    norm: Optional[float] = 10.0  # max global L2 norm of the meta-gradient; null = no norm clipping (the pre-clip norm is logged)
    value: Optional[float] = None  # max |component| of the meta-gradient; null = no value clipping


@dataclass
class AdamParams:
    name: str = "adam"
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    schedule: ScheduleParams = field(default_factory=ScheduleParams)
    clip: ClipParams = field(default_factory=ClipParams)


@dataclass
class SGDParams:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: ScheduleParams = field(default_factory=ScheduleParams)
    clip: ClipParams = field(default_factory=ClipParams)
