"""Batch norm for meta-learning: correct under ``torch.func.vmap`` with second-order gradients, and
able to normalise with statistics other than the batch's or the stored running ones.

Native batch norm with per-task (batched) affine weights has given wrong second derivatives under
vmap in current PyTorch. Normalising with ``F.batch_norm`` without its affine part and then applying
``x * weight + bias`` as plain ops is correct there, and the fastest correct form measured.

Two further statistics, set by the model or the strategy for one pass (see ``schema.BNMode``):

- ``support_rows = (M, S)``: the batch holds tasks of ``M`` images each, the first ``S`` of them the
  support set; every task's images are normalised with the statistics of its own support images
  (inductive: a query never affects another query, and the support set never sees a query).
- ``step = j`` on a layer with ``per_step`` statistics (MAML++'s BNRS, Antoniou et al. 2019): one
  stored set of running statistics per inner step. In training, the batch's statistics normalise and
  are recorded (``record``) for the strategy to fold into set ``j`` outside any ``torch.func``
  transform; in evaluation, set ``j`` normalises.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class TaskBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (same parameters, buffers and state-dict keys); with ``split_affine`` set,
    the affine part is split off. Off by default: the split form is ~2x slower for plain training
    on CPU, and only vmap with batched weights needs it."""

    split_affine: bool = False
    support_rows: Optional[tuple[int, int]] = None
    step: Optional[int] = None
    record: Optional[list[tuple["TaskBatchNorm2d", int, torch.Tensor, torch.Tensor]]] = None

    def use_per_step(self, steps: int) -> None:
        """Keep ``steps`` sets of running statistics (state-dict keys ``step_mean``/``step_var``)."""
        like = self.running_mean if self.running_mean is not None else self.weight
        self.register_buffer("step_mean", like.new_zeros(steps, self.num_features))
        self.register_buffer("step_var", like.new_ones(steps, self.num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.support_rows is not None:
            return self._affine(self._support_normalised(x))
        if self.step is not None and hasattr(self, "step_mean"):
            return self._affine(self._per_step(x))
        if not self.split_affine:
            return super().forward(x)
        tracking = self.training and self.track_running_stats
        if tracking and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        use_batch_stats = self.training or not self.track_running_stats
        y = F.batch_norm(
            x,
            self.running_mean if not self.training or tracking else None,
            self.running_var if not self.training or tracking else None,
            None,
            None,
            use_batch_stats,
            self.momentum if self.momentum is not None else 0.0,
            self.eps,
        )
        return self._affine(y)

    def _affine(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.weight[:, None, None] + self.bias[:, None, None]

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
