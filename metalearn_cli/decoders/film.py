"""FiLM decoder in the style of CNAPs (Requeima et al. 2019): a permutation-invariant task encoder
over the whole support set produces FiLM scales and shifts for every block of the encoder, and each
class's linear classifier is generated from its mean adapted feature.

The generators start at zero, so an untrained model is the unmodulated encoder with class-mean
classifiers. Needs an encoder with ``film_channels`` (conv4, resnet12); others are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from metalearn_cli.decoders import DECODERS
from metalearn_cli.decoders.base import Decoder, DecoderOutput, Film, class_means, output
from metalearn_cli.errors import ConfigError


@dataclass
class FiLMParams:
    name: str = "film"
    hidden: int = 128  # width of the task encoder and the generators


class FiLMDecoder(Decoder):
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

    def modulation(self, support: torch.Tensor, support_labels: torch.Tensor) -> Film:
        """Per-task ``(gamma, beta)`` of shape ``[T, C]`` for each encoder block."""
        task = self.task_encoder(support).mean(1)  # [T, h]: invariant to the order of the support set
        return [tuple(layer(task).chunk(2, dim=-1)) for layer in self.film]  # type: ignore[misc]

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, n_way: int,
                film: Optional[Film] = None, with_stats: bool = False) -> DecoderOutput:
        means = class_means(support, support_labels, n_way)  # [T, N, D]
        generated = self.classifier(means)
        weight = means + generated[..., :-1]
        bias = generated[..., -1] - 0.5 * means.square().sum(-1)  # at init: -1/2 ||q - mean||^2 up to a per-query constant
        logits = query @ weight.transpose(1, 2) + bias.unsqueeze(1)
        film = film or []
        # Keep the modulations small: 1e-3 x the mean square of each block's [gamma, beta].
        regularizer = sum(torch.cat([g, b], -1).square().mean() for g, b in film) * 1e-3 if film else None
        stats = None
        if with_stats:  # mean over blocks of ||gamma_b||, ||beta_b|| per task
            stats = {"gamma_norm": torch.stack([g.norm(dim=-1) for g, _ in film]).mean(0) if film else weight.new_zeros(weight.shape[0]),
                     "beta_norm": torch.stack([b.norm(dim=-1) for _, b in film]).mean(0) if film else weight.new_zeros(weight.shape[0]),
                     "weight_norm": weight.norm(dim=-1).mean(-1)}
        return output(logits, regularizer, stats)


@DECODERS.register("film", params=FiLMParams)
def build_film(params: FiLMParams, in_dim: int, film_channels: tuple[int, ...] = (), encoder_name: str = "",
               **_: object) -> FiLMDecoder:
    if not film_channels:
        raise ConfigError(f"decoder=film needs an encoder that accepts FiLM modulation (conv4, resnet12); {encoder_name} does not")
    return FiLMDecoder(params, in_dim, film_channels)
