"""Recurrent encoder: an LSTM or GRU reads the image as a sequence (of rows, or of patches) and its
final hidden state (both directions when bidirectional) is the embedding.

Quirks it declares: no ``vmap`` (recurrent kernels are not batched over tasks), and cuDNN's RNN
kernels have no double backward, so second-order gradients run with cuDNN off.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch
from torch import nn

from metalearn_cli.encoders import ENCODERS, Encoder
from metalearn_cli.encoders.stem import ConvStem
from metalearn_cli.errors import ConfigError
from metalearn_cli.params.encoders import Cell, RNNParams, SequenceKind


class RNNEncoder(Encoder):
    supports_vmap = False

    def __init__(self, params: RNNParams, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        c, h, w = image_shape
        if params.hidden < 1 or params.layers < 1 or params.patch < 1:
            raise ConfigError("encoder=rnn needs hidden >= 1, layers >= 1 and patch >= 1")
        if params.sequence is not SequenceKind.rows and (h % params.patch or w % params.patch):
            raise ConfigError(f"encoder=rnn: patch={params.patch} does not divide the {h}x{w} images")
        self.sequence, self.patch = params.sequence, params.patch
        if params.sequence is SequenceKind.conv:
            self.stem = ConvStem(c, params.stem_channels, params.patch)
            features = params.stem_channels * (w // params.patch)
        else:
            features = c * w if params.sequence is SequenceKind.rows else c * params.patch**2
        rnn = nn.LSTM if params.cell is Cell.lstm else nn.GRU
        self.rnn = rnn(features, params.hidden, params.layers, batch_first=True, bidirectional=params.bidirectional)
        self.out_dim = params.hidden * (2 if params.bidirectional else 1)

    def second_order_context(self) -> ContextManager[None]:
        return torch.backends.cudnn.flags(enabled=False) if torch.cuda.is_available() else contextlib.nullcontext()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.sequence is SequenceKind.conv:
            images = self.stem(images)
        b, c, h, w = images.shape
        if self.sequence is not SequenceKind.patches:
            seq = images.permute(0, 2, 1, 3).reshape(b, h, c * w)
        else:
            p = self.patch
            seq = images.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).reshape(b, -1, c * p * p)
        _, state = self.rnn(seq.contiguous())
        hidden = state[0] if isinstance(state, tuple) else state  # [layers * directions, B, hidden]
        directions = 2 if self.rnn.bidirectional else 1
        return hidden[-directions:].permute(1, 0, 2).reshape(b, -1)


@ENCODERS.register("rnn", params=RNNParams)
def build_rnn(params: RNNParams, image_shape: tuple[int, int, int]) -> RNNEncoder:
    return RNNEncoder(params, image_shape)
