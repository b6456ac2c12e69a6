#!/usr/bin/env python
"""Convert the original Omniglot archives into the 28x28 array file embedded in the package.

Usage:
    python scripts/prepare_omniglot.py SOURCE [--splits DIR] [--out FILE]

SOURCE holds images_background and images_evaluation, as .zip archives or extracted folders
(torchvision's layout, also under SOURCE/omniglot-py). --splits copies the Vinyals split files
(train/val/test.txt and their LICENSE) beside the array file. The default --out is the package's
own asset, so `dataset=omniglot` then needs no download. Prints what it wrote and its sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import time
from pathlib import Path

from metalearn_cli.data import omniglot_files as omniglot
from metalearn_cli.errors import MetalearnError

PACKAGE_ASSETS = Path(__file__).resolve().parents[1] / "metalearn_cli" / "data" / "assets" / "omniglot"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="folder with images_background(.zip) and images_evaluation(.zip)")
    parser.add_argument("--splits", type=Path, help="folder with the Vinyals train.txt/val.txt/test.txt to ship too")
    parser.add_argument("--out", type=Path, default=PACKAGE_ASSETS / omniglot.ASSET_NAME, help="array file to write")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        arrays = omniglot.read_source(args.source)
    except MetalearnError as exc:
        print(f"prepare_omniglot: error: {exc}", file=sys.stderr)
        return 2
    omniglot.save_arrays(arrays, args.out)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    n_bg = int(arrays.background.sum())
    print(
        f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB, sha256 {digest}): "
        f"{len(arrays.characters)} characters ({n_bg} background, {len(arrays.characters) - n_bg} evaluation) "
        f"x {arrays.images.shape[1]} drawings at {omniglot.IMAGE_SIZE}x{omniglot.IMAGE_SIZE} "
        f"in {time.perf_counter() - start:.1f} s"
    )
    if args.splits is not None:
        dest = args.out.parent / "splits" / "vinyals"
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("train.txt", "val.txt", "test.txt", "LICENSE"):
            if (args.splits / name).is_file():
                shutil.copyfile(args.splits / name, dest / name)
                print(f"copied {args.splits / name} -> {dest / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
