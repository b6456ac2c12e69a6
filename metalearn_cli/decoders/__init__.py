"""Decoders: an embedded support set -> the task's classifier, applied to embedded queries.

``forward(support [T, S, D], support_labels [T, S], query [T, Q, D], n_way) -> logits [T, Q, n_way]``.
A decoder turns the support set into task parameters (prototypes, generated weights, ...) and
scores the queries with them; it is built with the encoder's ``in_dim`` wired in.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from metalearn_cli.registry import Registry

DECODERS: Registry[nn.Module] = Registry("decoder")


def record_stats(decoder: nn.Module, compute: Callable[[], dict[str, torch.Tensor]]) -> None:
    """Keep per-task norms ``[T]`` of what the decoder generated (prototypes, codes, weights,
    modulations) for ``eval.save_task_stats``. ``compute`` runs only when asked (no cost on the
    training path), and nothing is kept inside a torch.func transform (its tensors cannot leave it)."""
    if not getattr(decoder, "collect_stats", False):
        return
    from metalearn_cli.model import inside_vmap  # model imports this package: import at call time

    values = compute()
    if not any(inside_vmap(v) for v in values.values()):
        decoder.stats = {k: v.detach().float().cpu() for k, v in values.items()}

from metalearn_cli.decoders import film, latent, linear, prototype  # noqa: E402,F401  (registers the decoders)
