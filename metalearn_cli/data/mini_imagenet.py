"""mini-ImageNet (Vinyals et al. 2016) with the class split of Ravi & Larochelle (2017).

100 ImageNet classes x 600 images, 64 / 16 / 20 classes for train / val / test (the WordNet ids
ship in ``assets/mini_imagenet/``; the images cannot, by ImageNet's terms). ``dataset.root`` holds
the images in one of the usual layouts: ``images/<wnid><index>.jpg`` (the CSV-based release),
``<wnid>/*.jpg`` or ``{train,val,test}/<wnid>/*.jpg``. They are resized to 84 x 84 once and cached
as one uint8 tensor with a checksum in ``root/.metalearn-cache/``.
"""

from __future__ import annotations

from collections import defaultdict
from importlib import resources
from pathlib import Path

from metalearn_cli.data import DATASETS, SPLITS, FewShotData
from metalearn_cli.data.class_cache import CACHE_DIR, load_classes, split_of
from metalearn_cli.data.images import IMAGE_SUFFIXES, image_files
from metalearn_cli.errors import DataError
from metalearn_cli.params.datasets import MiniImageNetParams

ASSET_DIR = resources.files("metalearn_cli.data") / "assets" / "mini_imagenet"


def ravi_split() -> dict[str, list[str]]:
    """The shipped class lists: split -> sorted WordNet ids."""
    return {s: (ASSET_DIR / f"{s}.txt").read_text().split() for s in SPLITS}


def find_images(root: Path, wnids: list[str]) -> dict[str, list[Path]]:
    """Each class's image files, from whichever of the usual layouts ``root`` has."""
    found: dict[str, list[Path]] = defaultdict(list)
    flat = root / "images"
    if flat.is_dir():
        wanted = set(wnids)
        for p in sorted(flat.iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.name[:9] in wanted:
                found[p.name[:9]].append(p)
    seen: dict[Path, Path] = {}  # a class folder linked to another's: one class's images in two splits
    for wnid in wnids:
        if wnid in found:
            continue
        for folder in (root / wnid, *(root / s / wnid for s in SPLITS), flat / wnid):
            files = image_files(folder) if folder.is_dir() else []
            if files:  # an empty leftover folder does not hide the class's real one
                if (real := folder.resolve()) in seen:
                    raise DataError(f"class folders {seen[real]} and {folder} are one folder ({real}): one class's images would "
                                    "train and test as two classes; remove the link and put that class's own images there")
                seen[real] = folder
                found[wnid] = files
                break
    return found


@DATASETS.register("mini_imagenet", params=MiniImageNetParams)
def build_mini_imagenet(params: MiniImageNetParams) -> FewShotData:
    root = Path(params.root).expanduser()
    if not root.is_dir():
        state = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(f"dataset.root={root} {state}; put the mini-ImageNet images there (images/ or <wnid>/ folders)")
    split = ravi_split()
    wnids = [w for s in SPLITS for w in split[s]]
    files = find_images(root, wnids)
    missing = [w for w in wnids if not files.get(w)]
    if missing:
        raise DataError(
            f"mini-ImageNet in {root} lacks {len(missing)} of the 100 classes of the Ravi split (e.g. {missing[0]}); "
            f"put the images in {root}/images/ as <wnid><index>.jpg, or in {root}/<wnid>/ or {root}/<train|val|test>/<wnid>/ "
            "folders" + (f" (dataset.root is the folder that holds images/: dataset.root={root.parent})"
                         if root.name == "images" and len(missing) == len(wnids) else "")
        )
    data = load_classes({w: files[w] for w in wnids}, params.image_format(), params.images_per_class,
                        root / CACHE_DIR if params.cache else None, "mini-ImageNet")
    return FewShotData(name="mini_imagenet", **{s: split_of(data, split[s]) for s in SPLITS})
