"""Encoders (backbones): images ``[B, C, H, W]`` -> embeddings ``[B, out_dim]``.

Each encoder is an ``nn.Module`` that declares its own quirks, so strategies never special-case a
backbone: ``out_dim`` (wired into the decoder), ``supports_vmap`` (may tasks be batched with
``torch.func.vmap``) and ``second_order_context()`` (a context needed for double backward).
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

from torch import nn

from metalearn_cli.registry import Registry


class Encoder(nn.Module):
    """Base for encoders: the protocol strategies rely on."""

    out_dim: int
    supports_vmap: bool = True

    def vmap_safe(self, enabled: bool = True) -> None:
        """Switch layers to forms whose second derivatives are correct under ``vmap``."""
        from metalearn_cli.encoders.norm import TaskBatchNorm2d

        for module in self.modules():
            if isinstance(module, TaskBatchNorm2d):
                module.split_affine = enabled

    def second_order_context(self) -> ContextManager[None]:
        """Context under which second-order gradients through this encoder are correct."""
        return contextlib.nullcontext()


ENCODERS: Registry[Encoder] = Registry("encoder")

from metalearn_cli.encoders import conv4, resnet12, rnn, transformer  # noqa: E402,F401  (registers the encoders)
