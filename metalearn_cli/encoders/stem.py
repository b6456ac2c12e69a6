"""A convolutional stem for the sequence encoders (Xiao et al. 2021, "Early convolutions help
transformers see better"): stride-2 conv3x3 -> batch norm -> ReLU layers down to the patch grid,
then a 1x1 convolution to the token width. On small images a ViT with a plain patch embedding, or an
RNN reading raw pixel rows, learns far more slowly than a CNN; a few early convolutions close most
of that gap.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from metalearn_cli.encoders.norm import TaskBatchNorm2d
from metalearn_cli.errors import ConfigError


class ConvStem(nn.Module):
    """``[B, C, H, W]`` -> ``[B, out, H / factor, W / factor]`` (``factor`` a power of two)."""

    def __init__(self, in_channels: int, out_channels: int, factor: int) -> None:
        super().__init__()
        steps = int(math.log2(factor)) if factor >= 1 else -1
        if steps < 0 or 2**steps != factor:
            raise ConfigError(f"a convolutional stem downsamples by a power of two; {factor} is not one")
        layers: list[nn.Module] = []
        c = in_channels
        for i in range(steps):
            width = max(8, out_channels // 2 ** (steps - i))
            layers += [nn.Conv2d(c, width, 3, stride=2, padding=1, bias=False), TaskBatchNorm2d(width), nn.ReLU(inplace=True)]
            c = width
        layers.append(nn.Conv2d(c, out_channels, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)
