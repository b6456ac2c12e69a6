"""The outer loop's update: optimizers, their learning-rate schedules, clipping and the meta-step.

Owns :func:`meta_step`, the one place a meta-gradient becomes a weight update: backward ->
all-reduce over data-parallel ranks -> finite check -> clip -> step, with a fused skip on the device
on CUDA. Strategies only compute the meta-loss; clipping is an optimizer setting
(``optimizer.clip``), validated once when the optimizer is built.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Any, ContextManager, Iterable, Optional

import torch

from metalearn_cli.distributed import average_gradients
from metalearn_cli.errors import ConfigError
from metalearn_cli.registry import Registry
from metalearn_cli.params.optimizers import AdamParams, ClipParams, SGDParams, Schedule, ScheduleParams

log = logging.getLogger(__name__)


OPTIMIZERS: Registry[torch.optim.Optimizer] = Registry("optimizer")


def _groups(parameters: Iterable[Any], lr: float) -> tuple[list[Any], list[torch.nn.Parameter]]:
    """Parameters or parameter groups (a group's ``lr_scale`` multiplies ``lr``: FEAT's faster decoder)
    -> what torch's optimizers take, and the flat parameters."""
    groups, flat = [], []
    for item in parameters:
        if isinstance(item, dict):
            group = {k: v for k, v in item.items() if k != "lr_scale"}
            group["params"] = list(group["params"])
            group["lr"] = lr * item.get("lr_scale", 1.0)
            groups.append(group)
            flat.extend(group["params"])
        else:
            groups.append(item)
            flat.append(item)
    return groups, flat


def _fused(parameters: list[torch.nn.Parameter]) -> bool:
    """Fused kernels on CUDA: one launch per step, and they skip a flagged non-finite step on the
    device (see :func:`meta_step`), so meta-training never waits for the host."""
    return bool(parameters) and all(p.is_cuda and p.is_floating_point() for p in parameters)


def check_clip(clip: ClipParams) -> ClipParams:
    for what, value in (("norm", clip.norm), ("value", clip.value)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ConfigError(f"optimizer.clip.{what}={value} must be a finite number > 0, or null for no clipping")
    return clip


@OPTIMIZERS.register("adam", params=AdamParams)
def build_adam(params: AdamParams, parameters: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    check_clip(params.clip)
    if not params.lr > 0 or len(params.betas) != 2:
        raise ConfigError(f"optimizer=adam needs lr > 0 and two betas (got lr={params.lr}, betas={list(params.betas)})")
    if not all(0 <= b < 1 for b in params.betas) or params.weight_decay < 0:
        raise ConfigError(f"optimizer=adam needs betas in [0, 1) and weight_decay >= 0 (got betas={list(params.betas)}, "
                          f"weight_decay={params.weight_decay})")
    groups, flat = _groups(parameters, params.lr)
    return torch.optim.Adam(groups, lr=params.lr, betas=tuple(params.betas), weight_decay=params.weight_decay,
                            fused=_fused(flat) or None)


@OPTIMIZERS.register("sgd", params=SGDParams)
def build_sgd(params: SGDParams, parameters: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    check_clip(params.clip)
    if not params.lr > 0:
        raise ConfigError(f"optimizer=sgd needs lr > 0 (got lr={params.lr})")
    if params.momentum < 0 or params.weight_decay < 0:
        raise ConfigError(f"optimizer=sgd needs momentum >= 0 and weight_decay >= 0 (got momentum={params.momentum}, "
                          f"weight_decay={params.weight_decay})")
    groups, flat = _groups(parameters, params.lr)
    return torch.optim.SGD(
        groups, lr=params.lr, momentum=params.momentum, nesterov=params.nesterov and params.momentum > 0,
        weight_decay=params.weight_decay, fused=_fused(flat) or None,
    )


def build_schedule(params: ScheduleParams, optimizer: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-meta-iteration multiplier of the base learning rate."""
    if params.warmup < 0 or params.step_size < 1 or not 0 <= params.min_lr_ratio <= 1 or not params.gamma > 0:
        raise ConfigError("optimizer.schedule needs warmup >= 0, step_size >= 1, 0 <= min_lr_ratio <= 1 and gamma > 0")
    if any(not 0 < m < 1 for m in params.milestones):
        raise ConfigError("optimizer.schedule.milestones are fractions of the run: each between 0 and 1")
    if params.kind is Schedule.multistep and not params.milestones:
        raise ConfigError("optimizer.schedule.kind=multistep needs milestones, the fractions of the run where the rate "
                          "drops by gamma (e.g. optimizer.schedule.milestones=[0.6,0.8]); kind=constant keeps it flat")
    if total > 1 and params.warmup >= total:
        log.warning("optimizer.schedule.warmup=%d is not shorter than the stage's %d steps: its learning rate never "
                    "reaches the configured one (it ends at %.0f%% of it)", params.warmup, total, 100 * total / params.warmup)
    steps = sorted(round(m * total) for m in params.milestones)

    def factor(step: int) -> float:
        if step < params.warmup:
            return (step + 1) / params.warmup
        if params.kind is Schedule.cosine:
            progress = min(1.0, (step - params.warmup) / max(1, total - params.warmup))
            return params.min_lr_ratio + (1 - params.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if params.kind is Schedule.step:
            return params.gamma ** (step // params.step_size)
        if params.kind is Schedule.multistep:
            return params.gamma ** sum(step >= s for s in steps)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def check_optimizer(cfg: Any) -> Any:
    """An optimizer node's types and ranges, schedule and clipping included, checked by building it on
    a probe parameter (before the run builds anything); returns its typed parameters."""
    params = OPTIMIZERS.params_of(cfg)
    probe = torch.nn.Parameter(torch.zeros(1))
    optimizer = OPTIMIZERS.build(cfg, parameters=[probe])
    probe.grad = torch.ones(1)
    try:  # one step at the peak rate: a rate beyond single precision fails here, not mid-run
        optimizer.step()
        finite = bool(torch.isfinite(probe).all())
    except RuntimeError:
        finite = False
    if not finite:
        raise ConfigError(f"optimizer.lr={params.lr} overflows single precision in the first step; give a smaller rate")
    build_schedule(params.schedule, optimizer, 1)
    return params


# ----------------------------------------------------------------------------- the meta-step
@dataclass
class StepResult:
    """What a meta-step did: the pre-clip meta-gradient norm and a device flag (1.0 = skipped).
    ``nonfinite`` names the bad quantity when the check ran on the host (not on fused kernels)."""

    grad_norm: torch.Tensor
    skipped: torch.Tensor
    nonfinite: Optional[str] = None


def defers_nonfinite_check(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` can skip a flagged step on the device itself (the fused CUDA/CPU kernels
    read ``found_inf`` as AMP's grad scaler uses it), so no step waits for the host."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


def meta_step(
    loss: torch.Tensor, parameters: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, clip: ClipParams,
    context: Optional[ContextManager[None]] = None,
) -> StepResult:
    """Backward, all-reduce, finite check, clip (value, then global norm) and step.

    A non-finite loss or gradient never reaches the weights. With a fused optimizer (built on CUDA)
    the flag goes to the optimizer as ``found_inf`` and the kernel skips the update, parameters and
    moments alike, with no host sync; the caller reads the flags with its metrics. Other optimizers
    read the flag at once (free on CPU), leave the weights alone and name the quantity.
    """
    optimizer.zero_grad(set_to_none=True)
    with context or contextlib.nullcontext():
        loss.backward()
    average_gradients(parameters)  # data-parallel ranks: the meta-gradient of the whole meta-batch
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) if grads else torch.zeros((), device=loss.device)
    loss_finite = torch.isfinite(loss.detach()).all()
    finite = loss_finite & torch.isfinite(norm)
    skipped = (~finite).to(torch.float32)  # a 0-dim float, as the fused kernels expect
    if not defers_nonfinite_check(optimizer):
        if not bool(finite):
            optimizer.zero_grad(set_to_none=True)
            return StepResult(norm.detach(), skipped, "loss" if not bool(loss_finite) else "meta-gradient")
    if clip.value is not None:
        torch.nn.utils.clip_grad_value_(parameters, clip.value)
    if clip.norm is not None:
        torch.nn.utils.clip_grad_norm_(parameters, clip.norm, foreach=True)
    if defers_nonfinite_check(optimizer):
        optimizer.found_inf = skipped  # type: ignore[attr-defined]  # the kernel skips when it reads 1.0
        try:
            optimizer.step()
        finally:
            optimizer.found_inf = None  # type: ignore[attr-defined]
    else:
        optimizer.step()
    return StepResult(norm.detach(), skipped)
