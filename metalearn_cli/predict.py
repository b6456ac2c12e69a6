"""``metalearn predict``: a trained meta-network meets a user's own task.

``predict`` reads a support folder (one sub-folder of images per class, any number of images each)
and a query folder (images, or class sub-folders when the answers are known), adapts the
meta-knowledge to the support set as it was meta-trained, and writes ``predictions.csv`` (one row
per query image: its path as given, the predicted class, one probability column per class) plus
``predictions.json`` (the summary, with accuracy when the query folder is labelled).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
import time
import unicodedata
from pathlib import Path
from typing import Any, Optional

import torch

from metalearn_cli import knowledge
from metalearn_cli.assemble import setup_device
from metalearn_cli.augment import TtaViews
from metalearn_cli.bn_modes import MODES
from metalearn_cli.ensemble import ensemble_paths
from metalearn_cli.data.images import class_folders, class_images, image_files, read_class_folders, say_files_beside
from metalearn_cli.errors import ConfigError, DataError
from metalearn_cli.files import write_json
from metalearn_cli.knowledge_ensemble import KnowledgeEnsemble, load_members
from metalearn_cli.rundir import write_status

log = logging.getLogger(__name__)


def _queries(root: Path, given: str, class_names: list[str]) -> tuple[list[str], list[Path], list[int] | None]:
    """Query files (paths as the user spelled them) and, for class sub-folders, their true labels."""
    if root.is_file():
        raise DataError(f"query={given} is a file; pass the folder that holds it (query=DIR of images or class sub-folders)")
    if not root.is_dir():
        raise DataError(f"query folder {root} does not exist; pass query=DIR holding images or class sub-folders")
    folders = class_folders(root)
    files = image_files(root) if folders else class_images(root, "query folder")  # the entries it skips, said once
    if folders and files:
        raise DataError(f"query folder {root} mixes images and sub-folders; use either images only or one sub-folder per class")
    if not folders:
        if not files:
            raise DataError(f"query folder {root} holds no images; put the images to classify there")
        return [os.path.join(given, p.name) for p in files], files, None
    index = {unicodedata.normalize("NFC", name): i for i, name in enumerate(class_names)}  # café typed two ways is one class
    unknown = [f.name for f in folders if unicodedata.normalize("NFC", f.name) not in index]
    if unknown:
        raise DataError(f"query class folder '{unknown[0]}' is not a support class ({', '.join(class_names)}); "
                        "name query sub-folders after support classes, or put the images directly in the query folder")
    say_files_beside(root, folders)  # a note beside the labelled query folders: not read, said as for the support's
    shown, paths, labels = [], [], []
    for folder in folders:
        for p in class_images(folder):  # each says which of its entries it skips
            shown.append(os.path.join(given, folder.name, p.name))
            paths.append(p)
            labels.append(index[unicodedata.normalize("NFC", folder.name)])
    if not paths:
        raise DataError(f"the class folders of {root} hold no images")
    return shown, paths, labels


def _table(rows: list[dict[str, Any]], class_names: list[str], limit: int) -> str:
    """The first ``limit`` predictions as a fixed-width table for the terminal."""
    width = min(max([len("file"), *(len(r["file"]) for r in rows)]), 60)
    pw = max(len("predicted"), *(len(c) for c in class_names))
    head = f"{'file':<{width}}  {'predicted':<{pw}} {'p':>6}" + ("  true" if "true" in rows[0] else "")
    lines = [head, "-" * len(head)]
    for r in rows[:limit]:
        name = r["file"] if len(r["file"]) <= width else "..." + r["file"][-(width - 3):]
        line = f"{name:<{width}}  {r['predicted']:<{pw}} {r['p_' + r['predicted']]:>6.3f}"
        if "true" in r:
            line += f"  {r['true']}" + ("" if r["true"] == r["predicted"] else "  (wrong)")
        lines.append(line)
    if len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more in predictions.csv")
    return "\n".join(lines) if limit > 0 else f"{len(rows)} predictions in predictions.csv"


def _say_what_the_test_protocol_means(members: list[knowledge.MetaKnowledge]) -> None:
    """predict tests as the checkpoint's run was tested (its eval.bn_mode and eval.tta_*), with two
    consequences a user could not guess: a transductive mode answers each query with the others, and
    test-time fine-tuning is eval's alone."""
    said = [m for m in members if not MODES[m.bn_mode].inductive][:1]
    for member in members:  # said once, before any image is read (adapt() would say it for each member)
        member.said_transductive = member not in said
        member.warn_if_transductive()
    for key in ("finetune_steps", "support_copies", "soft_kmeans_steps"):
        values = [int(m.config.eval.get(key) or 0) for m in members]
        if any(values):
            log.info("the checkpoint's eval.%s=%d is not applied by predict (metalearn eval applies it)", key, max(values))


def _ensemble_record(members: list[knowledge.MetaKnowledge]) -> dict[str, Any]:
    """What predictions.json says of an ensemble's members (nothing for one network)."""
    if len(members) < 2:
        return {}
    return {"ensemble": [m.source for m in members], "ensemble_bn_modes": [m.bn_mode for m in members],
            "ensemble_tta": [TtaViews.of(m.config.eval).summary() for m in members],
            "ensemble_image_formats": [m.image_format.to_dict() for m in members]}


def _rows(shown: list[str], predicted: list[int], truth: Any, class_names: list[str], probs: torch.Tensor) -> list[dict[str, Any]]:
    """predictions.csv: a row per query (its file, the predicted class, the true one if labelled, each class's probability)."""
    rows = []
    for i, (name, pred) in enumerate(zip(shown, predicted)):
        row: dict[str, Any] = {"file": name, "predicted": class_names[pred]}
        if truth is not None:
            row["true"] = class_names[truth[i]]
        row.update({f"p_{c}": round(float(probs[i, j]), 6) for j, c in enumerate(class_names)})
        rows.append(row)
    return rows


def _say_outcome(probs: torch.Tensor, accuracy: Optional[float], class_names: list[str],
                 support_files: list[list[Path]], run_dir: Path) -> None:
    """The closing lines: the accuracy on labelled queries, and probabilities that say little, flagged."""
    if bool((probs.max(-1).values - probs.min(-1).values < 0.02).all()):
        ranks = accuracy is not None and accuracy > 1.5 / len(class_names)  # its first choices are right, well above chance
        log.warning("every query got near-uniform probabilities (all within 0.02 of each other): %s", (
            f"its first choices are right on {100 * accuracy:.0f}% of the labelled queries, but the probabilities say "
            "little about how sure it is (logits near zero: a short or early run)") if ranks else (
            "this meta-network may not tell these classes apart; check the images' format and polarity, or the "
            "checkpoint's training"))
    if accuracy is not None:
        log.info("accuracy %.2f%% on %d labelled queries (%d-way, %s support images per class); %s", 100 * accuracy,
                 probs.shape[0], len(class_names), "/".join(str(len(f)) for f in support_files), run_dir / "predictions.csv")
    else:
        log.info("%d quer%s classified into %d classes; %s", probs.shape[0], "y" if probs.shape[0] == 1 else "ies",
                 len(class_names), run_dir / "predictions.csv")


def _same_pictures(support_files: list[list[Path]], stacks: list[torch.Tensor], paths: list[Path],
                   queries: torch.Tensor) -> None:
    """Said, as the network reads them (after conversion, so a copy saved in another format counts): one
    picture in two support classes (a copy or a link: a labelling slip, or two blank scans), which no
    network can tell apart there; a query that is a support picture, which scores recall, not recognition."""
    def digest(image: torch.Tensor) -> bytes:
        return hashlib.sha1(image.contiguous().numpy().tobytes()).digest()

    owner: dict[bytes, Path] = {}
    for files, stack in zip(support_files, stacks):
        for path, image in zip(files, stack):
            first = owner.setdefault(digest(image), path)
            if first.parent != path.parent:
                log.warning("support images %s and %s are one picture in two classes (a copy or a link?): those "
                            "two classes cannot be told apart by it; each image belongs to one class", first, path)
    seen = [(query, owner[d]) for query, image in zip(paths, queries) if (d := digest(image)) in owner]
    if seen:
        log.warning("%d of %d queries are support images, pixel for pixel (%s is %s): their predictions say nothing "
                    "of recognising new drawings", len(seen), len(paths), seen[0][0], seen[0][1])


def predict(cfg: Any, run_dir: Path) -> float:
    """Classify ``cfg.query`` with a meta-network adapted to ``cfg.support``; returns the accuracy (NaN if unlabelled)."""
    start = time.perf_counter()
    if cfg.show < 0:
        raise ConfigError(f"show={cfg.show} is negative; give how many predictions to print (0: none, all go to predictions.csv)")
    device = setup_device(cfg)
    members = load_members([cfg.checkpoint, *ensemble_paths(cfg.ensemble)], device)
    meta = members[0]
    class_names, support_files, stacks = read_class_folders(Path(cfg.support), meta.image_format, "support")
    if len(class_names) < 2:
        raise DataError(f"support folder {cfg.support} has one class ({class_names[0]}); a task needs at least two class sub-folders")
    shown, paths, truth = _queries(Path(cfg.query), str(cfg.query), class_names)
    labels = [i for i, s in enumerate(stacks) for _ in range(s.shape[0])]
    first = (knowledge.read_from_files(torch.cat(stacks)), meta.read_images(paths))
    _same_pictures(support_files, stacks, paths, first[1])
    for member in members:  # refused before any warning: the error comes alone
        member.check_way(len(class_names))
    _say_what_the_test_protocol_means(members)  # before adapt(), which would say it again
    # each member reads the files its own way (a 28 px and a 56 px run), each format once: the first's is read above
    ensemble, files = KnowledgeEnsemble(members), [p for f in support_files for p in f]
    probs = ensemble.adapt(files, labels, {meta.image_format: first[0]})(paths, {meta.image_format: first[1]})
    predicted = probs.argmax(-1).tolist()
    rows = _rows(shown, predicted, truth, class_names, probs)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "predictions.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    accuracy = (sum(p == t for p, t in zip(predicted, truth)) / len(truth)) if truth is not None else math.nan
    summary = {
        "checkpoint": str(Path(cfg.checkpoint).resolve()), "checkpoint_step": meta.step, "classes": class_names,
        "support_per_class": {c: len(f) for c, f in zip(class_names, support_files)}, "queries": len(rows),
        **_ensemble_record(members),
        "accuracy": None if truth is None else accuracy, "bn_mode": meta.bn_mode, **TtaViews.of(meta.config.eval).summary(),
        "finetune_steps": 0, "device": str(device),
        "image_format": meta.image_format.to_dict(), "seconds": round(time.perf_counter() - start, 3),
    }
    write_json(run_dir / "predictions.json", summary)
    write_status(run_dir, "completed", queries=len(rows))
    print(_table(rows, class_names, cfg.show), flush=True)
    _say_outcome(probs, accuracy if truth is not None else None, class_names, support_files, run_dir)
    return accuracy

