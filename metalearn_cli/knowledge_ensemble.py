"""Several trained meta-networks as one outside a run: ``metalearn_cli.load([A, B, C])``, and ``metalearn predict
checkpoint=A ensemble=[B,C]``. They answer as ``metalearn eval``'s ``ensemble=`` scores them
(:mod:`metalearn_cli.ensemble`): each member adapts to the task on its own, reading image files in its own format (a
28 px and a 56 px run read the same files at their sizes), and the class probabilities are the mean of the members'
softmax probabilities.

    >>> import metalearn_cli
    >>> ensemble = metalearn_cli.load(["run_seed0", "run_seed1", "run_seed2"])
    >>> classify = ensemble.adapt(["cat1.png", "dog1.png"], [0, 1])  # files: each member reads them its own way
    >>> probabilities = classify(["unknown.png"])  # [1, 2], the members' mean
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator, Mapping, Sequence

import torch

from metalearn_cli import knowledge
from metalearn_cli.console import first_names
from metalearn_cli.data import identity
from metalearn_cli.data.images import ImageFormat, ImageSource
from metalearn_cli.ensemble import check_new_member
from metalearn_cli.errors import ConfigError, DataError
from metalearn_cli.knowledge import Images, MetaKnowledge, TaskClassifier, is_pixels

log = logging.getLogger(__name__)


@contextlib.contextmanager
def said_once(logger: logging.Logger) -> Iterator[None]:
    """Inside the block ``logger`` drops a message it has already given: members warn about one image once."""
    seen: set[str] = set()

    def first_time(record: logging.LogRecord) -> bool:
        message = record.getMessage()
        new = message not in seen
        seen.add(message)
        return new

    logger.addFilter(first_time)
    try:
        yield
    finally:
        logger.removeFilter(first_time)


def load_members(paths: Sequence[Any], device: Any) -> list[MetaKnowledge]:
    """Each path loaded, in order; a member that is a path already listed, or a copy of a member's weights (an export,
    another checkpoint of the same step), is refused: an ensemble of copies scores as one network."""
    members: list[MetaKnowledge] = []
    for path in paths:
        member = knowledge.load(path, device)
        if members:
            check_new_member(path, member.source, member.strategy, [m.strategy for m in members],
                             [m.source for m in members])
        members.append(member)
    say_other_data(members)
    return members


def say_other_data(members: Sequence[MetaKnowledge]) -> None:
    """A warning where the members were trained on different data sets (Omniglot beside mini-ImageNet, two folders of
    ``dataset=folder``): averaged as asked, since the user brings the task, but ``metalearn eval`` refuses such an
    ensemble, so it is said, not silent."""
    trained: dict[str, list[str]] = {}
    for m in members:
        trained.setdefault(identity(m.config.dataset), []).append(str(m.source))
    if len(trained) > 1:
        shown = "; ".join(f"{name}: {first_names(sources, 2)}" for name, sources in trained.items())
        log.warning("the ensemble's members were trained on different data sets (%s); their probabilities are averaged "
                    "as asked (metalearn eval refuses such an ensemble: their test classes differ)", shown)


class EnsembleClassifier:
    """The members adapted to one task; ``classifier(query_images)`` gives the mean of their class probabilities
    ``[Q, n_classes]``."""

    def __init__(self, ensemble: "KnowledgeEnsemble", classifiers: list[TaskClassifier]) -> None:
        self.ensemble, self.classifiers = ensemble, classifiers
        self.n_classes = classifiers[0].n_classes

    def __call__(self, query_images: Images | Sequence[ImageSource],
                 read_as: Mapping[ImageFormat, torch.Tensor] | None = None) -> torch.Tensor:
        """Mean class probabilities ``[Q, n_classes]`` (files, PIL images, or pixels that fit every member);
        ``read_as`` as :meth:`KnowledgeEnsemble.as_each_member_reads` takes it."""
        with said_once(logging.getLogger(knowledge.__name__)):
            views = self.ensemble.as_each_member_reads(query_images, read_as)
            return torch.stack([c(v) for c, v in zip(self.classifiers, views)]).mean(0)

    def logits(self, query_images: Images | Sequence[ImageSource]) -> torch.Tensor:
        """The log of the mean probabilities: scores whose argmax and softmax are the ensemble's answer."""
        return self(query_images).clamp_min(torch.finfo(torch.float32).tiny).log()


class KnowledgeEnsemble:
    """Trained meta-networks answering as one (see the module's docstring); ``members`` in the order given."""

    def __init__(self, members: Sequence[MetaKnowledge]) -> None:
        if not members:
            raise ConfigError("an ensemble needs at least one trained meta-network; give load() a list of paths")
        self.members = list(members)

    @property
    def max_way(self) -> int | None:
        """The most classes a task may have: the smallest fixed-size head among the members, else ``None``."""
        heads = [m.max_way for m in self.members if m.max_way is not None]
        return min(heads) if heads else None

    def formats_alike(self, what: str) -> None:
        """Refuse ``what`` (read_images(), pixels) where the members read images in different formats."""
        formats = {m.image_format for m in self.members}
        if len(formats) > 1:
            sizes = ", ".join(sorted(f"{f.channels}-channel {f.size} px" for f in formats))
            raise DataError(f"the members read images in different formats ({sizes}), so {what} cannot fit them all: "
                            "give adapt() and the classifier the files (paths or PIL images), and each member reads "
                            "them its own way")

    def read_images(self, sources: Sequence[ImageSource] | ImageSource) -> torch.Tensor:
        """Files as pixels, where every member reads them alike; members of other formats take the files instead."""
        self.formats_alike("read_images()")
        return self.members[0].read_images(sources)

    def as_each_member_reads(self, images: Images | Sequence[ImageSource],
                             read_as: Mapping[ImageFormat, torch.Tensor] | None = None) -> list[Images]:
        """``images`` for each member: pixels as given (each member checks they fit it); files read once per image
        format, an error naming the member whose format failed. ``read_as``: these files already read in some
        formats (``metalearn predict`` reads the first member's itself), so no file is read twice in one format."""
        if is_pixels(images):
            self.formats_alike("pixels")
            return [images] * len(self.members)
        if knowledge.one_image(images):
            images = [images]  # type: ignore[list-item]
        try:
            images = list(images)  # type: ignore[arg-type]  # once: a generator or Path.glob feeds every format
        except TypeError:
            raise DataError(f"images must be image files (paths), PIL images or a tensor; got {type(images).__name__}") from None
        read: dict[Any, torch.Tensor] = dict(read_as or {})
        for m in self.members:
            if m.image_format not in read:
                try:
                    read[m.image_format] = m.read_images(images)  # type: ignore[arg-type]
                except DataError as exc:
                    if not read:
                        raise
                    fmt = m.image_format  # the first member read these files: say which format failed
                    raise DataError(f"ensemble member {m.source} ({fmt.channels}-channel, {fmt.size} px): {exc}") from None
        return [read[m.image_format] for m in self.members]

    def adapt(self, support_images: Images | Sequence[ImageSource], support_labels: Sequence[int] | torch.Tensor,
              read_as: Mapping[ImageFormat, torch.Tensor] | None = None) -> EnsembleClassifier:
        """Each member adapted to the task (``support_labels[i]`` in 0..N-1 is the class of ``support_images[i]``);
        ``read_as`` as :meth:`as_each_member_reads` takes it."""
        with said_once(logging.getLogger(knowledge.__name__)):
            views = self.as_each_member_reads(support_images, read_as)
            return EnsembleClassifier(self, [m.adapt(v, support_labels) for m, v in zip(self.members, views)])
