"""Conv-4: the standard few-shot backbone (Vinyals et al. 2016; Snell et al. 2017).

Four blocks of conv3x3 -> batch norm -> ReLU -> max-pool 2x2 (computed as pool, then ReLU: the
same function); a 28x28 image becomes a ``width``-dim embedding (84x84: ``width * 25``).
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
        if params.width < 1 or params.blocks < 1:
            raise ConfigError("encoder=conv4 needs width >= 1 and blocks >= 1")
        if min(h, w) < 2**params.blocks:
            raise ConfigError(
                f"encoder=conv4 with {params.blocks} blocks needs images of at least {2**params.blocks} px; "
                f"the data set has {h}x{w}"
            )
        layers: list[nn.Module] = []
        for i in range(params.blocks):
            layers += [
                nn.Conv2d(c if i == 0 else params.width, params.width, 3, padding=1),
                TaskBatchNorm2d(params.width),
                # Pool before ReLU: the same function (max and ReLU commute) with the ReLU and its
                # backward on a quarter of the elements.
                nn.MaxPool2d(2),
                nn.ReLU(inplace=True),
            ]
            h, w = h // 2, w // 2
        self.net = nn.Sequential(*layers)
        self.out_dim = params.width * h * w
        self.film_channels = (params.width,) * params.blocks

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
