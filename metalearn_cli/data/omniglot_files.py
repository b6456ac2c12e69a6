"""Omniglot's files: the original archives (``images_background`` / ``images_evaluation``, as zips or
extracted folders in torchvision's layout), their conversion to one uint8 array per size, and the
compressed array file that holds it (the embedded ``assets/omniglot/omniglot28.npz``, or a cache
beside ``dataset.root``, rebuilt when the archives change). :mod:`metalearn_cli.data.omniglot` cuts
the arrays into the protocols' classes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import logging
import os
import sys
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

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
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OmniglotArrays:
    """All characters of both sets: ``images[char, drawing]`` is a square uint8 image, strokes bright."""

    images: np.ndarray  # [n_chars, n_drawings, size, size] uint8
    characters: list[str]  # "Alphabet/characterNN", sorted within each set
    background: np.ndarray  # [n_chars] bool: True for images_background


# ----------------------------------------------------------------------------- reading sources
def _locate(root: Path, option: str) -> dict[str, Path]:
    """Each set found as ``<set>.zip`` or ``<set>/`` in ``root`` or ``root/omniglot-py``; absent ones are left out.
    ``option`` is how the caller spells the folder (``dataset.root=``, the script's ``SOURCE ``)."""
    if root.exists() and not root.is_dir():  # typically one of the zips itself
        here = f", here {option}{root.parent}" if root.name in {f"{s}.zip" for s in SETS} else ""
        raise DataError(f"{option}{root} is a file, not a folder; give the folder that holds images_background(.zip) "
                        f"and images_evaluation(.zip){here}")
    found: dict[str, Path] = {}
    for name in SETS:
        for base in (root, root / "omniglot-py"):
            if (base / name).is_dir():
                found[name] = base / name
                break
            if (base / f"{name}.zip").is_file():
                found[name] = base / f"{name}.zip"
                break
    return found


ROOT_REMEDY = ("put the original archives there, pass dataset.download=true on a connected machine, "
               "or omit dataset.root to use the embedded copy")


def find_sources(root: Path, option: str = "dataset.root=", remedy: str = ROOT_REMEDY) -> dict[str, Path]:
    """Both sets in ``root`` (see :func:`_locate`), or one line naming what is missing and ``remedy``."""
    found = _locate(root, option)
    if not root.is_dir():
        raise DataError(f"Omniglot not found in {root}: that folder does not exist; {remedy}")
    missing = [s for s in SETS if s not in found]
    if missing:
        raise DataError(f"Omniglot not found in {root}: missing {' and '.join(m + '(.zip)' for m in missing)}; {remedy}")
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


def read_source(root: Path, size: int = IMAGE_SIZE, option: str = "dataset.root=", remedy: str = ROOT_REMEDY) -> OmniglotArrays:
    """Read both full-resolution sets from ``root`` (zips or folders) into ``size`` x ``size`` arrays; a bar on
    a terminal, since all 32,460 drawings take half a minute (``option`` and ``remedy`` as :func:`find_sources`)."""
    sources = find_sources(root, option, remedy)
    members = {set_name: _members(sources[set_name], set_name) for set_name in SETS}
    total = sum(len(files) for chars in members.values() for files in chars.values())
    bar = tqdm(total=total, desc=f"converting Omniglot to {size} px", unit="img",
               disable=total < 2000 or not sys.stderr.isatty())  # no frames in a redirected log
    images: list[np.ndarray] = []
    characters: list[str] = []
    background: list[bool] = []
    per_char: Optional[int] = None
    try:
        for set_name in SETS:
            src = sources[set_name]
            with contextlib.ExitStack() as stack:
                zf = stack.enter_context(zipfile.ZipFile(src)) if src.suffix == ".zip" else None
                read = zf.read if zf is not None else (lambda n, src=src: (src.parent / n).read_bytes())
                for char, files in members[set_name].items():
                    per_char = per_char if per_char is not None else len(files)
                    if len(files) != per_char or per_char < 2:
                        raise DataError(f"{src}: character {char} has {len(files)} images but others have {per_char}; "
                                        "the set is incomplete, re-extract or re-download it")
                    images.append(np.stack([convert(read(f), f"{src}:{f}", size) for f in files]))
                    characters.append(char)
                    background.append(set_name == "images_background")
                    bar.update(len(files))
    finally:
        bar.close()
    return OmniglotArrays(np.stack(images), characters, np.array(background))


# ----------------------------------------------------------------------------- the array file
def save_arrays(arrays: OmniglotArrays, path: Path, fingerprint: str = "",
                remedy: str = "free disk space or choose another dataset.root") -> None:
    """Write the arrays atomically as a compressed .npz; a failure is a ``WriteError`` ending in ``remedy``."""
    atomic_write(path, lambda f: np.savez_compressed(
        f, images=arrays.images, characters=np.array(arrays.characters), background=arrays.background,
        fingerprint=np.array(fingerprint),
    ), "the Omniglot array file", remedy)


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
    """The arrays of ``dataset.root`` at ``dataset.image_size``: converted once, then read from the cache beside the
    archives (rebuilt when they change; ``dataset.cache=false`` converts every time and writes nothing there).
    ``dataset.download=true`` fetches only the sets that are not there."""
    root = Path(params.root).expanduser()
    if params.download:
        download(root, _to_fetch(_locate(root, "dataset.root=")))
    sources = find_sources(root)
    fingerprint = _fingerprint(sources)
    cache = root / CACHE_NAME.format(size=params.image_size)
    if not params.cache:  # a read-only or shared data folder: nothing is written there, nor an old conversion trusted
        log.info("converting the Omniglot archives in %s to %d px (dataset.cache=false: not kept)", root, params.image_size)
        return read_source(root, params.image_size)
    if cache.is_file():
        try:
            arrays, cached_fp = load_arrays(cache)
            if cached_fp == fingerprint:
                return arrays
        except DataError:
            pass  # a damaged cache is rebuilt below
    log.info("converting the Omniglot archives in %s to %d px, once: cached in %s", root, params.image_size, cache)
    arrays = read_source(root, params.image_size)
    try:
        save_arrays(arrays, cache, fingerprint)
    except WriteError as exc:  # the run goes on; a silent failure would cost every later run the conversion unexplained
        reason = getattr(exc.__cause__, "strerror", None) or exc.__cause__ or exc
        log.warning("could not cache the converted Omniglot in %s (%s), so each run converts the archives again; "
                    "make that folder writable or free disk space there (dataset.cache=false: convert without trying)", root, reason)
    return arrays


def _to_fetch(found: dict[str, Path]) -> list[str]:
    """The sets ``dataset.download=true`` fetches: those missing, and a damaged zip where torchvision downloads
    (what its own failed download leaves); every other set found is used as it is."""
    def damaged(path: Path) -> bool:
        return path.parent.name == "omniglot-py" and path.suffix == ".zip" and not zipfile.is_zipfile(path)

    return [s for s in SETS if s not in found or damaged(found[s])]


def download(root: Path, sets: list[str]) -> None:
    """Fetch the ``sets`` not yet in ``root`` with torchvision's own URLs and checksums. Sets already there are
    never passed to torchvision: it checks a zip's md5, and would fetch a rebuilt (or re-zipped) archive again
    over the user's own file, or fail offline although the data is there."""
    from torchvision.datasets import Omniglot

    if not sets:
        log.info("dataset.download=true: both Omniglot sets are already in %s; using them, downloading nothing", root)
        return
    log.info("downloading Omniglot's %s into %s", " and ".join(sets), root / "omniglot-py")
    chain = [root / "omniglot-py", *(root / "omniglot-py").parents]  # torchvision makes what is missing of it
    made = next((i for i in range(len(chain) - 1, -1, -1) if not chain[i].exists()), None)  # the topmost made here
    try:
        for set_name in sets:
            Omniglot(str(root), background=set_name == "images_background", download=True)
    except Exception as exc:  # network errors come in many types
        for folder in chain[:made + 1] if made is not None else []:  # a failed download leaves no empty folder behind
            try:
                folder.rmdir()  # (files, if any, stay, and the folders that hold them)
            except OSError:
                break
        raise DataError(
            f"could not download Omniglot into {root} ({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            f"put {' and '.join(s + '.zip' for s in sets)} there yourself, or omit dataset.root to use the embedded copy"
        ) from exc
