"""Latent decoder, LEO (Rusu et al. 2019): the support set is encoded into a low-dimensional
Gaussian latent code per class, the code is decoded into that class's classifier weights, the codes
are adapted by gradient steps on the support loss (an inner loop in latent space), and the decoded
weights are fine-tuned by a few more gradient steps with learned per-dimension rates.

Per class n: every support embedding is encoded (``code_encoder``), related to every other support
example of the task (``relation`` on concatenated pairs, averaged over partners), and averaged
over the class's examples into the mean and the raw scale ``u`` of ``z_n``, with ``std = max(exp(u) - 1,
1e-10)`` as LEO's code (near 0 at the start; ``code_std: logvar`` is ``exp(u / 2)``). Training
samples ``z_n``; evaluation uses the mean. ``weight_decoder`` maps ``z_n`` to the weights ``w_n``: with
``sample_weights`` to their mean and standard deviation, sampled in training as LEO does
(``std = exp(u) - 1 + sqrt(2 / D)``, floored), otherwise to the mean alone (no unused outputs).
``latent_steps`` steps on the codes (rate ``latent_lr``; with ``learn_rates`` one learned rate per
code dimension, as LEO's), then
``finetune_steps`` steps on the weights themselves (per-dimension rates, learned, starting at
``finetune_lr``); logits are ``query @ w_n``. Regularisers of the paper, exposed as the output's
``regularizer``, which every strategy adds to its loss: the KL divergence of q(z | support) from
N(0, I) (analytic, averaged over code dimensions as LEO's one-sample estimate is), the encoder penalty ``||stopgrad(z') - z||^2`` between adapted and initial codes, an
orthogonality penalty on the decoder's weight rows, and an L2 penalty on the decoder's own weights.
``dropout`` applies wherever the embeddings enter, as LEO's code: the code encoder, every inner and
fine-tuning loss and the query logits (training only).
LEO trained all of this on fixed features pre-trained by classification: the ``leo_*`` presets
pre-train and freeze the encoder (``pretrain=supervised``, ``trainer.freeze_encoder=true``).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from metalearn_cli.compat import rename_on_load
from metalearn_cli.decoders import DECODERS
from metalearn_cli.decoders.base import Decoder, DecoderOutput, Film, LinearHead, class_means, output, unchanged
from metalearn_cli.errors import ConfigError
from metalearn_cli.params.decoders import CodeStd, LatentParams


class LatentDecoder(Decoder):
    def __init__(self, params: LatentParams, in_dim: int) -> None:
        super().__init__()
        if params.latent_dim < 1 or params.latent_steps < 0 or params.latent_lr <= 0:
            raise ConfigError("decoder=latent needs latent_dim >= 1, latent_steps >= 0 and latent_lr > 0")
        if params.finetune_steps < 0 or params.finetune_lr <= 0 or params.l2 < 0:
            raise ConfigError("decoder=latent needs finetune_steps >= 0, finetune_lr > 0 and l2 >= 0")
        self.p, self.in_dim = params, in_dim
        k = params.latent_dim
        self.dropout = nn.Dropout(params.dropout)
        self.code_encoder = nn.Linear(in_dim, k)
        self.relation = nn.Sequential(nn.Linear(2 * k, 2 * k), nn.ReLU(), nn.Linear(2 * k, 2 * k), nn.ReLU(),
                                      nn.Linear(2 * k, 2 * k))
        self.weight_decoder = nn.Linear(k, (2 if params.sample_weights else 1) * in_dim)
        if params.prototype_residual:
            # ReZero-style gate: training starts exactly at ProtoNets and the decoded weights earn their way in.
            self.gate = nn.Parameter(torch.zeros(()))
        if params.learn_rates:  # one per code dimension (LEO's inner_lr is [1, 1, k])
            self.log_latent_lr = nn.Parameter(torch.full((k,), float(params.latent_lr)).log())
        if params.finetune_steps:
            self.finetune_lrs = nn.Parameter(torch.full((in_dim,), float(params.finetune_lr)))
        rename_on_load(self, {"encoder.": "code_encoder.", "decoder.": "weight_decoder."})  # names before 2026-11-27
        self._register_load_state_dict_pre_hook(self._drop_unused_outputs)

    def _drop_unused_outputs(self, state: dict[str, torch.Tensor], prefix: str, *_: object) -> None:
        """Files from before 2026-11-27 decoded 2D outputs and used the first D (the means): keep those.
        Files from before 2026-12-01 learned one latent step size: every code dimension starts from it."""
        rate = prefix + "log_latent_lr"
        if self.p.learn_rates and rate in state and state[rate].dim() == 0:
            state[rate] = state[rate].expand(self.p.latent_dim).clone()
        for name in ("weight_decoder.weight", "weight_decoder.bias"):
            key = prefix + name
            if not self.p.sample_weights and key in state and state[key].shape[0] == 2 * self.in_dim:
                state[key] = state[key][: self.in_dim]

    def _gaussian(self, stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, raw = stats.chunk(2, dim=-1)
        if self.p.code_std is CodeStd.leo:
            std = (torch.exp(raw.clamp(max=10)) - 1).clamp(min=1e-10)
        else:
            std = torch.exp(0.5 * raw.clamp(-10, 10))
        sample = mean + std * torch.randn_like(std) if self.training else mean
        return sample, mean, std

    def weights(self, z: torch.Tensor) -> torch.Tensor:
        """Per-class weights ``[T, N, D]``: sampled in training with ``sample_weights``, else the mean."""
        out = self.weight_decoder(z)
        if not self.p.sample_weights:
            return out
        mean, raw = out.chunk(2, dim=-1)
        if not self.training:
            return mean
        std = (torch.exp(raw) - 1 + (2 / self.in_dim) ** 0.5).clamp(min=1e-10)  # LEO's offset: std starts near sqrt(2/D)
        return mean + std * torch.randn_like(std)

    @property
    def latent_step_size(self) -> torch.Tensor | float:
        return self.log_latent_lr.exp() if self.p.learn_rates else self.p.latent_lr

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

    def _descend(self, x: torch.Tensor, steps: int, rate: torch.Tensor | float,
                 loss_of: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``steps`` gradient steps on ``x`` against ``loss_of(x)``, differentiable in training (so the
        rates and everything upstream are meta-learned); returns ``x`` and the loss before each step."""
        losses: list[torch.Tensor] = []
        if not steps:
            return x, losses
        with torch.enable_grad():
            if not x.requires_grad:
                x = x.detach().requires_grad_()
            for _ in range(steps):
                loss = loss_of(x)
                losses.append(loss.detach())
                (g,) = torch.autograd.grad(loss, x, create_graph=self.training)
                x = x - rate * g
        return x, losses

    def adapt_codes(self, z: torch.Tensor, support: torch.Tensor, support_labels: torch.Tensor,
                    prototypes: Optional[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``latent_steps`` gradient steps on the codes against the support loss (LEO's inner loop)."""
        def loss_of(codes: torch.Tensor) -> torch.Tensor:
            logits = self._logits(self.dropout(support), *self.classifier(codes, prototypes))
            return F.cross_entropy(logits.flatten(0, 1), support_labels.flatten())

        return self._descend(z, self.p.latent_steps, self.latent_step_size, loss_of)

    def finetune(self, w: torch.Tensor, b: torch.Tensor | None, support: torch.Tensor,
                 support_labels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """LEO's fine-tuning: ``finetune_steps`` gradient steps on the decoded weights themselves, with a
        learned rate per embedding dimension."""
        def loss_of(weights: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(self._logits(self.dropout(support), weights, b).flatten(0, 1), support_labels.flatten())

        rates = self.finetune_lrs if self.p.finetune_steps else 0.0
        return self._descend(w, self.p.finetune_steps, rates, loss_of)

    def codes(self, support: torch.Tensor, support_labels: torch.Tensor, n_way: int) -> torch.Tensor:
        """Per-class code statistics ``[T, N, 2k]`` (mean and log-variance) from the support set."""
        e = self.code_encoder(self.dropout(support))  # [T, S, k]
        s = e.shape[1]
        pairs = torch.cat([e.unsqueeze(2).expand(-1, -1, s, -1), e.unsqueeze(1).expand(-1, s, -1, -1)], dim=-1)
        related = self.relation(pairs).mean(2)  # [T, S, 2k]
        return class_means(related, support_labels, n_way)

    def penalty(self, mean: torch.Tensor, std: torch.Tensor, z: torch.Tensor, z0: torch.Tensor) -> torch.Tensor:
        """KL(q(z | support) || N(0, I)), the encoder penalty and the decoder's orthogonality penalty, weighted."""
        kl = (0.5 * (std.square() + mean.square() - 1) - torch.log(std)).mean()  # per dimension: LEO's mean
        d = self.weight_decoder.weight  # [D, k], or [2D, k] with sample_weights
        normed = d / d.norm(dim=0, keepdim=True).clamp(min=1e-8)
        corr = normed.T @ normed  # [k, k] correlations of the decoder's columns
        ortho = (corr - torch.eye(corr.shape[0], device=corr.device)).square().mean()
        l2 = sum(m.weight.square().sum() for m in self.modules() if isinstance(m, nn.Linear)) / 2 if self.p.l2 else 0.0
        return (self.p.kl_weight * kl + self.p.encoder_penalty * (z.detach() - z0).square().mean()  # means, as LEO's
                + self.p.orthogonality * ortho + self.p.l2 * l2)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings as the decoder reads them (LEO's code L2-normalises them)."""
        return F.normalize(x, dim=-1) if self.p.normalize else x

    def _generate(self, support: torch.Tensor, support_labels: torch.Tensor, n_way: int) -> tuple[torch.Tensor, ...]:
        """Codes, their adaptation, the decoded weights and their fine-tuning, on features as :meth:`features`
        gives them: ``(w, b, decoded, z, z0, mean, std)``."""
        prototypes = class_means(support, support_labels, n_way) if self.p.prototype_residual else None
        z0, mean, std = self._gaussian(self.codes(support, support_labels, n_way))
        z, _ = self.adapt_codes(z0, support, support_labels, prototypes)
        decoded, b = self.classifier(z, prototypes)
        w, _ = self.finetune(decoded, b, support, support_labels)
        return w, b, decoded, z, z0, mean, std

    def linear_head(self, support: torch.Tensor, support_labels: torch.Tensor, n_way: int) -> LinearHead:
        """The weights (and, with ``prototype_residual``, biases) after LEO's latent and fine-tuning steps."""
        w, b, *_ = self._generate(self.features(support), support_labels, n_way)
        return LinearHead(w, b, self.features if self.p.normalize else unchanged)

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, n_way: int,
                film: Optional[Film] = None, with_stats: bool = False) -> DecoderOutput:
        support, query = self.features(support), self.features(query)
        w, b, decoded, z, z0, mean, std = self._generate(support, support_labels, n_way)
        stats = None
        if with_stats:
            stats = {"code_norm": z.norm(dim=-1).mean(-1), "initial_code_norm": z0.norm(dim=-1).mean(-1),
                     "weight_norm": w.norm(dim=-1).mean(-1)}
            if self.p.finetune_steps:
                stats["finetune_shift"] = (w - decoded).norm(dim=-1).mean(-1)
        return output(self._logits(self.dropout(query), w, b), self.penalty(mean, std, z, z0), stats)


@DECODERS.register("latent", params=LatentParams)
def build_latent(params: LatentParams, in_dim: int, **_: object) -> LatentDecoder:
    return LatentDecoder(params, in_dim)
