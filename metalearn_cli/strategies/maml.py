"""MAML and its family, one functional implementation (Finn et al. 2017; Li et al. 2017; Raghu et al. 2020).

Each method is its own registry entry with its own defaults (``strategy=fomaml`` is FOMAML, and
its runs are labelled so):

- ``maml``: adapt the meta-network to each task's support set by ``inner_steps`` gradient steps,
  then meta-train the initialisation on the query loss through those steps (second order).
- ``fomaml`` (``first_order=true``): the same, with the inner gradients treated as constants.
- ``anil`` (``adapt=head``): adapt only the decoder's parameters; the encoder's features are computed
  once per task instead of once per inner step.
- ``metasgd`` (``learn_inner_lr=true``): a learned inner learning rate per parameter element,
  meta-trained with the initialisation and saved with it.
- MAML++ (Antoniou et al. 2019), each an option: ``multi_step_loss`` (the query loss after every
  inner step, weights annealed to the last step over ``msl_anneal`` meta-iterations),
  ``per_step_lr`` (a learned inner learning rate per parameter tensor and inner step) and
  ``first_order_until`` (derivative-order annealing: first order for the first N meta-iterations),
  ``per_step_bn`` (BNRS: batch-norm running statistics per inner step, for inductive evaluation) and
  ``per_step_bn_params`` (BNWB: a batch-norm scale and shift per inner step, meta-learned only).

The inner loop is ``torch.func.functional_call`` + ``torch.func.grad`` on one task, batched over the
tasks of a meta-batch with ``torch.func.vmap`` or run task by task (``vectorize``). Batch norm uses
each task's own statistics in training (MAML's transductive protocol), so tasks never share
statistics; evaluation may use the support set's statistics or BNRS's stored ones instead. The
meta-loss is the query loss plus the decoder's regulariser (of the adapted weights' query pass).
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from metalearn_cli.decoders import DecoderOutput
from metalearn_cli.encoders import vmap_safe
from metalearn_cli.encoders.norm import StepStatistics
from metalearn_cli.episodes import EpisodeBatch
from metalearn_cli.errors import ConfigError
from metalearn_cli.model import MetaModel
from metalearn_cli.strategies import STRATEGIES
from metalearn_cli.strategies.base import Prediction, StepOutput, Strategy
from metalearn_cli.params.strategies import ANILParams, Adapt, FOMAMLParams, InnerLoss, MAMLParams, MetaSGDParams, Vectorize

Weights = dict[str, torch.Tensor]


class _Counter(nn.Module):
    """Meta-iterations done, kept in the state dict (MAML++'s schedules depend on it; resume restores it)."""

    def __init__(self) -> None:
        super().__init__()
        self.value = 0

    def get_extra_state(self) -> dict[str, int]:
        return {"meta_iterations": self.value}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.value = int(state["meta_iterations"])


def norm_parameters(model: nn.Module) -> set[str]:
    """The names of the normalisation layers' own parameters (batch norm's scale and shift, group and layer norm's):
    what ``strategy.adapt_norm=false`` keeps out of the inner loop."""
    kinds = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)  # _NormBase: batch and instance norm
    return {f"{name}.{p}" if name else p for name, module in model.named_modules() if isinstance(module, kinds)
            for p, _ in module.named_parameters(recurse=False)}


class MAML(Strategy):
    isolates_tasks = True

    def __init__(self, params: MAMLParams, model: MetaModel) -> None:
        super().__init__(model)
        self.params_ = params
        model.use_batch_statistics()  # batch statistics in training, per task
        # Evaluation: each task's own statistics (auto), its support set's, or (BNRS) each inner step's stored ones.
        self.bn_auto, self.stored_statistics = "transductive", ()
        # BNRS: MAML++'s code normalises with batch statistics at every step, evaluation included (auto stays
        # transductive); the statistics it stores per inner step are an inductive option beside it.
        self.bn_steps = StepStatistics(model, params.inner_steps, statistics=params.per_step_bn, affine=params.per_step_bn_params)
        if params.per_step_bn:
            self.stored_statistics = ("per_step",)
        norm = norm_parameters(model) if not params.adapt_norm else set()
        self.adapt_names = [n for n, _ in model.named_parameters()
                            if (params.adapt is Adapt.all or n.startswith("decoder.")) and n not in norm]
        self.support_scale = params.inner_loss is InnerLoss.sum_per_shot  # the loss times N: Finn et al.'s sum over K
        self.inner_lrs = nn.ParameterDict()
        if params.learn_inner_lr:
            for name, p in model.named_parameters():
                if name in self.adapt_names:
                    self.inner_lrs[name.replace(".", "__")] = nn.Parameter(self._initial_rates(p))
        if params.per_step_lr:
            steps = max(params.inner_steps, 1)
            self.step_lrs = nn.ParameterDict({n.replace(".", "__"): nn.Parameter(torch.full((steps,), params.inner_lr))
                                              for n in self.adapt_names})
        if params.multi_step_loss or params.first_order_until > 0:
            self.meta_iterations = _Counter()

    def _initial_rates(self, p: torch.Tensor) -> torch.Tensor:
        r = self.params_.inner_lr_range
        if r is None:
            return torch.full_like(p, self.params_.inner_lr)
        if not (len(r) == 2 and 0 < r[0] <= r[1]):
            raise ConfigError("strategy.inner_lr_range must be [low, high] with 0 < low <= high, or null")
        return torch.empty_like(p).uniform_(float(r[0]), float(r[1]))

    @property
    def second_order(self) -> bool:
        """Second-order terms appear (at once, or after ``first_order_until``)."""
        return not self.params_.first_order

    def backward_context(self) -> ContextManager[None]:
        """The encoder's second-order context, where second-order terms are computed (first order
        needs none, and the transformer's math attention kernel fails under bf16 autocast)."""
        return self.model.encoder.second_order_context() if self.second_order else contextlib.nullcontext()

    # ------------------------------------------------------------------ set-up
    def check_compatible(self) -> None:
        p = self.params_
        if p.inner_steps < 0 or (p.eval_inner_steps is not None and p.eval_inner_steps < 0):
            raise ConfigError("strategy.inner_steps and strategy.eval_inner_steps must be >= 0")
        if p.inner_lr <= 0:
            raise ConfigError("strategy.inner_lr must be > 0")
        if not self.adapt_names:
            decoder = type(self.model.decoder).__name__
            raise ConfigError(
                f"strategy={p.name} with strategy.adapt={p.adapt.value} has nothing to adapt ({decoder} has no parameters); "
                "use decoder=linear, or strategy.adapt=all"
            )
        test_steps = p.eval_inner_steps if p.eval_inner_steps is not None else p.inner_steps
        if test_steps == 0 and not self.model.decoder.reads_support:  # one shared head, never adapted: a guess
            raise ConfigError(f"strategy={p.name} tests with 0 inner steps (strategy.eval_inner_steps), so decoder=linear's "
                              "shared head is never adapted to a task and every test task stays at chance; give "
                              "strategy.eval_inner_steps >= 1")
        if p.learn_inner_lr and p.per_step_lr:
            raise ConfigError("strategy.learn_inner_lr (Meta-SGD, per element) and strategy.per_step_lr (MAML++, per "
                              "tensor and step) are two kinds of learned inner rates; choose one")
        if p.msl_anneal < 1 or p.first_order_until < 0:
            raise ConfigError("strategy.msl_anneal must be >= 1 and strategy.first_order_until >= 0")
        if p.per_step_bn and (p.inner_steps < 1 or p.vectorize is Vectorize.vmap):
            raise ConfigError("strategy.per_step_bn needs strategy.inner_steps >= 1 and vectorize=loop or auto (its "
                              "statistics are updated in place, which vmap cannot do)")
        if p.per_step_bn_params:
            self._check_per_step_bn_params()
        if p.vectorize is Vectorize.vmap and not self.model.encoder.supports_vmap:
            raise ConfigError(f"{type(self.model.encoder).__name__} does not support vmap; use strategy.vectorize=loop or auto")

    def _check_per_step_bn_params(self) -> None:
        p = self.params_
        if p.adapt is Adapt.head:
            raise ConfigError(f"strategy={p.name} with strategy.adapt=head embeds each task once, so of "
                              "strategy.per_step_bn_params's per-step pairs only the first would be used; use strategy=maml")
        if p.adapt_norm:
            raise ConfigError("strategy.per_step_bn_params=true (MAML++'s per-step batch-norm scales and shifts) needs "
                              "strategy.adapt_norm=false: MAML++ learns them across tasks only, never in the inner loop")
        if p.inner_steps < 1:
            raise ConfigError("strategy.per_step_bn_params=true needs strategy.inner_steps >= 1 (one scale and shift per step)")
        if not any(hasattr(m, "step_weight") for m in self.bn_steps.norms):
            raise ConfigError(f"strategy.per_step_bn_params=true needs batch norm with a scale and shift, and "
                              f"{type(self.model.encoder).__name__} has none; use encoder=conv4 or encoder=resnet12")

    def uses_vmap(self, device: torch.device) -> bool:
        if self.params_.vectorize is Vectorize.auto:
            return device.type == "cuda" and self.model.encoder.supports_vmap and not self.params_.per_step_bn
        return self.params_.vectorize is Vectorize.vmap

    # ------------------------------------------------------------------ the inner loop
    def _lr(self, name: str, step: int) -> torch.Tensor | float:
        key = name.replace(".", "__")
        if self.params_.per_step_lr:
            rates = self.step_lrs[key]
            return rates[min(step, rates.shape[0] - 1)]  # evaluation may take more steps than were learned
        return self.inner_lrs[key] if self.params_.learn_inner_lr else self.params_.inner_lr

    def _task_function(self, weights: Weights, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, n_way: int,
                       ) -> tuple[Callable[..., DecoderOutput], Weights, str]:
        """``(forward, fast weights, prefix)`` for one task: ``forward(fast, query, constant, with_stats)``
        scores the support set (``query=None``) or the queries with ``fast`` weights."""
        if self.params_.adapt is Adapt.head:
            # ANIL: the encoder is not adapted, so embed once and adapt the head on the features; the
            # support set is embedded alone (its statistics never see the queries), unless
            # eval.bn_mode asks for one pass (transductive_joint, support).
            self.bn_steps.at(0)
            es, eq = (e[0] for e in self.model.embed_task(sx[None], qx[None]))
            head = {n[len("decoder."):]: w for n, w in weights.items() if n.startswith("decoder.")}

            def head_forward(fast: Weights, query: Optional[torch.Tensor], constant: bool = False,
                             with_stats: bool = False) -> DecoderOutput:
                support = es.detach() if constant else es
                q = support if query is None else eq
                return functional_call(self.model.decoder, fast, (support[None], sy[None], q[None], n_way),
                                       {"with_stats": with_stats})

            return head_forward, head, "decoder."

        def forward(fast: Weights, query: Optional[torch.Tensor], constant: bool = False,
                    with_stats: bool = False) -> DecoderOutput:
            return functional_call(self.model, fast, (sx[None], sy[None], None if query is None else qx[None], n_way),
                                   {"with_stats": with_stats})

        return forward, dict(weights), ""

    def _task_logits(
        self, weights: Weights, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, n_way: int, steps: int,
        create_graph: bool, every_step: bool = False, with_stats: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Adapt ``weights`` to one task's support set; returns its query logits ``[Q, n_way]``
        (``every_step``: after each inner step, ``[steps, Q, n_way]``, for MAML++'s multi-step loss),
        the decoder's regulariser of the final query pass and its stats (per-task values ``[]``)."""
        forward, fast, prefix = self._task_function(weights, sx, sy, qx, n_way)
        adapted = [n for n in self.adapt_names if n.startswith(prefix)]
        per_step = []
        for step in range(steps):
            # First order: the inner gradient is a constant, so compute it on detached weights and
            # features (no graph back to the meta-parameters: less memory and time).
            base = fast if create_graph else {k: v.detach() for k, v in fast.items()}

            def support_loss(trainable: Weights) -> tuple[torch.Tensor, list[torch.Tensor]]:
                start = len(self.bn_steps.records)
                loss = F.cross_entropy(forward({**base, **trainable}, None, constant=not create_graph).logits[0], sy)
                loss = loss * n_way if self.support_scale else loss
                return loss, self.bn_steps.since(start)  # BNRS statistics, unwrapped by grad

            trainable = {n[len(prefix):]: base[n[len(prefix):]] for n in adapted}
            self.bn_steps.at(step)
            start = len(self.bn_steps.records)
            grads, recorded = grad(support_loss, has_aux=True)(trainable)
            self.bn_steps.unwrapped(start, recorded)
            for n in adapted:
                key = n[len(prefix):]
                g = grads[key] if create_graph else grads[key].detach()
                fast[key] = fast[key] - self._lr(n, step) * g
            if every_step and step < steps - 1:
                per_step.append(forward(fast, qx).logits[0])
        self.bn_steps.at(steps - 1)  # the query pass after step j uses step j's statistics, as MAML++'s code
        final = forward(fast, qx, with_stats=with_stats)
        self.bn_steps.at(None)  # a pass outside the inner loop (an embedding) is no step's
        logits = torch.stack([*per_step, final.logits[0]]) if every_step else final.logits[0]
        return logits, final.regularizer, {k: v[0] for k, v in final.stats.items()}

    def _batch_logits(self, batch: EpisodeBatch, steps: int, create_graph: bool, every_step: bool = False,
                      with_stats: bool = False) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Per-task logits ``[T, ...]``, regularisers ``[T]`` and stats ``{name: [T]}`` of a batch of tasks."""
        weights = dict(self.model.named_parameters())
        task = lambda sx, sy, qx: self._task_logits(weights, sx, sy, qx, batch.n_way, steps, create_graph,  # noqa: E731
                                                    every_step, with_stats)
        if self.uses_vmap(batch.support_images.device):
            vmap_safe(self.model, True)
            return vmap(task, randomness="different")(batch.support_images, batch.support_labels, batch.query_images)
        vmap_safe(self.model, False)
        outs = [task(batch.support_images[t], batch.support_labels[t], batch.query_images[t]) for t in range(batch.tasks)]
        stats = {k: torch.stack([o[2][k] for o in outs]) for k in outs[0][2]}
        return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs]), stats

    # ------------------------------------------------------------------ the protocol
    def msl_weights(self, steps: int) -> list[float]:
        """MAML++'s multi-step loss weights: uniform at first, moving linearly towards the last step
        over ``msl_anneal`` meta-iterations (earlier steps keep at least 0.03 / steps meanwhile), then
        the last step's loss alone, as Antoniou et al.'s code switches to it."""
        done = self.meta_iterations.value if hasattr(self, "meta_iterations") else 0
        if done >= self.params_.msl_anneal:
            return [0.0] * (steps - 1) + [1.0]
        progress = done / self.params_.msl_anneal
        early = [max((1 - progress) / steps, 0.03 / steps) for _ in range(steps - 1)]
        return [*early, 1.0 - sum(early)]

    def meta_loss(self, batch: EpisodeBatch) -> StepOutput:
        p = self.params_
        done = self.meta_iterations.value if hasattr(self, "meta_iterations") else 0
        create_graph = not p.first_order and done >= p.first_order_until
        multi_step = p.multi_step_loss and p.inner_steps > 1 and done < p.msl_anneal  # then the last step's loss alone
        with self.bn_steps.recording():
            logits, regularizer, _ = self._batch_logits(batch, p.inner_steps, create_graph, every_step=multi_step)
        if multi_step:  # [T, steps, Q, N]: a weighted sum of the query losses after each step
            labels = batch.query_labels.flatten()
            loss = sum(w * F.cross_entropy(logits[:, j].flatten(0, 1), labels)
                       for j, w in enumerate(self.msl_weights(p.inner_steps)))
            logits = logits[:, -1]
        else:
            loss = F.cross_entropy(logits.flatten(0, 1), batch.query_labels.flatten())
        return StepOutput(loss + regularizer.mean(), logits.detach())

    def step_done(self) -> None:
        if hasattr(self, "meta_iterations"):
            self.meta_iterations.value += 1

    @property
    def adapts_encoder(self) -> bool:
        return any(n.startswith("encoder.") for n in self.adapt_names)

    def activation_copies(self) -> int:
        """Every inner step's graph stays alive for the meta-gradient (twice over, second order)."""
        return (self.params_.inner_steps + 1) * (2 if self.second_order else 1)

    def test_inner_steps(self) -> int:
        p = self.params_
        return p.eval_inner_steps if p.eval_inner_steps is not None else p.inner_steps

    def predict(self, batch: EpisodeBatch, with_stats: bool = False) -> Prediction:
        with torch.enable_grad():
            logits, _, stats = self._batch_logits(batch, self.test_inner_steps(), create_graph=False, with_stats=with_stats)
        return Prediction(logits.detach(), stats)


def build(params: MAMLParams, model: MetaModel) -> MAML:
    return MAML(params, model)


for _name, _params in (("maml", MAMLParams), ("fomaml", FOMAMLParams), ("anil", ANILParams), ("metasgd", MetaSGDParams)):
    STRATEGIES.register(_name, params=_params)(build)
