"""Batch norm for meta-learning: correct under ``torch.func.vmap`` with second-order gradients, and
able to normalise with statistics other than the batch's or the stored running ones.

Native batch norm with per-task (batched) affine weights has given wrong second derivatives under
vmap in current PyTorch. Normalising with ``F.batch_norm`` without its affine part and then applying
``x * weight + bias`` as plain ops is correct there, and the fastest correct form measured.

Which statistics an evaluation uses is a mode of :mod:`metalearn_cli.bn_modes`' table, applied to a
whole model by :func:`batch_norm_mode`. Two further statistics, set by the model or the strategy for
one pass:

- ``support_rows = (M, S)``: the batch holds tasks of ``M`` images each, the first ``S`` of them the
  support set; every task's images are normalised with the statistics of its own support images
  (inductive: a query never affects another query, and the support set never sees a query).
- ``step = j`` on a layer with ``per_step`` statistics (MAML++'s BNRS, Antoniou et al. 2019): one
  stored set of running statistics per inner step. In training, the batch's statistics normalise and
  are recorded (``record``) for the strategy to fold into set ``j`` outside any ``torch.func``
  transform; in evaluation, set ``j`` normalises. :class:`StepStatistics` keeps that bookkeeping
  for a strategy.
- ``use_per_step_affine``: one learned scale and shift per inner step (MAML++'s BNWB), chosen by
  ``step`` the same way, in place of the layer's own pair (kept, frozen, in the state dict).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from metalearn_cli.bn_modes import MODES

Record = tuple["TaskBatchNorm2d", int, torch.Tensor, torch.Tensor]  # a layer, its step, a batch's mean and variance


class TaskBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (same parameters, buffers and state-dict keys); with ``split_affine`` set,
    the affine part is split off. Off by default: the split form is ~2x slower for plain training
    on CPU, and only vmap with batched weights needs it."""

    split_affine: bool = False
    support_rows: Optional[tuple[int, int]] = None
    step: Optional[int] = None
    record: Optional[list[Record]] = None

    def use_per_step(self, steps: int) -> None:
        """Keep ``steps`` sets of running statistics (state-dict keys ``step_mean``/``step_var``)."""
        like = self.running_mean if self.running_mean is not None else self.weight
        self.register_buffer("step_mean", like.new_zeros(steps, self.num_features))
        self.register_buffer("step_var", like.new_ones(steps, self.num_features))

    def use_per_step_affine(self, steps: int) -> None:
        """Learn ``steps`` scales and shifts (parameters ``step_weight``/``step_bias``, each starting as the
        layer's own pair), used in its place: the own pair is frozen, and stays for loading weights."""
        self.step_weight = nn.Parameter(self.weight.detach().expand(steps, -1).clone())
        self.step_bias = nn.Parameter(self.bias.detach().expand(steps, -1).clone())
        self.weight.requires_grad_(False)
        self.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.support_rows is not None:
            return self._affine(self._support_normalised(x))
        if self.step is not None and hasattr(self, "step_mean"):
            return self._affine(self._per_step(x))
        if not self.split_affine and not hasattr(self, "step_weight"):
            return super().forward(x)
        # As nn.BatchNorm2d decides: in training the batch's statistics (the running ones moved only when tracked); in
        # evaluation the stored ones, so an evaluation never writes them (nor hands vmap unbatched buffers to fill).
        tracking = self.training and self.track_running_stats
        if tracking and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        stored = not self.training or tracking
        y = F.batch_norm(
            x,
            self.running_mean if stored else None,
            self.running_var if stored else None,
            None,
            None,
            self.training or self.running_mean is None,
            self.momentum if self.momentum is not None else 0.0,
            self.eps,
        )
        return self._affine(y)

    def _affine(self, y: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if hasattr(self, "step_weight"):  # BNWB: the step's own pair; outside an inner loop (step None) the last step's
            j = self.step_weight.shape[0] - 1 if self.step is None else min(self.step, self.step_weight.shape[0] - 1)
            weight, bias = self.step_weight[j], self.step_bias[j]
        return y * weight[:, None, None] + bias[:, None, None]

    def _support_normalised(self, x: torch.Tensor) -> torch.Tensor:
        per_task, support = self.support_rows  # type: ignore[misc]
        tasks = x.float().unflatten(0, (-1, per_task))  # [T, M, C, H, W], statistics in fp32 as native batch norm's
        rows = tasks[:, :support]
        mean = rows.mean((1, 3, 4), keepdim=True)
        var = rows.var((1, 3, 4), unbiased=False, keepdim=True)
        return ((tasks - mean) * torch.rsqrt(var + self.eps)).flatten(0, 1).to(x.dtype)

    def _per_step(self, x: torch.Tensor) -> torch.Tensor:
        j = min(self.step, self.step_mean.shape[0] - 1)  # type: ignore[type-var]
        if not self.training:
            mean, var = self.step_mean[j].float(), self.step_var[j].float()
            return F.batch_norm(x.float(), mean, var, None, None, False, 0.0, self.eps).to(x.dtype)
        xf = x.float()
        mean = xf.mean((0, 2, 3))
        var = xf.var((0, 2, 3), unbiased=False)
        if self.record is not None:
            n = x.numel() // x.shape[1]
            self.record.append((self, j, mean.detach(), var.detach() * n / max(n - 1, 1)))
        return ((xf - mean[:, None, None]) * torch.rsqrt(var[:, None, None] + self.eps)).to(x.dtype)

    @torch.no_grad()
    def fold_step_statistics(self, j: int, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Move set ``j`` towards one recorded batch's statistics (momentum as ``nn.BatchNorm2d``'s)."""
        momentum = self.momentum if self.momentum is not None else 0.1
        self.step_mean[j].lerp_(mean.to(self.step_mean.dtype), momentum)
        self.step_var[j].lerp_(var.to(self.step_var.dtype), momentum)


def per_step_copies(theirs: dict[str, Any], ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Batch-norm pairs across BNWB's line, for starting one network from another's weights: a network with one
    pair per layer starts each of our steps' pairs (``step_weight``/``step_bias``) from it, and a one-pair network
    of ours takes a BNWB network's last step's pair (the one its query pass used), not the frozen own pair beside it.
    Only where ``theirs`` has no such key at all: a BNWB source with another step count gives nothing."""
    copies = {}
    for key, like in ours.items():
        layer, _, name = key.rpartition(".")
        if name in ("step_weight", "step_bias"):  # ours per step, theirs one pair
            source = theirs.get(f"{layer}.{name[len('step_'):]}")
            if key not in theirs and _floating(source) and source.shape == like.shape[1:]:
                copies[key] = source.expand_as(like).clone()
        elif name in ("weight", "bias") and f"{layer}.step_{name}" not in ours:  # ours one pair, theirs per step
            source = theirs.get(f"{layer}.step_{name}")
            if _floating(source) and source.dim() == 2 and source.shape[1:] == like.shape:
                copies[key] = source[-1].clone()
    return copies


def _floating(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


class StepStatistics:
    """MAML++'s per-step batch norm of a model's batch-norm layers: which inner step's set a pass uses;
    with ``statistics`` (BNRS), in training, the batch statistics each pass recorded, folded into each
    step's set once the meta-step is done; with ``affine`` (BNWB), each step's scale and shift. Off
    (every method a no-op) unless one of them is asked for."""

    def __init__(self, model: nn.Module, steps: int, statistics: bool = True, affine: bool = False) -> None:
        self.norms = [m for m in model.modules() if isinstance(m, TaskBatchNorm2d)] if statistics or affine else []
        self.records: list[Record] = []
        for m in self.norms:
            if statistics:
                m.use_per_step(max(steps, 1))
            if affine and m.affine:
                m.use_per_step_affine(max(steps, 1))

    def at(self, step: Optional[int]) -> None:
        """The inner step whose statistics the next pass uses (and, training, records); None after an inner loop, so a
        pass outside one normalises as the layer alone would (BNWB's pair: the last step's)."""
        for m in self.norms:
            m.step = None if step is None else max(step, 0)

    def since(self, start: int) -> list[torch.Tensor]:
        """The statistics recorded after ``start`` (``len(records)`` before a pass), flat: returned as
        the aux output of a ``torch.func`` transform so they leave it unwrapped."""
        return [t for r in self.records[start:] for t in r[2:]]

    def unwrapped(self, start: int, flat: list[torch.Tensor]) -> None:
        """Replace the records after ``start`` with the values a transform returned (see :meth:`since`)."""
        self.records[start:] = [(m, j, flat[2 * i], flat[2 * i + 1]) for i, (m, j, _, _) in enumerate(self.records[start:])]

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Record every pass's batch statistics, then fold them into each step's set."""
        for m in self.norms:
            m.record = self.records
        try:
            yield
            for m, j, mean, var in self.records:
                m.fold_step_statistics(j, mean, var)
        finally:
            self.records.clear()
            for m in self.norms:
                m.record = None


@contextlib.contextmanager
def batch_norm_mode(model: Any, mode: str) -> Iterator[None]:
    """Evaluate ``model`` (a MetaModel) with the statistics ``mode`` names in
    :data:`metalearn_cli.bn_modes.MODES`. Batch statistics are used without updating the running ones,
    so evaluating never changes the model. Everything else is in evaluation mode either way (no
    dropout or DropBlock, LEO's codes at their means)."""
    spec = MODES[mode]
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    was_training, tracked, embed = model.training, [m.track_running_stats for m in norms], model.statistics
    model.eval()
    model.statistics = spec.embed
    if spec.statistics == "batch":
        for m in norms:
            m.train()
            m.track_running_stats = False
    try:
        yield
    finally:
        model.train(was_training)
        model.statistics = embed
        for m, t in zip(norms, tracked):
            m.track_running_stats = t
