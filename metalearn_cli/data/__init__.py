"""Data sets as class-indexed image tensors split into train / val / test classes.

Every data set registers in :data:`DATASETS` and builds a :class:`FewShotData`, whose three
splits hold disjoint classes. Importing this package registers all of them.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from metalearn_cli.episodes import ClassImages
from metalearn_cli.errors import DataError
from metalearn_cli.registry import Registry

if TYPE_CHECKING:
    from metalearn_cli.data.images import ImageFormat

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class FewShotData:
    """A data set cut into disjoint class splits; ``name`` is used in messages. With ``val_drawings``
    the validation classes also train: Omniglot's ``val=drawers`` (other drawings of them) and
    ``val=trainval`` (the same images, as Snell et al.'s final runs)."""

    name: str
    train: ClassImages
    val: ClassImages
    test: ClassImages
    val_drawings: bool = False

    def __post_init__(self) -> None:
        shapes = {tuple(s.images.shape[2:]) for s in (self.train, self.val, self.test)}
        if len(shapes) != 1:
            raise DataError(f"{self.name}: the splits have different image shapes {sorted(shapes)}")
        seen: dict[str, str] = {}
        for split_name in SPLITS:
            if split_name == "val" and self.val_drawings:
                if not set(self.val.class_names) <= set(self.train.class_names):
                    raise DataError(f"{self.name}: validation drawings must be of the training classes")
                continue
            for cls in self.split(split_name).class_names:
                if cls in seen:
                    where = (f"twice in the {split_name} split" if seen[cls] == split_name
                             else f"in both the {seen[cls]} and {split_name} splits")
                    raise DataError(f"{self.name}: class '{cls}' is {where}; list each class once")
                seen[cls] = split_name

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.images.shape[2:]
        return int(c), int(h), int(w)

    @functools.cached_property
    def pixel_mean(self) -> float:
        """Mean brightness of the training images as the model sees them (0-1), saved with every model:
        predict warns when a user's images look inverted against it (Omniglot files are dark on white,
        the model sees white strokes)."""
        total = sum(float(part.sum(dtype=torch.float64)) for part in self.train.images.split(256))
        return total / self.train.images.numel() / 255

    def split(self, name: str) -> ClassImages:
        if name not in SPLITS:
            raise DataError(f"unknown split '{name}'; choose one of: {', '.join(SPLITS)}")
        return getattr(self, name)


DATASETS: Registry[FewShotData] = Registry("dataset")


def split_ids(split: ClassImages) -> dict[str, str]:
    """Short digests of a split, in results: ``split_classes`` of its class names in order (``compare``
    pairs two runs only on the same classes: the same task seeds draw other tasks from a folder data set
    re-split, yet the same ones at another image size), ``split_digest`` of the names and the images
    (``metalearn eval`` warns when it scores a run's test split on other images than the run's test did)."""
    names = hashlib.sha256("\n".join(split.class_names).encode())
    both = names.copy()
    both.update(split.images.detach().cpu().contiguous().numpy().data)  # the buffer: no copy of a large set
    return {"split_classes": names.hexdigest()[:12], "split_digest": both.hexdigest()[:12]}


def check_host_memory(nbytes: int, what: str) -> None:
    """Refuse, in one line, data that would not fit in the host's available memory."""
    import torch

    from metalearn_cli.host import available_memory

    free = available_memory(torch.device("cpu"))
    if nbytes > free:
        raise DataError(f"{what} needs {nbytes / 2**30:.1f} GiB for its images, more than the {free / 2**30:.1f} GiB "
                        "available; use smaller images or fewer classes / images per class")


def image_format(dataset_cfg: Any) -> "ImageFormat":
    """How this data set's images look to the model, from its config alone (no data is read):
    every data set's parameters say it with an ``image_format()`` method."""
    return DATASETS.params_of(dataset_cfg).image_format()


def identity(dataset_cfg: Any) -> str:
    """Which data set a config names, told apart from another's: its name and the keys its parameters say identify it
    (``identified_by``: ``dataset=folder`` names any folder of images, so its root too; Omniglot's root is only where
    the same drawings are read from). From the config alone: a checkpoint's saved one, on any machine."""
    name = str(dataset_cfg.get("name"))
    keys = getattr(DATASETS.get(name).params, "identified_by", ()) if name in DATASETS.names() else ()
    return " ".join([name, *(str(dataset_cfg.get(key)) for key in keys)])


from metalearn_cli.data import cifar_fs, folder, mini_imagenet, omniglot, synthetic  # noqa: E402,F401  (registers the data sets)
