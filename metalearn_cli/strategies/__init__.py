"""Meta-strategies: how the meta-network is trained across tasks and adapted to a new one.

A strategy is an ``nn.Module`` wrapping the :class:`~metalearn_cli.model.MetaModel`; its
``state_dict`` is the meta-knowledge a checkpoint saves (the model plus anything the strategy
learns itself). The runner drives every strategy through the same three calls:
``meta_train_step(batch, optimizer)``, ``predict(batch)`` and ``check_compatible()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from metalearn_cli.distributed import average_gradients
from metalearn_cli.episodes import EpisodeBatch
from metalearn_cli.errors import ConfigError
from metalearn_cli.model import MetaModel
from metalearn_cli.registry import Registry


@dataclass
class ClipParams:
    norm: Optional[float] = 10.0  # max global L2 norm of the meta-gradient; null = no norm clipping
    value: Optional[float] = None  # max |component| of the meta-gradient; null = no value clipping


class Strategy(nn.Module):
    """Base class: the protocol the runner relies on."""

    bn_modes: tuple[str, ...] = ("running", "transductive")  # evaluation batch-norm modes; the first is `auto`
    isolates_tasks = False  # True: predict() already keeps each task's batch statistics apart
    low_precision_ok = True  # False: precision=auto keeps fp32 (e.g. second-order gradients)

    def __init__(self, model: MetaModel) -> None:
        super().__init__()
        self.model = model

    def check_compatible(self) -> None:
        """Raise :class:`ConfigError` if the encoder/decoder pair cannot be trained this way."""

    def meta_train_step(self, batch: EpisodeBatch, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        """One meta-iteration on ``batch``; returns scalar device tensors (no host sync)."""
        raise NotImplementedError

    def predict(self, batch: EpisodeBatch) -> torch.Tensor:
        """Query logits ``[T, Q, n_way]`` after adapting to each task's support set."""
        raise NotImplementedError

    def test_inner_steps(self) -> int | None:
        """Gradient steps ``predict`` takes on a support set (recorded in results.json); None: no inner loop."""
        return None


class NonFiniteError(ArithmeticError):
    """The meta-loss or meta-gradient is NaN/Inf; raised before the optimizer steps on it."""

    def __init__(self, quantity: str) -> None:
        super().__init__(quantity)
        self.quantity = quantity


def clip_and_step(
    parameters: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, clip: ClipParams, loss: torch.Tensor
) -> torch.Tensor:
    """Clip the meta-gradient (value, then global norm) and step; returns the pre-clip global norm.

    A non-finite loss or gradient raises :class:`NonFiniteError` without stepping, so the weights
    never see it (one scalar read per step: free on CPU, a short sync on a GPU).
    """
    if clip.norm is not None and clip.norm <= 0 or clip.value is not None and clip.value <= 0:
        raise ConfigError("strategy.clip.norm and strategy.clip.value must be > 0 or null")
    average_gradients(parameters)  # data-parallel ranks: the meta-gradient of the whole meta-batch
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) if grads else torch.zeros(())
    if not bool(torch.isfinite(loss).all() & torch.isfinite(norm)):
        raise NonFiniteError("loss" if not bool(torch.isfinite(loss).all()) else "meta-gradient")
    if clip.value is not None:
        torch.nn.utils.clip_grad_value_(parameters, clip.value)
    if clip.norm is not None:
        torch.nn.utils.clip_grad_norm_(parameters, clip.norm, foreach=True)
    optimizer.step()
    return norm.detach()


def query_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-task accuracy ``[T]`` of query logits ``[T, Q, N]``."""
    return (logits.argmax(-1) == labels).float().mean(-1)


STRATEGIES: Registry[Strategy] = Registry("strategy")

from metalearn_cli.strategies import maml, mgd  # noqa: E402,F401  (registers the strategies)
