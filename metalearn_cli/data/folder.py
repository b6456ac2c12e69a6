"""Any class-per-folder image set: ``root/<class>/<image>``, split by a file or by seeded ratios.

``split_file`` lists ``<class> <train|val|test>`` per line (a comma also separates; the class name may hold spaces); without it the
sorted class names are shuffled by ``split_seed`` and cut by ``ratios``, so the split is the same
on every machine. Images are converted to ``image_size`` x ``image_size`` once and cached.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Callable, Optional
import unicodedata

import torch

from metalearn_cli.data import DATASETS, SPLITS, FewShotData
from metalearn_cli.console import first_names
from metalearn_cli.data.class_cache import CACHE_DIR, load_classes, split_of
from metalearn_cli.data.images import class_folders, class_images, no_images, say_files_beside
from metalearn_cli.errors import DataError
from metalearn_cli.params.datasets import FolderParams

log = logging.getLogger(__name__)


def folder_names(names: list[str]) -> Callable[[str], Optional[str]]:
    """Which class folder a name from a split file or a run's record means: itself, or the folder it equals after
    Unicode NFC normalisation (``café`` typed on Linux; its folder written by macOS, decomposed), as predict reads
    class folders; None if none."""
    exact = set(names)
    composed = {unicodedata.normalize("NFC", n): n for n in names}
    return lambda name: name if name in exact else composed.get(unicodedata.normalize("NFC", name))


def read_split_file(path: Path, classes: list[str]) -> dict[str, list[str]]:
    """``<class> <split>`` lines -> split -> classes (in file order); every listed class must exist. The split is
    the line's last word, so a class name may hold spaces (quotes around it are dropped)."""
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "is not a file" if path.exists() else "does not exist"
        raise DataError(f"split file {path} {what}; pass dataset.split_file=FILE (lines '<class> <train|val|test>') "
                        "or null for a seeded split")
    parts: dict[str, list[str]] = {s: [] for s in SPLITS}
    folder_of = folder_names(classes)
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.strip().startswith("#"):
            continue
        found = re.match(r"^(.*?)[\s,]+(train|val|test)$", line.strip())
        fields = [found.group(1).strip().strip("\"'"), found.group(2)] if found else []
        if not fields or not fields[0]:
            raise DataError(f"{path}:{n}: expected '<class> <train|val|test>', got {line.strip()!r}")
        folder = folder_of(fields[0])
        if folder is None:
            raise DataError(f"{path}:{n}: class {fields[0]} has no folder in the data set root")
        parts[fields[1]].append(folder)
    return parts


def ratio_split(classes: list[str], ratios: list[float], seed: int) -> dict[str, list[str]]:
    """Shuffle the sorted classes with ``seed`` and cut them by ``ratios`` (each split gets >= 1 class)."""
    order = torch.randperm(len(classes), generator=torch.Generator().manual_seed(seed)).tolist()
    shuffled = [sorted(classes)[i] for i in order]
    total = sum(ratios)
    n = len(classes)
    n_train = min(max(1, round(n * ratios[0] / total)), n - 2)
    n_val = min(max(1, round(n * ratios[1] / total)), n - n_train - 1)
    return {"train": shuffled[:n_train], "val": shuffled[n_train:n_train + n_val], "test": shuffled[n_train + n_val:]}


def recorded_split(classes: dict[str, list[str]], names: list[str], root: Path) -> dict[str, list[str]]:
    """The split a run recorded (``dataset.classes``), checked against the folders there now: a class added
    since is left out (said once), a missing one is refused, since a split worked out again from today's
    folders would move classes the run trained on into its test split."""
    folder_of = folder_names(names)
    recorded = {s: list(classes.get(s) or []) for s in SPLITS}
    parts = {s: [folder_of(c) or c for c in members] for s, members in recorded.items()}
    present = set(names)
    for split, members in parts.items():
        gone = [c for c in members if c not in present]
        if gone:
            raise DataError(f"{root} has no class folder{'s' if len(gone) > 1 else ''} {first_names(gone)}, which the run's "
                            f"{split} split holds; the run trained on the split it recorded (dataset.classes in its config), "
                            "so restore the folder (a renamed class under its old name), or train a new run on the data as it is")
    extra = sorted(present - {c for members in parts.values() for c in members})
    if extra:
        log.warning("%s: %s (%s) %s not in the run's recorded split, so not used (added since, or left out by its split file)",
                    root, f"{len(extra)} class folders" if len(extra) > 1 else "1 class folder", first_names(extra),
                    "are" if len(extra) > 1 else "is")
    return parts


@DATASETS.register("folder", params=FolderParams)
def build_folder(params: FolderParams) -> FewShotData:
    root = Path(params.root).expanduser()
    if root.exists() and not root.is_dir():
        raise DataError(f"dataset.root={root} is a file, not a folder; pass the folder that holds one sub-folder of images per class")
    if not root.is_dir():
        raise DataError(f"dataset.root={root} does not exist; it must hold one sub-folder of images per class")
    folders = class_folders(root)
    say_files_beside(root, folders)
    names = [f.name for f in folders]
    if len(names) < 3:
        raise DataError(f"{root} has {len(names)} class folders; train, val and test need at least one class each")
    if params.classes:
        parts = recorded_split(params.classes, names, root)
    else:
        parts = read_split_file(Path(params.split_file), names) if params.split_file else ratio_split(names, params.ratios, params.split_seed)
    empty = [s for s in SPLITS if not parts[s]]
    if empty:
        raise DataError(f"the {empty[0]} split of {root} has no classes; change dataset.ratios or the split file")
    used = [c for s in SPLITS for c in parts[s]]
    if params.split_file and not params.classes and (left := sorted(set(names) - set(used))):  # as eval says it of a record
        log.warning("%s: %s (%s) %s in no split of %s, so not used", root, f"{len(left)} class folders" if len(left) > 1
                    else "1 class folder", first_names(left), "are" if len(left) > 1 else "is", params.split_file)
    files = {c: class_images(root / c) for c in used}
    for c, found in files.items():
        if not found:
            raise no_images(root / c)
    data = load_classes(files, params.image_format(), params.images_per_class,
                        root / CACHE_DIR if params.cache else None, f"dataset.root={root}")
    return FewShotData(name=f"folder:{root.name}", train=split_of(data, parts["train"]), val=split_of(data, parts["val"]),
                       test=split_of(data, parts["test"]))
