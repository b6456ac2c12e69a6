"""Image files grouped by class -> one resident uint8 tensor, converted once and cached.

Data sets read from image folders (``folder``, ``mini_imagenet``) list each class's files and call
:func:`load_classes`. Conversion (decode, resize to the data set's :class:`ImageFormat`) happens
once; the tensor is cached beside the images with the fingerprint of its sources and a SHA-256
checksum of its bytes, so a changed source or a damaged cache file is noticed and rebuilt.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from metalearn_cli.files import save_torch
from metalearn_cli.data.images import ImageFormat, read_image
from metalearn_cli.episodes import ClassImages
from metalearn_cli.errors import DataError, WriteError

log = logging.getLogger(__name__)
CACHE_DIR = ".metalearn-cache"


def _fingerprint(files: dict[str, list[Path]], fmt: ImageFormat, per_class: int) -> str:
    """Identity of the sources and the conversion: file names, sizes and times, the format, the count. The
    change time (ctime, which no tool sets back) is in it too: a file replaced by one of the same size with
    its modification time restored (``touch -r``) still counts as changed; a copied data set converts once."""
    h = hashlib.sha256(f"{fmt}:{per_class}".encode())
    for name, paths in files.items():
        for p in paths[:per_class]:
            st = p.stat()
            h.update(f"{name}/{p.name}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}\n".encode())
    return h.hexdigest()


def _checksum(images: torch.Tensor) -> str:
    return hashlib.sha256(images.contiguous().numpy().data).hexdigest()  # hashes the buffer, no 1 GB copy


def _read_cache(path: Path, fingerprint: str) -> Optional[torch.Tensor]:
    """The cached tensor if it is whole and made from these sources, else ``None`` (it is then rebuilt)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("fingerprint") == fingerprint and _checksum(state["images"]) == state.get("checksum"):
            return state["images"]
    except Exception:  # a truncated or foreign file: rebuild it
        pass
    log.warning("the image cache %s is stale or damaged; converting the images again", path)
    return None


def _remove_older(cache: Path) -> None:
    """Remove the caches this one replaces: those of the same format, count and classes made from sources
    since changed (``<kind>-<fingerprint>.pt``), and the unprefixed ones of versions before 2026-12-06,
    which are never read again. A cache of another format, count or class set stays: a run at 84 px does
    not evict 28 px, nor a run that recorded 13 classes one that recorded 12."""
    kind = cache.name.split("-", 1)[0]
    for old in cache.parent.glob("*.pt"):
        stem = old.stem
        replaced = stem.startswith(f"{kind}-") or (len(stem) == 20 and all(c in "0123456789abcdef" for c in stem))
        if replaced and old != cache:
            try:
                old.unlink()
                log.info("removed %s, the image cache of these images before they changed (or were copied or moved)", old)
            except OSError:
                pass  # another run may be reading it; it goes next time


def load_classes(files: dict[str, list[Path]], fmt: ImageFormat, per_class: Optional[int], cache_dir: Optional[Path],
                 what: str) -> ClassImages:
    """Stack the first ``per_class`` images of every class (sorted by file name) into ``ClassImages``, the
    classes sorted by name (:func:`split_of` picks each split's).

    ``per_class=None`` takes the smallest class's count. ``cache_dir=None`` disables the cache; an
    unwritable cache dir only costs the conversion next time.
    """
    if not files:
        raise DataError(f"{what} has no classes")
    files = dict(sorted(files.items()))  # one cache whatever the split: another split seed reads it too
    counts = {name: len(paths) for name, paths in files.items()}
    smallest = min(counts, key=counts.get)  # type: ignore[arg-type]
    n = per_class if per_class is not None else counts[smallest]
    if n < 1 or counts[smallest] < n:
        raise DataError(f"{what}: class {smallest} has {counts[smallest]} images but {n} per class are needed; "
                        "add images or lower dataset.images_per_class")
    if n < 2:  # every class would be cut to it, and a task needs a support and a query image of each class
        raise DataError(f"{what}: class {smallest} has {counts[smallest]} image, and every class is cut to the smallest "
                        "class's count, but a task needs 2 or more of each (a support and a query image); add images "
                        "there or remove its folder")
    if per_class is None and len(set(counts.values())) > 1:
        short = sorted(name for name, count in counts.items() if count == n)
        log.warning("%s: classes have %d to %d images; every class is cut to the first %d, the count of %s%s (add images "
                    "there, or move that class out of the root and any split file: dataset.images_per_class can only cut more)", what, n, max(counts.values()), n, ", ".join(short[:3]),
                    f" and {len(short) - 3} more" if len(short) > 3 else "")
    fingerprint = _fingerprint(files, fmt, n)
    kind = hashlib.sha256(f"{fmt}:{n}:{list(files)}".encode()).hexdigest()[:8]  # one cache per format, count and class set
    cache = cache_dir / f"{kind}-{fingerprint[:20]}.pt" if cache_dir is not None else None
    images = _read_cache(cache, fingerprint) if cache is not None else None
    if images is None:
        from metalearn_cli.data import check_host_memory  # the package imports this module

        check_host_memory(len(files) * n * fmt.channels * fmt.size**2, f"{what} at image_size={fmt.size}")
        images = torch.empty(len(files), n, *fmt.shape, dtype=torch.uint8)
        progress = tqdm(total=len(files) * n, desc=f"converting {what}", unit="img",
                        disable=len(files) * n < 2000 or not sys.stderr.isatty())  # no bar frames in a redirected log
        for i, paths in enumerate(files.values()):
            for j, p in enumerate(paths[:n]):
                images[i, j] = read_image(p, fmt)
                progress.update(1)
        progress.close()
        if cache is not None:
            try:
                save_torch(cache, {"images": images, "fingerprint": fingerprint, "checksum": _checksum(images)},
                            "image cache", "the images are converted again next time")
                _remove_older(cache)
            except WriteError as exc:
                log.warning("%s", exc)
    return ClassImages(images, list(files))


def split_of(data: ClassImages, names: list[str]) -> ClassImages:
    """The classes ``names`` of ``data``, in that order."""
    index = {c: i for i, c in enumerate(data.class_names)}
    return ClassImages(data.images[[index[c] for c in names]], list(names))
