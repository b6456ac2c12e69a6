"""The parameters of each encoder backbone (``configs/encoder/<name>.yaml`` extends them); torch-free."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class Conv4Params:
    name: str = "conv4"
    width: Optional[int] = None  # channels in every block; null = 64, the standard (32 is MAML's mini-ImageNet choice), or
    #   widths where given: setting both is refused, so that neither is silently unused
    blocks: int = 4  # each halves the resolution
    widths: Optional[list[int]] = None  # channels of each block, e.g. [32, 64, 128, 128] (the small late maps cost little); when given, width must be null
    global_pool: bool = False  # the last block max-pools its whole map (at 28 px a 2x2 window pools only the top-left 2x2 of the 3x3 map)


@dataclass
class ResNet12Params:
    name: str = "resnet12"
    channels: list[int] = field(default_factory=lambda: [64, 160, 320, 640])  # per residual block
    drop_rate: float = 0.0  # DropBlock drop probability in the last two blocks (MetaOptNet: 0.1); 0 = off
    block_size: int = 5  # DropBlock square size (on 84x84 inputs; clipped to the feature map)
    leaky_slope: float = 0.1


class Cell(enum.Enum):
    lstm = "lstm"
    gru = "gru"


class SequenceKind(enum.Enum):
    rows = "rows"  # one step per image row: H steps of C*W features
    patches = "patches"  # one step per patch, row-major: (H/p)*(W/p) steps of C*p*p features
    conv = "conv"  # a convolutional stem down by `patch`, then one step per row of its feature map


@dataclass
class RNNParams:
    name: str = "rnn"
    cell: Cell = Cell.lstm
    hidden: int = 128
    layers: int = 1
    bidirectional: bool = True
    sequence: SequenceKind = SequenceKind.rows
    patch: int = 4  # patch side for sequence=patches; the stem's downsampling for sequence=conv
    stem_channels: int = 64  # channels of the convolutional stem (sequence=conv)


class Stem(enum.Enum):
    conv = "conv"  # stride-2 conv3x3 + batch norm + ReLU layers down to the patch grid (Xiao et al. 2021)
    patch = "patch"  # one strided convolution per patch (the original ViT; what files before 2026-11-27 hold)


class Pooling(enum.Enum):
    cls = "cls"  # a learned class token
    mean = "mean"  # the mean of the patch tokens


@dataclass
class TransformerParams:
    name: str = "transformer"
    patch: int = 4  # patch side in pixels (28x28 -> 49 tokens)
    width: int = 128  # token dimension
    depth: int = 4  # encoder layers
    heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.0
    pooling: Pooling = Pooling.cls
    stem: Stem = Stem.conv
