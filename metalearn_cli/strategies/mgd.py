"""MGD: the amortised meta-network trained by meta-gradient descent.

The encoder and decoder produce a task's classifier in one forward pass (no inner loop); the
meta-objective is the query cross-entropy averaged over the tasks of a meta-batch plus the
decoder's regulariser and, when the decoder has one, its labelled training loss (FEAT's contrastive
term), minimised by the outer optimizer (its meta-gradient clipped by
``optimizer.clip``). With ``decoder=prototype`` this is Prototypical Networks (Snell et al. 2017).
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from metalearn_cli.episodes import EpisodeBatch
from metalearn_cli.errors import ConfigError
from metalearn_cli.model import MetaModel
from metalearn_cli.strategies import STRATEGIES
from metalearn_cli.strategies.base import Prediction, StepOutput, Strategy
from metalearn_cli.params.strategies import MGDParams


class MGD(Strategy):
    def __init__(self, params: MGDParams, model: MetaModel) -> None:
        super().__init__(model)
        self.params_ = params

    def check_compatible(self) -> None:
        if not any(True for _ in self.model.parameters()):
            raise ConfigError("strategy=mgd needs a meta-network with parameters to learn")
        if not self.model.decoder.reads_support:  # one head for every task, never adapted: each task a guess
            raise ConfigError("decoder=linear ignores the support set and strategy=mgd never adapts it, so every task "
                              "would stay at chance; choose a decoder that reads the support set (decoder=prototype) or "
                              "a strategy that adapts the head (strategy=maml, fomaml, anil or metasgd)")

    def meta_loss(self, batch: EpisodeBatch) -> StepOutput:
        out, labelled = self.model.training_output(batch)
        loss = F.cross_entropy(out.logits.flatten(0, 1), batch.query_labels.flatten()) + out.regularizer
        if labelled is not None:  # a decoder's training loss over the query labels (FEAT's contrastive term)
            loss = loss + labelled
        return StepOutput(loss, out.logits.detach())

    @torch.no_grad()
    def predict(self, batch: EpisodeBatch, with_stats: bool = False) -> Prediction:
        out = self.model.episode_output(batch, with_stats)
        return Prediction(out.logits, out.stats)


@STRATEGIES.register("mgd", params=MGDParams)
def build_mgd(params: MGDParams, model: MetaModel) -> MGD:
    return MGD(params, model)
