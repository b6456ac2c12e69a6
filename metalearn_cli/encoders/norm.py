"""Batch norm that stays correct under ``torch.func.vmap`` with second-order gradients.

Native batch norm with per-task (batched) affine weights has given wrong second derivatives under
vmap in current PyTorch. Normalising with ``F.batch_norm`` without its affine part and then applying
``x * weight + bias`` as plain ops is correct there, and the fastest correct form measured.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TaskBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (same parameters, buffers and state-dict keys); with ``split_affine`` set,
    the affine part is split off. Off by default: the split form is ~2x slower for plain training
    on CPU, and only vmap with batched weights needs it."""

    split_affine: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
        return y * self.weight[:, None, None] + self.bias[:, None, None]
