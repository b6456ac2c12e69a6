"""Latent decoder in the style of LEO (Rusu et al. 2019): the support set is encoded into a
low-dimensional Gaussian latent code per class, the code is decoded into that class's classifier
weights, and optionally the codes (not the weights) are adapted by gradient steps on the support
loss: an inner loop in latent space.

Per class n: every support embedding is encoded (``code_encoder``), related to every other support
example of the task (``relation`` on concatenated pairs, averaged over partners), and averaged
over the class's examples into the mean and log-variance of ``z_n``. Training samples ``z_n``;
evaluation uses the mean. ``weight_decoder`` maps ``z_n`` to the mean of ``w_n`` (LEO also samples ``w_n``;
that drowned the signal in noise early in training here); logits are ``query @ w_n``. Regularisers of the paper, exposed as
the output's ``regularizer``, which every strategy adds to its loss: the KL divergence of
q(z | support) from N(0, I), the encoder penalty ``||stopgrad(z') - z||^2`` between adapted and
initial codes, and an orthogonality penalty on the decoder's weight rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from metalearn_cli.compat import rename_on_load
from metalearn_cli.decoders import DECODERS
from metalearn_cli.decoders.base import Decoder, DecoderOutput, Film, class_means, output
from metalearn_cli.errors import ConfigError


@dataclass
class LatentParams:
    name: str = "latent"
    latent_dim: int = 64  # size of each class's code
    latent_steps: int = 0  # inner-loop gradient steps on the codes; 0 = amortised only
    latent_lr: float = 1.0  # inner-loop step size in latent space
    kl_weight: float = 1e-3  # weight of KL(q(z|support) || N(0, I))
    encoder_penalty: float = 1e-9  # weight of ||stopgrad(adapted z) - z||^2 (LEO's beta)
    orthogonality: float = 1e-3  # weight of the decoder's orthogonality penalty (LEO's lambda)
    dropout: float = 0.0  # on the support embeddings before encoding
    prototype_residual: bool = False  # classifier = the prototype classifier + gate * decoded weights (gate starts at 0)


class LatentDecoder(Decoder):
    def __init__(self, params: LatentParams, in_dim: int) -> None:
        super().__init__()
        if params.latent_dim < 1 or params.latent_steps < 0 or params.latent_lr <= 0:
            raise ConfigError("decoder=latent needs latent_dim >= 1, latent_steps >= 0 and latent_lr > 0")
        self.p, self.in_dim = params, in_dim
        k = params.latent_dim
        self.dropout = nn.Dropout(params.dropout)
        self.code_encoder = nn.Linear(in_dim, k)
        self.relation = nn.Sequential(nn.Linear(2 * k, 2 * k), nn.ReLU(), nn.Linear(2 * k, 2 * k), nn.ReLU(),
                                      nn.Linear(2 * k, 2 * k))
        self.weight_decoder = nn.Linear(k, 2 * in_dim)
        if params.prototype_residual:
            # ReZero-style gate: training starts exactly at ProtoNets and the decoded weights earn their way in.
            self.gate = nn.Parameter(torch.zeros(()))
        rename_on_load(self, {"encoder.": "code_encoder.", "decoder.": "weight_decoder."})  # names before 2026-11-27

    def _gaussian(self, stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, logvar = stats.chunk(2, dim=-1)
        std = torch.exp(0.5 * logvar.clamp(-10, 10))
        sample = mean + std * torch.randn_like(std) if self.training else mean
        return sample, mean, std

    def weights(self, z: torch.Tensor) -> torch.Tensor:
        # The mean of the weight distribution: sampling the weights too (as LEO does) drowned the
        # signal in noise at the start of training here; the code z is still sampled.
        return self.weight_decoder(z)[..., : self.in_dim]  # [T, N, D]

    def classifier(self, z: torch.Tensor, prototypes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-class weights ``[T, N, D]`` and biases ``[T, N]`` (None: no bias) of the task's linear classifier.
        With prototypes, ``2 c_n`` and ``-||c_n||^2`` are the squared-Euclidean prototype classifier."""
        w = self.weights(z)
        if prototypes is None:
            return w, None
        return 2 * prototypes + self.gate * w, -prototypes.square().sum(-1)

    @staticmethod
    def _logits(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        logits = x @ w.transpose(1, 2)
        return logits if b is None else logits + b.unsqueeze(1)

    def adapt_codes(self, z: torch.Tensor, support: torch.Tensor, support_labels: torch.Tensor,
                    prototypes: Optional[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``latent_steps`` gradient steps on the codes against the support loss (LEO's inner loop);
        returns the adapted codes and the support loss before each step."""
        losses: list[torch.Tensor] = []
        if not self.p.latent_steps:
            return z, losses
        with torch.enable_grad():
            if not z.requires_grad:
                z = z.detach().requires_grad_()
            for _ in range(self.p.latent_steps):
                logits = self._logits(support, *self.classifier(z, prototypes))
                loss = F.cross_entropy(logits.flatten(0, 1), support_labels.flatten())
                losses.append(loss.detach())
                (g,) = torch.autograd.grad(loss, z, create_graph=self.training)
                z = z - self.p.latent_lr * g
        return z, losses

    def codes(self, support: torch.Tensor, support_labels: torch.Tensor, n_way: int) -> torch.Tensor:
        """Per-class code statistics ``[T, N, 2k]`` (mean and log-variance) from the support set."""
        e = self.code_encoder(self.dropout(support))  # [T, S, k]
        s = e.shape[1]
        pairs = torch.cat([e.unsqueeze(2).expand(-1, -1, s, -1), e.unsqueeze(1).expand(-1, s, -1, -1)], dim=-1)
        related = self.relation(pairs).mean(2)  # [T, S, 2k]
        return class_means(related, support_labels, n_way)

    def penalty(self, mean: torch.Tensor, std: torch.Tensor, z: torch.Tensor, z0: torch.Tensor) -> torch.Tensor:
        """KL(q(z | support) || N(0, I)), the encoder penalty and the decoder's orthogonality penalty, weighted."""
        kl = (0.5 * (std.square() + mean.square() - 1) - torch.log(std)).sum(-1).mean()
        d = self.weight_decoder.weight  # [2D, k]
        normed = d / d.norm(dim=0, keepdim=True).clamp(min=1e-8)
        corr = normed.T @ normed  # [k, k] correlations of the decoder's columns
        ortho = (corr - torch.eye(corr.shape[0], device=corr.device)).square().mean()
        return (self.p.kl_weight * kl + self.p.encoder_penalty * (z.detach() - z0).square().sum(-1).mean()
                + self.p.orthogonality * ortho)

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, n_way: int,
                film: Optional[Film] = None, with_stats: bool = False) -> DecoderOutput:
        prototypes = class_means(support, support_labels, n_way) if self.p.prototype_residual else None
        z0, mean, std = self._gaussian(self.codes(support, support_labels, n_way))
        z, _ = self.adapt_codes(z0, support, support_labels, prototypes)
        w, b = self.classifier(z, prototypes)
        stats = None
        if with_stats:
            stats = {"code_norm": z.norm(dim=-1).mean(-1), "initial_code_norm": z0.norm(dim=-1).mean(-1),
                     "weight_norm": w.norm(dim=-1).mean(-1)}
        return output(self._logits(query, w, b), self.penalty(mean, std, z, z0), stats)


@DECODERS.register("latent", params=LatentParams)
def build_latent(params: LatentParams, in_dim: int, **_: object) -> LatentDecoder:
    return LatentDecoder(params, in_dim)
