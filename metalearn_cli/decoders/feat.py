"""FEAT decoder (Ye et al. 2020, "Few-shot learning via embedding adaptation with set-to-set
functions"; reference code Sha-Lab/FEAT): a Transformer as the *task* encoder.

The class prototypes of a task are a set; one multi-head self-attention layer over that set adapts
each prototype to the others (which classes it must be told apart from), FEAT's way:
``p' = LayerNorm(p + Dropout(W_o Attention(W_q p, W_k p, W_v p)))``. Queries are scored by
``-||q - p'_n||^2 / temperature``. Deviation: FEAT's optional contrastive regulariser (attention over
support and query instances with the query labels) is not implemented; decoders never see query
labels. FEAT starts from a pre-trained encoder: the ``feat_*`` presets pre-train first.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from metalearn_cli.decoders import DECODERS
from metalearn_cli.decoders.base import Decoder, DecoderOutput, Film, class_means, output
from metalearn_cli.errors import ConfigError
from metalearn_cli.params.decoders import FEATParams


class FEATDecoder(Decoder):
    def __init__(self, params: FEATParams, in_dim: int) -> None:
        super().__init__()
        if params.heads < 1 or in_dim % params.heads or not 0 <= params.dropout < 1 or params.temperature <= 0:
            raise ConfigError(f"decoder=feat needs heads >= 1 dividing the embedding width ({in_dim}), 0 <= dropout < 1 "
                              "and temperature > 0")
        self.p = params
        self.attention = nn.MultiheadAttention(in_dim, params.heads, dropout=params.dropout, batch_first=True)
        self.dropout = nn.Dropout(params.dropout)
        self.norm = nn.LayerNorm(in_dim) if params.layer_norm else nn.Identity()

    def adapt(self, prototypes: torch.Tensor) -> torch.Tensor:
        """The set-to-set function: ``[T, N, D]`` prototypes, each adapted to the task's others."""
        attended, _ = self.attention(prototypes, prototypes, prototypes, need_weights=False)
        return self.norm(prototypes + self.dropout(attended))

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, n_way: int,
                film: Optional[Film] = None, with_stats: bool = False) -> DecoderOutput:
        prototypes = class_means(support, support_labels, n_way)  # [T, N, D]
        adapted = self.adapt(prototypes)
        logits = -(query.pow(2).sum(-1, keepdim=True) - 2 * query @ adapted.transpose(1, 2)
                   + adapted.pow(2).sum(-1).unsqueeze(1)) / self.p.temperature
        stats = None
        if with_stats:
            stats = {"prototype_norm": prototypes.norm(dim=-1).mean(-1), "adapted_norm": adapted.norm(dim=-1).mean(-1),
                     "adaptation_shift": (adapted - prototypes).norm(dim=-1).mean(-1)}
        return output(logits, stats=stats)


@DECODERS.register("feat", params=FEATParams)
def build_feat(params: FEATParams, in_dim: int, **_: object) -> FEATDecoder:
    return FEATDecoder(params, in_dim)
