"""What one stage of a run is (:class:`Stage`: its objective, budget, cadence and test) and the run's
clock its stages share; :mod:`metalearn_cli.loop` runs a stage, :mod:`metalearn_cli.training` and
:mod:`metalearn_cli.pretrain` describe theirs."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Optional

from metalearn_cli.episodes import EpisodeSampler
from metalearn_cli.objectives import Objective
from metalearn_cli.schema import EvalConfig, TrainerConfig


@dataclasses.dataclass
class RunClock:
    """A run's wall time over all its processes: this one's, plus what the checkpoint it resumed from
    had counted (each checkpoint saves it), so a resumed run's ``wall_seconds`` is the whole run's."""

    started: float = dataclasses.field(default_factory=time.perf_counter)
    before: float = 0.0

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.started


@dataclasses.dataclass
class Stage:
    """One stage of a run: what it optimises and how often it records, validates and saves."""

    name: str  # "meta-training", "pre-training", "episodic pre-training": log lines and bars
    step_name: str  # what messages call one step: "meta-iteration", "pre-training step", "pre-training iteration"
    run_dir: Path
    objective: Objective
    trainer: TrainerConfig  # typed: progress, precision, nan_policy
    evaluation: EvalConfig  # typed: batch_tasks of validation
    logger: Any  # the logger group's node
    config: dict[str, Any]  # saved in every checkpoint (what a resume compares) and given to the logger
    optimizer: Any  # an optimizer-registry node
    optimizer_key: str  # its config path, for hints ("optimizer", "pretrain.optimizer")
    iterations: int
    iterations_key: str  # its config path, for hints ("trainer.iterations", "pretrain.iterations")
    log_every: int
    val_every: int
    checkpoint_every: int
    val_sampler: EpisodeSampler
    val_episodes: int
    val_bn_mode: str
    test: Callable[[], dict[str, Any]]  # the final test of the model as loaded from best.pt
    extras: Callable[[], dict[str, Any]]  # what the stage adds to results.json
    resume_hint: Path  # the run dir ``metalearn train resume=`` takes
    pixel_mean: float  # saved with the model: predict compares a user's images to it
    clock: RunClock = dataclasses.field(default_factory=RunClock)  # the run's, shared by its stages
    ema: Optional[float] = None  # trainer.ema: validate and keep an average of the weights (metalearn_cli.weight_average)
    earlier_stage: bool = False  # a stage runs before this one (pre-training): what a resume at step 0 continues
