"""Latent decoder in the style of LEO (Rusu et al. 2019): the support set is encoded into a
low-dimensional Gaussian latent code per class, the code is decoded into that class's classifier
weights, and optionally the codes (not the weights) are adapted by gradient steps on the support
loss: an inner loop in latent space.

Per class n: every support embedding is encoded (``encoder``), related to every other support
example of the task (``relation`` on concatenated pairs, averaged over partners), and averaged
over the class's examples into the mean and log-variance of ``z_n``. Training samples ``z_n``;
evaluation uses the mean. ``decoder`` maps ``z_n`` to the mean of ``w_n`` (LEO also samples ``w_n``;
that drowned the signal in noise early in training here); logits are ``query @ w_n``. Regularisers of the paper, exposed as
``self.regularizer`` after each forward for the strategy to add to its loss: the KL divergence of
q(z | support) from N(0, I), the encoder penalty ``||stopgrad(z') - z||^2`` between adapted and
initial codes, and an orthogonality penalty on the decoder's weight rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from metalearn_cli.decoders import DECODERS, record_stats
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


class LatentDecoder(nn.Module):
    def __init__(self, params: LatentParams, in_dim: int) -> None:
        super().__init__()
        if params.latent_dim < 1 or params.latent_steps < 0 or params.latent_lr <= 0:
            raise ConfigError("decoder=latent needs latent_dim >= 1, latent_steps >= 0 and latent_lr > 0")
        self.p, self.in_dim = params, in_dim
        k = params.latent_dim
        self.dropout = nn.Dropout(params.dropout)
        self.encoder = nn.Linear(in_dim, k)
        self.relation = nn.Sequential(nn.Linear(2 * k, 2 * k), nn.ReLU(), nn.Linear(2 * k, 2 * k), nn.ReLU(),
                                      nn.Linear(2 * k, 2 * k))
        self.decoder = nn.Linear(k, 2 * in_dim)
        if params.prototype_residual:
            # ReZero-style gate: training starts exactly at ProtoNets and the decoded weights earn their way in.
            self.gate = nn.Parameter(torch.zeros(()))
        self.regularizer = torch.zeros(())
        self.support_losses: list[torch.Tensor] = []  # for inspection and tests: support loss before each latent step

    def _gaussian(self, stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, logvar = stats.chunk(2, dim=-1)
        std = torch.exp(0.5 * logvar.clamp(-10, 10))
        sample = mean + std * torch.randn_like(std) if self.training else mean
        return sample, mean, std

    def weights(self, z: torch.Tensor) -> torch.Tensor:
        # The mean of the weight distribution: sampling the weights too (as LEO does) drowned the
        # signal in noise at the start of training here; the code z is still sampled.
        return self.decoder(z)[..., : self.in_dim]  # [T, N, D]

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

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, n_way: int) -> torch.Tensor:
        e = self.encoder(self.dropout(support))  # [T, S, k]
        s = e.shape[1]
        pairs = torch.cat([e.unsqueeze(2).expand(-1, -1, s, -1), e.unsqueeze(1).expand(-1, s, -1, -1)], dim=-1)
        related = self.relation(pairs).mean(2)  # [T, S, 2k]
        onehot = F.one_hot(support_labels, n_way).to(related.dtype)  # [T, S, N]
        counts = onehot.sum(1).unsqueeze(-1)  # [T, N, 1]
        per_class = onehot.transpose(1, 2) @ related / counts  # [T, N, 2k]
        prototypes = onehot.transpose(1, 2) @ support / counts if self.p.prototype_residual else None
        z, mean, std = self._gaussian(per_class)
        kl = (0.5 * (std.square() + mean.square() - 1) - torch.log(std)).sum(-1).mean()

        z0, self.support_losses = z, []
        if self.p.latent_steps:
            with torch.enable_grad():
                if not z.requires_grad:
                    z = z.detach().requires_grad_()
                for _ in range(self.p.latent_steps):
                    logits = self._logits(support, *self.classifier(z, prototypes))
                    loss = F.cross_entropy(logits.flatten(0, 1), support_labels.flatten())
                    self.support_losses.append(loss.detach())
                    (g,) = torch.autograd.grad(loss, z, create_graph=self.training)
                    z = z - self.p.latent_lr * g
        w, b = self.classifier(z, prototypes)
        record_stats(self, lambda: {"code_norm": z.norm(dim=-1).mean(-1), "initial_code_norm": z0.norm(dim=-1).mean(-1),
                                    "weight_norm": w.norm(dim=-1).mean(-1)})
        d = self.decoder.weight  # [2D, k]
        normed = d / d.norm(dim=0, keepdim=True).clamp(min=1e-8)
        corr = normed.T @ normed  # [k, k] correlations of the decoder's columns
        ortho = (corr - torch.eye(corr.shape[0], device=corr.device)).square().mean()
        self.regularizer = (self.p.kl_weight * kl + self.p.encoder_penalty * (z.detach() - z0).square().sum(-1).mean()
                            + self.p.orthogonality * ortho)
        return self._logits(query, w, b)


@DECODERS.register("latent", params=LatentParams)
def build_latent(params: LatentParams, in_dim: int, **_: object) -> LatentDecoder:
    return LatentDecoder(params, in_dim)
