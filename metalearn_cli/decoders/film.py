"""FiLM decoder in the style of CNAPs (Requeima et al. 2019): a permutation-invariant task encoder
over the whole support set produces FiLM scales and shifts for every block of the encoder, and each
class's linear classifier is generated from its mean adapted feature.

The generators start at zero, so an untrained model is the unmodulated encoder with class-mean
classifiers. Needs an encoder with ``film_channels`` (conv4, resnet12); others are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from metalearn_cli.decoders import DECODERS, record_stats
from metalearn_cli.errors import ConfigError


@dataclass
class FiLMParams:
    name: str = "film"
    hidden: int = 128  # width of the task encoder and the generators


class FiLMDecoder(nn.Module):
    modulates_encoder = True

    def __init__(self, params: FiLMParams, in_dim: int, film_channels: tuple[int, ...]) -> None:
        super().__init__()
        h = params.hidden
        self.task_encoder = nn.Sequential(nn.Linear(in_dim, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU())  # deep sets
        self.film = nn.ModuleList(nn.Linear(h, 2 * c) for c in film_channels)
        self.classifier = nn.Sequential(nn.Linear(in_dim, h), nn.ReLU(), nn.Linear(h, in_dim + 1))
        for layer in (*self.film, self.classifier[-1]):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.regularizer = torch.zeros(())

    def modulation(self, support: torch.Tensor, support_labels: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-task ``(gamma, beta)`` of shape ``[T, C]`` for each encoder block."""
        task = self.task_encoder(support).mean(1)  # [T, h]: invariant to the order of the support set
        params = [layer(task) for layer in self.film]
        if getattr(self, "collect_stats", False):  # mean over blocks of ||gamma_b||, ||beta_b|| per task
            self._film_norms = [torch.stack([p.chunk(2, dim=-1)[i].norm(dim=-1) for p in params]).mean(0) for i in (0, 1)]
        self.regularizer = sum(p.square().mean() for p in params) * 1e-3  # keep modulations small
        return [tuple(p.chunk(2, dim=-1)) for p in params]  # type: ignore[misc]

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, n_way: int) -> torch.Tensor:
        onehot = F.one_hot(support_labels, n_way).to(support.dtype)
        means = onehot.transpose(1, 2) @ support / onehot.sum(1).unsqueeze(-1)  # [T, N, D]
        generated = self.classifier(means)
        weight = means + generated[..., :-1]
        bias = generated[..., -1] - 0.5 * means.square().sum(-1)  # at init: -||q - mean||^2 up to a per-query constant
        record_stats(self, lambda: {"gamma_norm": self._film_norms[0], "beta_norm": self._film_norms[1],
                                    "weight_norm": weight.norm(dim=-1).mean(-1)})
        return query @ weight.transpose(1, 2) + bias.unsqueeze(1)


@DECODERS.register("film", params=FiLMParams)
def build_film(params: FiLMParams, in_dim: int, film_channels: tuple[int, ...] = (), encoder_name: str = "",
               **_: object) -> FiLMDecoder:
    if not film_channels:
        raise ConfigError(f"decoder=film needs an encoder that accepts FiLM modulation (conv4, resnet12); {encoder_name} does not")
    return FiLMDecoder(params, in_dim, film_channels)
