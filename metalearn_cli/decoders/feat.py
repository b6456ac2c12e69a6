"""FEAT decoder (Ye et al. 2020, "Few-shot learning via embedding adaptation with set-to-set
functions"; reference code Sha-Lab/FEAT): a Transformer as the *task* encoder.

The class prototypes of a task are a set; one self-attention layer over that set adapts each
prototype to the others (which classes it must be told apart from), as FEAT's code does:
``p' = LayerNorm(p + Dropout_0.5(W_o Attention(W_q p, W_k p, W_v p)))``, with dropout 0.1 on the
attention weights. Queries are scored by ``-||q - p'_n||^2 / temperature`` (64 on Conv-4's 64-d
features). In training, FEAT's contrastive term (:meth:`FEATDecoder.labelled_loss`, weighted by
``balance``) enters the strategy's meta-loss: each class's support and query instances are one set,
adapted by the same attention; every instance is scored against the adapted sets' centres by
``-||x - c_n||^2 / temperature2``. The decoder's learning rate is ``lr_mul`` (10) times the
optimizer's, as FEAT's optimizer has it for everything but the encoder. Remaining deviations (docs/
algorithms.md): ``nn.MultiheadAttention``'s input projections carry biases, FEAT's do not; FEAT's
initialisation of them is not copied. FEAT starts from a pre-trained encoder: the ``feat_*`` presets
pre-train first.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from metalearn_cli.decoders import DECODERS
from metalearn_cli.decoders.base import Decoder, DecoderOutput, Film, LinearHead, class_means, output, unchanged
from metalearn_cli.errors import ConfigError
from metalearn_cli.params.decoders import FEATParams


class FEATDecoder(Decoder):
    def __init__(self, params: FEATParams, in_dim: int) -> None:
        super().__init__()
        if (params.heads < 1 or in_dim % params.heads or not 0 <= params.dropout < 1 or not 0 <= params.attention_dropout < 1
                or params.temperature <= 0 or params.temperature2 <= 0 or params.balance < 0 or params.lr_mul <= 0):
            raise ConfigError(f"decoder=feat needs heads >= 1 dividing the embedding width ({in_dim}), dropout and "
                              "attention_dropout in [0, 1), temperature and temperature2 > 0, balance >= 0 and lr_mul > 0")
        self.p, self.lr_mul = params, params.lr_mul
        self.attention = nn.MultiheadAttention(in_dim, params.heads, dropout=params.attention_dropout, batch_first=True)
        self.dropout = nn.Dropout(params.dropout)
        self.norm = nn.LayerNorm(in_dim) if params.layer_norm else nn.Identity()

    def adapt(self, prototypes: torch.Tensor) -> torch.Tensor:
        """The set-to-set function: ``[T, N, D]`` sets (a task's prototypes), each member adapted to the others."""
        attended, _ = self.attention(prototypes, prototypes, prototypes, need_weights=False)
        return self.norm(prototypes + self.dropout(attended))

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, n_way: int,
                film: Optional[Film] = None, with_stats: bool = False) -> DecoderOutput:
        prototypes = class_means(support, support_labels, n_way)  # [T, N, D]
        adapted = self.adapt(prototypes)
        logits = -squared_distances(query, adapted) / self.p.temperature
        stats = None
        if with_stats:
            stats = {"prototype_norm": prototypes.norm(dim=-1).mean(-1), "adapted_norm": adapted.norm(dim=-1).mean(-1),
                     "adaptation_shift": (adapted - prototypes).norm(dim=-1).mean(-1)}
        return output(logits, stats=stats)

    def linear_head(self, support: torch.Tensor, support_labels: torch.Tensor, n_way: int) -> LinearHead:
        """The adapted prototypes' squared-distance classifier: weights ``2 p' / T``, biases ``-||p'||^2 / T``."""
        adapted = self.adapt(class_means(support, support_labels, n_way))
        t = self.p.temperature
        return LinearHead(2 * adapted / t, -adapted.pow(2).sum(-1) / t, unchanged)

    def labelled_loss(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                      query_labels: torch.Tensor, n_way: int) -> Optional[torch.Tensor]:
        """FEAT's contrastive term: each class's instances (support and query) as one set through the
        attention, and every instance classified against the adapted sets' centres."""
        if self.p.balance == 0:
            return None
        x = torch.cat([support, query], 1)  # [T, M, D]
        if x.shape[1] % n_way:
            raise ConfigError("decoder.balance > 0 (FEAT's contrastive term) needs as many images of every class in a "
                              "training task; set decoder.balance=0")
        labels = torch.cat([support_labels, query_labels], 1)
        order = labels.argsort(dim=1, stable=True)  # instances grouped by class; every class has M / n_way
        grouped = x.gather(1, order.unsqueeze(-1).expand_as(x)).unflatten(1, (n_way, -1))  # [T, N, K+Q, D]
        centres = self.adapt(grouped.flatten(0, 1)).unflatten(0, grouped.shape[:2]).mean(2)  # [T, N, D]
        logits = -squared_distances(x, centres) / self.p.temperature2
        return self.p.balance * F.cross_entropy(logits.flatten(0, 1), labels.flatten())


def squared_distances(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """``||x_i - c_n||^2`` for ``x [T, M, D]`` and ``centres [T, N, D]``: ``[T, M, N]``."""
    return (x.pow(2).sum(-1, keepdim=True) - 2 * x @ centres.transpose(1, 2) + centres.pow(2).sum(-1).unsqueeze(1))


@DECODERS.register("feat", params=FEATParams)
def build_feat(params: FEATParams, in_dim: int, **_: object) -> FEATDecoder:
    return FEATDecoder(params, in_dim)
