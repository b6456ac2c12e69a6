"""Per-image random transforms of training images (``torchvision.transforms.v2``): one owner for the
pre-training stage (``pretrain.augment``) and meta-training tasks (``trainer.augment``). Evaluation
never draws random transforms: only the training loops (and test-time fine-tuning's pseudo-queries)
call :func:`augmentation`. Test-time augmentation (``eval.tta_*``, :class:`TtaViews`) uses fixed
copies, shifted, turned, scaled and sheared by set amounts, so a test repeats exactly. RFS's test
protocol (``eval.support_copies``, :class:`SupportCopies`) draws random copies of the support images,
under a seed of the test's own, so it too repeats exactly.

Kinds (:class:`metalearn_cli.schema.Augment`): ``crop`` (random crops from a 10%-padded copy),
``crop_flip`` (+ horizontal flips), ``crop_flip_jitter`` (+ colour jitter, colour images), and
``affine``: Koch et al.'s (2015) distortions for Omniglot, each image its own rotation in ±10°,
shear factors in ±0.3 on each axis, scales in [0.8, 1.2] on each axis and a shift of up to 2 px at
their 105 px (1.9% of the side), bilinear. Koch et al. drew each of the four with probability 1/2;
here all four are drawn every time, from ranges that include no change. It is one batched
``grid_sample`` on the images' device rather than ``v2.RandomAffine`` image by image: 360 images
(a 60-way training task) take 32.7 ms through v2 on 2 CPU cores, a third of a meta-iteration.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from metalearn_cli.errors import ConfigError

KOCH_TRANSLATE = 2 / 105  # Koch et al.'s ±2 px at 105 x 105, as a fraction of the side


def koch_affine(images: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` -> each image under its own (θ, ρx, ρy, sx, sy, tx, ty), drawn uniformly as
    Koch et al. did; the torch generator of the images' device draws them (saved in checkpoints)."""
    u = torch.rand(images.shape[0], 7, device=images.device) * 2 - 1  # U(-1, 1)
    return warp(images, u[:, 0] * math.radians(10), u[:, 1:3] * 0.3, 1 + u[:, 3:5] * 0.2,
                u[:, 5:7] * 2 * KOCH_TRANSLATE)  # grid coordinates span 2 per side


def warp(images: torch.Tensor, angle: torch.Tensor, shear: torch.Tensor, scale: torch.Tensor,
         shift: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]``, each image under its own affine map: rotation ``angle`` ``[B]`` (radians), shear
    factors ``[B, 2]`` (x by y, y by x), scales ``[B, 2]`` and shift ``[B, 2]`` (grid units, 2 per side);
    bilinear, zeros filling what moves in."""
    cos, sin, one = angle.cos(), angle.sin(), torch.ones_like(angle)
    rotate = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    skew = torch.stack([torch.stack([one, shear[:, 0]], -1), torch.stack([shear[:, 1], one], -1)], -2)
    forward = rotate @ skew @ torch.diag_embed(scale)  # where an image point goes
    (a, b), (c, d) = forward[:, 0].unbind(-1), forward[:, 1].unbind(-1)  # closed-form inverse: no device sync
    inverse = torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2) / (a * d - b * c)[:, None, None]
    theta = torch.cat([inverse, -(inverse @ shift[..., None])], -1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augmentation(kind: Any, dataset_default: Any, image_shape: tuple[int, int, int]) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """A function from a batch ``[B, C, H, W]`` in [0, 1] to the batch with each image transformed by
    its own random draw; None for ``none``. ``auto`` is the data set's default (``dataset_default``)."""
    name = getattr(kind, "value", kind)
    name = getattr(dataset_default, "value", dataset_default) if name == "auto" else name
    if name in (None, "none"):
        return None
    from torchvision.transforms import v2

    if name == "affine":
        return koch_affine
    c, h, w = image_shape
    parts: list[nn.Module] = [v2.RandomCrop((h, w), padding=max(1, h // 10))]  # shifts of up to 10%
    if "flip" in name:
        parts.append(v2.RandomHorizontalFlip())
    if "jitter" in name and c == 3:
        parts.append(v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4))
    transform = v2.Compose(parts)
    return lambda batch: torch.stack([transform(image) for image in batch])  # each image its own draw


def shift_views(shift: int) -> tuple[tuple[int, int], ...]:
    """The ``(dy, dx)`` offsets of test-time augmentation: the image itself and its copies moved by
    ``shift`` pixels up, down, left and right (just the image for 0)."""
    if shift == 0:
        return ((0, 0),)
    return ((0, 0), (shift, 0), (-shift, 0), (0, shift), (0, -shift))


def shifted(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``[..., H, W]`` moved ``dy`` pixels down and ``dx`` right, zeros filling what moved in (no wrap)."""
    if dy == 0 and dx == 0:
        return images
    h, w, p = images.shape[-2], images.shape[-1], max(abs(dy), abs(dx))
    padded = F.pad(images, (p, p, p, p))
    return padded[..., p - dy:p - dy + h, p - dx:p - dx + w]


def turned(images: torch.Tensor, degrees: float = 0.0, scale: float = 1.0, shear: float = 0.0) -> torch.Tensor:
    """``[..., C, H, W]`` turned by ``degrees``, scaled by ``scale`` and sheared along x by ``shear``
    (each image the same map, about its centre: :func:`warp`)."""
    flat = images.reshape(-1, *images.shape[-3:])
    n, float_images = flat.shape[0], flat.float()
    fixed = partial(torch.full, device=images.device)
    out = warp(float_images, fixed((n,), math.radians(degrees)), torch.stack([fixed((n,), shear), fixed((n,), 0.0)], -1),
               fixed((n, 2), scale), fixed((n, 2), 0.0))
    return out.to(images.dtype).reshape(images.shape)


@dataclass(frozen=True)
class TtaViews:
    """Test-time augmentation (``eval.tta_*``): every test image, support and query alike, is embedded as
    the mean of the features of itself and fixed copies: moved ``shift`` pixels up, down, left and right;
    turned by +-``rotate`` degrees; scaled by 1 +- ``scale``; sheared along x by +-``shear``. 0 leaves a
    kind out; all 0 is the image alone. Fixed amounts, so a test repeats exactly."""

    shift: int = 0
    rotate: float = 0.0
    scale: float = 0.0
    shear: float = 0.0

    @classmethod
    def of(cls, views: Union["TtaViews", int, Any]) -> "TtaViews":
        """From an ``eval`` config (its ``tta_*`` keys), a :class:`TtaViews`, or an int (shifts alone)."""
        if isinstance(views, (cls, int)):
            return views if isinstance(views, cls) else cls(shift=views)
        return cls(int(views.tta_shift), float(views.tta_rotate), float(views.tta_scale), float(views.tta_shear))

    def copies(self) -> tuple[Callable[[torch.Tensor], torch.Tensor], ...]:
        """One function per view, the image itself first (then the shifts, in :func:`shift_views`'s order)."""
        views: list[Callable[[torch.Tensor], torch.Tensor]] = [
            (lambda x: x) if (dy, dx) == (0, 0) else partial(shifted, dy=dy, dx=dx) for dy, dx in shift_views(self.shift)]
        for key, amount, unchanged in (("degrees", self.rotate, 0.0), ("scale", self.scale, 1.0), ("shear", self.shear, 0.0)):
            views += [partial(turned, **{key: unchanged + sign * amount}) for sign in (1, -1)] if amount else []
        return tuple(views)

    def summary(self) -> dict[str, float]:
        """What results.json records: each field as its ``eval.tta_*`` key."""
        return {f"tta_{name}": value for name, value in asdict(self).items()}


def augment_images(augment: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """``augment`` applied image by image to a task tensor ``[T, M, C, H, W]``."""
    return augment(images.reshape(-1, *images.shape[2:])).reshape(images.shape)


@dataclass(frozen=True)
class SupportCopies:
    """RFS's test protocol (Tian et al. 2020, ``n_aug_support_samples``, 5 in their code): each support
    image replaced by ``copies`` random draws of the data set's training augmentation, so the task's
    classifier (RFS: a logistic regression) is fitted on ``copies`` x K shots; queries stay as they are."""

    copies: int
    augment: Callable[[torch.Tensor], torch.Tensor]

    @classmethod
    def of(cls, eval_cfg: Any, augment_default: Any, image_shape: tuple[int, int, int]) -> Optional["SupportCopies"]:
        """``eval.support_copies`` with ``dataset.augment``'s transforms; None when it is 0."""
        copies = int(getattr(eval_cfg, "support_copies", 0) or 0)
        if copies == 0:
            return None
        augment = augmentation("auto", augment_default, image_shape)
        if augment is None:
            raise ConfigError(f"eval.support_copies={copies} draws augmented copies of the support images, but this data "
                              "set's dataset.augment is none; set dataset.augment=crop (or affine), or eval.support_copies=0")
        return cls(copies, augment)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Support ``[T, S, C, H, W]`` and labels ``[T, S]`` -> ``[T, S x copies, ...]``, each image's copies together
        (class-major order kept: the task reads as one of ``copies`` x K shots)."""
        many = images.repeat_interleave(self.copies, dim=1)
        return augment_images(self.augment, many), labels.repeat_interleave(self.copies, dim=1)
