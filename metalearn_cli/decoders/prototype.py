"""Prototypical decoder (Snell et al. 2017): class means of the support embeddings as the task's
classifier; logits are negative squared Euclidean distances to them. It has no parameters of its
own: all meta-knowledge lives in the encoder. At test it can refine the prototypes with the task's
unlabelled queries (Ren et al. 2018's soft k-means, ``eval.soft_kmeans_steps``): transductive.
"""

from __future__ import annotations

from typing import Optional

import torch

from metalearn_cli.decoders import DECODERS
from metalearn_cli.decoders.base import Decoder, DecoderOutput, Film, LinearHead, class_means, one_hot, output, unchanged
from metalearn_cli.params.decoders import PrototypeParams


class PrototypeDecoder(Decoder):
    refines_with_queries = True

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, n_way: int,
                film: Optional[Film] = None, with_stats: bool = False) -> DecoderOutput:
        prototypes = class_means(support, support_labels, n_way)  # [T, N, D]
        return output(distances(query, prototypes),
                      stats={"prototype_norm": prototypes.norm(dim=-1).mean(-1)} if with_stats else None)

    def refined(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, n_way: int, steps: int,
                with_stats: bool = False) -> DecoderOutput:
        """Ren et al. (2018)'s soft k-means refinement with the queries as the unlabelled set: each step, every
        prototype becomes the mean of its support embeddings (weight 1 each) and of every query weighted
        by the softmax of the current logits; the queries are then scored against the last prototypes.
        No query label is read. Transductive: each query's answer depends on the task's other queries."""
        labelled = one_hot(support_labels, n_way, support.dtype).transpose(1, 2)  # [T, N, S]
        prototypes = class_means(support, support_labels, n_way)
        for _ in range(steps):
            weights = distances(query, prototypes).softmax(-1).transpose(1, 2)  # [T, N, Q]
            prototypes = ((labelled @ support + weights @ query)
                          / (labelled.sum(-1) + weights.sum(-1)).unsqueeze(-1))
        return output(distances(query, prototypes),
                      stats={"prototype_norm": prototypes.norm(dim=-1).mean(-1)} if with_stats else None)

    def linear_head(self, support: torch.Tensor, support_labels: torch.Tensor, n_way: int) -> LinearHead:
        """``-||q - p||^2 = 2 q.p - ||p||^2 - ||q||^2``: weights ``2 p``, biases ``-||p||^2`` (Triantafillou et
        al. 2020's Proto-MAML head)."""
        prototypes = class_means(support, support_labels, n_way)
        return LinearHead(2 * prototypes, -prototypes.pow(2).sum(-1), unchanged)


def distances(query: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """``-||q - p||^2 [T, Q, N]`` as ``-(||q||^2 - 2 q.p + ||p||^2)``: one batched matmul."""
    return -(query.pow(2).sum(-1, keepdim=True) - 2 * query @ prototypes.transpose(1, 2)
             + prototypes.pow(2).sum(-1).unsqueeze(1))


@DECODERS.register("prototype", params=PrototypeParams)
def build_prototype(params: PrototypeParams, in_dim: int, **_: object) -> PrototypeDecoder:
    return PrototypeDecoder(in_dim)
