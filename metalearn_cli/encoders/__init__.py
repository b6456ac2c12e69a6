"""Encoders (backbones): images ``[B, C, H, W]`` -> embeddings ``[B, out_dim]``.

Each encoder is an ``nn.Module`` that declares its own quirks, so strategies never special-case a
backbone: ``out_dim`` (wired into the decoder), ``supports_vmap`` (may tasks be batched with
``torch.func.vmap``), ``second_order_context()`` (a context needed for double backward) and
``film_channels`` (the channels of each FiLM site, one per batch norm: ``forward(images,
film=[(gamma, beta), ...])`` with per-image ``[B, C]`` scales and shifts, applied right after that
batch norm as ``x * (1 + gamma) + beta``).
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch
from torch import nn

from metalearn_cli.registry import Registry


class Encoder(nn.Module):
    """Base for encoders: the protocol strategies rely on."""

    out_dim: int
    supports_vmap: bool = True
    film_channels: tuple[int, ...] = ()  # channels of each FiLM site (after each batch norm); empty = no FiLM support

    def second_order_context(self) -> ContextManager[None]:
        """Context under which second-order gradients through this encoder are correct."""
        return contextlib.nullcontext()


def vmap_safe(module: nn.Module, enabled: bool = True) -> None:
    """Switch the batch norms under ``module`` (encoder and decoder alike) to forms whose second
    derivatives are correct under ``vmap``."""
    from metalearn_cli.encoders.norm import TaskBatchNorm2d

    for m in module.modules():
        if isinstance(m, TaskBatchNorm2d):
            m.split_affine = enabled


def inside_vmap(x: torch.Tensor) -> bool:
    """Whether ``x`` is wrapped by a torch.func transform (images only are, under vmap)."""
    level = getattr(getattr(torch._C, "_functorch", None), "maybe_get_level", None)
    return level is not None and level(x) != -1


def modulate(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """FiLM (Perez et al. 2018): per-image, per-channel ``x * (1 + gamma) + beta`` on ``[B, C, H, W]``."""
    return x * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]


ENCODERS: Registry[Encoder] = Registry("encoder")

from metalearn_cli.encoders import conv4, resnet12, rnn, transformer  # noqa: E402,F401  (registers the encoders)
