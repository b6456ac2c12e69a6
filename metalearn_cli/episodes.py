"""Meta-tasks (episodes): their shapes, N-way K-shot support sets and query sets, sampled in batches.

:class:`TaskShapes` is the one place the training and evaluation task shapes are derived from a
config. The sampler is the one place that knows the layout of an episode; everything downstream reads
the typed fields of :class:`EpisodeBatch`. Episodes come from a seeded CPU ``torch.Generator``,
so the same seed gives the same episodes on every machine and device; the images stay resident
(on the training device when it fits) and are gathered by index, with no per-step host copies.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch

from metalearn_cli.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskShapes:
    """Evaluation tasks (``way``, ``shot``, ``query``) and training tasks, which may have more ways
    (``trainer.train_way``; Snell et al. train 60-way) or other queries (``trainer.train_query``);
    validation tasks may have more ways too (``trainer.val_way``: 5-way validation saturates on Omniglot)."""

    way: int
    shot: int
    query: int
    train_way: int
    train_query: int
    val_way: int = 0  # 0: the evaluation's way

    def __post_init__(self) -> None:
        if not self.val_way:
            object.__setattr__(self, "val_way", self.way)

    @classmethod
    def of(cls, cfg: Any) -> "TaskShapes":
        e = cfg.episode
        t = cfg.trainer if "trainer" in cfg else None
        train_way = (t.train_way if t is not None else None) or e.way
        train_query = (t.train_query if t is not None else None) or e.query
        return cls(e.way, e.shot, e.query, train_way, train_query, getattr(t, "val_way", None) or 0)

    @property
    def max_way(self) -> int:
        """The most classes any configured task has (the size of a fixed classifier head)."""
        return max(self.way, self.train_way, self.val_way)

    @property
    def query_set(self) -> int:
        """Queries in one evaluation task (``predict`` scores queries in sets of this size)."""
        return max(1, self.way * self.query)


@dataclass(frozen=True)
class EpisodeBatch:
    """``T`` tasks of ``n_way`` classes; support ``[T, S, C, H, W]`` with ``S = n_way * k_shot``."""

    support_images: torch.Tensor  # [T, S, C, H, W] float in [0, 1]
    support_labels: torch.Tensor  # [T, S] int64 in 0..n_way-1
    query_images: torch.Tensor  # [T, Q, C, H, W], Q = n_way * n_query
    query_labels: torch.Tensor  # [T, Q]
    n_way: int
    k_shot: int
    n_query: int

    @property
    def tasks(self) -> int:
        return self.support_images.shape[0]

    def split_tasks(self) -> list["EpisodeBatch"]:
        """One single-task batch per task (for per-task work such as transductive batch norm)."""
        return [
            EpisodeBatch(
                self.support_images[t : t + 1], self.support_labels[t : t + 1],
                self.query_images[t : t + 1], self.query_labels[t : t + 1],
                self.n_way, self.k_shot, self.n_query,
            )
            for t in range(self.tasks)
        ]


@dataclass(frozen=True)
class ClassImages:
    """The images of one split, indexed by class: ``images[class, example]`` is ``[C, H, W]`` uint8."""

    images: torch.Tensor  # [n_classes, n_per_class, C, H, W] uint8
    class_names: list[str]

    def __post_init__(self) -> None:
        if self.images.dim() != 5 or self.images.dtype != torch.uint8:
            raise ValueError("ClassImages.images must be a uint8 tensor [classes, examples, C, H, W]")
        if len(self.class_names) != self.images.shape[0]:
            raise ValueError("one class name per class is needed")

    @property
    def n_classes(self) -> int:
        return self.images.shape[0]

    @property
    def n_per_class(self) -> int:
        return self.images.shape[1]

    def to(self, device: torch.device) -> "ClassImages":
        return ClassImages(self.images.to(device), self.class_names)


def resident(split: ClassImages, device: torch.device) -> ClassImages:
    """A split's images on the device when they fit in half its free memory, else on the host."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if split.images.numel() * split.images.element_size() > free // 2:
            log.warning("%d classes of images do not fit on %s; sampling from host memory", split.n_classes, device)
            return split
    return split.to(device)


WAY_KEY = {"train": "trainer.train_way=...", "val": "trainer.val_way=... or episode.way=..."}  # else the test's
QUERY_KEY = {"train": "trainer.train_query"}


def check_shape(split_name: str, n_way: int, k_shot: int, n_query: int) -> None:
    """A task shape that can be scored at all, whatever the data (checked from the config alone, too)."""
    if n_way < 2:
        raise DataError(f"{split_name} episodes of {n_way} way cannot be scored: a task needs 2 classes or more; raise "
                        f"{WAY_KEY.get(split_name, 'episode.way')}")
    if k_shot < 1 or n_query < 1:
        raise DataError(f"{split_name} episodes need shot >= 1 and query >= 1 (got shot={k_shot}, query={n_query}); raise "
                        f"episode.shot or {QUERY_KEY.get(split_name, 'episode.query')}")


def check_fits(split: ClassImages, split_name: str, dataset: str, n_way: int, k_shot: int, n_query: int) -> None:
    """Raise a one-line :class:`DataError` if the split cannot supply these episodes, naming the key that sets them."""
    check_shape(split_name, n_way, k_shot, n_query)
    if n_way > split.n_classes:
        raise DataError(
            f"{n_way}-way episodes need {n_way} classes but the {split_name} split of {dataset} has "
            f"{split.n_classes}; lower the way ({WAY_KEY.get(split_name, 'episode=... or episode.way=...')})"
        )
    if k_shot + n_query > split.n_per_class:
        raise DataError(
            f"episodes need {k_shot + n_query} images per class (shot {k_shot} + query {n_query}) but the "
            f"{split_name} split of {dataset} has {split.n_per_class}; lower {QUERY_KEY.get(split_name, 'episode.query')} or the shot"
            ", or give the data set's classes more images"
        )


class EpisodeSampler:
    """Draws batches of ``n_way``-``k_shot`` tasks with ``n_query`` queries per class from one split."""

    def __init__(
        self, split: ClassImages, n_way: int, k_shot: int, n_query: int, seed: int, device: torch.device | None = None,
        within: float = 0.0, same_drawers: bool = False,
    ) -> None:
        self.split = split
        # same_drawers: every class of a task takes the same image positions, that is the same drawers where
        # a class's images are in drawer order (Omniglot's): supports by one set of people, queries by another.
        self.same_drawers = same_drawers
        # within > 0: that share of the tasks takes its classes from one alphabet (uniform over the
        # alphabets with n_way characters or more), the rest from the whole split.
        self.within, self.groups = within, [torch.tensor(g) for g in alphabet_groups(split) if len(g) >= n_way]
        if within > 0 and not self.groups:
            largest = max((len(g) for g in alphabet_groups(split)), default=0)
            raise ConfigError(f"trainer.within_alphabet={within} needs classes named Alphabet/character with {n_way} "
                              f"characters in one alphabet ({'the largest has ' + str(largest) if largest else 'these classes name no alphabet'}); "
                              f"{'lower trainer.train_way to ' + str(largest) + ' or less, ' if largest else 'use dataset=omniglot, '}"
                              "or set trainer.within_alphabet=0")
        self.n_way, self.k_shot, self.n_query = n_way, k_shot, n_query
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        # Episodes are delivered on `device`; the images may live elsewhere (host memory when the
        # accelerator is too small for them).
        self.device = torch.device(device) if device is not None else split.images.device
        # Labels are fixed per episode shape: class i of a task is label i.
        self._support_labels = torch.arange(n_way, device=self.device).repeat_interleave(k_shot)
        self._query_labels = torch.arange(n_way, device=self.device).repeat_interleave(n_query)

    def get_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)

    def sample(self, tasks: int, part: tuple[int, int] = (0, 1)) -> EpisodeBatch:
        """Sample ``tasks`` independent episodes (classes without replacement within a task).

        ``part=(rank, ranks)`` keeps only that rank's contiguous share of the tasks; all ranks draw
        the whole meta-batch from the stream, so their shares are disjoint and the stream stays in step.
        """
        split = self.split
        n, k, q = self.n_way, self.k_shot, self.n_query
        # Drawn task by task so an episode depends only on the seed and its position in the
        # stream, not on how many tasks are batched together.
        picks = [self._draw() for _ in range(tasks)]
        rank, ranks = part
        share = tasks // ranks
        picks = picks[rank * share : (rank + 1) * share]
        tasks = share
        classes = torch.stack([c for c, _ in picks])  # [T, N]
        examples = torch.stack([e for _, e in picks])  # [T, N, K+Q]
        where = split.images.device
        classes, examples = classes.to(where, non_blocking=True), examples.to(where, non_blocking=True)
        images = split.images[classes[:, :, None], examples]  # [T, N, K+Q, C, H, W] uint8
        images = images.to(self.device, non_blocking=True).to(torch.float32).div_(255.0)
        shape = images.shape[3:]
        return EpisodeBatch(
            support_images=images[:, :, :k].reshape(tasks, n * k, *shape),
            support_labels=self._support_labels.expand(tasks, -1),
            query_images=images[:, :, k:].reshape(tasks, n * q, *shape),
            query_labels=self._query_labels.expand(tasks, -1),
            n_way=n,
            k_shot=k,
            n_query=q,
        )

    def _draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One task from the stream: its classes ``[N]`` and each class's images ``[N, K+Q]``."""
        g = self.generator
        classes = self._classes(g)
        drawn = 1 if self.same_drawers else self.n_way
        examples = torch.rand(drawn, self.split.n_per_class, generator=g).argsort(dim=1)[:, : self.k_shot + self.n_query]
        return classes, examples.expand(self.n_way, -1)

    def task_classes(self, episodes: int) -> list[list[int]]:
        """The classes of each of the first ``episodes`` fixed tasks, label by label (what :meth:`fixed` draws)."""
        with self._from_seed():
            return [self._draw()[0].tolist() for _ in range(episodes)]

    def _classes(self, g: torch.Generator) -> torch.Tensor:
        """One task's classes: from one alphabet (a ``within`` share of the tasks), else from the whole split.
        With ``within=0`` the stream draws exactly what it drew before the option existed."""
        if self.within > 0 and (self.within >= 1 or float(torch.rand(1, generator=g)) < self.within):
            group = self.groups[int(torch.randint(len(self.groups), (1,), generator=g))]
            return group[torch.rand(len(group), generator=g).argsort()[: self.n_way]]
        return torch.rand(self.split.n_classes, generator=g).argsort()[: self.n_way]

    def fixed(self, episodes: int, batch_tasks: int) -> Iterator[EpisodeBatch]:
        """The same ``episodes`` tasks on every call (evaluation): restarts from ``seed`` each time."""
        with self._from_seed():
            done = 0
            while done < episodes:
                tasks = min(batch_tasks, episodes - done)
                yield self.sample(tasks)
                done += tasks

    @contextlib.contextmanager
    def _from_seed(self) -> Iterator[None]:
        """The stream restarted from ``seed`` inside (the fixed tasks), the caller's position kept."""
        saved = self.generator.get_state()
        self.generator.manual_seed(self.seed)
        try:
            yield
        finally:
            self.generator.set_state(saved)


def alphabet_groups(split: ClassImages) -> list[list[int]]:
    """Class indices by alphabet, from names ``Alphabet/character`` (a rotated copy ``.../rot090`` is
    its own alphabet: its strokes look alike among themselves); [] when the names name no alphabet."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(split.class_names):
        parts = name.split("/")
        if len(parts) < 2:
            return []
        groups.setdefault("/".join([parts[0], *parts[2:]]), []).append(i)
    return list(groups.values())


def is_lake(episode: Any) -> bool:
    """Whether the test is Lake et al.'s within-alphabet runs (``episode.protocol=lake``)."""
    return getattr(episode.protocol, "value", str(episode.protocol)) == "lake"


def validation_sampler(split: ClassImages, episode: Any, seed: int, device: torch.device,
                       way: Optional[int] = None) -> EpisodeSampler:
    """The fixed validation tasks, of the test's kind, so that best.pt is chosen for the task the run is
    scored on: within one alphabet when the test is Lake's runs (random 20-way tasks are far easier
    and reward other weights), else classes from the whole split. ``way`` (``trainer.val_way``) may
    exceed the test's: 5-way Omniglot validation sits near 99% and cannot rank checkpoints."""
    lake, way = is_lake(episode), way or episode.way
    if lake and not any(len(g) >= way for g in alphabet_groups(split)):
        raise ConfigError(f"episode.protocol=lake validates on tasks from one alphabet, but no validation alphabet has "
                          f"{way} characters; use dataset.val=drawers (new drawers of every background character)")
    return EpisodeSampler(resident(split, device), way, episode.shot, episode.query, split_seed(seed, "val"), device,
                          within=1.0 if lake else 0.0)


def split_seed(seed: int, split: str) -> int:
    """A stable per-split seed, so train/val/test episode streams never coincide."""
    offsets = {"train": 0, "val": 1, "test": 2, "pretrain": 3}
    return (seed * 1_000_003 + offsets[split] * 7_919) % (2**63 - 1)
