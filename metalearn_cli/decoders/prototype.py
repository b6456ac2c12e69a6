"""Prototypical decoder (Snell et al. 2017): class means of the support embeddings as the task's
classifier; logits are negative squared Euclidean distances to them. It has no parameters of its
own: all meta-knowledge lives in the encoder.
"""

from __future__ import annotations

from typing import Optional

import torch

from metalearn_cli.decoders import DECODERS
from metalearn_cli.decoders.base import Decoder, DecoderOutput, Film, LinearHead, class_means, output, unchanged
from metalearn_cli.params.decoders import PrototypeParams


class PrototypeDecoder(Decoder):
    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, n_way: int,
                film: Optional[Film] = None, with_stats: bool = False) -> DecoderOutput:
        prototypes = class_means(support, support_labels, n_way)  # [T, N, D]
        # ||q - p||^2 = ||q||^2 - 2 q.p + ||p||^2, as one batched matmul.
        logits = -(
            query.pow(2).sum(-1, keepdim=True)
            - 2 * query @ prototypes.transpose(1, 2)
            + prototypes.pow(2).sum(-1).unsqueeze(1)
        )
        return output(logits, stats={"prototype_norm": prototypes.norm(dim=-1).mean(-1)} if with_stats else None)

    def linear_head(self, support: torch.Tensor, support_labels: torch.Tensor, n_way: int) -> LinearHead:
        """``-||q - p||^2 = 2 q.p - ||p||^2 - ||q||^2``: weights ``2 p``, biases ``-||p||^2`` (Triantafillou et
        al. 2020's Proto-MAML head)."""
        prototypes = class_means(support, support_labels, n_way)
        return LinearHead(2 * prototypes, -prototypes.pow(2).sum(-1), unchanged)


@DECODERS.register("prototype", params=PrototypeParams)
def build_prototype(params: PrototypeParams, in_dim: int, **_: object) -> PrototypeDecoder:
    return PrototypeDecoder(in_dim)
