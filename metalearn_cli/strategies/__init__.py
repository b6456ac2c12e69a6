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
        """One meta-iteration on ``batch``; returns scalar device tensors (no host sync), see :func:`step_record`."""
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


def defers_nonfinite_check(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` can skip a flagged step on the device itself (the fused CUDA/CPU kernels
    read ``found_inf`` as AMP's grad scaler uses it), so no step waits for the host."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


def clip_and_step(
    parameters: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, clip: ClipParams, loss: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip the meta-gradient (value, then global norm) and step; returns the pre-clip global norm and
    a device flag (1.0 = this step was non-finite and skipped).

    A non-finite loss or gradient must never reach the weights. With a fused optimizer (built on
    CUDA) the flag goes to the optimizer as ``found_inf`` and the kernel skips the update, parameters
    and moments alike, with no host sync; the runner reads the flags at its next log record. Other
    optimizers read the flag at once (free on CPU) and raise :class:`NonFiniteError` without stepping.
    """
    if clip.norm is not None and clip.norm <= 0 or clip.value is not None and clip.value <= 0:
        raise ConfigError("strategy.clip.norm and strategy.clip.value must be > 0 or null")
    average_gradients(parameters)  # data-parallel ranks: the meta-gradient of the whole meta-batch
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) if grads else torch.zeros((), device=loss.device)
    loss_finite = torch.isfinite(loss).all()
    finite = loss_finite & torch.isfinite(norm)
    deferred = defers_nonfinite_check(optimizer)
    if not deferred and not bool(finite):
        raise NonFiniteError("loss" if not bool(loss_finite) else "meta-gradient")
    if clip.value is not None:
        torch.nn.utils.clip_grad_value_(parameters, clip.value)
    if clip.norm is not None:
        torch.nn.utils.clip_grad_norm_(parameters, clip.norm, foreach=True)
    skipped = (~finite).to(torch.float32)  # a 0-dim float, as the fused kernels expect
    if deferred:
        optimizer.found_inf = skipped  # type: ignore[attr-defined]  # the kernel skips when it reads 1.0
        try:
            optimizer.step()
        finally:
            optimizer.found_inf = None  # type: ignore[attr-defined]
    else:
        optimizer.step()
    return norm.detach(), skipped


def step_record(skipped: torch.Tensor, **values: torch.Tensor) -> dict[str, torch.Tensor]:
    """What ``meta_train_step`` returns: a skipped step's values read 0 (the runner's means leave
    skipped steps out), plus the ``skipped`` flag itself."""
    bad = skipped.bool()
    return {**{k: torch.where(bad, torch.zeros_like(v), v.detach()) for k, v in values.items()}, "skipped": skipped}


def query_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-task accuracy ``[T]`` of query logits ``[T, Q, N]``."""
    return (logits.argmax(-1) == labels).float().mean(-1)


STRATEGIES: Registry[Strategy] = Registry("strategy")

from metalearn_cli.strategies import maml, mgd  # noqa: E402,F401  (registers the strategies)
