"""Omniglot's files: the original archives (``images_background`` / ``images_evaluation``, as zips or
extracted folders in torchvision's layout), their conversion to one uint8 array per size, and the
compressed array file that holds it (the embedded ``assets/omniglot/omniglot28.npz``, or a cache
beside ``dataset.root``, rebuilt when the archives change). :mod:`metalearn_cli.data.omniglot` cuts
the arrays into the protocols' classes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional

import numpy as np

from metalearn_cli.data.images import read_image
from metalearn_cli.errors import DataError, WriteError
from metalearn_cli.files import atomic_write
from metalearn_cli.params.datasets import OMNIGLOT_FORMAT, OmniglotParams

IMAGE_FORMAT = OMNIGLOT_FORMAT
IMAGE_SIZE = IMAGE_FORMAT.size
SETS = ("images_background", "images_evaluation")
ASSET_DIR = resources.files("metalearn_cli.data") / "assets" / "omniglot"
ASSET_NAME = "omniglot28.npz"
CACHE_NAME = ".metalearn-omniglot{size}.npz"  # per image size


@dataclass(frozen=True)
class OmniglotArrays:
    """All characters of both sets: ``images[char, drawing]`` is a square uint8 image, strokes bright."""

    images: np.ndarray  # [n_chars, n_drawings, size, size] uint8
    characters: list[str]  # "Alphabet/characterNN", sorted within each set
    background: np.ndarray  # [n_chars] bool: True for images_background


# ----------------------------------------------------------------------------- reading sources
def _find_sources(root: Path) -> dict[str, Path]:
    """Locate each set as ``<set>.zip`` or ``<set>/`` in ``root`` or ``root/omniglot-py``."""
    found: dict[str, Path] = {}
    for name in SETS:
        for base in (root, root / "omniglot-py"):
            if (base / name).is_dir():
                found[name] = base / name
                break
            if (base / f"{name}.zip").is_file():
                found[name] = base / f"{name}.zip"
                break
    missing = [s for s in SETS if s not in found]
    if missing:
        raise DataError(
            f"Omniglot not found in {root}: missing {' and '.join(m + '(.zip)' for m in missing)}; put the original "
            "archives there, pass dataset.download=true on a connected machine, or omit dataset.root to use the embedded copy"
        )
    return found


def _members(source: Path, set_name: str) -> dict[str, list[str]]:
    """Map 'Alphabet/characterNN' -> sorted PNG member paths of one set (zip or folder)."""
    if source.suffix == ".zip":
        try:
            with zipfile.ZipFile(source) as zf:
                names = [n for n in zf.namelist() if not n.endswith("/")]
        except (zipfile.BadZipFile, OSError) as exc:
            raise DataError(f"cannot read {source}: {exc}; re-download or re-create the archive") from exc
    else:
        names = [str(p.relative_to(source.parent)).replace(os.sep, "/") for p in source.rglob("*") if p.is_file()]
    chars: dict[str, list[str]] = defaultdict(list)
    for name in names:
        if name.rsplit("/", 1)[-1].startswith("."):
            continue  # hidden files such as .DS_Store
        if not name.lower().endswith(".png"):
            raise DataError(f"{source} holds a file that is not a PNG image: {name}; remove it or re-extract the set")
        parts = name.split("/")
        if len(parts) != 4 or parts[0] != set_name:
            raise DataError(f"unexpected file {name} in {source}: expected {set_name}/<Alphabet>/<character>/<image>.png")
        chars[f"{parts[1]}/{parts[2]}"].append(name)
    if not chars:
        raise DataError(f"{source} holds no PNG images; expected {set_name}/<Alphabet>/<character>/<image>.png")
    return {c: sorted(v) for c, v in sorted(chars.items())}


def _fingerprint(sources: dict[str, Path]) -> str:
    """Cheap identity of the source files, to know when a cached conversion is stale."""
    h = hashlib.sha1()
    for name, src in sorted(sources.items()):
        paths = [src] if src.is_file() else sorted(src.rglob("*.png"))
        for p in paths:
            st = p.stat()
            h.update(f"{name}:{p.relative_to(src.parent)}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()


def convert(data: bytes, where: str, size: int = IMAGE_SIZE) -> np.ndarray:
    """Decode one PNG and convert it as :data:`IMAGE_FORMAT` says (Lanczos to ``size``, strokes bright on black)."""
    return read_image(io.BytesIO(data), dataclasses.replace(IMAGE_FORMAT, size=size), where)[0].numpy()


def read_source(root: Path, size: int = IMAGE_SIZE) -> OmniglotArrays:
    """Read both full-resolution sets from ``root`` (zips or folders) into ``size`` x ``size`` arrays."""
    sources = _find_sources(root)
    images: list[np.ndarray] = []
    characters: list[str] = []
    background: list[bool] = []
    per_char: Optional[int] = None
    for set_name in SETS:
        src = sources[set_name]
        chars = _members(src, set_name)
        zf = zipfile.ZipFile(src) if src.suffix == ".zip" else None
        try:
            for char, files in chars.items():
                if per_char is None:
                    per_char = len(files)
                if len(files) != per_char or per_char < 2:
                    raise DataError(
                        f"{src}: character {char} has {len(files)} images but others have {per_char}; "
                        "the set is incomplete, re-extract or re-download it"
                    )
                read = zf.read if zf is not None else (lambda n: (src.parent / n).read_bytes())
                images.append(np.stack([convert(read(f), f"{src}:{f}", size) for f in files]))
                characters.append(char)
                background.append(set_name == "images_background")
        finally:
            if zf is not None:
                zf.close()
    return OmniglotArrays(np.stack(images), characters, np.array(background))


# ----------------------------------------------------------------------------- the array file
def save_arrays(arrays: OmniglotArrays, path: Path, fingerprint: str = "") -> None:
    """Write the arrays atomically as a compressed .npz."""
    atomic_write(path, lambda f: np.savez_compressed(
        f, images=arrays.images, characters=np.array(arrays.characters), background=arrays.background,
        fingerprint=np.array(fingerprint),
    ), "the Omniglot array file", "free disk space or choose another dataset.root")


def load_arrays(path: Path | str) -> tuple[OmniglotArrays, str]:
    """Read an array file written by :func:`save_arrays`; returns the arrays and their fingerprint."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = OmniglotArrays(z["images"], [str(c) for c in z["characters"]], z["background"].astype(bool))
            fingerprint = str(z["fingerprint"]) if "fingerprint" in z else ""
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read the Omniglot array file {path}: {exc}; re-create it with scripts/prepare_omniglot.py") from exc
    if arrays.images.ndim != 4 or arrays.images.dtype != np.uint8 or len(arrays.characters) != len(arrays.images):
        raise DataError(f"{path} is not an Omniglot array file; re-create it with scripts/prepare_omniglot.py")
    return arrays, fingerprint


def arrays_from_root(params: OmniglotParams) -> OmniglotArrays:
    root = Path(params.root).expanduser()
    if params.download:
        download(root)
    sources = _find_sources(root)
    fingerprint = _fingerprint(sources)
    cache = root / CACHE_NAME.format(size=params.image_size)
    if cache.is_file():
        try:
            arrays, cached_fp = load_arrays(cache)
            if cached_fp == fingerprint:
                return arrays
        except DataError:
            pass  # a damaged cache is rebuilt below
    arrays = read_source(root, params.image_size)
    try:
        save_arrays(arrays, cache, fingerprint)
    except WriteError:
        pass  # a read-only root only costs the conversion next time
    return arrays


def download(root: Path) -> None:
    """Fetch the original archives with torchvision's own URLs and checksums."""
    from torchvision.datasets import Omniglot

    chain = [root / "omniglot-py", *(root / "omniglot-py").parents]  # torchvision makes what is missing of it
    made = next((i for i in range(len(chain) - 1, -1, -1) if not chain[i].exists()), None)  # the topmost made here
    try:
        for background in (True, False):
            Omniglot(str(root), background=background, download=True)
    except Exception as exc:  # network errors come in many types
        for folder in chain[:made + 1] if made is not None else []:  # a failed download leaves no empty folder behind
            try:
                folder.rmdir()  # (files, if any, stay, and the folders that hold them)
            except OSError:
                break
        raise DataError(
            f"could not download Omniglot into {root} ({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "put images_background.zip and images_evaluation.zip there yourself, or omit dataset.root to use the embedded copy"
        ) from exc
