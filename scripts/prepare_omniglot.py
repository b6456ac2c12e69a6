#!/usr/bin/env python
"""Convert the original Omniglot archives into the 28x28 array file embedded in the package.

Usage:
    python scripts/prepare_omniglot.py SOURCE [--splits DIR] [--out FILE_OR_FOLDER]

SOURCE holds images_background and images_evaluation, as .zip archives or extracted folders
(torchvision's layout, also under SOURCE/omniglot-py). --splits copies the Vinyals split files
(train/val/test.txt and their LICENSE) beside the array file. Without --out the script REWRITES the
package's own embedded copy (metalearn_cli/data/assets/omniglot/omniglot28.npz), which `dataset=omniglot`
reads; an --out folder gets omniglot28.npz inside it. Prints what it wrote and its sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import time
from pathlib import Path

from metalearn_cli.data import omniglot_files as omniglot
from metalearn_cli.errors import ConfigError, MetalearnError

PACKAGE_ASSETS = Path(__file__).resolve().parents[1] / "metalearn_cli" / "data" / "assets" / "omniglot"
SOURCE_REMEDY = "put the original archives (or their extracted folders) there, or pass as SOURCE the folder that holds them"


def out_file(out: Path) -> Path:
    """The array file --out names (a folder: omniglot28.npz in it), checked before the half-minute conversion
    rather than after it."""
    target = out / omniglot.ASSET_NAME if out.is_dir() else out
    if target.is_dir():
        raise ConfigError(f"--out {out}: {target} is a folder; choose another --out")
    existing = next(p for p in (target.parent, *target.parent.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"--out {out}: {existing} is a file, not a folder; choose another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: {existing} is not writable; make it writable or choose another --out")
    return target


def copy_splits(splits: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("train.txt", "val.txt", "test.txt", "LICENSE"):
        if (splits / name).is_file():
            shutil.copyfile(splits / name, dest / name)
            print(f"copied {splits / name} -> {dest / name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prepare_omniglot.py", description=__doc__.splitlines()[0])
    parser.add_argument("source", metavar="SOURCE", type=Path,
                        help="folder with images_background(.zip) and images_evaluation(.zip)")
    parser.add_argument("--splits", type=Path, help="folder with the Vinyals train.txt/val.txt/test.txt to ship too")
    parser.add_argument("--out", type=Path, default=PACKAGE_ASSETS / omniglot.ASSET_NAME,
                        help="array file to write, or a folder to write omniglot28.npz into (default: the package's "
                             f"embedded copy, {PACKAGE_ASSETS / omniglot.ASSET_NAME}, which this then REWRITES)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:  # a fault of the data or the arguments is one line in this script's own words; a bug keeps its traceback
        if args.splits is not None and not args.splits.is_dir():
            raise ConfigError(f"--splits {args.splits} is not a folder; give the folder that holds train.txt, val.txt and test.txt")
        missing = [n for n in ("train.txt", "val.txt", "test.txt") if args.splits is not None and not (args.splits / n).is_file()]
        if missing:  # a partial set of split files would ship beside older ones
            raise ConfigError(f"--splits {args.splits} lacks {', '.join(missing)}; give the folder that holds all three")
        out = out_file(args.out)
        print(f"converting the Omniglot archives in {args.source} to {omniglot.IMAGE_SIZE}x{omniglot.IMAGE_SIZE} for {out}",
              flush=True)
        arrays = omniglot.read_source(args.source, option="SOURCE ", remedy=SOURCE_REMEDY)
        omniglot.save_arrays(arrays, out, remedy="free disk space or choose another --out")
    except MetalearnError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    n_bg = int(arrays.background.sum())
    print(
        f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, sha256 {digest}): "
        f"{len(arrays.characters)} characters ({n_bg} background, {len(arrays.characters) - n_bg} evaluation) "
        f"x {arrays.images.shape[1]} drawings at {omniglot.IMAGE_SIZE}x{omniglot.IMAGE_SIZE} "
        f"in {time.perf_counter() - start:.1f} s"
    )
    if args.splits is not None:
        copy_splits(args.splits, out.parent / "splits" / "vinyals")
    return 0


if __name__ == "__main__":
    sys.exit(main())
