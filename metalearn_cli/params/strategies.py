"""The parameters of each meta-strategy (``configs/strategy/<name>.yaml`` extends them); torch-free."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Optional


class Adapt(enum.Enum):
    all = "all"  # every parameter of the meta-network (MAML)
    head = "head"  # the decoder only (ANIL)


class InnerLoss(enum.Enum):
    mean = "mean"  # the support set's mean cross-entropy (learn2learn's and MAML++'s code)
    sum_per_shot = "sum_per_shot"  # Finn et al.'s code: summed over the support set, divided by the shot: N x the mean,
    #   so one inner_lr steps N times further (their Omniglot 0.4 at 5-way is 2.0 on the mean); N is each task's own
    #   way, as in their code, so a 5-way run tested on 20-way tasks steps 4 times further there


class Vectorize(enum.Enum):
    auto = "auto"  # vmap on CUDA when the encoder allows it, the task loop on CPU (measured faster there)
    vmap = "vmap"
    loop = "loop"


@dataclass
class MAMLParams:
    name: str = "maml"
    inner_steps: int = 1  # gradient steps on the support set per task during meta-training
    eval_inner_steps: Optional[int] = 3  # steps at evaluation (Finn et al.: more at test time); null = inner_steps
    inner_lr: float = 0.4  # inner-loop step size (Finn et al., Omniglot: 0.4); Meta-SGD's initial value unless inner_lr_range
    first_order: bool = False  # FOMAML: drop the second-order term
    adapt: Adapt = Adapt.all
    adapt_norm: bool = True  # false: the normalisation layers' parameters (batch norm's scale and shift) stay out of the inner loop (learned across tasks only), as Finn et al.'s and MAML++'s code
    inner_loss: InnerLoss = InnerLoss.mean  # the support loss the inner step descends (sum_per_shot: Finn et al.'s code)
    learn_inner_lr: bool = False  # Meta-SGD: per-parameter learned inner learning rates
    inner_lr_range: Optional[list[float]] = None  # Meta-SGD: draw each rate from U(low, high) (Li et al.: [0.005, 0.1]); null: start at inner_lr
    vectorize: Vectorize = Vectorize.auto
    multi_step_loss: bool = False  # MAML++ MSL: query loss after every inner step (more stable, costs a query pass per step)
    msl_anneal: int = 1000  # meta-iterations over which MSL's weights move from uniform to the last step alone
    per_step_lr: bool = False  # MAML++ LSLR: a learned inner learning rate per parameter tensor and inner step
    first_order_until: int = 0  # MAML++ DA: first-order meta-gradients for this many meta-iterations, then second order
    per_step_bn: bool = False  # MAML++ BNRS: batch-norm running statistics per inner step, used by eval.bn_mode=per_step (auto stays transductive, as MAML++ tested)
    per_step_bn_params: bool = False  # MAML++ BNWB: a batch-norm scale and shift per inner step, learned across tasks (needs adapt_norm=false, as MAML++'s code)


@dataclass
class FOMAMLParams(MAMLParams):
    name: str = "fomaml"
    first_order: bool = True


@dataclass
class ANILParams(MAMLParams):
    name: str = "anil"
    adapt: Adapt = Adapt.head


@dataclass
class MetaSGDParams(MAMLParams):
    name: str = "metasgd"
    learn_inner_lr: bool = True
    inner_lr_range: Optional[list[float]] = field(default_factory=lambda: [0.005, 0.1])  # Li et al. 2017


@dataclass
class MGDParams:
    name: str = "mgd"
