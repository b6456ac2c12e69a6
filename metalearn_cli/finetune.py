"""Test-time fine-tuning (Hu et al. 2022, P>M>F): before a test task is scored, a few gradient steps
on its support set alone, with new augmented copies of the support images as pseudo-queries at
every step, Adam (betas 0.9, 0.999, no weight decay), as P>M>F's code does.

The loss is the strategy's own meta-loss on that pseudo-task (ProtoNets: prototypes of the support
images, cross-entropy of their augmented copies), so a query image or its label never enters it
(nor FEAT's contrastive term, a training loss). The weights and buffers are restored after every
task: no task sees another's steps, and the checkpoint (and the strategy a caller holds) is exactly
what it was.

``generated`` moves what the decoder generates instead of the network: the task's classifier as a
linear layer (prototypes as weights ``2 p`` and biases ``-||p||^2``, Triantafillou et al. 2020's
Proto-MAML head; FEAT's adapted prototypes; LEO's decoded weights) on fixed embeddings, so a step
needs no backward pass through the encoder. The draws come from a generator
the caller seeds (:func:`metalearn_cli.evaluation.score_checkpoint`), so a fine-tuned test repeats.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F

from metalearn_cli.augment import TtaViews, augment_images, augmentation
from metalearn_cli.decoders.base import Decoder
from metalearn_cli.episodes import EpisodeBatch
from metalearn_cli.errors import ConfigError
from metalearn_cli.strategies import Strategy
from metalearn_cli.strategies.base import Prediction

if TYPE_CHECKING:
    from metalearn_cli.ensemble import Ensemble


class Finetuner:
    def __init__(self, steps: int, lr: float, params: str, augment: Any) -> None:
        self.steps, self.lr, self.params, self.augment = steps, lr, params, augment
        self.augment_name: Optional[str] = None  # what eval.finetune_augment resolved to (results.json records it)

    @classmethod
    def of(cls, eval_cfg: Any, augment_default: Any, image_shape: tuple[int, int, int], strategy: Strategy) -> Optional["Finetuner"]:
        """The fine-tuning ``eval.finetune_*`` asks for (checked against ``strategy`` before anything
        runs); None when ``eval.finetune_steps=0``."""
        if eval_cfg.finetune_steps == 0:
            return None
        if getattr(eval_cfg.finetune_params, "value", str(eval_cfg.finetune_params)) == "generated" and eval_cfg.get("soft_kmeans_steps"):
            raise ConfigError(f"eval.finetune_params=generated fine-tunes the prototypes as a linear head, which "
                              f"eval.soft_kmeans_steps={eval_cfg.soft_kmeans_steps} would then not refine: drop one of "
                              "the two (or fine-tune the backbone: eval.finetune_params=backbone)")
        augment = augmentation(eval_cfg.finetune_augment, augment_default, image_shape)
        if augment is None:
            raise ConfigError("eval.finetune_steps needs augmented copies of the support images as pseudo-queries, "
                              "but eval.finetune_augment resolves to none here; set eval.finetune_augment=crop (or affine)")
        tuner = cls(eval_cfg.finetune_steps, eval_cfg.finetune_lr, getattr(eval_cfg.finetune_params, "value", str(eval_cfg.finetune_params)), augment)
        asked = getattr(eval_cfg.finetune_augment, "value", eval_cfg.finetune_augment)
        tuner.augment_name = str(getattr(augment_default, "value", augment_default) if asked == "auto" else asked)
        tuner._check(strategy)
        return tuner

    def _check(self, strategy: Strategy) -> None:
        decoder = strategy.model.decoder
        generates = strategy.test_inner_steps() is None and type(decoder).linear_head is not Decoder.linear_head
        if self.params != "generated":
            if not self._chosen(strategy):
                raise ConfigError(f"eval.finetune_params={self.params} names no parameter of this meta-network (its "
                                  f"{type(decoder).__name__} has none); use backbone or all"
                                  + (" (or generated: the classifier it generates)" if generates else ""))
            return
        if not generates:
            usable = [p for p in ("backbone", "decoder", "all") if Finetuner(1, 0.0, p, None)._chosen(strategy)]
            raise ConfigError(f"eval.finetune_params=generated fine-tunes the classifier an amortised decoder generates "
                              f"(strategy=mgd with decoder=prototype, feat or latent); this run's {type(decoder).__name__} "
                              f"under {type(strategy).__name__} generates none: use {' or '.join(usable)}")

    def predict(self, scored: "Ensemble", task: EpisodeBatch, views: TtaViews | int, with_stats: bool = False) -> Prediction:
        """``task`` (one task) scored by the ensemble's one member after this fine-tuning on its support set."""
        strategy = scored.members[0]
        if self.params == "generated":  # the copies are embedded as the test's images are: with the test's views
            with strategy.model.test_views(views):
                return self._tuned_head(strategy, task, with_stats)
        with self.adapted(strategy, task):
            return scored.predict(task, views, with_stats=with_stats)

    @torch.no_grad()
    def _tuned_head(self, strategy: Strategy, task: EpisodeBatch, with_stats: bool) -> Prediction:
        """The decoder's linear head for ``task``, fine-tuned on fixed embeddings of new augmented copies
        of its support images at every step; the network itself never changes. The copies pass the
        encoder beside the support set (in the batch-statistics modes, normalised with it, not with the
        queries). Stats: ``head_shift`` (how far weights and biases moved) and, asked, the decoder's own."""
        model, labels = strategy.model, task.support_labels
        film, support, query = model.embedded(task.support_images, labels, task.query_images)
        head = model.decoder.linear_head(support, labels, task.n_way)
        weight, bias = head.weight.detach().clone(), None if head.bias is None else head.bias.detach().clone()
        if self.lr:
            moved = [t.requires_grad_() for t in (weight, bias) if t is not None]
            optimizer = torch.optim.Adam(moved, lr=self.lr, betas=(0.9, 0.999))
            for _ in range(self.steps):
                copies = model.embed_task(task.support_images, augment_images(self.augment, task.support_images), film)[1]
                with torch.enable_grad():
                    loss = F.cross_entropy(head.logits(copies, weight, bias).flatten(0, 1), labels.flatten())
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                optimizer.step()
        moved_by = (weight - head.weight).square().sum(-1)
        if bias is not None:
            moved_by = moved_by + (bias - head.bias).square()
        stats = {"head_shift": moved_by.sqrt().mean(-1)}
        if with_stats:
            stats.update(model.decoder(support, labels, query, task.n_way, film=film, with_stats=True).stats)
        return Prediction(head.logits(query, weight.detach(), None if bias is None else bias.detach()), stats)

    def search(self, rates: list[float], score: Callable[["Finetuner"], float]) -> dict[str, float]:
        """P>M>F's choice of the step size: ``score`` (mean accuracy on the same fixed validation tasks)
        for each rate; the best is kept (the smaller on a tie). Returns ``{rate: accuracy}``."""
        found = {}
        for lr in sorted(rates):
            self.lr = float(lr)
            found[repr(float(lr))] = score(self)
        self.lr = float(max(sorted(rates), key=lambda lr: found[repr(float(lr))]))
        return found

    def _chosen(self, strategy: Strategy) -> list[torch.nn.Parameter]:
        names = {"backbone": ("model.encoder.",), "decoder": ("model.decoder.",), "all": ("",), "generated": ()}[self.params]
        return [p for n, p in strategy.named_parameters() if n.startswith(names)]

    @contextlib.contextmanager
    def adapted(self, strategy: Strategy, task: EpisodeBatch) -> Iterator[None]:
        """``strategy`` fine-tuned on ``task``'s support set (one task) inside the block, restored after it."""
        if self.lr == 0:  # P>M>F's search includes "no fine-tuning"
            yield
            return
        chosen, every = self._chosen(strategy), list(strategy.parameters())
        flags = [p.requires_grad for p in every]
        saved = {k: v.detach().clone() for k, v in strategy.state_dict().items()}  # buffers too (MAML++'s per-step statistics)
        try:
            for p in every:
                p.requires_grad_(any(p is c for c in chosen))
            optimizer = torch.optim.Adam(chosen, lr=self.lr, betas=(0.9, 0.999))  # as P>M>F's code
            with torch.enable_grad(), strategy.model.refining(0):  # the loss on the copies: never refined with them
                for _ in range(self.steps):  # new augmented copies at every step, as P>M>F's code draws them
                    pseudo = EpisodeBatch(task.support_images, task.support_labels,
                                          augment_images(self.augment, task.support_images), task.support_labels,
                                          task.n_way, task.k_shot, task.k_shot)
                    optimizer.zero_grad(set_to_none=True)
                    with strategy.backward_context():
                        strategy.meta_loss(pseudo).loss.backward()
                    optimizer.step()
            yield
        finally:
            with torch.no_grad():
                for key, value in strategy.state_dict().items():
                    value.copy_(saved[key])
            for p, flag in zip(every, flags):
                p.requires_grad_(flag)
                p.grad = None
