"""Conv-4: the standard few-shot backbone (Vinyals et al. 2016; Snell et al. 2017).

Four blocks of conv3x3 -> batch norm -> ReLU -> max-pool 2x2 (computed as pool, then ReLU: the
same function); a 28x28 image becomes a ``width``-dim embedding (84x84: ``width * 25``).
``widths`` gives each block its own channels: the first block's 28x28 maps dominate a CPU step's memory
traffic and the last blocks' 7x7 and 3x3 maps cost little, so [32, 64, 128, 128] trains faster than 64
everywhere and embeds in 128 dimensions. ``global_pool`` (not in Snell et al.'s Conv-4) makes the last pool
take its whole map: at 28 px the standard 2x2 window keeps only the top-left 2x2 of the 3x3 map.
"""

from __future__ import annotations


import torch
from torch import nn

from metalearn_cli.encoders import ENCODERS, Encoder, modulate
from metalearn_cli.encoders.norm import TaskBatchNorm2d
from metalearn_cli.errors import ConfigError
from metalearn_cli.params.encoders import Conv4Params


class Conv4(Encoder):
    def __init__(self, params: Conv4Params, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        c, h, w = image_shape
        if params.widths is not None and len(params.widths) == 0:  # not taken as null: the user typed a list
            raise ConfigError("encoder.widths=[] names no block; give one width per block (e.g. [32,64,128,128]), or "
                              "encoder.widths=null for encoder.width channels in every block")
        if params.widths and params.width is not None:  # one of the two, so that neither is silently unused
            raise ConfigError(f"encoder.width={params.width} and encoder.widths={list(params.widths)} are both set, and only "
                              "one can apply: encoder.width=null keeps the widths, encoder.widths=null gives every block "
                              "encoder.width channels (the default encoder=conv4_fast sets widths; encoder=conv4 does not)")
        widths = list(params.widths) if params.widths else [64 if params.width is None else params.width] * params.blocks
        if min(widths, default=0) < 1 or params.blocks < 1 or len(widths) != params.blocks:
            raise ConfigError(f"encoder=conv4 needs width >= 1, blocks >= 1 and, if given, one of encoder.widths per block "
                              f"(blocks={params.blocks}, widths={params.widths})")
        if min(h, w) < 2**params.blocks:
            raise ConfigError(
                f"encoder=conv4 with {params.blocks} blocks needs images of at least {2**params.blocks} px; "
                f"the data set has {h}x{w}"
            )
        layers: list[nn.Module] = []
        for i, width in enumerate(widths):
            last_global = params.global_pool and i == len(widths) - 1
            layers += [
                nn.Conv2d(c, width, 3, padding=1),
                TaskBatchNorm2d(width),
                # Pool before ReLU: the same function (max and ReLU commute) with the ReLU and its
                # backward on a quarter of the elements.
                nn.AdaptiveMaxPool2d(1) if last_global else nn.MaxPool2d(2),
                nn.ReLU(inplace=True),
            ]
            c, h, w = (width, 1, 1) if last_global else (width, h // 2, w // 2)
        self.net = nn.Sequential(*layers)
        self.out_dim = c * h * w
        self.film_channels = tuple(widths)

    def forward(self, images: torch.Tensor, film: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        if film is None:
            return self.net(images).flatten(1)
        x = images
        for i, (gamma, beta) in enumerate(film):  # FiLM after batch norm, before the non-linearity
            conv, norm, pool, act = self.net[4 * i : 4 * i + 4]
            x = pool(act(modulate(norm(conv(x)), gamma, beta)))
        return x.flatten(1)


@ENCODERS.register("conv4", params=Conv4Params)
def build_conv4(params: Conv4Params, image_shape: tuple[int, int, int]) -> Conv4:
    return Conv4(params, image_shape)
