"""ResNet-12, the standard few-shot backbone of TADAM (Oreshkin et al. 2018) and MetaOptNet
(Lee et al. 2019): four residual blocks (64-160-320-640 channels), each three conv3x3-BN-LeakyReLU
layers with a 1x1 shortcut and a 2x2 max-pool, optional DropBlock (Ghiasi et al. 2018).
Works on 28x28 (-> 1x1) and 84x84 (-> 5x5) inputs; the feature map is average-pooled.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from metalearn_cli.encoders import ENCODERS, Encoder, modulate
from metalearn_cli.encoders.norm import TaskBatchNorm2d
from metalearn_cli.errors import ConfigError
from metalearn_cli.params.encoders import ResNet12Params


class DropBlock(nn.Module):
    """Drops square regions of a feature map during training (Ghiasi et al. 2018)."""

    def __init__(self, drop_rate: float, block_size: int) -> None:
        super().__init__()
        self.drop_rate, self.block_size = drop_rate, block_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_rate <= 0:
            return x
        size = min(self.block_size, x.shape[-1], x.shape[-2])
        gamma = self.drop_rate / size**2
        seeds = (torch.rand_like(x[:, :1]) < gamma).to(x.dtype)
        mask = 1 - F.max_pool2d(seeds, size, stride=1, padding=size // 2)[..., : x.shape[-2], : x.shape[-1]]
        return x * mask * (mask.numel() / mask.sum().clamp(min=1.0))


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, slope: float, drop: nn.Module) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(3):
            layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False), TaskBatchNorm2d(cout)]
            if i < 2:
                layers.append(nn.LeakyReLU(slope))
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), TaskBatchNorm2d(cout))
        self.act, self.pool, self.drop = nn.LeakyReLU(slope), nn.MaxPool2d(2), drop

    def forward(self, x: torch.Tensor, film: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        if film is None:
            y = self.body(x)
        else:  # FiLM right after each batch norm of the body (CNAPs' FiLM ResNet; the shortcut is left as is)
            y = x
            for i in range(3):
                y = modulate(self.body[3 * i + 1](self.body[3 * i](y)), *film[i])
                if i < 2:
                    y = self.body[3 * i + 2](y)
        return self.drop(self.pool(self.act(y + self.shortcut(x))))


class ResNet12(Encoder):
    def __init__(self, params: ResNet12Params, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        c, h, w = image_shape
        if len(params.channels) != 4 or min(params.channels) < 1:
            raise ConfigError("encoder=resnet12 needs four positive channel counts, e.g. [64, 160, 320, 640]")
        if min(h, w) < 16:
            raise ConfigError(f"encoder=resnet12 needs images of at least 16 px; the data set has {h}x{w}")
        if not 0 <= params.drop_rate < 1 or params.block_size < 1:
            raise ConfigError("encoder=resnet12 needs 0 <= drop_rate < 1 and block_size >= 1")
        blocks, cin = [], c
        for i, cout in enumerate(params.channels):
            drop = DropBlock(params.drop_rate, params.block_size) if i >= 2 else nn.Identity()
            blocks.append(ResidualBlock(cin, cout, params.leaky_slope, drop))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.out_dim = params.channels[-1]
        self.film_channels = tuple(c for c in params.channels for _ in range(3))  # three batch norms per residual body

    def forward(self, images: torch.Tensor, film: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        x = images
        for i, block in enumerate(self.blocks):
            x = block(x, None if film is None else film[3 * i: 3 * i + 3])
        return x.mean(dim=(-2, -1))


@ENCODERS.register("resnet12", params=ResNet12Params)
def build_resnet12(params: ResNet12Params, image_shape: tuple[int, int, int]) -> ResNet12:
    return ResNet12(params, image_shape)
