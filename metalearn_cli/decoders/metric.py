"""A learned metric on prototypes (this project's design, not a published method): the prototype
classifier's squared Euclidean distance plus a learned, optionally task-adaptive, correction.

Why: on Lake's within-alphabet runs the characters share their strokes, and a fixed squared
Euclidean distance weighs every embedding dimension alike in every task. Koch et al. (2015) learn a
weighted L1 distance; Relation Networks (Sung et al. 2018) learn the whole comparison; TADAM
(Oreshkin et al. 2018) scales the metric per task. Here each dimension ``d`` of ``q - c_n``
contributes ``δ² + v · g(δ² / v, |δ| / √v, s_d² / v)``, where ``δ = q_d - c_nd``, ``s_d`` is the spread
of dimension ``d`` over the task's prototypes (how much it separates this task's classes; 0 when
``task_adaptive`` is off), ``v`` the mean of ``s_d²`` over the dimensions (so ``g`` sees scale-free
inputs), and ``g`` a small MLP shared by every dimension whose last layer starts at zero: the
decoder starts as the prototype decoder exactly, so it can fine-tune a ProtoNet encoder without
first disturbing it (FEAT's new attention did: docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from metalearn_cli.decoders import DECODERS
from metalearn_cli.decoders.base import Decoder, DecoderOutput, Film, class_means, output
from metalearn_cli.errors import ConfigError
from metalearn_cli.params.decoders import MetricParams


class MetricDecoder(Decoder):
    def __init__(self, params: MetricParams, in_dim: int) -> None:
        super().__init__()
        if params.hidden < 1 or params.lr_mul <= 0:
            raise ConfigError("decoder=metric needs hidden >= 1 and lr_mul > 0")
        self.task_adaptive, self.lr_mul = params.task_adaptive, params.lr_mul
        self.correction = nn.Sequential(nn.Linear(3, params.hidden), nn.ReLU(), nn.Linear(params.hidden, 1))
        nn.init.zeros_(self.correction[-1].weight)
        nn.init.zeros_(self.correction[-1].bias)

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, n_way: int,
                film: Optional[Film] = None, with_stats: bool = False) -> DecoderOutput:
        prototypes = class_means(support, support_labels, n_way)  # [T, N, D]
        spread = prototypes.var(1, unbiased=False) if n_way > 1 else prototypes.new_zeros(prototypes[:, 0].shape)  # [T, D]
        scale = spread.mean(-1).clamp(min=1e-6)[:, None, None, None]  # [T, 1, 1, 1]
        delta = query.unsqueeze(2) - prototypes.unsqueeze(1)  # [T, Q, N, D]
        squared = delta.square()
        task = (spread[:, None, None, :] if self.task_adaptive else torch.zeros_like(spread)[:, None, None, :]).expand_as(delta)
        inputs = torch.stack([squared / scale, delta.abs() / scale.sqrt(), task / scale], -1)  # [T, Q, N, D, 3]
        correction = self.correction(inputs).squeeze(-1) * scale  # [T, Q, N, D]
        logits = -(squared + correction).sum(-1)
        stats = None
        if with_stats:
            stats = {"prototype_norm": prototypes.norm(dim=-1).mean(-1),
                     "correction_share": correction.sum(-1).abs().mean((1, 2)) / squared.sum(-1).mean((1, 2)).clamp(min=1e-12)}
        return output(logits, stats=stats)


@DECODERS.register("metric", params=MetricParams)
def build_metric(params: MetricParams, in_dim: int, **_: object) -> MetricDecoder:
    return MetricDecoder(params, in_dim)
