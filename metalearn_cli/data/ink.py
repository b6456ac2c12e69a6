"""Each drawing framed by its own ink (``dataset.normalise``): moment normalisation, as LeCun et al.
centred MNIST's digits by their centre of mass, here for Omniglot's strokes.

Who drew a character shows in where on the canvas and how large it sits: over the embedded set a
drawing's ink centre varies more between drawers of one character (1.4 px standard deviation at
28 px) than between characters (1.0 px), and its size about as much (RMS radius 0.7 against
0.8 px). Lake et al.'s runs take the support and query images from different drawers, so that
variation is pure nuisance there. Each image is transformed alone (inductive: no test image sees
another), once, when the data set is built, so training and testing cost nothing extra.

- ``centre``: moved (sub-pixel, bilinear) so the centre of mass of its ink is the image centre.
- ``centre_scale``: also resized about that centre so the ink's RMS radius is :data:`INK_RADIUS` of
  the side, the embedded set's mean, by a factor clamped to [1 / MAX_ZOOM, MAX_ZOOM] so a dot or a
  long stroke is not blown up or shrunk to nothing.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from metalearn_cli.params.datasets import InkNormalise

INK_RADIUS = 0.235  # RMS distance of the ink from its centre, as a fraction of the side (the embedded set's mean)
MAX_ZOOM = 1.25
CHUNK = 4096  # images per grid_sample call: bounded memory at 105 px


def normalise_ink(images: np.ndarray, mode: InkNormalise) -> np.ndarray:
    """``[..., H, W]`` uint8 drawings, strokes bright on zero, each moved (and resized) by its own
    ink's moments; the input for ``none``. Blank images stay blank."""
    if mode is InkNormalise.none:
        return images
    flat = images.reshape(-1, *images.shape[-2:])
    out = np.empty_like(flat)
    for start in range(0, len(flat), CHUNK):
        chunk = torch.from_numpy(flat[start:start + CHUNK]).float().div(255).unsqueeze(1)
        framed = F.grid_sample(chunk, _sampling_grid(chunk, mode), mode="bilinear", padding_mode="zeros",
                               align_corners=False)
        out[start:start + CHUNK] = framed.squeeze(1).mul(255).round().clamp(0, 255).to(torch.uint8).numpy()
    return out.reshape(images.shape)


def ink_moments(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[B, 1, H, W]`` -> each image's ink centre ``(x, y)`` and RMS radius, in ``affine_grid``'s
    coordinates (each side spans [-1, 1]); a blank image has its centre at 0 and radius 0."""
    ink = images[:, 0]
    h, w = ink.shape[-2:]
    ys = (2 * torch.arange(h, dtype=ink.dtype) + 1) / h - 1  # pixel centres (align_corners=False)
    xs = (2 * torch.arange(w, dtype=ink.dtype) + 1) / w - 1
    rows, cols = ink.sum(2), ink.sum(1)
    mass = rows.sum(1).clamp_min(1e-6)
    cy, cx = (rows * ys).sum(1) / mass, (cols * xs).sum(1) / mass
    spread = (rows * (ys - cy[:, None]) ** 2).sum(1) / mass + (cols * (xs - cx[:, None]) ** 2).sum(1) / mass
    return cx, cy, spread.sqrt()


def _sampling_grid(images: torch.Tensor, mode: InkNormalise) -> torch.Tensor:
    """Where each output pixel reads its input: the ink centre plus the output offset over the zoom."""
    cx, cy, radius = ink_moments(images)
    zoom = torch.ones_like(radius)
    if mode is InkNormalise.centre_scale:
        zoom = torch.where(radius > 0, 2 * INK_RADIUS / radius.clamp_min(1e-6), zoom).clamp(1 / MAX_ZOOM, MAX_ZOOM)
    theta = torch.zeros(len(images), 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / zoom
    theta[:, 0, 2], theta[:, 1, 2] = cx, cy
    return F.affine_grid(theta, list(images.shape), align_corners=False)
