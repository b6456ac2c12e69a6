"""Prototypical decoder (Snell et al. 2017): class means of the support embeddings as the task's
classifier; logits are negative squared Euclidean distances to them. It has no parameters of its
own: all meta-knowledge lives in the encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from metalearn_cli.decoders import DECODERS, record_stats


@dataclass
class PrototypeParams:
    name: str = "prototype"


class PrototypeDecoder(nn.Module):
    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, n_way: int) -> torch.Tensor:
        onehot = F.one_hot(support_labels, n_way).to(support.dtype)  # [T, S, N]
        prototypes = onehot.transpose(1, 2) @ support / onehot.sum(1).unsqueeze(-1)  # [T, N, D]
        record_stats(self, lambda: {"prototype_norm": prototypes.norm(dim=-1).mean(-1)})
        # ||q - p||^2 = ||q||^2 - 2 q.p + ||p||^2, as one batched matmul.
        return -(
            query.pow(2).sum(-1, keepdim=True)
            - 2 * query @ prototypes.transpose(1, 2)
            + prototypes.pow(2).sum(-1).unsqueeze(1)
        )


@DECODERS.register("prototype", params=PrototypeParams)
def build_prototype(params: PrototypeParams, in_dim: int, **_: object) -> PrototypeDecoder:
    return PrototypeDecoder(in_dim)
