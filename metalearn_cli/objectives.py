"""What a training stage optimises: an objective draws its own batch, computes its loss and takes
the update through :func:`~metalearn_cli.optim.meta_step`; the loop (:mod:`metalearn_cli.loop`)
does everything else, the same for every stage.

Owns: the meta-iteration's step (``train_step``: sample -> ``strategy.meta_loss`` -> ``meta_step``),
the episodic objective of meta-training (and of ``pretrain=episodic``'s stage) and the supervised objective of pre-training (its linear head
over all training classes, its class-batch sampler, its augmentation). Each keeps the state a resume
needs beyond the weights and the optimizer (the task sampler; the head and the batch generator).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from metalearn_cli.augment import augment_images
from metalearn_cli.checkpoint import load_states
from metalearn_cli.episodes import EpisodeBatch, EpisodeSampler
from metalearn_cli.optim import ClipParams, StepResult, meta_step
from metalearn_cli.strategies import StepOutput, Strategy, query_accuracy


def train_step(strategy: Strategy, batch: EpisodeBatch, optimizer: torch.optim.Optimizer, clip: ClipParams,
               parameters: Optional[list[torch.nn.Parameter]] = None) -> tuple[StepOutput, StepResult]:
    """One meta-iteration on ``batch``: the strategy's meta-loss, then :func:`meta_step` (under the
    strategy's backward context). Used by the loop, the benchmarks and the tests alike."""
    with strategy.backward_context():
        out = strategy.meta_loss(batch)
        result = meta_step(out.loss, parameters if parameters is not None else list(strategy.parameters()),
                           optimizer, clip)
    if result.nonfinite is None:
        strategy.step_done()
    return out, result


def decoder_lr_groups(strategy: Strategy, parameters: list[nn.Parameter]) -> list[Any]:
    """``parameters`` as optimizer groups: the decoder's at ``decoder.lr_mul`` times the rate (FEAT's
    optimizer: 10x for everything but the encoder); a plain list when the decoder asks for none."""
    mul = strategy.model.decoder.lr_mul
    if mul == 1.0:
        return parameters
    fast = {id(p) for p in strategy.model.decoder.parameters()}
    groups = [{"params": [p for p in parameters if id(p) not in fast]},
              {"params": [p for p in parameters if id(p) in fast], "lr_scale": mul}]
    return [g for g in groups if g["params"]]


class Objective(Protocol):
    """A stage's objective, as the loop sees it."""

    strategy: Strategy  # what is validated, tested and saved as the stage's model
    parameters: list[nn.Parameter]  # what the stage's optimizer updates
    param_groups: list[Any]  # the same, as the optimizer is built from them (groups with an ``lr_scale``)
    split: str  # the metrics records' split ("train", "pretrain")
    unit: str  # what a step consumes ("tasks", "images"): throughput is ``<unit>_per_s``
    per_step: int  # how many of them
    chance_loss: float  # the cross-entropy of a uniform guess, ln(classes): the loop's divergence warning compares to it

    def step(self, optimizer: torch.optim.Optimizer, clip: ClipParams) -> tuple[dict[str, torch.Tensor], StepResult]: ...

    def state(self) -> dict[str, Any]: ...

    def load_state(self, state: dict[str, Any], path: Path) -> None: ...


class EpisodicObjective:
    """Meta-training (and the episodic pre-training stage): a meta-batch of N-way K-shot tasks and the strategy's meta-loss."""

    split, unit = "train", "tasks"

    def __init__(self, strategy: Strategy, sampler: EpisodeSampler, meta_batch: int, part: tuple[int, int],
                 augment: Optional[Callable[[torch.Tensor], torch.Tensor]]) -> None:
        self.strategy, self.sampler, self.per_step, self.part, self.augment = strategy, sampler, meta_batch, part, augment
        self.parameters = [p for p in strategy.parameters() if p.requires_grad]
        self.param_groups = decoder_lr_groups(strategy, self.parameters)
        self.chance_loss = math.log(sampler.n_way)

    def step(self, optimizer: torch.optim.Optimizer, clip: ClipParams) -> tuple[dict[str, torch.Tensor], StepResult]:
        batch = self.sampler.sample(self.per_step, part=self.part)
        if self.augment is not None:  # training tasks only: validation and test never see it
            batch = dataclasses.replace(batch, support_images=augment_images(self.augment, batch.support_images),
                                        query_images=augment_images(self.augment, batch.query_images))
        out, result = train_step(self.strategy, batch, optimizer, clip, self.parameters)
        return {"loss": out.loss, "accuracy": query_accuracy(out.logits, batch.query_labels).mean()}, result

    def state(self) -> dict[str, Any]:
        return {"sampler": self.sampler.get_state()}

    def load_state(self, state: dict[str, Any], path: Path) -> None:
        self.sampler.set_state(state["sampler"])


class SupervisedObjective:
    """Pre-training: a linear head over every training class on mini-batches of augmented resident
    images (RFS, Meta-Baseline); the strategy's encoder is what the stage keeps."""

    split, unit = "pretrain", "images"

    def __init__(self, strategy: Strategy, images: torch.Tensor, batch_size: int, label_smoothing: float,
                 augment: Optional[Callable[[torch.Tensor], torch.Tensor]], seed: int) -> None:
        self.strategy, self.images, self.per_step = strategy, images, batch_size  # images: [classes, per class, C, H, W] uint8
        self.label_smoothing, self.augment = label_smoothing, augment
        self.device = next(strategy.parameters()).device
        self.head = nn.Linear(strategy.model.encoder.out_dim, images.shape[0]).to(self.device)
        self.parameters = [p for p in [*strategy.parameters(), *self.head.parameters()] if p.requires_grad]
        self.param_groups: list[Any] = self.parameters
        self.chance_loss = math.log(images.shape[0])
        self.generator = torch.Generator().manual_seed(seed)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        classes, per_class = self.images.shape[:2]
        index = torch.randint(classes * per_class, (self.per_step,), generator=self.generator)
        labels = index.div(per_class, rounding_mode="floor")
        index, labels = index.to(self.images.device), labels.to(self.device)
        images = self.images.flatten(0, 1)[index].to(self.device).float().div_(255.0)
        return (self.augment(images) if self.augment else images), labels

    def step(self, optimizer: torch.optim.Optimizer, clip: ClipParams) -> tuple[dict[str, torch.Tensor], StepResult]:
        images, labels = self.batch()
        logits = self.head(self.strategy.model.embed(images))
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        result = meta_step(loss, self.parameters, optimizer, clip)
        return {"loss": loss.detach(), "accuracy": (logits.argmax(-1) == labels).float().mean()}, result

    def state(self) -> dict[str, Any]:
        return {"head": self.head.state_dict(), "generator": self.generator.get_state()}

    def load_state(self, state: dict[str, Any], path: Path) -> None:
        load_states(path, state, {"head": self.head}, "pre-training")
        self.generator.set_state(state["generator"])
