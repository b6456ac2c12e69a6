"""MGD: the amortised meta-network trained by meta-gradient descent.

The encoder and decoder produce a task's classifier in one forward pass (no inner loop); the
meta-objective is the query cross-entropy averaged over the tasks of a meta-batch, minimised by the
outer optimizer with the meta-gradient clipped. With ``decoder=prototype`` this is Prototypical
Networks (Snell et al. 2017).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from metalearn_cli.episodes import EpisodeBatch
from metalearn_cli.errors import ConfigError
from metalearn_cli.model import MetaModel
from metalearn_cli.strategies import STRATEGIES, ClipParams, Strategy, clip_and_step, query_accuracy, step_record


@dataclass
class MGDParams:
    name: str = "mgd"
    clip: ClipParams = field(default_factory=ClipParams)


class MGD(Strategy):
    def __init__(self, params: MGDParams, model: MetaModel) -> None:
        super().__init__(model)
        self.params_ = params

    def check_compatible(self) -> None:
        if not any(True for _ in self.model.parameters()):
            raise ConfigError("strategy=mgd needs a meta-network with parameters to learn")

    def meta_train_step(self, batch: EpisodeBatch, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        logits = self.model.episode_logits(batch)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.query_labels.flatten()) + self.model.regularizer()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm, skipped = clip_and_step(list(self.model.parameters()), optimizer, self.params_.clip, loss.detach())
        return step_record(skipped, loss=loss, accuracy=query_accuracy(logits.detach(), batch.query_labels).mean(),
                           grad_norm=grad_norm)

    @torch.no_grad()
    def predict(self, batch: EpisodeBatch) -> torch.Tensor:
        return self.model.episode_logits(batch)


@STRATEGIES.register("mgd", params=MGDParams)
def build_mgd(params: MGDParams, model: MetaModel) -> MGD:
    return MGD(params, model)
