"""``metalearn sample-task``: a small task folder to try ``predict`` on, from the embedded Omniglot.

Writes ``OUT/support/<class>/`` and ``OUT/query/<class>/`` with PNGs of characters from the test
split (never seen in training; upright, not the split's turned copies), dark strokes on white as the original Omniglot images look, so a
first ``metalearn predict`` needs nothing but the package.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from metalearn_cli.console import OneLineParser, folder_arg, help_text, shell_override
from metalearn_cli.errors import ConfigError
from metalearn_cli.rundir import refuse_replacing


def write_sample_task(out: Path, way: int = 5, shot: int = 1, query: int = 5, seed: int = 0) -> list[str]:
    """Write the task; returns its class folder names."""
    from metalearn_cli.data import DATASETS

    test = DATASETS.build({"name": "omniglot"}).test
    upright = [i for i, name in enumerate(test.class_names) if "/rot" not in name]  # Vinyals et al.'s turned copies are not characters
    if not 2 <= way <= len(upright) or shot < 1 or query < 0 or shot + query > test.n_per_class:
        raise ConfigError(f"a sample task needs 2 <= --way <= {len(upright)}, --shot >= 1, --query >= 0 and "
                          f"--shot + --query <= {test.n_per_class}")
    refuse_replacing(out, "--out ")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; choose a new folder for the task")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty; choose a new --out folder")
    g = torch.Generator().manual_seed(seed)
    classes = [upright[i] for i in torch.randperm(len(upright), generator=g)[:way].tolist()]
    names = []
    for c in classes:
        name = test.class_names[c].replace("/", "_")
        names.append(name)
        order = torch.randperm(test.n_per_class, generator=g)[: shot + query].tolist()
        for j, i in enumerate(order):
            folder = out / ("support" if j < shot else "query") / name
            folder.mkdir(parents=True, exist_ok=True)
            pixels = 255 - test.images[c, i, 0].numpy()  # stored white-on-black; the originals are dark on white
            Image.fromarray(pixels).save(folder / f"{j}.png")
    return names


def main(argv: list[str]) -> int:
    parser = OneLineParser(prog="metalearn sample-task", description=help_text(__doc__))
    parser.add_argument("--out", type=folder_arg, default=Path("sample_task"), help="a new folder (default: sample_task)")
    parser.add_argument("--way", type=int, default=5, help="classes (default 5)")
    parser.add_argument("--shot", type=int, default=1, help="support images per class (default 1)")
    parser.add_argument("--query", type=int, default=5, help="query images per class (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="which classes and drawings are drawn (default 0)")
    args = parser.parse_args(argv)
    names = write_sample_task(args.out, args.way, args.shot, args.query, args.seed)
    query = shell_override("query", f"{args.out}/query") if args.query > 0 else "query=YOUR_IMAGES"  # --query 0 writes none
    print(f"wrote {'an' if len(names) in (8, 11, 18) or 80 <= len(names) < 90 else 'a'} {len(names)}-way {args.shot}-shot task to {args.out}; try (RUN_DIR: a training run of yours, e.g. "
          f"under outputs/train/{'; YOUR_IMAGES: a folder of images to classify' if args.query == 0 else ''}):\n"
          f"  metalearn predict checkpoint=RUN_DIR/checkpoints/best.pt {shell_override('support', f'{args.out}/support')} "
          f"{query}")  # placeholders that paste as words, not as shell syntax (<run> is a redirect)
    return 0
