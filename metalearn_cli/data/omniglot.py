"""Omniglot (Lake et al. 2015) at 28x28 (or ``dataset.image_size``), offline by default.

The package embeds all 1,623 characters x 20 drawings as one compressed uint8 array
(``assets/omniglot/omniglot28.npz``, made by ``scripts/prepare_omniglot.py`` from the original
archives), so ``dataset=omniglot`` needs no download. ``dataset.root`` reads the full-resolution
``images_background`` / ``images_evaluation`` sets (zips or extracted folders, torchvision's
layout) instead, and ``dataset.download=true`` fetches those not there yet with torchvision's ``Omniglot``. Only
those archives give another resolution (``dataset.image_size``: each 105 x 105 drawing resized with
Lanczos, converted once and cached beside them per size).

Protocols (``dataset.split``):
- ``vinyals``: Vinyals et al. (2016) character split as used by Snell et al. (2017): 1028 / 172 /
  423 characters, each rotated by 0/90/180/270 degrees into 4 classes. ``dataset.val=trainval`` also
  trains on the 172 validation characters, as Snell et al.'s final runs did (their ``run_trainval``);
  validation then measures classes seen in training.
- ``background``: background alphabets train, evaluation alphabets test (no rotations); the last five
  background alphabets (sorted by name) are held out for validation (``dataset.val=drawers``: all 30
  alphabets, drawers 16-20 validate; ``trainval``: all 30 alphabets and drawers train, and validation
  draws the upright characters again, seen images). ``dataset.rotations=4`` adds
  each training character's 90/180/270-degree turns as new classes (Santoro et al. 2016; Vinyals et
  al. 2016), each turn of an alphabet an alphabet of its own; validation and test stay unrotated.
- ``dataset.normalise=centre|centre_scale`` frames every drawing by its own ink's centre of mass (and
  size) before anything else, training and test alike (:mod:`metalearn_cli.data.ink`).
- ``dataset.mirror=true`` (either split) adds each training class's left-right mirror image as a new
  class, each mirrored alphabet an alphabet of its own; validation and test are never mirrored.

The files (archives, conversion, the array file) live in :mod:`metalearn_cli.data.omniglot_files`.
Pixels are inverted so strokes are bright on a zero background (zero padding then means "no ink").
"""

from __future__ import annotations

import dataclasses

import torch

from metalearn_cli.data import DATASETS, FewShotData
from metalearn_cli.data.ink import normalise_ink
from metalearn_cli.data.omniglot_files import ASSET_DIR, ASSET_NAME, OmniglotArrays, arrays_from_root, load_arrays
from metalearn_cli.episodes import ClassImages
from metalearn_cli.errors import DataError
from metalearn_cli.params.datasets import OmniglotParams, OmniglotSplit, OmniglotVal

LAKE_VAL_ALPHABETS = 5
VAL_DRAWERS = 5  # dataset.val=drawers: the last 5 of each character's 20 drawings validate


# ----------------------------------------------------------------------------- splits
def _split_lines(name: str) -> list[str]:
    text = (ASSET_DIR / "splits" / "vinyals" / f"{name}.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def _classes(arrays: OmniglotArrays, entries: list[tuple[str, int]], where: str) -> ClassImages:
    """Stack (character, turn) classes into ``[classes, drawings, 1, size, size]``; turn ``k`` is ``k % 4``
    quarter-turns, of the left-right mirror image when ``k >= 4``."""
    index = {c: i for i, c in enumerate(arrays.characters)}
    missing = [c for c, _ in entries if c not in index]
    if missing:
        raise DataError(
            f"{where} lacks {len(set(missing))} characters of the split (e.g. {missing[0]}); "
            "supply both complete sets, images_background and images_evaluation"
        )
    base = torch.from_numpy(arrays.images[[index[c] for c, _ in entries]]).unsqueeze(2)
    turns = torch.tensor([k for _, k in entries])
    out = base.clone()
    mirrored = turns >= 4
    if mirrored.any():
        out[mirrored] = torch.flip(base[mirrored], dims=(-1,))
    for k in (1, 2, 3):
        sel = turns % 4 == k
        if sel.any():
            out[sel] = torch.rot90(out[sel], k, dims=(-2, -1))
    return ClassImages(out.contiguous(), [_class_name(c, k) for c, k in entries])


def _class_name(character: str, turn: int) -> str:
    """``Alphabet/character[/mirror][/rotNNN]``: every part after the character names a new alphabet."""
    parts = [character] + (["mirror"] if turn >= 4 else []) + ([f"rot{turn % 4 * 90:03d}"] if turn % 4 else [])
    return "/".join(parts)


def make_splits(arrays: OmniglotArrays, split: OmniglotSplit, where: str, val: OmniglotVal = OmniglotVal.alphabets,
                rotations: int = 1, mirror: bool = False) -> FewShotData:
    """Cut the characters into train / val / test classes by the chosen protocol."""
    parts: dict[str, list[tuple[str, int]]] = {}
    if split is OmniglotSplit.vinyals:
        for part in ("train", "val", "test"):
            entries = []
            for line in _split_lines(part):
                alphabet, character, rot = line.split("/")
                entries.append((f"{alphabet}/{character}", int(rot[3:]) // 90))
            parts[part] = entries
        if val is OmniglotVal.trainval:  # Snell et al.'s final runs: 1,200 characters x 4 rotations train
            parts["train"] = parts["train"] + parts["val"]
    else:
        bg = [c for c, b in zip(arrays.characters, arrays.background) if b]
        alphabets = sorted({c.split("/")[0] for c in bg})
        if len(alphabets) <= LAKE_VAL_ALPHABETS:
            raise DataError(f"{where}: the background split needs more than {LAKE_VAL_ALPHABETS} background alphabets")
        val_alphabets = set(alphabets[-LAKE_VAL_ALPHABETS:]) if val is OmniglotVal.alphabets else set()
        parts["train"] = [(c, k) for k in range(rotations) for c in bg if c.split("/")[0] not in val_alphabets]
        parts["val"] = [(c, 0) for c in bg if c.split("/")[0] in val_alphabets] or parts["train"]
        if val is OmniglotVal.trainval:  # every background drawing trains; validation draws the upright ones again
            parts["val"] = [(c, 0) for c in bg]
        parts["test"] = [(c, 0) for c, b in zip(arrays.characters, arrays.background) if not b]
        if not parts["test"]:
            raise DataError(f"{where} has no images_evaluation characters for the background split's test classes")
    copies = rotations * (2 if mirror else 1)  # training classes per upright character (background split)
    if mirror:  # each training class's mirror image (after the upright ones: the drawers cut below relies on it)
        parts["train"] = parts["train"] + [(c, k + 4) for c, k in parts["train"]]  # a new list: val may alias train
    splits = {p: _classes(arrays, e, where) for p, e in parts.items()}
    if val is OmniglotVal.drawers:  # the same characters: drawers 1-15 train, 16-20 validate (new drawings)
        cut = splits["train"].n_per_class - VAL_DRAWERS
        if cut < 1:
            raise DataError(f"{where}: dataset.val=drawers needs more than {VAL_DRAWERS} drawings per character "
                            f"(it has {splits['train'].n_per_class}); use dataset.val=alphabets")
        upright = len(splits["train"].class_names) // copies  # the turned copies come after: validate upright
        splits["val"] = ClassImages(splits["train"].images[:upright, cut:].contiguous(), splits["train"].class_names[:upright])
        splits["train"] = ClassImages(splits["train"].images[:, :cut].contiguous(), splits["train"].class_names)
    return FewShotData(name="omniglot", train=splits["train"], val=splits["val"], test=splits["test"],
                       val_drawings=val in (OmniglotVal.drawers, OmniglotVal.trainval))


@DATASETS.register("omniglot", params=OmniglotParams)
def build_omniglot(params: OmniglotParams) -> FewShotData:
    if params.root is None:  # the settings themselves are checked by OmniglotParams
        asset = ASSET_DIR / ASSET_NAME
        if not asset.is_file():
            raise DataError(f"the embedded Omniglot file {asset} is missing; reinstall metalearn or run scripts/prepare_omniglot.py")
        arrays, where = load_arrays(str(asset))[0], "the embedded Omniglot"
    else:
        arrays, where = arrays_from_root(params), f"dataset.root={params.root}"
    arrays = dataclasses.replace(arrays, images=normalise_ink(arrays.images, params.normalise))
    return make_splits(arrays, params.split, where, params.val, params.rotations, params.mirror)
