"""The meta-knowledge outside a run: export it, load it, adapt it to a new task.

A training checkpoint carries optimizer, RNG and sampler states a user of the trained model never
needs. ``export`` keeps the meta-knowledge alone (the strategy's state: encoder, decoder and what
the strategy learns itself, such as Meta-SGD's inner learning rates), the run config that rebuilds
the meta-network, and the image format its pixels must have. ``load`` accepts an export or a
training checkpoint and gives a :class:`MetaKnowledge`, whose ``adapt(support_images,
support_labels)`` returns a :class:`TaskClassifier` for that task's queries: the strategy adapts
exactly as at evaluation (a forward pass for amortised decoders, inner steps for the MAML family,
latent steps for LEO-style codes).

    >>> import metalearn_cli
    >>> knowledge = metalearn_cli.load("meta_knowledge.pt")
    >>> support = knowledge.read_images(["cat1.png", "cat2.png", "dog1.png"])
    >>> classify = knowledge.adapt(support, [0, 0, 1])
    >>> probabilities = classify(knowledge.read_images(["unknown.png"]))  # [1, 2]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence, Union

import torch
from omegaconf import DictConfig, OmegaConf

from metalearn_cli.checkpoint import atomic_save, check_checkpoint, read_state, resolve_checkpoint
from metalearn_cli.data import image_format
from metalearn_cli.data.images import ImageFormat, ImageSource, read_image
from metalearn_cli.episodes import EpisodeBatch
from metalearn_cli.errors import CheckpointError, ConfigError, DataError, MetalearnError
from metalearn_cli.model import batch_norm_mode
from metalearn_cli.strategies import Strategy

FORMAT = "metalearn-meta-knowledge"
VERSION = 1

Images = Union[torch.Tensor, Sequence[ImageSource]]


def read_meta_knowledge(path: Path | str) -> dict[str, Any]:
    """An export or a training checkpoint (or a run dir) as ``{config, model, image_format, step, source}``."""
    path = resolve_checkpoint(Path(path))
    state = read_state(path)  # read once; corrupt, truncated or unsafe files are one line here
    if isinstance(state, dict) and state.get("format") == FORMAT:
        if int(state.get("version", -1)) > VERSION:
            raise CheckpointError(f"{path} has meta-knowledge format version {state['version']}, newer than this "
                                  f"metalearn ({VERSION}); upgrade metalearn")
        for key in ("config", "model", "image_format"):
            if key not in state:
                raise CheckpointError(f"{path} lacks '{key}'; the file is incomplete, export it again")
        return {**state, "source": str(path)}
    if not (isinstance(state, dict) and "format" in state):
        raise CheckpointError(f"{path} is neither a metalearn checkpoint nor an exported meta-knowledge file; "
                              "pass a best.pt/last.pt of a run or a file written by metalearn export")
    state = check_checkpoint(state, path)  # a training checkpoint: its header, version and keys
    try:
        fmt = image_format(state["config"]["dataset"]).to_dict()
    except (MetalearnError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: its config names no usable data set ({exc}); the checkpoint is foreign or damaged") from exc
    return {"config": state["config"], "model": state["model"], "image_format": fmt, "step": int(state["step"]),
            "source": str(path)}


def export(checkpoint: Path | str, out: Path | str) -> dict[str, Any]:
    """Write the meta-knowledge of ``checkpoint`` to ``out`` (atomically, loadable with ``weights_only=True``)."""
    state = read_meta_knowledge(checkpoint)
    payload = {"format": FORMAT, "version": VERSION, "config": state["config"], "model": state["model"],
               "image_format": state["image_format"], "step": state.get("step", -1),
               "exported_from": str(Path(state["source"]).resolve())}
    load(payload, device="cpu")  # refuse to write a file that would not load
    atomic_save(Path(out), payload, "meta-knowledge", "choose a writable out=PATH or free disk space")
    return payload


class TaskClassifier:
    """A meta-network adapted to one task's support set; ``classifier(query_images)`` gives class
    probabilities ``[Q, n_classes]`` (``logits(...)`` the scores before the softmax)."""

    def __init__(self, knowledge: "MetaKnowledge", support: torch.Tensor, labels: torch.Tensor, n_classes: int) -> None:
        self.knowledge, self.support, self.labels, self.n_classes = knowledge, support, labels, n_classes

    def logits(self, query_images: Images) -> torch.Tensor:
        k = self.knowledge
        query = k.as_pixels(query_images)
        if query.shape[0] == 0:
            return torch.zeros(0, self.n_classes)
        out = []
        # Queries go in chunks of the trained episode's query-set size: bounded memory, and the
        # MAML family's transductive batch norm sees query sets shaped like the ones it was trained on.
        with batch_norm_mode(k.strategy.model, k.bn_mode):
            for chunk in query.split(k.query_chunk):
                batch = EpisodeBatch(self.support[None], self.labels[None], chunk[None],
                                     torch.zeros(1, chunk.shape[0], dtype=torch.long, device=k.device),
                                     self.n_classes, 1, 1)
                out.append(k.strategy.predict(batch)[0].detach().float().cpu())
        return torch.cat(out)

    def __call__(self, query_images: Images) -> torch.Tensor:
        return self.logits(query_images).softmax(-1)


class MetaKnowledge:
    """A trained meta-network ready to meet new tasks (see :func:`load`)."""

    def __init__(self, state: dict[str, Any], device: torch.device) -> None:
        from metalearn_cli.runner import build_strategy, resolve_bn_mode, validate_train_config

        self.config: DictConfig = validate_train_config(state["config"])
        self.config.trainer.compile = False  # compiling pays off over long runs, not for one task
        self.image_format = ImageFormat.from_dict(state["image_format"])
        self.device = device
        self.strategy: Strategy = build_strategy(self.config, self.image_format.shape, device)
        try:
            self.strategy.load_state_dict(state["model"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"{state.get('source', 'the file')} does not match its own config's meta-network: "
                                  f"{str(exc).splitlines()[0][:160]}") from exc
        self.strategy.eval()
        self.bn_mode = resolve_bn_mode(self.config.eval.bn_mode, self.strategy)
        e = self.config.episode
        self.query_chunk = max(1, e.way * e.query)
        self.step = int(state.get("step", -1))

    @property
    def max_way(self) -> int | None:
        """The most classes a task may have (a fixed-size head), or ``None`` for any number."""
        return getattr(self.strategy.model.decoder, "max_way", None)

    def read_images(self, sources: Sequence[ImageSource]) -> torch.Tensor:
        """Convert image files or PIL images exactly as the training data were: uint8 ``[n, C, H, W]``."""
        if len(sources) == 0:
            return torch.zeros(0, *self.image_format.shape, dtype=torch.uint8)
        return torch.stack([read_image(s, self.image_format) for s in sources])

    def as_pixels(self, images: Images) -> torch.Tensor:
        """Float ``[n, C, H, W]`` in [0, 1] on the device, from files, PIL images or tensors."""
        if not isinstance(images, torch.Tensor):
            images = self.read_images(list(images))
        if images.dim() != 4 or tuple(images.shape[1:]) != self.image_format.shape:
            raise DataError(f"images must be [n, {', '.join(map(str, self.image_format.shape))}] for this meta-network, "
                            f"got {list(images.shape)}; convert them with read_images()")
        pixels = images.to(self.device)
        return pixels.float().div(255.0) if pixels.dtype == torch.uint8 else pixels.float()

    def adapt(self, support_images: Images, support_labels: Sequence[int] | torch.Tensor) -> TaskClassifier:
        """Adapt to a new task: ``support_labels[i]`` in 0..N-1 is the class of ``support_images[i]``;
        every class needs at least one image, and N >= 2."""
        support = self.as_pixels(support_images)
        labels = torch.as_tensor(support_labels, dtype=torch.long).flatten()
        if labels.numel() != support.shape[0]:
            raise DataError(f"{support.shape[0]} support images but {labels.numel()} labels; give one label per image")
        n = int(labels.max()) + 1 if labels.numel() else 0
        if n < 2 or labels.min() < 0 or torch.bincount(labels, minlength=n).min() == 0:
            raise DataError("support labels must be 0..N-1 with N >= 2 and at least one image of every class")
        if self.max_way is not None and n > self.max_way:
            raise ConfigError(f"this meta-network's classifier head has {self.max_way} outputs, so a task may have at "
                              f"most {self.max_way} classes; this one has {n}")
        return TaskClassifier(self, support, labels.to(self.device), n)


def load(path: Path | str | dict[str, Any], device: str | torch.device = "auto") -> MetaKnowledge:
    """Load meta-knowledge (an export, a training checkpoint or a run dir) onto ``device`` (auto: CUDA if present)."""
    from metalearn_cli.runner import resolve_device

    state = path if isinstance(path, dict) else read_meta_knowledge(path)
    resolved = device if isinstance(device, torch.device) else resolve_device(str(device))
    return MetaKnowledge(state, resolved)
