"""The meta-network: an encoder embeds a task's images, a decoder turns the embedded support set
into the task's classifier and scores the queries. Composed by name from the registries; derived
sizes (image shape -> encoder, embedding width and most ways -> decoder) are wired here, never typed
in YAML. The model also owns the state of its batch-norm layers (which statistics they use).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch import nn

from metalearn_cli.augment import TtaViews
from metalearn_cli.decoders import DECODERS, Decoder, DecoderOutput
from metalearn_cli.encoders import ENCODERS, Encoder, inside_vmap
from metalearn_cli.encoders.norm import TaskBatchNorm2d
from metalearn_cli.episodes import EpisodeBatch, TaskShapes
from metalearn_cli.errors import ConfigError
from metalearn_cli.host import bf16_pays


class MetaModel(nn.Module):
    """``encoder`` + ``decoder``; ``forward(...)`` gives the decoder's output for the queries."""

    def __init__(self, encoder: Encoder, decoder: Decoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.memory_format = torch.contiguous_format
        self.autocast_dtype: torch.dtype | None = None
        self.precision = "fp32"
        # Which statistics batch norm uses in a pass over a task (see ``embed_task``).
        self.statistics = "joint"
        self.encoder_frozen = False
        self.views: tuple[Callable[[torch.Tensor], torch.Tensor], ...] = TtaViews().copies()  # see ``test_views``
        self.refine_steps = 0  # see ``refining``

    def freeze_encoder(self) -> None:
        """No gradient reaches the encoder's weights and its batch norm keeps its stored statistics
        (evaluation mode, in training too); FiLM modulations still pass through it."""
        self.encoder_frozen = True
        self.encoder.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True) -> "MetaModel":
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
        return self

    def use_precision(self, precision: Any, device: torch.device | None = None, second_order: bool = False) -> "MetaModel":
        """``bf16`` runs the encoder under bfloat16 autocast; the decoder always computes in fp32
        (prototype distances lose too much in bf16). ``auto`` is resolved here (:func:`resolve_precision`);
        the choice is ``self.precision``."""
        self.precision = resolve_precision(precision, device or torch.device("cpu"), second_order)
        self.autocast_dtype = {"fp32": None, "bf16": torch.bfloat16}[self.precision]
        return self

    def use_channels_last(self, enabled: bool | None, device: torch.device | None = None) -> "MetaModel":
        """NHWC kernels: about 2x faster convolutions on CPU (oneDNN); slower than NCHW for Conv-4 on an
        H100. ``None`` is resolved for ``device`` (:func:`resolve_channels_last`)."""
        on = resolve_channels_last(enabled, device or torch.device("cpu"))
        self.memory_format = torch.channels_last if on else torch.contiguous_format
        return self.to(memory_format=self.memory_format)

    def embed(self, images: torch.Tensor, film: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        """Embed ``[..., C, H, W]`` images to ``[..., D]``; ``film`` holds per-task ``[T, C]`` scales
        and shifts for images ``[T, M, C, H, W]``. Inside :meth:`test_views`, an image's features are
        the mean over its copies (one encoder call each)."""
        if len(self.views) == 1:
            return self._embed_once(images, film)
        return torch.stack([self._embed_once(view(images), film) for view in self.views]).mean(0)

    @contextlib.contextmanager
    def test_views(self, views: TtaViews | int) -> Iterator[None]:
        """Test-time augmentation (``eval.tta_*``): inside the block every image, support and query
        alike, is embedded as the mean of the features of itself and its fixed copies
        (:class:`metalearn_cli.augment.TtaViews`; an int is shifts alone); no-op when all are 0."""
        saved, self.views = self.views, TtaViews.of(views).copies()
        try:
            yield
        finally:
            self.views = saved

    def check_refinement(self, steps: int) -> None:
        """Refuse ``eval.soft_kmeans_steps`` where the decoder's classifier is not one of class means."""
        if steps and not self.decoder.refines_with_queries:
            raise ConfigError(f"eval.soft_kmeans_steps={steps} refines prototypes (class means of the embeddings) with "
                              f"the test queries, and this run's {type(self.decoder).__name__} has none: use "
                              "decoder=prototype, or eval.soft_kmeans_steps=0")

    @contextlib.contextmanager
    def refining(self, steps: int) -> Iterator[None]:
        """Inside the block ``forward`` in evaluation mode scores the queries with the decoder's ``refined``
        classifier (``eval.soft_kmeans_steps``: transductive); never in training, for a support set scoring
        itself, in ``training_output``, or in test-time fine-tuning's steps (``Finetuner.adapted`` sets 0)."""
        self.check_refinement(steps)
        saved, self.refine_steps = self.refine_steps, steps
        try:
            yield
        finally:
            self.refine_steps = saved

    def _embed_once(self, images: torch.Tensor, film: list[tuple[torch.Tensor, torch.Tensor]] | None) -> torch.Tensor:
        """The images in one encoder call."""
        lead = images.shape[:-3]
        if film is not None:
            per_task = images.shape[1]
            film = [(g.repeat_interleave(per_task, 0), b.repeat_interleave(per_task, 0)) for g, b in film]
        flat = images.reshape(-1, *images.shape[-3:])
        if not inside_vmap(flat):  # vmap cannot change memory formats; its batched kernels pick their own
            flat = flat.contiguous(memory_format=self.memory_format)
        kwargs = {} if film is None else {"film": film}
        if self.autocast_dtype is None:
            return self.encoder(flat, **kwargs).reshape(*lead, -1)
        with torch.autocast(flat.device.type, dtype=self.autocast_dtype):
            return self.encoder(flat, **kwargs).float().reshape(*lead, -1)

    def forward(
        self, support_images: torch.Tensor, support_labels: torch.Tensor, query_images: torch.Tensor | None,
        n_way: int, with_stats: bool = False,
    ) -> DecoderOutput:
        """The decoder's output for the queries (logits ``[T, Q, n_way]``, regulariser, stats); with
        ``query_images=None`` the support set scores itself (the inner-loop loss of gradient-based
        strategies). Tensors, not a batch, so ``torch.func.functional_call`` and ``vmap`` can drive it."""
        film, support, query = self.embedded(support_images, support_labels, query_images)
        if self.refine_steps and query_images is not None and not self.training:
            return self.decoder.refined(support, support_labels, query, n_way, self.refine_steps, with_stats)
        return self.decoder(support, support_labels, query, n_way, film=film, with_stats=with_stats)

    def training_output(self, batch: EpisodeBatch) -> tuple[DecoderOutput, torch.Tensor | None]:
        """The decoder's output for a training task and its labelled loss (FEAT's contrastive term,
        which needs the query labels: only a meta-loss asks for it), from one pass of the encoder."""
        film, support, query = self.embedded(batch.support_images, batch.support_labels, batch.query_images)
        out = self.decoder(support, support_labels=batch.support_labels, query=query, n_way=batch.n_way, film=film)
        if not self.training:  # FEAT's term is a training loss: test-time fine-tuning (eval mode) leaves it out
            return out, None
        return out, self.decoder.labelled_loss(support, batch.support_labels, query, batch.query_labels, batch.n_way)

    def embedded(self, support_images: torch.Tensor, support_labels: torch.Tensor,
                 query_images: torch.Tensor | None) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """A task's FiLM parameters (CNAPs; else None) and its support and query embeddings (as :meth:`embed_task`)."""
        film = None
        if self.decoder.modulates_encoder:
            # CNAPs: the decoder's own set encoder reads the support images and sets this task's FiLM parameters.
            film = self.decoder.modulation(support_images, support_labels)
        if query_images is None:  # the support set scores itself (an inner step): under "support", by its own statistics
            shot_rows = support_images.shape[1] if self.statistics == "support" else None
            with self._support_statistics(shot_rows, support_images.shape[1]):
                support = query = self.embed(support_images, film)
        elif self.statistics == "separate" and not self.decoder.reads_support:  # MAML's linear head scores the queries
            query = self.embed(query_images, film)  # alone: the support set's pass would be work (and BNRS statistics)
            support = query[:, :0]  # for nothing; an empty set in its place
        else:
            support, query = self.embed_task(support_images, query_images, film)
        return film, support, query

    def embed_task(self, support_images: torch.Tensor, query_images: torch.Tensor,
                   film: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed a task's support ``[T, S, C, H, W]`` and query images, in the passes
        ``self.statistics`` asks for:

        - ``joint``: one pass over support + query (one set of batch statistics, bigger GEMMs: Snell
          et al.'s ProtoNet pass; with running statistics in evaluation, the same as two passes);
        - ``separate``: the support set alone, then the query set alone (Finn et al.'s MAML);
        - ``support``: one pass, every task normalised with its own support images' statistics.
        """
        s = support_images.shape[1]
        if self.statistics == "separate":
            return self.embed(support_images, film), self.embed(query_images, film)
        images = torch.cat([support_images, query_images], dim=1)
        with self._support_statistics(images.shape[1] if self.statistics == "support" else None, s):
            emb = self.embed(images, film)
        return emb[:, :s], emb[:, s:]

    @contextlib.contextmanager
    def _support_statistics(self, per_task: int | None, support: int) -> Iterator[None]:
        norms = [m for m in self.modules() if isinstance(m, TaskBatchNorm2d)] if per_task else []
        for m in norms:
            m.support_rows = (per_task, support)
        try:
            yield
        finally:
            for m in norms:
                m.support_rows = None

    def episode_output(self, batch: EpisodeBatch, with_stats: bool = False) -> DecoderOutput:
        return self(batch.support_images, batch.support_labels, batch.query_images, batch.n_way, with_stats)

    def use_batch_statistics(self) -> None:
        """Batch norm always normalises with the statistics of the batch it sees and keeps no running
        statistics, support and query apart (the MAML family's protocol, as in Finn et al.'s code:
        each task normalised on its own, adaptation never sees the queries)."""
        self.statistics = "separate"
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.track_running_stats = False


def build_meta_model(cfg: Any, image_shape: tuple[int, int, int]) -> MetaModel:
    """Compose ``cfg.encoder`` and ``cfg.decoder`` for images of ``image_shape`` (C, H, W).

    Decoders with a fixed output size get ``max_way``, the most ways any configured task has.
    """
    encoder = ENCODERS.build(cfg.encoder, image_shape=image_shape)
    decoder = DECODERS.build(cfg.decoder, in_dim=encoder.out_dim, max_way=TaskShapes.of(cfg).max_way,
                             film_channels=encoder.film_channels, encoder_name=f"encoder={cfg.encoder.name}",
                             image_shape=image_shape)
    return MetaModel(encoder, decoder)


def resolve_channels_last(channels_last: Any, device: torch.device) -> bool:
    """``null`` -> NHWC on CPUs (oneDNN: ~2x faster convolutions), NCHW on CUDA (Conv-4 MAML under
    vmap on an H100: 1133 vs 878 tasks/s second order, 1597 vs 1147 first order)."""
    return device.type == "cpu" if channels_last is None else bool(channels_last)


def resolve_precision(precision: Any, device: torch.device, second_order: bool) -> str:
    """``auto`` -> ``bf16`` where the device computes it natively and faster than fp32 (:func:`bf16_pays`) and
    the meta-gradient is first order, else ``fp32``."""
    name = getattr(precision, "value", str(precision))
    if name == "auto":
        return "bf16" if bf16_pays(device) and not second_order else "fp32"
    return name
