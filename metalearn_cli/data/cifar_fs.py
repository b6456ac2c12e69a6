"""CIFAR-FS (Bertinetto et al. 2019): CIFAR-100's 100 classes x 600 images, 64 / 16 / 20 classes.

Read with torchvision's real ``CIFAR100`` (its train and test parts together make 600 images per
class) from ``dataset.root``; ``dataset.download=true`` fetches it there. The class split ships in
``assets/cifar_fs/``. Images stay 32 x 32 unless ``image_size`` asks otherwise.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from metalearn_cli.data import DATASETS, SPLITS, FewShotData
from metalearn_cli.data.images import pipeline as image_pipeline
from metalearn_cli.data.class_cache import split_of
from metalearn_cli.episodes import ClassImages
from metalearn_cli.errors import DataError
from metalearn_cli.params.datasets import CifarFSParams

ASSET_DIR = resources.files("metalearn_cli.data") / "assets" / "cifar_fs"


def _read_cifar100(root: str, download: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from torchvision.datasets import CIFAR100

    if Path(root).exists() and not Path(root).is_dir():
        raise DataError(f"dataset.root={root} is a file, not a folder; pass the folder that holds cifar-100-python/")
    if Path(root).name == "cifar-100-python":
        raise DataError(f"dataset.root={root} is cifar-100-python/ itself; pass the folder that holds it: "
                        f"dataset.root={Path(root).parent}")
    if download and not Path(root).exists():
        made = Path(root)  # torchvision makes the folder before it fetches: a failed fetch leaves none behind
        while not made.parent.exists():
            made = made.parent
    else:
        made = None
    try:
        parts = [CIFAR100(root, train=train, download=download) for train in (True, False)]
    except Exception as exc:  # torchvision says "Dataset not found or corrupted" (RuntimeError) or fails to fetch
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        fix = ("the download failed: check the connection, or put torchvision's cifar-100-python/ there" if download else
               "put torchvision's cifar-100-python/ there or pass dataset.download=true on a connected machine")
        if not download and not Path(root).exists():
            raise DataError(f"dataset.root={root} does not exist; {fix}") from exc
        if not download and (Path(root) / "cifar-100-python").is_dir():  # there, but torchvision's md5 check refused it
            raise DataError(f"{Path(root) / 'cifar-100-python'} is there but its files (train, test) fail torchvision's "
                            "checksums of the official CIFAR-100 archive, the only copy it reads (a subset or a re-packed "
                            "copy is refused); put the official files there, or pass dataset.download=true on a connected "
                            "machine") from exc
        raise DataError(f"CIFAR-100 not found or corrupted in {root} "
                        f"({(str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__).split(' You can use download=True')[0]}); "
                        f"{fix}") from exc
    images = np.concatenate([p.data for p in parts])  # [60000, 32, 32, 3] uint8
    labels = np.concatenate([np.asarray(p.targets) for p in parts])
    return images, labels, list(parts[0].classes)


@DATASETS.register("cifar_fs", params=CifarFSParams)
def build_cifar_fs(params: CifarFSParams) -> FewShotData:
    images, labels, classes = _read_cifar100(params.root, params.download)
    split = {s: (ASSET_DIR / f"{s}.txt").read_text().split() for s in SPLITS}
    missing = [c for s in SPLITS for c in split[s] if c not in classes]
    if missing:
        raise DataError(f"the CIFAR-100 in {params.root} lacks the class {missing[0]}; it is not the standard CIFAR-100")
    per_class = int(np.bincount(labels, minlength=len(classes)).min())
    stacked = torch.stack([torch.from_numpy(images[labels == c][:per_class]) for c in range(len(classes))])
    stacked = stacked.permute(0, 1, 4, 2, 3)  # [classes, images, 3, 32, 32], each class in the files' order
    fmt = params.image_format()
    if fmt.size != 32:
        pipeline = image_pipeline(fmt)
        stacked = torch.stack([torch.stack([pipeline(Image.fromarray(img.permute(1, 2, 0).numpy())) for img in cls])
                               for cls in stacked])
    data = ClassImages(stacked.contiguous(), classes)
    return FewShotData(name="cifar_fs", **{s: split_of(data, split[s]) for s in SPLITS})
