"""Decoders: an embedded support set -> the task's classifier, applied to embedded queries.

``forward(support [T, S, D], support_labels [T, S], query [T, Q, D], n_way) -> logits [T, Q, n_way]``.
A decoder turns the support set into task parameters (prototypes, generated weights, ...) and
scores the queries with them; it is built with the encoder's ``in_dim`` wired in.
"""

from __future__ import annotations

from torch import nn

from metalearn_cli.registry import Registry

DECODERS: Registry[nn.Module] = Registry("decoder")

from metalearn_cli.decoders import film, latent, linear, prototype  # noqa: E402,F401  (registers the decoders)
