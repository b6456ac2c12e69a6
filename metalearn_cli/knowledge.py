"""The meta-knowledge outside a run: load it and adapt it to a new task.

``load`` accepts an export (see :mod:`metalearn_cli.export`), a training checkpoint or a run dir
and gives a :class:`MetaKnowledge`, whose ``adapt(support_images,
support_labels)`` returns a :class:`TaskClassifier` for that task's queries: the strategy adapts
exactly as at evaluation (a forward pass for amortised decoders, inner steps for the MAML family,
latent steps for LEO-style codes), with the run's test views and batch-norm mode; ``metalearn eval``'s
own additions (``eval.finetune_steps``, ``eval.support_copies``, ``eval.soft_kmeans_steps``) are not applied.

    >>> import metalearn_cli
    >>> knowledge = metalearn_cli.load("meta_knowledge.pt")
    >>> support = knowledge.read_images(["cat1.png", "cat2.png", "dog1.png"])
    >>> classify = knowledge.adapt(support, [0, 0, 1])
    >>> probabilities = classify(knowledge.read_images(["unknown.png"]))  # [1, 2]
"""

from __future__ import annotations

import logging
import os
import weakref
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch
from omegaconf import DictConfig

from metalearn_cli.assemble import load_strategy, resolve_bn_mode, resolve_device
from metalearn_cli.augment import TtaViews
from metalearn_cli.bn_modes import MODES
from metalearn_cli.checkpoint import meta_knowledge_of, read_meta_knowledge
from metalearn_cli.data.images import ImageFormat, ImageSource, read_image
from metalearn_cli.episodes import EpisodeBatch, TaskShapes
from metalearn_cli.errors import CheckpointError, ConfigError, DataError
from metalearn_cli.encoders.norm import batch_norm_mode
from metalearn_cli.resume import unfinished_note
from metalearn_cli.strategies import Strategy

Images = Union[torch.Tensor, Sequence[ImageSource]]
log = logging.getLogger(__name__)
FLAT = 2 / 255  # pixel standard deviation (in [0, 1]) below which an image is one flat value


def opposite(mean: float, reference: float) -> bool:
    """Mean brightness on the other side of mid-grey, and far (> 0.3) from ``reference``: inverted polarity.
    A ``reference`` near mid-grey (within 0.15: images of no clear polarity, such as generated ones) has no opposite."""
    return abs(reference - 0.5) >= 0.15 and (mean - 0.5) * (reference - 0.5) < 0 and abs(mean - reference) >= 0.3


def one_image(source: Any) -> bool:
    """One image to convert: a path, a PIL image or an open binary file."""
    return isinstance(source, (str, bytes, os.PathLike)) or hasattr(source, "getpixel") or hasattr(source, "read")


def is_pixels(images: Any) -> bool:
    """Images given as pixels (a tensor, an array, a list of tensors), not as files to convert."""
    return isinstance(images, (torch.Tensor, np.ndarray)) or (
        isinstance(images, (list, tuple)) and bool(images) and all(isinstance(x, torch.Tensor) for x in images))


_READ: "weakref.WeakValueDictionary[int, torch.Tensor]" = weakref.WeakValueDictionary()  # what read_images() returned


def read_from_files(images: torch.Tensor) -> torch.Tensor:
    """``images`` marked as converted from files (``metalearn predict`` reads a support folder itself), so advice
    on them is about the files, as for what :meth:`MetaKnowledge.read_images` returns."""
    _READ[id(images)] = images
    return images


def typed_as_pixels(images: Any) -> bool:
    """Pixels the caller made (:func:`is_pixels`), not a tensor :meth:`MetaKnowledge.read_images` converted from
    files (as ``metalearn predict`` passes them): advice on the conversion is for the first only."""
    return is_pixels(images) and not (isinstance(images, torch.Tensor) and _READ.get(id(images)) is images)


def check_labels(labels: torch.Tensor) -> int:
    """The class count N of support labels that are 0..N-1 with an image of each class (N >= 2); else one line
    naming what is wrong. A label past the image count is refused before any count per class is made (a label
    of 10**12 would allocate a count of that length)."""
    if labels.numel() and int(labels.min()) < 0:
        raise DataError(f"support labels must be 0..N-1; got {int(labels.min())}")
    n = int(labels.max()) + 1 if labels.numel() else 0
    if n > labels.numel():
        raise DataError(f"support label {n - 1} means {n} classes, but there are {labels.numel()} images: labels are "
                        "0..N-1 with an image of every class" + (" (they start at 0)" if int(labels.min()) == 1 else ""))
    counts = torch.bincount(labels, minlength=n)
    if n < 2:
        raise DataError(f"a task needs at least 2 classes; these support labels name {n}")
    missing = int((counts == 0).nonzero()[0]) if bool((counts == 0).any()) else None
    if missing is not None:
        raise DataError(f"support labels must be 0..N-1 with an image of every class; class {missing} has none"
                        + (" (they start at 0)" if missing == 0 else ""))
    return n


class TaskClassifier:
    """A meta-network adapted to one task's support set; ``classifier(query_images)`` gives class
    probabilities ``[Q, n_classes]`` (``logits(...)`` the scores before the softmax)."""

    def __init__(self, knowledge: "MetaKnowledge", support: torch.Tensor, labels: torch.Tensor, n_classes: int) -> None:
        self.knowledge, self.support, self.labels, self.n_classes = knowledge, support, labels, n_classes

    def logits(self, query_images: Images) -> torch.Tensor:
        """The scores before the softmax, ``[Q, n_classes]``."""
        k = self.knowledge
        query = k.as_pixels(query_images)
        if query.shape[0] == 0:
            return torch.zeros(0, self.n_classes)
        k.check_images(query, "query")
        if not k.warn_if_inverted(query, "query", typed_as_pixels(query_images)) and opposite(float(self.support.mean()), float(query.mean())):
            log.warning("the query images look inverted against the support images (mean brightness %.2f against "
                        "%.2f): give both the same polarity (e.g. dark strokes on white)", float(query.mean()),
                        float(self.support.mean()))
        out = []
        # Queries go in chunks of the trained episode's query-set size: bounded memory, and the
        # MAML family's transductive batch norm sees query sets shaped like the ones it was trained on.
        with batch_norm_mode(k.strategy.model, k.bn_mode), k.strategy.model.test_views(TtaViews.of(k.config.eval)):
            for chunk in query.split(k.query_chunk):
                batch = EpisodeBatch(self.support[None], self.labels[None], chunk[None],
                                     torch.zeros(1, chunk.shape[0], dtype=torch.long, device=k.device),
                                     self.n_classes, 1, 1)
                out.append(k.strategy.predict(batch).logits[0].detach().float().cpu())
        return torch.cat(out)

    def __call__(self, query_images: Images) -> torch.Tensor:
        """Class probabilities ``[Q, n_classes]`` for query images (files, PIL images or pixels, as ``adapt`` takes)."""
        return self.logits(query_images).softmax(-1)


class MetaKnowledge:
    """A trained meta-network ready to meet new tasks (see :func:`load`)."""

    def __init__(self, state: dict[str, Any], device: torch.device) -> None:
        self.image_format = ImageFormat.from_dict(state["image_format"])
        self.device = device
        self.strategy: Strategy
        self.config: DictConfig
        self.strategy, self.config = load_strategy(state, device)
        self.strategy.eval()
        self.bn_mode = resolve_bn_mode(self.config.eval.bn_mode, self.strategy)
        self.query_chunk = TaskShapes.of(self.config).query_set
        self.step = int(state.get("step", -1))
        self.source = str(Path(state["source"]).resolve()) if state.get("source") else None  # the file it was read from
        self.pixel_mean: float | None = state.get("pixel_mean")  # of the training images, as the model saw them
        self.said_transductive = False  # warn_if_transductive: once

    @property
    def max_way(self) -> int | None:
        """The most classes a task may have (a fixed-size head), or ``None`` for any number."""
        return self.strategy.model.decoder.max_way

    def read_images(self, sources: Sequence[ImageSource] | ImageSource) -> torch.Tensor:
        """Convert image files (paths or open binary files) or PIL images exactly as the training data were:
        uint8 ``[n, C, H, W]`` (one alone is a list of one: a path's characters are never taken as files).
        Tensors and arrays are pixels already: give them to ``adapt`` or the classifier as they are."""
        if is_pixels(sources):
            raise DataError(f"read_images() converts image files and PIL images; tensors and arrays are pixels already: "
                            f"give them to adapt() or the classifier as they are ({self.pixels_wanted()})")
        if one_image(sources):
            sources = [sources]  # type: ignore[list-item]  # a path, a PIL image, an open file
        try:
            sources = list(sources)  # type: ignore[arg-type]
        except TypeError:
            raise DataError(f"images must be image files (paths), PIL images or a tensor; got {type(sources).__name__}") from None
        odd = next((x for x in sources if not one_image(x)), None)
        if odd is not None:
            raise DataError(f"images must be image files (paths), PIL images or one tensor [n, C, H, W]; got a "
                            f"{type(odd).__name__} among them" + (" (stack tensors into one: torch.stack(images))"
                                                                  if isinstance(odd, (torch.Tensor, np.ndarray)) else ""))
        if len(sources) == 0:
            return torch.zeros(0, *self.image_format.shape, dtype=torch.uint8)
        return read_from_files(torch.stack([read_image(s, self.image_format) for s in sources]))

    def pixels_wanted(self) -> str:
        """What a tensor of images must be: what read_images() returns, every step of the conversion done."""
        f = self.image_format
        steps = [s for s, on in (("inverted: bright strokes on dark", f.invert),
                                 ("each drawing framed by its ink", f.normalise != "none")) if on]
        return (f"[n, {', '.join(map(str, f.shape))}], uint8 0-255 or floats in [0, 1], as read_images() returns the "
                f"files" + (f" ({'; '.join(steps)})" if steps else ""))

    def as_pixels(self, images: Images) -> torch.Tensor:
        """Float ``[n, C, H, W]`` in [0, 1] on the device, from files, PIL images, or pixels (a tensor, a
        numpy array or a list of ``[C, H, W]`` tensors) already converted as :meth:`read_images` converts files."""
        if isinstance(images, np.ndarray):
            try:  # a flipped view (negative strides) is copied; an object array is no pixels
                images = torch.from_numpy(np.ascontiguousarray(images))
            except TypeError:
                raise DataError(f"an array of dtype {images.dtype} is no pixels: give uint8 (0-255) or floats in [0, 1]") from None
        elif isinstance(images, (list, tuple)) and images and all(isinstance(x, torch.Tensor) for x in images):
            if len({tuple(x.shape) for x in images}) > 1:
                raise DataError(f"the image tensors differ in shape; each must be [{', '.join(map(str, self.image_format.shape))}]")
            images = torch.stack(list(images))
        if not isinstance(images, torch.Tensor):
            images = self.read_images(images)
        images = images.detach()
        if images.dim() != 4 or tuple(images.shape[1:]) != self.image_format.shape:
            raise DataError(f"images must be {self.pixels_wanted()} for this meta-network, got {list(images.shape)}; "
                            "read_images() converts files and PIL images")
        if images.dtype == torch.uint8:
            return images.to(self.device).float().div(255.0)
        if not images.is_floating_point():  # int64 from numpy, bool: 0-255 or 0-1 cannot be told apart
            raise DataError(f"images of dtype {images.dtype}: give uint8 (0-255) or floats in [0, 1], e.g. images.to(torch.uint8)")
        pixels = images.to(self.device).float()
        if pixels.numel() and not bool(torch.isfinite(pixels).all()):
            raise DataError("the images hold NaN or infinite values; give uint8 (0-255) or floats in [0, 1]")
        if pixels.numel() and (float(pixels.min()) < 0 or float(pixels.max()) > 1):
            raise DataError(f"float images must lie in [0, 1]; these span [{float(pixels.min()):g}, {float(pixels.max()):g}] "
                            "(0-255 floats: divide by 255, or give uint8)")
        return pixels

    def warn_if_inverted(self, pixels: torch.Tensor, what: str = "support", given_as_pixels: bool = False) -> bool:
        """Warn (and return True) when images look inverted against the training data: mean brightness
        on the other side of mid-grey, far from the training images' (e.g. Omniglot saved white on black).
        Tensors skip the conversion files get (which may invert them): the advice differs."""
        if self.pixel_mean is None or pixels.numel() == 0:
            return False
        mean = float(pixels.float().mean())
        if not opposite(mean, self.pixel_mean):
            return False
        advice = (f"tensors are used as given, so give them converted: {self.pixels_wanted()} (or pass the files)"
                  if given_as_pixels else "give images of the training images' polarity (for Omniglot-trained models "
                  "dark strokes on white, as the original files are)")
        log.warning("the %s images look inverted against the training data (mean brightness %.2f after conversion, "
                    "training images %.2f): %s; predictions on inverted images are poor", what, mean, self.pixel_mean, advice)
        return True

    def warn_if_transductive(self) -> None:
        """Once (per loaded meta-network): a transductive test protocol answers each query with the others."""
        if MODES[self.bn_mode].inductive or self.said_transductive:
            return
        self.said_transductive = True
        log.warning("batch-norm mode %s (the checkpoint's test protocol): each query's answer depends on the queries "
                    "normalised with it (those given in one call, in chunks of %d); give a test set's queries together, as "
                    "the run was tested", self.bn_mode, self.query_chunk)

    def check_images(self, pixels: torch.Tensor, what: str) -> int:
        """Warn about images that are nearly one flat value after conversion (blank, or their content
        was lost in conversion); returns how many."""
        flat = int((pixels.flatten(1).float().std(dim=1, unbiased=False) < FLAT).sum()) if pixels.numel() else 0
        if flat:
            log.warning("%d of %d %s images are nearly one flat value after conversion: blank files, or content the "
                        "conversion to %d-channel %dpx images lost; check them", flat, pixels.shape[0], what,
                        self.image_format.channels, self.image_format.size)
        return flat

    def adapt(self, support_images: Images, support_labels: Sequence[int] | torch.Tensor) -> TaskClassifier:
        """Adapt to a new task: ``support_labels[i]`` in 0..N-1 is the class of ``support_images[i]``;
        every class needs at least one image, and N >= 2."""
        support = self.as_pixels(support_images)
        try:
            given = torch.as_tensor(support_labels)
        except (TypeError, ValueError, RuntimeError):  # names ("cat"), ragged lists: torch's message names neither
            raise DataError(f"support labels must be integers 0..N-1, one per image; got {str(support_labels)[:60]}") from None
        if given.dtype == torch.bool or given.is_complex() or given.dim() > 1 or (
                given.is_floating_point() and not bool((given == given.round()).all())):
            # a cast would answer another task: 0.9 -> class 0, True -> class 1, a [n, 1] column taken as n labels
            raise DataError(f"support labels must be integers 0..N-1, one per image (a flat list); got {given.dtype} "
                            f"{str(support_labels)[:60]}")
        labels = given.to(torch.long).flatten()
        if labels.numel() != support.shape[0]:
            raise DataError(f"{support.shape[0]} support images but {labels.numel()} labels; give one label per image")
        n = check_labels(labels)
        self.check_images(support, "support")
        self.warn_if_inverted(support, "support", typed_as_pixels(support_images))
        self.check_way(n)
        self.warn_if_transductive()
        return TaskClassifier(self, support, labels.to(self.device), n)

    def check_way(self, n: int) -> None:
        """A task of ``n`` classes fits this meta-network's head (a fixed-size linear head has ``max_way`` outputs)."""
        if self.max_way is not None and n > self.max_way:
            raise ConfigError(f"this meta-network's classifier head has {self.max_way} outputs, so a task may have at "
                              f"most {self.max_way} classes; this one has {n}")


def load(path: Path | str | dict[str, Any], device: str | torch.device = "auto") -> MetaKnowledge:
    """Load meta-knowledge onto ``device`` ("auto": CUDA if present, "cpu", "cuda", "cuda:N", or a torch.device).

    ``path``: an export (``metalearn export``), a training checkpoint, a run dir (its best.pt), or the
    contents of an export or checkpoint as ``torch.load`` (or ``read_meta_knowledge``) read them. A
    checkpoint of a run that has not finished is warned of."""
    if not isinstance(path, (str, os.PathLike, dict)):
        raise CheckpointError(f"load() takes the path of an export, a checkpoint or a run dir (or a state dict read from "
                              f"one); got a {type(path).__module__}.{type(path).__name__}")
    if isinstance(path, dict):
        state = {**meta_knowledge_of(path, "the state dict given to load()"), "source": None}
    else:
        state = read_meta_knowledge(path)
        if note := unfinished_note(path, state):
            log.warning("%s", note)
    # a torch.device is checked as its name is; errors spell the setting as this call takes it
    return MetaKnowledge(state, resolve_device(str(device), "load(..., device={!r})".format))
