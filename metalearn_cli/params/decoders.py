"""The parameters of each decoder (``configs/decoder/<name>.yaml`` extends them); torch-free."""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass
class FEATParams:
    name: str = "feat"
    heads: int = 1  # attention heads (FEAT: 1)
    attention_dropout: float = 0.1  # on the attention weights (FEAT's code: 0.1)
    dropout: float = 0.5  # on the output projection, before the residual (FEAT's code: 0.5)
    temperature: float = 64.0  # divides the squared distances of the queries (FEAT, Conv-4 1-shot: 64 on 64-d features; 1 = ProtoNets' scale)
    layer_norm: bool = True  # FEAT's post-residual LayerNorm of the adapted prototypes; false: p + attention(p)
    balance: float = 1.0  # weight of the contrastive term in the meta-loss (FEAT, Conv-4 1-shot: 1; 0 = off)
    temperature2: float = 16.0  # divides the contrastive term's squared distances (FEAT, Conv-4 1-shot: 16)
    lr_mul: float = 10.0  # the decoder's learning rate over the optimizer's (FEAT: 10 for everything but the encoder)


@dataclass
class FiLMParams:
    name: str = "film"
    hidden: int = 64  # channels of the set encoder = width of the task representation and the generators (CNAPs: 64)


class CodeStd(enum.Enum):
    leo = "leo"  # std = max(exp(u) - 1, 1e-10): near 0 at the start (LEO's code)
    logvar = "logvar"  # std = exp(u / 2): 1 at the start (metalearn before 2026-12-01)


@dataclass
class LatentParams:
    name: str = "latent"
    latent_dim: int = 64  # size of each class's code
    latent_steps: int = 0  # inner-loop gradient steps on the codes; 0 = amortised only
    latent_lr: float = 1.0  # inner-loop step size in latent space
    kl_weight: float = 1e-3  # weight of KL(q(z|support) || N(0, I)), a mean over code dimensions as LEO's
    code_std: CodeStd = CodeStd.leo  # how the codes' noise scale is parameterised (see CodeStd)
    encoder_penalty: float = 1e-9  # weight of ||stopgrad(adapted z) - z||^2 (LEO's beta)
    orthogonality: float = 1e-3  # weight of the decoder's orthogonality penalty (LEO's lambda)
    dropout: float = 0.0  # on the embeddings wherever they enter: the code encoder and every loss (LEO's code; its mini-ImageNet value 0.3)
    prototype_residual: bool = False  # classifier = the prototype classifier + gate * decoded weights (gate starts at 0)
    sample_weights: bool = False  # decode a mean and a std per weight and sample the weights in training (LEO)
    finetune_steps: int = 0  # gradient steps on the decoded weights after the latent steps (LEO: 5)
    finetune_lr: float = 0.001  # initial value of the learned per-dimension fine-tuning rates (LEO's finetuning_lr_init)
    learn_rates: bool = False  # learn the latent step size too, one per code dimension (LEO does)
    l2: float = 0.0  # weight of the L2 penalty sum(theta^2) / 2 on the decoder's weight matrices (LEO's default: 1e-8)
    normalize: bool = False  # L2-normalise support and query embeddings first (pre-trained features can be large: see docs)


@dataclass
class LinearParams:
    name: str = "linear"
    zero_init: bool = False  # start every task from a zero classifier (any row order is then equivalent)


@dataclass
class LogisticParams:
    name: str = "logistic"
    C: float = 1.0  # inverse L2 strength, as scikit-learn's (RFS: LogisticRegression() defaults, C=1)
    steps: int = 200  # accelerated gradient steps (gradient below 1e-3 at S = 100 support images, measured)
    normalize: bool = True  # L2-normalise the embeddings first (RFS does)


@dataclass
class PrototypeParams:
    name: str = "prototype"


@dataclass
class MetricParams:
    name: str = "metric"
    hidden: int = 16  # width of the per-dimension correction (an MLP shared by every embedding dimension)
    task_adaptive: bool = True  # feed each dimension's spread over the task's prototypes to the correction
    lr_mul: float = 1.0  # the decoder's learning rate over the optimizer's
