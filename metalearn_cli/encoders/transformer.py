"""A small Vision Transformer (Dosovitskiy et al. 2021): a convolutional stem (Xiao et al. 2021) or a
plain patch embedding, learned positions, pre-norm encoder layers, class-token or mean pooling.

Quirk it declares: the fused attention kernels have no double backward, so second-order gradients
run with the math kernel of scaled-dot-product attention.
"""

from __future__ import annotations

from typing import ContextManager

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from metalearn_cli.compat import rename_on_load
from metalearn_cli.encoders import ENCODERS, Encoder
from metalearn_cli.encoders.stem import ConvStem
from metalearn_cli.errors import ConfigError
from metalearn_cli.params.encoders import Pooling, Stem, TransformerParams


class VisionTransformer(Encoder):
    supports_vmap = False  # nn.TransformerEncoderLayer's fused paths are not vmap-safe

    def __init__(self, params: TransformerParams, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        c, h, w = image_shape
        if min(params.patch, params.width, params.depth, params.heads) < 1 or params.width % params.heads:
            raise ConfigError("encoder=transformer needs patch, width, depth, heads >= 1 and width divisible by heads")
        if h % params.patch or w % params.patch:
            raise ConfigError(f"encoder=transformer: patch={params.patch} does not divide the {h}x{w} images")
        tokens = (h // params.patch) * (w // params.patch)
        if params.stem is Stem.conv:
            self.embed: nn.Module = ConvStem(c, params.width, params.patch)
        else:
            self.embed = nn.Conv2d(c, params.width, params.patch, stride=params.patch)
        self.pooling = params.pooling
        self.cls = nn.Parameter(torch.zeros(1, 1, params.width)) if params.pooling is Pooling.cls else None
        self.positions = nn.Parameter(torch.randn(1, tokens + (self.cls is not None), params.width) * 0.02)
        layer = nn.TransformerEncoderLayer(params.width, params.heads, int(params.width * params.mlp_ratio),
                                           params.dropout, activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, params.depth, enable_nested_tensor=False)
        rename_on_load(self, {"encoder.": "blocks."})  # the name before 2026-11-27
        self.norm = nn.LayerNorm(params.width)
        self.out_dim = params.width

    def second_order_context(self) -> ContextManager[None]:
        return sdpa_kernel(SDPBackend.MATH)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.embed(images).flatten(2).transpose(1, 2)  # [B, tokens, width]
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.norm(self.blocks(x + self.positions))
        return x[:, 0] if self.cls is not None else x.mean(1)


@ENCODERS.register("transformer", params=TransformerParams)
def build_transformer(params: TransformerParams, image_shape: tuple[int, int, int]) -> VisionTransformer:
    return VisionTransformer(params, image_shape)
