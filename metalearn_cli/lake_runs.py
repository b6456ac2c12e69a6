"""Lake et al.'s (2015) within-alphabet one-shot runs as a fixed test set (``episode=lake20way1shot``), and their
accuracy per alphabet: the protocol's own sampler, apart from the random-task one in :mod:`metalearn_cli.episodes`."""

from __future__ import annotations

import logging
from typing import Any, Iterator, Optional

import torch

from metalearn_cli.data import FewShotData
from metalearn_cli.episodes import ClassImages, EpisodeBatch, split_seed
from metalearn_cli.errors import DataError
from metalearn_cli.lake_original import OriginalRuns, runs_as_tensors

log = logging.getLogger(__name__)


class LakeRuns:
    """Lake et al.'s (2015) one-shot runs: 20 characters of one alphabet; the support image of each
    drawn by one person, the query image by another. Fixed by the seed like every test set.

    The split's classes must be ``Alphabet/character`` with their drawings in drawer order (Omniglot's
    ``background`` split: the evaluation alphabets, unrotated)."""

    def __init__(self, split: ClassImages, n_way: int, seed: int, device: torch.device | None = None,
                 original: Optional[OriginalRuns] = None) -> None:
        alphabets: dict[str, list[int]] = {}
        for i, name in enumerate(split.class_names):
            parts = name.split("/")
            if len(parts) != 2:
                raise DataError(f"Lake et al.'s runs need classes named Alphabet/character, the evaluation alphabets of "
                                f"Omniglot's background split, and this split has '{name}': they score a network trained "
                                "with dataset=omniglot_background (or another omniglot_background_* option)")
            alphabets.setdefault(parts[0], []).append(i)
        kept = [(k, v) for k, v in sorted(alphabets.items()) if len(v) >= n_way]
        self.names, self.alphabets = [k for k, _ in kept], [v for _, v in kept]
        if not self.alphabets or split.n_per_class < 2:
            raise DataError(f"Lake et al.'s runs need alphabets of at least {n_way} characters drawn by two people or more")
        self.split, self.n_way, self.seed, self.original = split, n_way, seed, original
        self.device = torch.device(device) if device is not None else split.images.device
        self._labels = torch.arange(n_way, device=self.device)

    def _runs(self, episodes: int) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        """Each run's (alphabet, characters ``[N]``, each character's two drawers ``[N, 2]``), the same on
        every call: drawn from the seed, or Lake's original runs (``eval.lake_runs``: all of them)."""
        if self.original is not None:
            where = {name: i for i, name in enumerate(self.names)}
            return [(where[self.split.class_names[int(chars[0])].split("/")[0]], chars, drawers)
                    for chars, drawers in runs_as_tensors(self.original)]
        g = torch.Generator().manual_seed(self.seed)
        runs = []
        for _ in range(episodes):
            alphabet = int(torch.randint(len(self.alphabets), (1,), generator=g))
            chars = self.alphabets[alphabet]
            picked = torch.tensor(chars)[torch.randperm(len(chars), generator=g)[: self.n_way]]
            drawers = torch.randperm(self.split.n_per_class, generator=g)[:2].expand(self.n_way, 2)  # two different people
            runs.append((alphabet, picked, drawers))
        return runs

    def by_alphabet(self, accs: torch.Tensor) -> dict[str, dict[str, float]]:
        """Accuracy and number of runs per alphabet, from the runs' accuracies in order (results.json's
        ``by_alphabet``): which alphabets a network confuses, which one number hides."""
        alphabet = torch.tensor([a for a, _, _ in self._runs(accs.numel())], dtype=torch.long)
        return {self.names[a]: {"accuracy": accs[alphabet == a].float().mean().item(), "runs": int((alphabet == a).sum())}
                for a in alphabet.unique().tolist()}

    def task_classes(self, episodes: int) -> list[list[int]]:
        """Each run's characters, label by label (query ``i`` is character ``i``)."""
        return [picked.tolist() for _, picked, _ in self._runs(episodes)]

    def fixed(self, episodes: int, batch_tasks: int) -> Iterator[EpisodeBatch]:
        """``episodes`` runs, the same on every call."""
        runs = [(picked, drawers) for _, picked, drawers in self._runs(episodes)]
        for start in range(0, episodes, batch_tasks):
            part = runs[start : start + batch_tasks]
            classes = torch.stack([c for c, _ in part]).to(self.split.images.device)
            drawers = torch.stack([d for _, d in part]).to(self.split.images.device)
            images = self.split.images[classes[:, :, None], drawers]  # [T, N, 2, C, H, W]
            images = images.to(self.device).to(torch.float32).div_(255.0)
            t = len(part)
            labels = self._labels.expand(t, -1)
            yield EpisodeBatch(images[:, :, 0], labels, images[:, :, 1], labels, self.n_way, 1, 1)


def accuracy_by_alphabet(data: FewShotData, split: str, way: int, seed: int, accs: torch.Tensor,
                         original: Optional[OriginalRuns] = None) -> dict[str, Any]:
    """The runs' accuracy per alphabet (``accs`` of the runs of ``split`` in order), logged with the three hardest."""
    by = LakeRuns(data.split(split), way, split_seed(seed, split), original=original).by_alphabet(accs)
    hardest = sorted(by.items(), key=lambda item: item[1]["accuracy"])[:3]
    log.info("Lake's runs by alphabet (results.json: by_alphabet), the hardest: %s",
             ", ".join(f"{name} {100 * v['accuracy']:.1f}% ({v['runs']} run{'s' if v['runs'] != 1 else ''})" for name, v in hardest))
    return by
