"""Image files -> the model's pixels: one conversion for data sets, prediction and the Python API.

A data set declares its :class:`ImageFormat` (channels, square size, resampling filter, whether
strokes are inverted); the same torchvision pipeline converts its source files when the data set
is built and a user's own images when a trained meta-network is applied to them, so both look
exactly alike to the model. Pixels stay uint8 ``[C, H, W]``; scaling to [0, 1] happens on the
device, as for training episodes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import IO, Any, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from metalearn_cli.console import first_names
from metalearn_cli.errors import DataError
from metalearn_cli.params.datasets import ImageFormat  # noqa: F401 (re-exported: the conversion's declaration)
from metalearn_cli.data.ink import normalise_ink
from metalearn_cli.params.datasets import InkNormalise

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def pipeline(fmt: ImageFormat) -> Any:
    """torchvision's transforms from a decoded PIL image to uint8 ``[C, H, W]``."""
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode

    steps: list[Any] = [
        transforms.Lambda(lambda img: opaque(eight_bit(ImageOps.exif_transpose(img))).convert("L" if fmt.channels == 1 else "RGB")),
        transforms.Resize((fmt.size, fmt.size), interpolation=InterpolationMode(fmt.resample)),
        transforms.PILToTensor(),
    ]
    if fmt.invert:
        steps.append(transforms.Lambda(lambda t: 255 - t))
    if fmt.normalise != "none":  # after inverting: the ink is what is bright
        steps.append(transforms.Lambda(lambda t: torch.from_numpy(normalise_ink(t.numpy(), InkNormalise(fmt.normalise)))))
    return transforms.Compose(steps)




def eight_bit(img: Image.Image) -> Image.Image:
    """16- and 32-bit grayscale (PNG, TIFF: modes I;16, I, F) scaled to 8 bits by their type's range: PIL's
    own conversion clips every value over 255 to white, which erases a 16-bit image's strokes."""
    if img.mode not in ("I", "F") and not img.mode.startswith("I;16"):
        return img
    values = np.asarray(img, dtype=np.float64)
    top = values.max(initial=0.0)
    full = 1.0 if img.mode == "F" and top <= 1 else 255.0 if top <= 255 else 65535.0  # [0, 1] floats; 8 bits kept
    return Image.fromarray(np.clip(np.rint(values * (255.0 / full)), 0, 255).astype(np.uint8))  # 2-d uint8: mode L


def opaque(img: Image.Image) -> Image.Image:
    """Transparent pixels composited onto white, the background of drawings (dark strokes on white,
    as Omniglot's originals are). Drawing tools export strokes on a transparent background, often with
    black colour under the transparency: dropping the alpha channel would turn the whole image into
    one flat value. Modes RGBA, LA, PA, and P/L/RGB with a transparency key."""
    if img.mode not in ("RGBA", "LA", "PA") and "transparency" not in img.info:
        return img
    rgba = img.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)


ImageSource = Union[str, os.PathLike, IO[bytes], Image.Image]


LARGE_SAID: list[str] = []  # the images over PIL's warning limit read so far: the first one is said


def read_image(source: ImageSource, fmt: ImageFormat, where: str | None = None) -> torch.Tensor:
    """Decode one image (a path or a PIL image) and convert it; an unreadable file is a :class:`DataError`."""
    name = where or str(source)
    try:
        if isinstance(source, Image.Image):
            return pipeline(fmt)(source)
        with Image.open(source) as img:
            if Image.MAX_IMAGE_PIXELS and img.width * img.height > Image.MAX_IMAGE_PIXELS:  # PIL's own warning names
                (log.debug if LARGE_SAID else log.warning)(  # no file; said once, as PIL's warning is
                    "image %s has %d x %d pixels, over PIL's decompression-bomb warning limit (%d); it is read, but "
                    "slowly: shrink it%s", name, img.width, img.height, Image.MAX_IMAGE_PIXELS,
                    "" if LARGE_SAID else " (said for the first such image only)")
                LARGE_SAID.append(name)
            img.load()
            return pipeline(fmt)(img)
    except FileNotFoundError as exc:
        raise DataError(f"image {name} does not exist; check the path") from exc
    except IsADirectoryError as exc:
        raise DataError(f"{name} is a folder, not an image; give its image files") from exc
    except PermissionError as exc:  # an OSError, but not a corrupt file: replacing it is the wrong fix
        raise DataError(f"cannot read image {name}: permission denied; make it readable (chmod a+r) or remove it") from exc
    except Image.DecompressionBombError as exc:
        raise DataError(f"image {name} has more pixels than PIL's decompression-bomb limit ({Image.MAX_IMAGE_PIXELS}); "
                        "shrink it or remove it") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:  # PIL's ways of saying "corrupt"
        raise DataError(f"cannot decode image {name} ({exc.__class__.__name__}); replace or remove the file") from exc


def _entries(folder: Path) -> list[Path]:
    """The visible entries of ``folder``; a symbolic link that leads nowhere (dangling, or looping back
    on itself) is refused rather than skipped: a class would silently lose images."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    for p in entries:
        if p.is_symlink() and not p.exists():
            raise DataError(f"{p} is a symbolic link that leads nowhere (dangling or looping); fix or remove it")
    return entries


def image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted by name (hidden files skipped)."""
    return sorted(p for p in _entries(folder) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def class_folders(root: Path) -> list[Path]:
    """The class sub-folders of ``root``, sorted by name (hidden folders skipped); two that are one folder
    (a link to another class folder) are refused: one class would count twice, and split across train and test."""
    folders = sorted(p for p in _entries(root) if p.is_dir())
    seen: dict[Path, Path] = {}
    for folder in folders:
        real = folder.resolve()
        if real in seen:
            raise DataError(f"class folders {seen[real]} and {folder} are one folder ({real}): one class would count as two; "
                            "remove the link, or copy the images if two classes are meant")
        seen[real] = folder
    return folders


def say_files_beside(root: Path, folders: list[Path]) -> None:
    """Warn of the files at a data set's top level (notes, an image outside any class): not read, said once."""
    if stray := sorted(p.name for p in _entries(root) if p not in folders):
        log.warning("%s: skipped %d file%s beside the class folders (%s); each class is a sub-folder of images",
                    root, len(stray), "" if len(stray) == 1 else "s", first_names(stray))


def class_images(folder: Path, what: str = "class folder") -> list[Path]:
    """:func:`image_files` of a class folder (or a query folder, ``what``), saying which of its entries are
    skipped (notes, nested folders, an image saved without its extension)."""
    found = image_files(folder)
    if skipped := sorted(p.name for p in _entries(folder) if p not in found):
        log.warning("%s %s: skipped %d entr%s that %s not an image file (%s); image files end in %s", what,
                    folder, len(skipped), "y" if len(skipped) == 1 else "ies", "is" if len(skipped) == 1 else "are",
                    first_names(skipped), first_names(list(IMAGE_SUFFIXES), 4))
    return found


SPLIT_LAYOUT = ("put every class folder directly in one root, and to keep a train/val/test layout list each class's split "
                "in dataset.split_file=FILE (lines '<class> <train|val|test>')")


def no_images(folder: Path, layout: str = SPLIT_LAYOUT) -> DataError:
    """A class folder without images; one holding only folders is a nested layout (``root/<split>/<class>/``,
    ``<alphabet>/<character>/``), which is read one level deep, so the error says how to lay it out (``layout``)."""
    inner = sorted(p.name for p in _entries(folder) if p.is_dir())
    if inner:
        return DataError(f"class folder {folder} holds no images but folders ({first_names(inner)}): class folders are "
                         f"read one level deep (<folder>/<class>/<image>); {layout}")
    return DataError(f"class folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES[:4])}, ...); "
                     "add images or remove the folder")


def read_class_folders(root: Path, fmt: ImageFormat, what: str) -> tuple[list[str], list[list[Path]], list[torch.Tensor]]:
    """Read ``root/<class>/<image>`` into per-class uint8 stacks ``[K_c, C, H, W]`` (K may differ per class).

    Returns class names, the files of each class and the stacks; ``what`` names the folder in errors.
    """
    if not root.is_dir():
        state = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(f"{what} folder {root} {state}; it needs one sub-folder of images per class")
    folders = class_folders(root)
    if not folders:
        raise DataError(f"{what} folder {root} has no class sub-folders; put the images of each class in root/<class>/")
    say_files_beside(root, folders)
    names, files, stacks = [], [], []
    for folder in folders:
        found = class_images(folder)
        if not found:
            raise no_images(folder, "put each class's images directly in its folder")
        names.append(folder.name)
        files.append(found)
        stacks.append(torch.stack([read_image(p, fmt) for p in found]))
    return names, files, stacks
