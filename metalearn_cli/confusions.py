"""What a fixed test got right and wrong: ``test_outcomes.npz`` (for ``metalearn compare``) and which
classes it confuses (results.json's ``confused_pairs``, for random tasks and Lake's runs alike).

One accuracy hides where the errors are. Counting each wrong answer under its pair of classes (the
true one and the one chosen) shows whether they spread thin or gather on a few pairs, and which:
on Omniglot some pairs are one drawing twice (a duplicate character, or a symmetric character and
its 180-degree turn in the rotated-class protocol), where no image model does better than a coin.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from metalearn_cli.files import atomic_write

log = logging.getLogger(__name__)

OUTCOMES = "test_outcomes.npz"  # per-query correctness and prediction on the fixed tasks, for metalearn compare


def write_outcomes(path: Path, outcomes: list[torch.Tensor]) -> None:
    """Correctness ``[tasks, queries]`` bit-packed, and the predicted classes (1,000 tasks x 75 queries:
    about 15 kB); ``outcomes`` alternates predictions and labels, as :func:`~metalearn_cli.evaluation.evaluate_tasks` appends them."""
    import io

    import numpy as np

    predicted, labels = torch.cat(outcomes[0::2]), torch.cat(outcomes[1::2])
    buffer = io.BytesIO()
    array = (predicted == labels).numpy()
    np.savez_compressed(buffer, packed=np.packbits(array, axis=None), shape=np.array(array.shape),
                        predicted=predicted.numpy().astype(np.int16))
    atomic_write(path, lambda f: f.write(buffer.getvalue()), path.name, "free disk space")


def collapsed(predicted: torch.Tensor, labels: torch.Tensor, accuracy: float, ci95: float, way: int) -> dict[str, Any]:
    """``one_class_tasks``: the tasks whose every query got one class though they hold several. A diverged or
    collapsed network (a MAML inner rate that blows up a FiLM head, a decoder stuck at its start) scores
    near chance and still ends "completed": said beside the final line, so it never passes as a result.
    Warned only beyond what independent errors at this accuracy would give (a task of 2 queries answers
    both alike often), and chance only where the whole interval reaches it."""
    several = labels.unique().numel() > 1
    one_class = int((predicted == predicted[:, :1]).all(1).sum()) if several else 0
    expected = predicted.shape[0] * _one_class_chance(labels, accuracy, way) if several else 0.0
    if one_class > 3 * expected + 2:
        log.warning("in %d of %d test tasks every query got one class (about %.0f expected of independent errors at "
                    "this accuracy): the network has collapsed there (diverged training, or a decoder that tells no "
                    "classes apart); look at the training loss before using this result", one_class,
                    predicted.shape[0], expected)
    if way > 1 and accuracy - ci95 <= 1 / way + 1e-6:  # float32 sums: "20.00% ± 0.00%" is 0.2000000179
        log.warning("test accuracy %.2f%% ± %.2f%% over %d tasks is not measurably above chance (%.2f%% for %d "
                    "ways): the network learned nothing this test can see, or the test has too few tasks "
                    "(eval.episodes)", 100 * accuracy, 100 * ci95, predicted.shape[0], 100 / way, way)
    return {"one_class_tasks": one_class}


def _one_class_chance(labels: torch.Tensor, accuracy: float, way: int) -> float:
    """The chance that a task's queries all get one class when each is right with probability ``accuracy``
    and wrong uniformly over the other classes, independently."""
    wrong = (1 - accuracy) / max(way - 1, 1)
    return float(sum(accuracy ** int((labels == c).sum()) * wrong ** int((labels != c).sum()) for c in range(way)))


def confused_pairs(task_classes: list[list[int]], predicted: torch.Tensor, labels: torch.Tensor, names: list[str],
                   top: int = 10) -> list[dict[str, Any]]:
    """The ``top`` pairs of classes most often mistaken for each other: ``errors`` (a query of one
    answered as the other), of the ``queries`` of either class in the tasks that held both.
    ``task_classes``: each task's class ids by label; ``predicted [tasks, queries]``; ``labels [queries]``."""
    errors: Counter[tuple[int, int]] = Counter()
    truth = labels.tolist()
    for classes, row in zip(task_classes, predicted.tolist()):
        errors.update(tuple(sorted((classes[t], classes[p]))) for t, p in zip(truth, row) if p != t)
    per_label = Counter(truth)
    held = [set(classes) for classes in task_classes]
    pairs = []
    for (i, j), count in sorted(errors.items(), key=lambda item: (-item[1], item[0]))[:top]:
        queries = sum(per_label[c.index(i)] + per_label[c.index(j)] for c, s in zip(task_classes, held) if i in s and j in s)
        pairs.append({"classes": [names[i], names[j]], "errors": count, "queries": queries})
    return pairs


def log_confused_pairs(tasks: Any, episodes: int, predicted: torch.Tensor, labels: torch.Tensor, names: list[str],
                       top: int = 10) -> list[dict[str, Any]]:
    """``confused_pairs`` of a fixed test (``tasks``: its sampler, which can say each task's classes), logged."""
    pairs = confused_pairs(tasks.task_classes(episodes), predicted, labels, names, top)
    if pairs:
        log.info("the classes most often mistaken for each other (results.json: confused_pairs): %s",
                 "; ".join(f"{' / '.join(p['classes'])} {p['errors']} of {p['queries']}" for p in pairs[:3]))
    return pairs
