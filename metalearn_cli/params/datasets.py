"""The parameters of each data set (``configs/dataset/<name>.yaml`` extends them).

Torch-free, like every module of :mod:`metalearn_cli.params`: ``--help`` and config composition read
these without importing the data code. Each data set's loader registers with its class here.
"""

from __future__ import annotations

import enum
import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Optional

from metalearn_cli.errors import ConfigError, DataError
from metalearn_cli.schema import Augment

# torchvision's InterpolationMode by name (torchvision is imported when images are converted, not
# to print --help: it costs a second).
RESAMPLING = ("lanczos", "bilinear", "bicubic", "nearest")


class InkNormalise(enum.Enum):
    """How each Omniglot drawing is framed by its own ink (:mod:`metalearn_cli.data.ink`)."""

    none = "none"  # as drawn
    centre = "centre"  # moved so its ink's centre of mass is the image centre
    centre_scale = "centre_scale"  # also resized so its ink's RMS radius is the set's mean (0.8-1.25x)


@dataclass(frozen=True)
class ImageFormat:
    """How any image file becomes a ``[channels, size, size]`` uint8 tensor for the model."""

    channels: int  # 1 (grey) or 3 (RGB)
    size: int  # square side in pixels; images are resized to it whatever their aspect ratio
    resample: str = "bilinear"  # lanczos | bilinear | bicubic | nearest
    invert: bool = False  # 255 - pixel after conversion (Omniglot: dark strokes on white become bright on black)
    normalise: str = "none"  # each drawing framed by its own ink after conversion (InkNormalise: dataset.normalise)

    def __post_init__(self) -> None:
        framings = [mode.value for mode in InkNormalise]  # dataset.normalise's choices
        wrong = [f"{key}={value} must be {rule}" for key, value, ok, rule in (
            ("dataset.channels", self.channels, self.channels in (1, 3), "1 (grey) or 3 (RGB)"),
            ("dataset.image_size", self.size, self.size >= 1, ">= 1 (pixels per side)"),
            ("dataset.resample", self.resample, self.resample in RESAMPLING, f"one of {', '.join(RESAMPLING)}"),
            ("dataset.normalise", self.normalise, self.normalise in framings, f"one of {', '.join(framings)}")) if not ok]
        if wrong:
            raise DataError("; ".join(wrong))

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.channels, self.size, self.size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ImageFormat":
        return cls(int(values["channels"]), int(values["size"]), str(values["resample"]), bool(values["invert"]),
                   str(values.get("normalise", "none")))  # exports written before 2026-12-05 have no normalise


OMNIGLOT_FORMAT = ImageFormat(channels=1, size=28, resample="lanczos", invert=True)  # Vinyals et al.'s 28 x 28


def check_root(root: Optional[str], holds: str) -> None:
    """An empty ``dataset.root`` (an unset shell variable) would be read as the current folder: refused, saying
    what the folder must hold (``holds``)."""
    if root is not None and not str(root).strip():
        raise DataError(f"dataset.root is empty (an unset shell variable?); pass dataset.root=DIR, {holds}")


def check_images_per_class(count: Optional[int]) -> None:
    """``dataset.images_per_class``: null (the smallest class's count) or enough for a task's support and query."""
    if count is not None and count < 2:
        raise DataError(f"dataset.images_per_class={count}: give how many images of each class to use (>= 2: a task "
                        "needs a support and a query image of each), or null for the smallest class's count")


@dataclass
class CifarFSParams:
    name: str = "cifar_fs"
    root: Optional[str] = None  # the folder holding torchvision's cifar-100-python/
    download: bool = False  # fetch CIFAR-100 into root with torchvision (needs a network)
    image_size: int = 32  # the protocol's 32 x 32
    augment: Augment = Augment.crop_flip_jitter  # supervised pre-training (RFS's recipe)
    meta_augment: Augment = Augment.crop_flip  # meta-training with trainer.augment=auto

    def __post_init__(self) -> None:  # what a run would refuse, said before it reads data (and by --cfg)
        check_root(self.root, "the folder that holds cifar-100-python/")
        if self.root is None:
            raise DataError("dataset=cifar_fs needs dataset.root=DIR (with cifar-100-python/, or dataset.download=true to fetch it)")
        self.image_format()

    def image_format(self) -> ImageFormat:
        return ImageFormat(3, self.image_size, "bilinear")


@dataclass
class FolderParams:
    identified_by: ClassVar[tuple[str, ...]] = ("root",)  # the folder is the data set (another's root: where its files are)
    name: str = "folder"
    root: Optional[str] = None  # root/<class>/<image files>
    image_size: int = 84  # pixels per side after resizing
    channels: int = 3  # 3 = RGB, 1 = grey
    resample: str = "bilinear"  # lanczos | bilinear | bicubic | nearest
    split_file: Optional[str] = None  # lines "<class> <train|val|test>"; null = seeded split by ratios
    ratios: list[float] = field(default_factory=lambda: [0.64, 0.16, 0.2])  # train / val / test shares of the classes
    split_seed: int = 0  # fixes the ratio split (not the run seed: the split must not move between runs)
    classes: Optional[dict[str, list[str]]] = None  # the split a run trained on, recorded by it: eval and resume use it
    images_per_class: Optional[int] = None  # null = the smallest class's count
    cache: bool = True  # keep the converted tensor in root/.metalearn-cache/
    augment: Augment = Augment.crop_flip  # supervised pre-training; crop_flip_jitter for colour photos, crop for symbols
    meta_augment: Augment = Augment.crop_flip  # meta-training with trainer.augment=auto; affine for strokes

    def __post_init__(self) -> None:  # what a run would refuse, said before it reads data (and by --cfg)
        check_root(self.root, "the folder that holds one sub-folder of images per class")
        if self.root is None:
            raise DataError("dataset=folder needs dataset.root=DIR with one sub-folder of images per class")
        check_images_per_class(self.images_per_class)
        if len(self.ratios) != 3 or min(self.ratios) <= 0:
            raise DataError(f"dataset.ratios={list(self.ratios)}: give three shares > 0 of the classes, for train, val and "
                            "test (e.g. [0.64,0.16,0.2]), or a split file (dataset.split_file=FILE)")
        self.image_format()

    def image_format(self) -> ImageFormat:
        return ImageFormat(self.channels, self.image_size, self.resample)


@dataclass
class MiniImageNetParams:
    name: str = "mini_imagenet"
    root: Optional[str] = None  # the folder with images/ or per-class folders
    image_size: int = 84  # the protocol's 84 x 84; change only knowingly
    images_per_class: Optional[int] = 600  # null = the smallest class's count
    cache: bool = True  # keep the converted tensor (1.3 GB at 84 x 84) in root/.metalearn-cache/
    augment: Augment = Augment.crop_flip_jitter  # supervised pre-training (RFS's recipe)
    meta_augment: Augment = Augment.crop_flip  # meta-training with trainer.augment=auto

    def __post_init__(self) -> None:  # what a run would refuse, said before it reads data (and by --cfg)
        check_root(self.root, "the folder that holds the mini-ImageNet images")
        if self.root is None:
            raise DataError("dataset=mini_imagenet needs dataset.root=DIR holding the mini-ImageNet images "
                            "(images/<wnid><index>.jpg or <wnid>/ folders); they are not shipped, by ImageNet's terms")
        check_images_per_class(self.images_per_class)
        self.image_format()

    def image_format(self) -> ImageFormat:
        return ImageFormat(3, self.image_size, "bilinear")


class OmniglotSplit(enum.Enum):
    vinyals = "vinyals"
    background = "background"
    lake = "lake"  # the old name of background: refused with a hint (it is not Lake et al.'s protocol)


class OmniglotVal(enum.Enum):
    alphabets = "alphabets"  # the last 5 background alphabets (by name) validate; training keeps the other 25
    drawers = "drawers"  # training keeps all 30 background alphabets, drawers 1-15 of each character; validation
    #   is drawers 16-20 of the same characters (new drawings, not new characters: Lake et al. train on all 30)
    trainval = "trainval"  # split=vinyals: the 172 validation characters train too (1,200 x 4 rotations, as Snell et
    #   al.'s final runs did); validation still draws from them, so it measures seen classes and is optimistic.
    #   split=background: all 30 alphabets and all 20 drawers train (Lake et al.'s training set, nothing held out);
    #   validation draws the upright training characters again (seen images: it ranks checkpoints optimistically)


def seen_validation(val: Any) -> Optional[str]:
    """What a validation split of ``dataset.val=val`` holds where training saw it (``trainval``: characters that
    also train; ``drawers``: new drawings of training characters), else None: held-out classes. Sweeps that rank
    trials by it, and ``metalearn eval split=val``, say so."""
    val = getattr(val, "value", val)
    return {"trainval": "characters that also train", "drawers": "new drawings of the training characters"}.get(val)


@dataclass
class OmniglotParams:
    name: str = "omniglot"
    split: OmniglotSplit = OmniglotSplit.vinyals
    root: Optional[str] = None  # folder with images_background/_evaluation (.zip or folders); null = embedded copy
    download: bool = False  # fetch the original archives into root with torchvision (needs a network)
    cache: bool = True  # keep the archives' conversion at image_size in root/.metalearn-omniglot<size>.npz
    augment: Augment = Augment.crop  # supervised pre-training: shifts of up to 10% (strokes have no mirror images)
    meta_augment: Augment = Augment.affine  # meta-training with trainer.augment=auto: Koch et al.'s distortions
    val: OmniglotVal = OmniglotVal.alphabets  # what validation holds out (see OmniglotVal); alphabets = Vinyals' own val split for split=vinyals
    image_size: int = 28  # pixels per side (Vinyals et al.: 28); other sizes are read from the full-resolution archives in root
    rotations: int = 1  # split=background: each training character also rotated by 90/180/270 degrees into new classes (4)
    mirror: bool = False  # each training class (and each turn) also mirrored left-right into a new class; val and test never
    normalise: InkNormalise = InkNormalise.none  # every image (train, val, test) framed by its own ink, once at load

    def __post_init__(self) -> None:  # what a run would refuse, said before it reads data (and by --cfg)
        split, val = OmniglotSplit(self.split), OmniglotVal(self.val)
        check_root(self.root, "the folder with images_background and images_evaluation, or leave it out for the embedded 28 px copy")
        if split is OmniglotSplit.lake:
            raise ConfigError("dataset.split=lake was renamed dataset.split=background: it draws random cross-alphabet "
                              "tasks from the evaluation alphabets, which is not Lake et al.'s within-alphabet protocol")
        if self.image_size < 8:
            raise ConfigError(f"dataset.image_size={self.image_size} is too small to draw a character on; give >= 8 (28: Vinyals et al.)")
        if self.root is None and self.download:
            raise DataError("dataset.download=true needs dataset.root=DIR to download into")
        if self.root is None and self.image_size != OMNIGLOT_FORMAT.size:
            raise ConfigError(f"dataset.image_size={self.image_size}: the embedded copy is {OMNIGLOT_FORMAT.size} px; pass "
                              "dataset.root=DIR with the full-resolution images_background and images_evaluation "
                              "(dataset.download=true fetches them)")
        if val is OmniglotVal.drawers and split is not OmniglotSplit.background:
            raise ConfigError("dataset.val=drawers is for dataset.split=background (Lake et al.'s 30 training alphabets)")
        if self.rotations not in (1, 4) or (self.rotations == 4 and split is not OmniglotSplit.background):
            raise ConfigError(f"dataset.rotations={self.rotations}: give 1 (none) or 4 (each training character turned by 90, "
                              "180 and 270 degrees into new classes), and 4 only with dataset.split=background (vinyals has its own)")

    def image_format(self) -> ImageFormat:
        """Also framed as the data set frames its drawings, so a user's images (predict, ``load``) match them."""
        return dataclasses.replace(OMNIGLOT_FORMAT, size=self.image_size, normalise=InkNormalise(self.normalise).value)


@dataclass
class SyntheticParams:
    name: str = "synthetic"
    train_classes: int = 48
    val_classes: int = 16
    test_classes: int = 16
    images_per_class: int = 20
    image_size: int = 28  # pixels per side; conv4 needs >= 16
    channels: int = 1
    shift: int = 2  # max pixels an example is shifted from its class glyph
    noise: float = 0.15  # std of the pixel noise added to each example
    seed: int = 0  # fixes the glyphs and examples, independent of the run seed
    augment: Augment = Augment.none  # supervised pre-training: the examples are already shifted and noisy
    meta_augment: Augment = Augment.none  # meta-training with trainer.augment=auto

    def image_format(self) -> ImageFormat:
        return ImageFormat(channels=self.channels, size=self.image_size)
