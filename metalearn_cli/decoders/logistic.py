"""Logistic-regression decoder: the classifier of Tian et al.'s RFS baseline (2020), fitted per task.

Support and query embeddings are L2-normalised; a multinomial logistic regression with an L2
penalty on its weights (scikit-learn's objective, ``sum CE + ||W||^2 / (2 C)``, unpenalised bias,
RFS's ``C = 1``) is fitted to each task's support set by ``steps`` of Nesterov-accelerated gradient
descent with step ``1 / L`` (``L``: the loss's curvature bound, from the largest eigenvalue of the
support set's Gram matrix), all tasks of a batch at once. It has no parameters of its own: with pre-trained features and
``trainer.iterations=0`` it is the RFS baseline. The fit is made of differentiable operations, so a
strategy may also meta-train the encoder through it (MetaOptNet-style, by unrolling).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from metalearn_cli.decoders import DECODERS
from metalearn_cli.decoders.base import Decoder, DecoderOutput, Film, one_hot, output
from metalearn_cli.errors import ConfigError
from metalearn_cli.params.decoders import LogisticParams


def fit_logistic(x: torch.Tensor, labels: torch.Tensor, n_way: int, c: float, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights ``[T, N, D]`` and biases ``[T, N]`` minimising ``sum_i CE(x_i) + ||W||^2 / (2c)`` per task."""
    t, s, d = x.shape
    y = one_hot(labels, n_way, x.dtype)
    # Curvature bound per task: the softmax's Hessian is at most 1/2, so L = lambda_max([x 1][x 1]^T) / 2 + 1/c.
    gram = x @ x.transpose(1, 2) + 1
    lipschitz = torch.linalg.eigvalsh(gram.detach().double()).amax(-1).to(x.dtype)[:, None, None] / 2 + 1 / c
    w = x.new_zeros(t, n_way, d)
    b = x.new_zeros(t, n_way)
    w_prev, b_prev = w, b
    for k in range(steps):
        m = k / (k + 3)  # Nesterov's momentum
        vw, vb = w + m * (w - w_prev), b + m * (b - b_prev)
        residual = torch.softmax(x @ vw.transpose(1, 2) + vb[:, None], -1) - y  # [T, S, N]
        grad_w = residual.transpose(1, 2) @ x + vw / c
        grad_b = residual.sum(1)
        w_prev, b_prev = w, b
        w, b = vw - grad_w / lipschitz, vb - grad_b / lipschitz[..., 0]
    return w, b


class LogisticDecoder(Decoder):
    def __init__(self, params: LogisticParams) -> None:
        super().__init__()
        if params.C <= 0 or params.steps < 1:
            raise ConfigError("decoder=logistic needs C > 0 and steps >= 1")
        self.p = params

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, n_way: int,
                film: Optional[Film] = None, with_stats: bool = False) -> DecoderOutput:
        if self.p.normalize:
            support, query = F.normalize(support, dim=-1), F.normalize(query, dim=-1)
        w, b = fit_logistic(support, support_labels, n_way, self.p.C, self.p.steps)
        stats = {"weight_norm": w.norm(dim=-1).mean(-1)} if with_stats else None
        return output(query @ w.transpose(1, 2) + b[:, None], stats=stats)


@DECODERS.register("logistic", params=LogisticParams)
def build_logistic(params: LogisticParams, **_: object) -> LogisticDecoder:
    return LogisticDecoder(params)
