"""The strategy protocol: what the training loop, evaluation and ``load`` ask of a meta-strategy.

A strategy is an ``nn.Module`` wrapping the :class:`~metalearn_cli.model.MetaModel`; its
``state_dict`` is the meta-knowledge a checkpoint saves (the model plus anything the strategy
learns itself). It computes; it never steps an optimizer: ``meta_loss(batch)`` returns the
meta-loss of a meta-batch (task loss plus the decoder's regulariser) and the query logits, and
:func:`metalearn_cli.optim.meta_step` turns it into an update.
"""

from __future__ import annotations

import contextlib
from typing import ClassVar, ContextManager, NamedTuple, Optional

import torch
from torch import nn

from metalearn_cli.bn_modes import available
from metalearn_cli.episodes import EpisodeBatch
from metalearn_cli.model import MetaModel


class StepOutput(NamedTuple):
    loss: torch.Tensor  # 0-dim meta-loss: query cross-entropy + regulariser
    logits: torch.Tensor  # [T, Q, n_way] query logits (detached), for the training accuracy


class Prediction(NamedTuple):
    logits: torch.Tensor  # [T, Q, n_way]
    stats: dict[str, torch.Tensor]  # per-task norms [T] of what the decoder generated; empty unless asked


class Strategy(nn.Module):
    """Base class: the protocol every strategy implements."""

    bn_auto: str = "running"  # eval.bn_mode=auto: the strategy's own protocol (a mode of bn_modes.MODES)
    stored_statistics: tuple[str, ...] = ("running",)  # what training stores for evaluation modes to use
    isolates_tasks: ClassVar[bool] = False  # True: predict() already keeps each task's batch statistics apart

    def __init__(self, model: MetaModel) -> None:
        super().__init__()
        self.model = model

    @property
    def bn_modes(self) -> tuple[str, ...]:
        """The batch-norm modes this strategy can be evaluated in, ``auto``'s first."""
        return available(self.bn_auto, self.stored_statistics)

    @property
    def adapts_encoder(self) -> bool:
        """Whether adapting to a task changes the encoder's weights (an inner loop over them): a frozen
        encoder cannot be trained this way."""
        return False

    @property
    def second_order(self) -> bool:
        """Whether meta-gradients differentiate through gradients (no bf16 under ``precision=auto``,
        no ``torch.compile``)."""
        return False

    def check_compatible(self) -> None:
        """Raise :class:`~metalearn_cli.errors.ConfigError` if the encoder/decoder pair cannot be trained this way."""

    def backward_context(self) -> ContextManager[None]:
        """Context for the meta-loss and its backward (e.g. the encoder's second-order needs)."""
        return contextlib.nullcontext()

    def meta_loss(self, batch: EpisodeBatch) -> StepOutput:
        """The meta-loss of one meta-batch; no optimizer step, no host sync."""
        raise NotImplementedError

    def step_done(self) -> None:
        """Called after each applied meta-step (schedules that count meta-iterations)."""

    def predict(self, batch: EpisodeBatch, with_stats: bool = False) -> Prediction:
        """Query logits ``[T, Q, n_way]`` after adapting to each task's support set."""
        raise NotImplementedError

    def activation_copies(self) -> int:
        """How many forward passes' activations a meta-step keeps alive at once (memory estimate)."""
        return 1

    def test_inner_steps(self) -> Optional[int]:
        """Gradient steps ``predict`` takes on a support set (recorded in results.json); None: no inner loop."""
        return None


def query_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-task accuracy ``[T]`` of query logits ``[T, Q, N]``."""
    return (logits.argmax(-1) == labels).float().mean(-1)
