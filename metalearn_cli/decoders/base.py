"""The decoder protocol: an embedded support set -> the task's classifier, applied to embedded queries.

``Decoder.forward(support [T, S, D], support_labels [T, S], query [T, Q, D], n_way, film=None,
with_stats=False)`` returns a :class:`DecoderOutput`: the query logits, the decoder's regularisation
term for that call (added to the meta-loss by every strategy) and, when asked, per-task norms of
what it generated. Everything a caller needs comes back in the output; nothing is left on the module
between calls, so ``torch.func.functional_call`` and ``vmap`` see a pure function.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
from torch import nn

Film = list[tuple[torch.Tensor, torch.Tensor]]  # per encoder block: per-task scales and shifts [T, C]


class DecoderOutput(NamedTuple):
    logits: torch.Tensor  # [T, Q, n_way]
    regularizer: torch.Tensor  # 0-dim: what the decoder adds to the meta-loss (LEO's KL and penalties, ...)
    stats: dict[str, torch.Tensor]  # per-task norms [T] of what was generated; empty unless with_stats


class LinearHead(NamedTuple):
    """A task's generated classifier as a linear layer: ``features(x) @ weight^T + bias`` are the decoder's
    logits up to a constant per query (which changes no prediction and no softmax)."""

    weight: torch.Tensor  # [T, N, D]
    bias: Optional[torch.Tensor]  # [T, N]; None: no bias
    features: Callable[[torch.Tensor], torch.Tensor]  # what the decoder does to an embedding first (LEO: L2-normalise)

    def logits(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        """``[T, M, N]`` logits of embeddings ``x [T, M, D]`` under (possibly changed) ``weight`` and ``bias``."""
        logits = self.features(x) @ weight.transpose(1, 2)
        return logits if bias is None else logits + bias.unsqueeze(1)


def unchanged(x: torch.Tensor) -> torch.Tensor:
    return x


class Decoder(nn.Module):
    """Base of every decoder: the attributes and calls the model, the strategies and ``load`` rely on."""

    modulates_encoder = False  # True: modulation() gives FiLM parameters the encoder applies (CNAPs)
    lr_mul = 1.0  # this decoder's learning rate over the optimizer's (FEAT: 10)
    max_way: Optional[int] = None  # the most classes a task may have (a fixed-size head); None = any
    reads_support = True  # False: the support set is not read (linear): only a strategy that adapts it learns a task
    refines_with_queries = False  # True: ``refined`` is offered (a classifier of class means: eval.soft_kmeans_steps)

    def modulation(self, support_images: torch.Tensor, support_labels: torch.Tensor) -> Optional[Film]:
        """FiLM scales and shifts ``[T, C]`` for every FiLM site of the encoder, from the support images ``[T, S, C, H, W]``."""
        return None

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, n_way: int,
                film: Optional[Film] = None, with_stats: bool = False) -> DecoderOutput:
        raise NotImplementedError

    def refined(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, n_way: int, steps: int,
                with_stats: bool = False) -> DecoderOutput:
        """``forward``'s output after ``steps`` rounds of transductive refinement with the task's unlabelled
        queries (``eval.soft_kmeans_steps``); offered where ``refines_with_queries``."""
        raise NotImplementedError(f"{type(self).__name__} does not refine its classifier with the queries")

    def linear_head(self, support: torch.Tensor, support_labels: torch.Tensor, n_way: int) -> Optional[LinearHead]:
        """The classifier this decoder generates for a task, as a linear layer on the embeddings
        (test-time fine-tuning of the generated parameters, ``eval.finetune_params=generated``). None: not
        offered (a learned head, per-task logistic regression, CNAPs' FiLM head)."""
        return None

    def labelled_loss(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                      query_labels: torch.Tensor, n_way: int) -> Optional[torch.Tensor]:
        """A training loss that needs the query labels (FEAT's contrastive term), on the same embeddings
        as ``forward``; a strategy adds it to its meta-loss in training. None: the decoder has none. It
        is never part of ``forward``: predicting never sees a query label."""
        return None


def one_hot(labels: torch.Tensor, n_way: int, dtype: torch.dtype) -> torch.Tensor:
    """``[..., n_way]`` indicators of ``labels``; unlike ``F.one_hot`` it runs under ``vmap`` (the MAML family's)."""
    return (labels.unsqueeze(-1) == torch.arange(n_way, device=labels.device)).to(dtype)


def class_means(x: torch.Tensor, labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """Per-task class means ``[T, N, ...D]`` of ``x [T, S, D]`` (prototypes, LEO's per-class codes)."""
    onehot = one_hot(labels, n_way, x.dtype)  # [T, S, N]
    return onehot.transpose(1, 2) @ x / onehot.sum(1).unsqueeze(-1)


def output(logits: torch.Tensor, regularizer: Optional[torch.Tensor] = None,
           stats: Optional[dict[str, torch.Tensor]] = None) -> DecoderOutput:
    """A :class:`DecoderOutput`, with a zero regulariser on the logits' device when there is none."""
    if regularizer is None:
        regularizer = logits.new_zeros(())
    return DecoderOutput(logits, regularizer, {k: v.detach().float() for k, v in (stats or {}).items()})
