"""Linear head: a learned initial classifier (MAML's output layer), adapted per task by a strategy.

Its rows are shared by all tasks: label ``i`` of any task starts from row ``i``. It is built with
``max_way`` rows (the most ways any configured task has) and a task of ``n_way`` classes uses the
first ``n_way``. It ignores the support set: adapting it to one is the strategy's job.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from metalearn_cli.decoders import DECODERS
from metalearn_cli.decoders.base import Decoder, DecoderOutput, Film, output
from metalearn_cli.errors import ConfigError
from metalearn_cli.params.decoders import LinearParams


class LinearHead(Decoder):
    reads_support = False

    def __init__(self, params: LinearParams, in_dim: int, max_way: int) -> None:
        super().__init__()
        self.in_dim, self.max_way = in_dim, max_way
        self.weight = nn.Parameter(torch.zeros(max_way, in_dim))
        self.bias = nn.Parameter(torch.zeros(max_way))
        if not params.zero_init:
            nn.init.kaiming_uniform_(self.weight, a=5**0.5)

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, n_way: int,
                film: Optional[Film] = None, with_stats: bool = False) -> DecoderOutput:
        if n_way > self.max_way:
            raise ConfigError(f"decoder=linear was built for up to {self.max_way} ways (one row of its head per class, sized "
                              f"by the run's largest task); this task has {n_way}: test at {self.max_way} ways or fewer "
                              f"(e.g. episode=5way1shot episode.way={self.max_way}), or train with trainer.train_way={n_way} (or an episode of "
                              f"{n_way} ways)")
        weight = self.weight[:n_way]  # the task's adapted head when a strategy calls with fast weights
        stats = {"weight_norm": weight.norm(dim=-1).mean().expand(query.shape[0])} if with_stats else None
        return output(query @ weight.T + self.bias[:n_way], stats=stats)


@DECODERS.register("linear", params=LinearParams)
def build_linear(params: LinearParams, in_dim: int, max_way: int, **_: object) -> LinearHead:
    return LinearHead(params, in_dim, max_way)
