"""A tiny generated data set for tests and smoke runs: learnable, deterministic, no files.

Each class is a random coarse binary glyph; its examples are the glyph shifted by a few pixels
with pixel noise, so a few meta-iterations already beat chance and a bug that breaks learning shows.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from metalearn_cli.data import DATASETS, FewShotData, check_host_memory
from metalearn_cli.episodes import ClassImages
from metalearn_cli.errors import ConfigError
from metalearn_cli.params.datasets import SyntheticParams


@DATASETS.register("synthetic", params=SyntheticParams)
def build_synthetic(params: SyntheticParams) -> FewShotData:
    counts = (params.train_classes, params.val_classes, params.test_classes)
    if min(counts) < 1 or params.images_per_class < 1 or params.image_size < 4 or params.channels not in (1, 3):
        raise ConfigError("dataset=synthetic needs >= 1 class per split, >= 1 image per class, image_size >= 4 "
                          "and 1 or 3 channels")
    g = torch.Generator().manual_seed(params.seed)
    total, m, size, c = sum(counts), params.images_per_class, params.image_size, params.channels
    check_host_memory(4 * total * m * c * size * size, f"dataset=synthetic with image_size={size}")
    coarse = (torch.rand(total, c, 7, 7, generator=g) > 0.5).float()
    glyphs = F.interpolate(coarse, size=(size, size), mode="nearest")  # [total, C, H, W]
    s = params.shift
    shifts = torch.randint(-s, s + 1, (total, m, 2), generator=g)
    images = torch.empty(total, m, c, size, size)
    for i in range(total):
        for j in range(m):
            dy, dx = shifts[i, j].tolist()
            images[i, j] = torch.roll(glyphs[i], shifts=(dy, dx), dims=(-2, -1))
    images += params.noise * torch.randn(images.shape, generator=g)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    names = [f"glyph{i:04d}" for i in range(total)]
    a, b = counts[0], counts[0] + counts[1]
    return FewShotData(
        name="synthetic",
        train=ClassImages(images[:a], names[:a]),
        val=ClassImages(images[a:b], names[a:b]),
        test=ClassImages(images[b:], names[b:]),
    )
