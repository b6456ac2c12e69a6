"""FiLM decoder after CNAPs (Requeima et al. 2019; reference code cambridge-mlg/cnaps).

- A *set encoder* of its own (conv3x3 -> batch norm -> ReLU -> max-pool blocks, global average
  pool, mean over the support images) turns the task's support images into a task representation
  ``z``. The backbone never runs an unmodulated pass, so its batch-norm statistics only ever see
  modulated features.
- Residual-MLP generators map ``z`` to FiLM scales and shifts for every batch norm of the backbone
  (conv4: each block's one; resnet12: the three of each residual body), applied right after it as
  ``x * (1 + gamma) + beta``: a shared residual block, then one residual block and a linear layer
  per site (the last layer starts at zero: an untrained model is the unmodulated backbone).
- The classifier is CNAPs': each class's weights and bias are generated from the mean ``mu_c`` of its
  adapted support features, ``w_c = mu_c + f_w(mu_c)`` and ``b_c = f_b(mu_c)`` (residual MLPs, last
  layers at zero), logits ``q . w_c + b_c``.
- Regulariser: 1e-3 x the mean square of each site's ``[gamma, beta]`` (CNAPs penalises its
  generators' outputs in the same spirit; the weight is ours).

CNAPs adapted a frozen backbone pre-trained by classification; the ``cnaps_*`` presets do the same
(``pretrain=supervised``, ``trainer.freeze_encoder=true``). Needs an encoder with ``film_channels``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from metalearn_cli.decoders import DECODERS
from metalearn_cli.decoders.base import Decoder, DecoderOutput, Film, class_means, output
from metalearn_cli.encoders.norm import TaskBatchNorm2d
from metalearn_cli.errors import ConfigError
from metalearn_cli.params.decoders import FiLMParams


class ResidualMLP(nn.Module):
    """``x + MLP(x)`` (CNAPs' dense residual block); ``out`` != ``in``: a plain MLP to ``out``."""

    def __init__(self, dim: int, out: Optional[int] = None, zero_last: bool = False) -> None:
        super().__init__()
        out = dim if out is None else out
        self.residual = out == dim
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, out))
        if zero_last:
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x) if self.residual else self.net(x)


class SetEncoder(nn.Module):
    """Support images ``[T, S, C, H, W]`` -> task representation ``[T, hidden]``, permutation-invariant."""

    def __init__(self, image_shape: tuple[int, int, int], hidden: int) -> None:
        super().__init__()
        c, h, w = image_shape
        blocks = max(1, min(5, int(math.log2(max(min(h, w), 2)))))
        layers: list[nn.Module] = []
        for i in range(blocks):
            layers += [nn.Conv2d(c if i == 0 else hidden, hidden, 3, padding=1), TaskBatchNorm2d(hidden), nn.ReLU(),
                       nn.MaxPool2d(2)]
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.net(images.flatten(0, 1)).mean(dim=(-2, -1))  # [T*S, hidden]
        return x.unflatten(0, images.shape[:2]).mean(1)


class FiLMDecoder(Decoder):
    modulates_encoder = True

    def __init__(self, params: FiLMParams, in_dim: int, film_channels: tuple[int, ...],
                 image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        h = params.hidden
        if h < 1:
            raise ConfigError("decoder=film needs hidden >= 1")
        self.set_encoder = SetEncoder(image_shape, h)
        self.shared = ResidualMLP(h)
        self.film = nn.ModuleList(nn.Sequential(ResidualMLP(h), nn.ReLU(), nn.Linear(h, 2 * c)) for c in film_channels)
        for site in self.film:
            nn.init.zeros_(site[-1].weight)
            nn.init.zeros_(site[-1].bias)
        self.weight_generator = ResidualMLP(in_dim, zero_last=True)
        self.bias_generator = ResidualMLP(in_dim, 1, zero_last=True)

    def modulation(self, support_images: torch.Tensor, support_labels: torch.Tensor) -> Film:
        """Per-task ``(gamma, beta)`` of shape ``[T, C]`` for each FiLM site of the encoder."""
        z = self.shared(self.set_encoder(support_images))
        return [tuple(site(z).chunk(2, dim=-1)) for site in self.film]  # type: ignore[misc]

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, n_way: int,
                film: Optional[Film] = None, with_stats: bool = False) -> DecoderOutput:
        means = class_means(support, support_labels, n_way)  # [T, N, D]
        weight = self.weight_generator(means)
        bias = self.bias_generator(means)[..., 0]
        logits = query @ weight.transpose(1, 2) + bias.unsqueeze(1)
        film = film or []
        regularizer = sum(torch.cat([g, b], -1).square().mean() for g, b in film) * 1e-3 if film else None
        stats = None
        if with_stats:  # mean over sites of ||gamma||, ||beta|| per task
            zeros = weight.new_zeros(weight.shape[0])
            stats = {"gamma_norm": torch.stack([g.norm(dim=-1) for g, _ in film]).mean(0) if film else zeros,
                     "beta_norm": torch.stack([b.norm(dim=-1) for _, b in film]).mean(0) if film else zeros,
                     "weight_norm": weight.norm(dim=-1).mean(-1)}
        return output(logits, regularizer, stats)


@DECODERS.register("film", params=FiLMParams)
def build_film(params: FiLMParams, in_dim: int, film_channels: tuple[int, ...] = (), encoder_name: str = "",
               image_shape: tuple[int, int, int] = (1, 28, 28), **_: object) -> FiLMDecoder:
    if not film_channels:
        raise ConfigError(f"decoder=film needs an encoder that accepts FiLM modulation (conv4, resnet12); {encoder_name} does not")
    return FiLMDecoder(params, in_dim, film_channels, image_shape)
