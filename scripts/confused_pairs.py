#!/usr/bin/env python
"""A picture of the classes a run most often mistakes for each other, and how many errors are pairs at chance.

    python scripts/confused_pairs.py RUN [--out confused-pairs.png] [--pairs 12] [--min-rate 0.0]
        [--archive ../shared/data/omniglot/images_evaluation.zip] [--dataset-root DIR]

RUN is a training run or a ``metalearn eval`` dir (random tasks or ``episode=lake20way1shot``): the pairs
are counted from its ``test_outcomes.npz`` over every task, each task's classes drawn again from its seed,
in ``results.json``'s ``confused_pairs`` order (errors, of the queries of either class in the tasks that
held both). Each row shows the first class as four drawers drew it, a gap, then the second; the images
are the ones the network read (the run's own data set options: size, framing, rotation), or with
``--archive`` the 105 px originals in Omniglot's zip (whether a pair differs at all before any resizing;
unrotated classes only; ``--dataset-root``: where a run's data set read from a folder is now, as ``metalearn
eval dataset_root=`` takes it). ``--min-rate`` keeps the pairs that err on at least that share of their queries
(0.4: those at chance). Prints the pairs with their rates and the share of the run's wrong answers they hold.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

PICTURE = "confused-pairs.png"  # the default --out, and the picture's name in an --out folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a tested training run or a metalearn eval dir")
    parser.add_argument("--out", default=PICTURE,
                        help=f"the picture, never over a file nor into a run dir (default: {PICTURE}; .png when it has "
                             f"no suffix; an existing folder: {PICTURE} in it)")
    parser.add_argument("--pairs", type=int, default=12, help="how many pairs to draw (default: 12)")
    parser.add_argument("--min-rate", type=float, default=0.0,
                        help="keep pairs erring on at least this share of their queries (default: 0.0; 0.4: at chance)")
    parser.add_argument("--archive", type=Path, help="Omniglot's images_evaluation.zip: draw the originals")
    parser.add_argument("--dataset-root", help="the folder a run's data set was read from (dataset=folder, ...)")
    args = parser.parse_args()
    from metalearn_cli.errors import MetalearnError

    try:
        check_args(parser, args)
        return draw_pairs(args)
    except MetalearnError as exc:  # the package's one-line errors, in this script's spelling
        print(f"confused_pairs.py: error: {str(exc).replace('dataset_root=', '--dataset-root ')}", file=sys.stderr)
        return 2


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Each argument's mistake in one line, before any work: not a traceback after it. Sets ``args.out`` to
    the file to write."""
    from PIL import Image

    from metalearn_cli.errors import ConfigError
    from metalearn_cli.rundir import refuse_replacing

    args.out = picture_path(parser, args.out)
    if args.pairs < 1:
        parser.error(f"--pairs {args.pairs}: draw at least 1 pair")
    if not 0 <= args.min_rate <= 1:
        parser.error(f"--min-rate {args.min_rate}: a share of queries, from 0 to 1")
    if args.out.suffix.lower() not in Image.registered_extensions():
        parser.error(f"--out {args.out}: {args.out.suffix} is no picture format; use .png (or .jpg, ...)")
    if not args.out.parent.is_dir():
        parser.error(f"--out {args.out}: the folder {args.out.parent} does not exist; make it first")
    if not args.run.is_dir():
        parser.error(f"{args.run} does not exist" if not args.run.exists() else f"{args.run} is a file; pass a run dir")
    from metalearn_cli.files import read_json  # a damaged status.json reads as none

    status = read_json(args.run / "status.json").get("status") if (args.run / "status.json").is_file() else None
    if not (args.run / "results.json").is_file():
        if status is not None:
            parser.error(f"{args.run} has no test results (status: {status}); finish the run, or score its best.pt with "
                         "metalearn eval and pass that eval dir")
        inside = sorted(p.parent.name for p in args.run.glob("*/results.json"))[:3]
        parser.error(f"{args.run} is no run dir" + (f" (a sweep? it holds {', '.join(inside)}: pass one of them)" if inside
                                                     else "; pass a tested run or a metalearn eval dir"))
    refuse_replacing(args.out, "--out ")  # the CLI's rule for what it writes outside a run dir
    if args.out.exists():
        raise ConfigError(f"--out {args.out} exists and would be replaced; choose another --out, or delete it first")


def picture_path(parser: argparse.ArgumentParser, out: str) -> Path:
    """The file ``--out`` names: in an existing folder, :data:`PICTURE`; without a suffix, ``.png``."""
    if not out.strip():  # Path("") is the current folder
        parser.error("--out is empty (an unset shell variable?); name the picture, e.g. --out pairs.png")
    path = Path(out).expanduser()
    if out.endswith(("/", os.sep)) and not path.is_dir():  # Path() would drop the slash and write OUT.png
        parser.error(f"--out {out}: the folder {path} does not exist; make it first")
    if path.is_dir():  # as report --out and compare --out: a folder holds the output under its own name
        return path / PICTURE
    return path if path.suffix else path.with_suffix(".png")


def draw_pairs(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from metalearn_cli.errors import ConfigError

    from omegaconf import OmegaConf

    import torch

    from metalearn_cli.checkpoint import read_meta_knowledge
    from metalearn_cli.confusions import confused_pairs
    from metalearn_cli.data import DATASETS
    from metalearn_cli.eval_inputs import dataset_of
    from metalearn_cli.evaluation import fixed_tasks

    results = json.loads((args.run / "results.json").read_text()) if (args.run / "results.json").is_file() else {}
    if "way" not in results or not (args.run / "test_outcomes.npz").is_file():
        print(f"{args.run} is not a tested run or eval dir with test_outcomes.npz", file=sys.stderr)
        return 2
    pairs = results.get("confused_pairs", [])  # since 2026-12-05; every pair is counted again below either way
    checkpoint = Path(results.get("checkpoint", "checkpoints/best.pt"))
    source = checkpoint if checkpoint.is_absolute() else args.run / checkpoint  # eval dirs: absolute; runs: their own
    config = read_meta_knowledge(source)["config"]
    data = DATASETS.build(dataset_of(OmegaConf.create(config["dataset"]), args.dataset_root, str(source)))
    split = data.split(results["split"])
    index = {name: i for i, name in enumerate(split.class_names)}
    predicted = torch.from_numpy(np.load(args.run / "test_outcomes.npz")["predicted"].astype(np.int64))
    shapes = (results["way"], results["shot"], results["query"])
    labels = torch.arange(shapes[0]).repeat_interleave(shapes[2])
    wrong = int((predicted != labels).sum())
    original = None
    if results.get("protocol") == "lake_original":  # Lake's own runs (eval.lake_runs): read from the archive again
        from metalearn_cli.lake_original import read_runs
        from metalearn_cli.data import image_format
        original = read_runs(Path(results["lake_runs"]["source"]), split, image_format(OmegaConf.create(config["dataset"])))
    tasks = fixed_tasks(data, results["split"], shapes, results["seed"], torch.device("cpu"),
                        results.get("protocol") in ("lake", "lake_original"), original)
    every = confused_pairs(tasks.task_classes(len(predicted)), predicted, labels, split.class_names,
                           top=wrong)  # every pair with a wrong answer, in results.json's order
    assert every[: len(pairs)] == pairs, "results.json's confused_pairs are not these tasks' (another seed or split?)"
    for rate in (0.4, 0.3, 0.2):
        held = [p for p in every if p["queries"] >= 20 and p["errors"] >= rate * p["queries"]]
        print(f"pairs erring on {100 * rate:.0f}% of their queries or more (20 queries or more): {len(held)}, holding "
              f"{sum(p['errors'] for p in held)} of {wrong} wrong answers ({100 * sum(p['errors'] for p in held) / predicted.numel():.2f} points)")
    turns = sum(p["errors"] for p in every if len({c.split("/rot")[0] for c in p["classes"]}) == 1)
    if turns:  # Vinyals et al.'s rotated classes: a character against its own turn
        print(f"two turns of one character: {turns} of {wrong} wrong answers ({100 * turns / wrong:.1f}%)")
    pairs = [p for p in every if p["errors"] >= args.min_rate * p["queries"]][: args.pairs]
    if not pairs:
        print("the run answered every query right: no pair to draw" if not wrong else
              f"no pair errs on {100 * args.min_rate:.0f}% of its queries or more; lower --min-rate", file=sys.stderr)
        return 2
    if args.archive and any(c.count("/") > 1 for p in pairs for c in p["classes"]):
        print("--archive draws unrotated characters only (Alphabet/characterNN); these pairs name rotated classes", file=sys.stderr)
        return 2
    draw = originals(args.archive) if args.archive else lambda name: [split.images[index[name], d, 0].cpu().numpy() for d in range(4)]
    rows = []
    for pair in pairs:
        first, second = (draw(c) for c in pair["classes"])
        gap = np.full((first[0].shape[0], 8), 128, np.uint8)
        rows += [np.concatenate([*first, gap, *second], axis=1), np.full((4, 8 * first[0].shape[1] + 8), 128, np.uint8)]
        print(f"{pair['errors']:4d} of {pair['queries']:4d} ({100 * pair['errors'] / pair['queries']:.0f}%)  "
              f"{pair['classes'][0]}  <->  {pair['classes'][1]}")
    shown = sum(p["errors"] for p in pairs)
    print(f"the {len(rows) // 2} pairs drawn: {shown} of the run's {wrong} wrong answers ({100 * shown / max(wrong, 1):.1f}%), "
          f"{100 * shown / predicted.numel():.2f} points of accuracy")
    picture = np.concatenate(rows[:-1])
    picture = picture if args.archive else 255 - picture  # the archive's ink is already dark on white
    scale = 1 if args.archive else 3
    try:
        with open(args.out, "xb") as f:  # "x": a file made since the check (another process) is not written over
            try:
                Image.fromarray(picture).resize((picture.shape[1] * scale, picture.shape[0] * scale), Image.NEAREST).save(
                    f, format=Image.registered_extensions()[args.out.suffix.lower()])
            except BaseException:
                args.out.unlink()  # no half-written picture left behind
                raise
    except FileExistsError:
        raise ConfigError(f"--out {args.out} appeared while the picture was drawn; choose another --out") from None
    print(f"wrote {args.out}")
    return 0


def originals(archive: Path):
    """``name -> [4 images]``: the first four drawers' 105 px drawings of ``Alphabet/characterNN`` in the zip."""
    import io
    import zipfile

    import numpy as np
    from PIL import Image

    z = zipfile.ZipFile(archive)
    files = [n for n in z.namelist() if n.endswith(".png")]

    def draw(name: str) -> list:
        chosen = sorted(n for n in files if f"/{name}/" in n)[:4]  # NNNN_DD.png: in drawer order
        return [np.array(Image.open(io.BytesIO(z.read(n))).convert("L")) for n in chosen]

    return draw


if __name__ == "__main__":
    sys.exit(main())
