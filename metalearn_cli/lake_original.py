"""Lake et al.'s 20 original one-shot runs (``eval.lake_runs``): the fixed runs behind the published
figures (humans 4.5% error, BPL 3.3%, Koch et al.'s siamese nets 8.0%), read from Lake's own
``all_runs.zip`` and found among the test split's drawings, so the test scores exactly those 400 queries.

The archive (github.com/brendenlake/omniglot, ``python/one-shot-classification/all_runs.zip``) holds
``runNN/training/classKK.png`` (one drawing per character), ``runNN/test/itemKK.png`` and
``runNN/class_labels.txt`` (each line: a test image, then the training image of its character). Its
drawings are the evaluation set's own files, renamed; each one is converted as the network's data set
converts its images (:func:`~metalearn_cli.data.image_format`) and matched pixel for pixel, which gives
each run's characters and drawers. Nothing of the archive is shipped: the user names it.
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from metalearn_cli.data import image_format
from metalearn_cli.data.images import read_image
from metalearn_cli.episodes import ClassImages
from metalearn_cli.errors import ConfigError, DataError

ARCHIVE = "all_runs.zip (github.com/brendenlake/omniglot, python/one-shot-classification)"
LABELS = "class_labels.txt"
RUN = re.compile(r"(.*/)?run\d+/class_labels\.txt")  # the runs may sit in a top folder of the zip
IN_RUN = re.compile(r"(^|/)run\d+/")


@dataclass(frozen=True)
class OriginalRuns:
    """The runs as indices into the test split: per run, its characters (query ``i`` is of character
    ``i``) and each character's two drawers ``[support, query]``."""

    source: str
    names: list[str]  # runNN, in order
    characters: list[list[int]]
    drawers: list[list[tuple[int, int]]]

    def record(self) -> dict[str, Any]:
        """results.json's ``lake_runs``: where the runs came from, and a digest of what they are."""
        digest = hashlib.sha256(repr((self.characters, self.drawers)).encode()).hexdigest()[:12]
        return {"source": self.source, "runs": len(self.names), "queries": sum(map(len, self.characters)), "digest": digest}


def original_runs(eval_cfg: Any, dataset_cfg: Any, test: ClassImages, way: int, lake: bool) -> Optional[OriginalRuns]:
    """The runs ``eval.lake_runs`` names, located in ``test`` (None when it names none)."""
    path = getattr(eval_cfg, "lake_runs", None)
    if not path:
        return None
    if not lake:
        raise ConfigError("eval.lake_runs scores Lake et al.'s original within-alphabet runs: add episode=lake20way1shot")
    runs = read_runs(Path(str(path)).expanduser(), test, image_format(dataset_cfg))
    ways = sorted({len(c) for c in runs.characters})
    if ways != [way]:
        raise ConfigError(f"the runs in {path} are {'/'.join(map(str, ways))}-way and the test is {way}-way; "
                          f"give episode.way={ways[0]} (episode=lake20way1shot)")
    return runs


def _files(path: Path) -> dict[str, bytes]:
    """The archive's files by name (``runNN/...``), from the zip or the folder it extracts to."""
    if not path.exists():
        raise DataError(f"eval.lake_runs={path} does not exist; give the path of {ARCHIVE} or of the folder it extracts to")
    try:
        if path.is_dir():
            inside = ((p.relative_to(path).as_posix(), p) for p in path.rglob("*"))
            return {n: p.read_bytes() for n, p in inside if IN_RUN.search(n) and p.is_file()}
        with zipfile.ZipFile(path) as zf:  # only the runs' files: a wrong, large zip is not read whole
            return {n: zf.read(n) for n in zf.namelist() if IN_RUN.search(n) and not n.endswith("/")}
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        what = "cannot be read" if path.is_dir() else "is not a readable zip"
        raise DataError(f"eval.lake_runs={path} {what} ({exc.__class__.__name__}: {exc}); give {ARCHIVE} "
                        "or the folder it extracts to, readable") from exc


def _drawing_index(test: ClassImages) -> dict[bytes, tuple[int, int]]:
    """Each test drawing's pixels -> (character, drawer)."""
    flat = test.images.reshape(test.n_classes * test.n_per_class, -1).cpu().numpy()
    index: dict[bytes, tuple[int, int]] = {}
    for i, row in enumerate(flat):
        index.setdefault(row.tobytes(), divmod(i, test.n_per_class))
    return index


def read_runs(path: Path, test: ClassImages, fmt: Any) -> OriginalRuns:
    """Every ``runNN/class_labels.txt`` of the archive at ``path``, its drawings found in ``test``."""
    files = _files(path)
    found = [m for m in (RUN.fullmatch(n) for n in sorted(files)) if m]
    if not found:
        raise DataError(f"eval.lake_runs={path} holds no runNN/{LABELS}; give {ARCHIVE} or the folder it extracts to")
    index, prefix = _drawing_index(test), found[0].group(1) or ""
    labels = [m.group(0) for m in found if (m.group(1) or "") == prefix]
    names, characters, drawers = [], [], []
    for name in labels:
        named = sorted(_pairs(path, files[name], name))  # by training image: character i is classNN i
        found_in = [tuple(_locate(path, files, prefix + p, index, fmt) for p in pair) for _, _, pair in named]
        for (_, n, _), ((query_char, _), (char, _)) in zip(named, found_in):
            if query_char != char:
                raise DataError(f"{path}: {name} line {n} pairs drawings of two characters ({test.class_names[query_char]} "
                                f"and {test.class_names[char]}); the archive was changed, download {ARCHIVE} again")
        chars = [char for _, (char, _) in found_in]
        if len(set(chars)) != len(chars) or not chars:
            raise DataError(f"{path}: {name} must name each character once (one test drawing per character, as Lake's runs do)")
        names.append(name[len(prefix):].split("/")[0])
        characters.append(chars)
        drawers.append([(drawer, query_drawer) for (_, query_drawer), (_, drawer) in found_in])
    numbers = [int(n[3:]) for n in names]
    if gaps := sorted(set(range(1, max(numbers) + 1)) - set(numbers)):  # a run lost in copying would shift every figure
        raise DataError(f"eval.lake_runs={path} holds {names[-1]} but not run{gaps[0]:02d}{' and others' if len(gaps) > 1 else ''}: "
                        f"a run is missing; download {ARCHIVE} again")
    return OriginalRuns(str(path.absolute()), names, characters, drawers)


def _pairs(path: Path, text: bytes, name: str) -> list[tuple[str, int, tuple[str, str]]]:
    """``class_labels.txt``'s lines as (training image, line number, (test image, training image))."""
    pairs = []
    for n, line in enumerate(text.decode("utf-8", "replace").splitlines(), 1):
        parts = line.split()
        if len(parts) != 2 and line.strip():
            raise DataError(f"{path}: {name} line {n} is not 'test image, training image' ({line.strip()[:60]})")
        if parts:
            pairs.append((parts[1], n, (parts[0], parts[1])))
    return pairs


def _locate(path: Path, files: dict[str, bytes], name: str, index: dict[bytes, tuple[int, int]], fmt: Any) -> tuple[int, int]:
    """(character, drawer) of one of the archive's drawings, as the network's data set converts it."""
    if name not in files:
        raise DataError(f"{path} lacks {name}, which its {LABELS} names; download {ARCHIVE} again")
    pixels = read_image(io.BytesIO(files[name]), fmt, f"{path}:{name}").cpu().numpy().tobytes()
    if pixels not in index:
        raise DataError(f"{path}: {name} is none of the test split's drawings: Lake's runs are drawings of Omniglot's "
                        "evaluation alphabets, scored by a network trained with dataset=omniglot_background (or another "
                        "omniglot_background_* option); check the archive is Lake's all_runs.zip, unchanged")
    return index[pixels]


def runs_as_tensors(runs: OriginalRuns) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each run's characters ``[N]`` and drawers ``[N, 2]``, as :class:`~metalearn_cli.lake_runs.LakeRuns` draws them."""
    return [(torch.tensor(c), torch.tensor(d)) for c, d in zip(runs.characters, runs.drawers)]
