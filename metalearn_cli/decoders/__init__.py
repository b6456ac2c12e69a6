"""Decoders, one module per option, behind the protocol of :mod:`metalearn_cli.decoders.base`.

A decoder turns the support set into task parameters (prototypes, generated weights, ...) and
scores the queries with them; it is built with the encoder's ``in_dim`` wired in.
"""

from __future__ import annotations

from metalearn_cli.decoders.base import Decoder, DecoderOutput, class_means
from metalearn_cli.registry import Registry

DECODERS: Registry[Decoder] = Registry("decoder")

from metalearn_cli.decoders import feat, film, latent, linear, logistic, metric, prototype  # noqa: E402,F401  (registers the decoders)

__all__ = ["DECODERS", "Decoder", "DecoderOutput", "class_means"]
