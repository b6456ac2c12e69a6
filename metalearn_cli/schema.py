"""Typed schemas of the run-level configs: the single source of their defaults.

The primary configs (``train.yaml``, ``eval.yaml``, ...) extend :class:`TrainConfig`,
:class:`EvalRunConfig`, ... ; the options of the component groups (dataset, encoder, decoder,
strategy, optimizer) extend the dataclasses their components register (see
:mod:`metalearn_cli.components`). So a wrong type or an unknown key fails while Hydra composes,
before anything runs. This module imports none of the components.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, make_dataclass
from typing import Any, Optional, get_type_hints

from omegaconf import MISSING

from metalearn_cli.bn_modes import AUTO, MODES


# eval.bn_mode: auto (the strategy's own protocol) or a mode of the table in metalearn_cli/bn_modes.py.
BNMode = enum.Enum("BNMode", {AUTO: AUTO, **{m: m for m in MODES}})


class Precision(enum.Enum):
    auto = "auto"  # bf16 where native and faster than fp32 (AMD AVX512-BF16, Intel AMX, bf16 GPUs), else fp32
    fp32 = "fp32"
    bf16 = "bf16"  # encoder under bfloat16 autocast; decoder, loss and weights stay fp32


class NanPolicy(enum.Enum):
    stop = "stop"  # end the run with one line, keeping the last good checkpoint (CUDA: at the next metrics record)
    skip = "skip"  # drop that meta-batch (no optimizer step) and count it in the metrics


class Protocol(enum.Enum):
    random = "random"  # N classes drawn at random from the split, K + Q random images of each
    lake = "lake"  # Lake et al. (2015): 20 characters of one alphabet, support and query drawn by two different people (Omniglot, split=background)


class Augment(enum.Enum):
    auto = "auto"  # the data set's own: dataset.augment (pre-training), dataset.meta_augment (meta-training)
    none = "none"
    crop = "crop"  # random crops of the image size from a 10%-padded copy
    crop_flip = "crop_flip"  # + horizontal flips
    crop_flip_jitter = "crop_flip_jitter"  # + colour jitter (colour images)
    affine = "affine"  # Koch et al. (2015): each image its own rotation, shear, scale and shift (Omniglot strokes)


@dataclass
class EpisodeConfig:
    way: int = MISSING  # classes per task (N)
    shot: int = MISSING  # labelled support images per class (K)
    query: int = 15  # query images per class scored per task
    protocol: Protocol = Protocol.random


@dataclass
class TrainerConfig:
    iterations: int = 5000  # meta-iterations (outer steps); cosine lr decay over exactly this many
    meta_batch: int = 1  # tasks per meta-iteration
    train_way: Optional[int] = 60  # ways of training tasks; null = episode.way (Snell et al. train 60-way)
    train_query: Optional[int] = 5  # queries per class in training tasks; null = episode.query
    val_every: int = 1000  # meta-iterations between validations (and best.pt updates)
    val_episodes: int = 300  # fixed validation tasks per validation
    val_way: Optional[int] = None  # ways of validation tasks; null = episode.way (5-way Omniglot validation saturates near 99%)
    checkpoint_every: int = 500  # meta-iterations between last.pt writes
    log_every: int = 50  # meta-iterations between metric records (the only host syncs)
    channels_last: Optional[bool] = None  # NHWC conv kernels; null = auto: on for CPU (oneDNN, ~2x), off for CUDA (NCHW faster there)
    compile: bool = False  # torch.compile the encoder (first-order strategies; long warm-up, pays off on GPUs)
    precision: Precision = Precision.auto  # bf16: ~1.6x faster on AMD CPUs with AVX512-BF16, Intel AMX, recent GPUs
    progress: bool = True  # a tqdm bar on a terminal and a log line every tenth of a stage (the test: every 30 s off a terminal); false: neither
    nan_policy: NanPolicy = NanPolicy.stop  # what a NaN/Inf meta-loss or meta-gradient does
    deterministic: bool = False  # deterministic kernels, CUDA included (slower there); CPU runs already repeat exactly
    init_from: Optional[str] = None  # a checkpoint, run dir or export: start from its tensors where names and shapes match
    freeze_encoder: bool = False  # meta-train everything but the (pre-trained) encoder: its weights and batch-norm statistics stay as loaded (LEO, CNAPs)
    memory_check: bool = True  # refuse a run whose estimated memory exceeds what the device has free (false: try anyway)
    within_alphabet: float = 0.0  # share of training tasks drawn from one alphabet (Lake's runs are within-alphabet); needs Alphabet/character class names
    same_drawers: bool = False  # each training task's supports by the same drawers for every class, its queries by others (as Lake's runs); images in drawer order
    augment: Augment = Augment.none  # per-image transforms of training tasks (never at validation or test); auto = dataset.meta_augment
    ema: Optional[float] = None  # decay of an average of the weights that validation scores and best.pt keeps (e.g. 0.999); null = off


class PretrainKind(enum.Enum):
    supervised = "supervised"  # classification over every training class (RFS, Meta-Baseline)
    episodic = "episodic"  # ProtoNet meta-training on the stage's own tasks, under the run's optimizer


@dataclass
class PretrainConfig:
    """A first stage that trains the encoder before meta-training, best checkpoint by episodic
    validation: plain classification over every training class (Tian et al. 2020; Chen et al. 2021),
    or ProtoNet meta-training on tasks of another shape than the run's (pretrain=episodic)."""

    kind: PretrainKind = PretrainKind.supervised
    iterations: int = 0  # optimizer steps; 0 = no pre-training stage
    epochs: Optional[float] = None  # with the stage on: iterations = ceil(epochs x training images / batch_size) (RFS: 100)
    max_iterations: Optional[int] = None  # a cap on the stage's steps, epochs counted (debug=smoke: any preset's stage in seconds)
    batch_size: int = 128  # images per step, drawn from all training classes
    # An optimizer-group node (configs/optimizer/), its update through optim.meta_step like meta-training's:
    # SGD + Nesterov momentum 0.9, lr 0.05, weight decay 5e-4, cosine decay to 0, no clipping (RFS's rate, momentum and decay; RFS's schedule is pretrain=rfs).
    optimizer: Any = field(default_factory=lambda: {
        "name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
        "schedule": {"kind": "cosine", "warmup": 0, "min_lr_ratio": 0.0, "step_size": 2000, "gamma": 0.5, "milestones": [0.6, 0.8]},
        "clip": {"norm": None, "value": None}})
    label_smoothing: float = 0.0
    augment: Augment = Augment.auto  # per-image torchvision.transforms.v2; auto = the data set's own (dataset.augment; episodic: meta_augment)
    val_every: int = 500  # steps between episodic validations (nearest-centroid accuracy on the fixed val tasks)
    val_episodes: int = 300
    # kind=episodic only (batch_size, label_smoothing, epochs and optimizer are supervised's; each kind refuses the
    # other's keys typed on the command line): the stage's training
    # tasks, as trainer.train_way / train_query / within_alphabet; it steps with the run's optimizer (cosine over
    # pretrain.iterations) and augments with dataset.meta_augment under augment=auto.
    train_way: Optional[int] = 60  # null = episode.way
    train_query: Optional[int] = 5  # null = episode.query
    within_alphabet: float = 0.0


class FinetuneParams(enum.Enum):
    backbone = "backbone"  # the encoder (P>M>F)
    decoder = "decoder"  # the decoder's weights (what generates the task's classifier)
    all = "all"
    generated = "generated"  # the task's classifier the decoder generates, on fixed embeddings (prototype, feat, latent)


@dataclass
class EvalConfig:
    episodes: int = 1000  # fixed test tasks; the CI95 shrinks as 1/sqrt(episodes)
    batch_tasks: int = 10  # tasks per forward pass: 10 is fastest on CPU, raise it on a GPU (never changes the tasks)
    bn_mode: BNMode = BNMode.auto
    save_task_stats: bool = False  # write task_stats.csv: per test task, accuracy and the norms of what the decoder generated
    # Test-time fine-tuning (Hu et al. 2022, P>M>F): steps on each test task's support set, augmented copies as
    # pseudo-queries, Adam as P>M>F's code; the weights are restored after each task. Not in validation.
    finetune_steps: int = 0  # 0 = off (P>M>F: 50)
    finetune_lr: float = 0.01  # P>M>F picks it from {0, 1e-4, 1e-3, 1e-2} on validation tasks
    finetune_params: FinetuneParams = FinetuneParams.backbone
    finetune_augment: Augment = Augment.auto  # the pseudo-queries' transforms; auto = dataset.meta_augment
    finetune_lr_search: Optional[list[float]] = None  # P>M>F: pick finetune_lr from these ([0, 1e-4, 1e-3, 1e-2]) on validation tasks first
    finetune_search_episodes: int = 50  # validation tasks per candidate rate (the same fixed tasks for each)
    # Test-time augmentation: each test image (support and query) embedded as the mean of the features of itself and
    # fixed copies (metalearn_cli.augment.TtaViews); each copy is one more pass of the encoder's test work. Never in
    # training's validation; eval.finetune_lr_search's validation tasks and `metalearn predict` (the checkpoint's value) use it.
    tta_shift: int = 0  # 4 copies moved this many pixels up, down, left and right (zero-filled); 0 = off
    tta_rotate: float = 0.0  # 2 copies turned by +- this many degrees; 0 = off
    tta_scale: float = 0.0  # 2 copies scaled by 1 +- this (0.1: 0.9 and 1.1); 0 = off
    tta_shear: float = 0.0  # 2 copies sheared along x by +- this factor; 0 = off
    # RFS's test protocol (Tian et al. 2020: 5): each support image replaced by this many random draws of dataset.augment
    # (metalearn_cli.augment.SupportCopies), seeded by the test; the classifier sees copies x K shots. 0 = off
    support_copies: int = 0
    # Transductive: each prototype refined with the test task's unlabelled queries, this many soft k-means steps (Ren et
    # al. 2018; decoder=prototype). Each query's answer then depends on the task's other queries. 0 = off
    soft_kmeans_steps: int = 0
    # Lake et al.'s 20 original runs instead of eval.episodes drawn ones (episode=lake20way1shot): the path of their
    # all_runs.zip (github.com/brendenlake/omniglot, python/one-shot-classification) or its folder; null = drawn runs
    lake_runs: Optional[str] = None


# `metalearn eval`'s eval.*: each key the command line leaves null is the checkpoint's own (its run tested so), so
# `metalearn eval checkpoint=R` reproduces R's results.json; built from EvalConfig so the two cannot drift apart.
EvalChoices = make_dataclass("EvalChoices", [(name, Optional[hint], field(default=None))
                                             for name, hint in get_type_hints(EvalConfig).items()])


@dataclass
class ReferenceConfig:
    """The published figure a preset reproduces: copied into results.json for reports to print beside ours."""

    accuracy: Optional[float] = None  # published test accuracy in %, null if the paper has none for this cell
    source: str = ""  # paper and table
    of: str = ""  # whose figure it is when not the preset's method's own (Lake's runs: "humans"); reports print it beside the number


@dataclass
class TrainConfig:
    dataset: Any = MISSING
    episode: EpisodeConfig = field(default_factory=EpisodeConfig)
    encoder: Any = MISSING
    decoder: Any = MISSING
    strategy: Any = MISSING
    optimizer: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0  # seeds the weights, the training tasks and the fixed val/test tasks
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N
    threads: Optional[int] = None  # CPU threads for torch; null = torch's default
    resume: Optional[str] = None  # true: continue this run dir's last.pt; a path: that checkpoint or run dir
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)  # set by experiment presets
    logger: Any = field(default_factory=lambda: {"name": "tensorboard"})  # where metrics go besides metrics.jsonl (configs/logger/)


@dataclass
class EvalRunConfig:
    checkpoint: str = MISSING  # a checkpoint file (best.pt / last.pt) or a run dir (uses its best.pt)
    ensemble: Any = field(default_factory=list)  # more checkpoints or run dirs ([B,C], or one path), scored with it: the mean of their class probabilities
    episode: Optional[EpisodeConfig] = None  # null: the checkpoint's own episode shape
    split: str = "test"  # test | val
    eval: EvalChoices = field(default_factory=EvalChoices)  # each key null: the checkpoint's own eval.* (EvalConfig)
    seed: Optional[int] = None  # null: the checkpoint's seed (the same tasks as its results.json)
    dataset_root: Optional[str] = None  # where the checkpoint's data set lives, when it was read from a folder (never taken from the file)
    device: str = "auto"
    threads: Optional[int] = None


@dataclass
class PredictConfig:
    checkpoint: str = MISSING  # a best.pt / last.pt, a run dir, or a file written by metalearn export
    ensemble: Any = field(default_factory=list)  # more of those ([B,C], or one path): the mean of their class probabilities
    support: str = MISSING  # a folder with one sub-folder of images per class (any K >= 1 each, >= 2 classes)
    query: str = MISSING  # a folder of images, or of class sub-folders named like the support's (then accuracy is reported)
    show: int = 20  # predictions printed on screen; all of them go to predictions.csv
    device: str = "auto"
    threads: Optional[int] = None


@dataclass
class ExportConfig:
    checkpoint: str = MISSING  # a best.pt / last.pt or a run dir
    out: str = MISSING  # where to write the meta-knowledge file (loadable with torch.load(weights_only=True))


def is_episodic(pretrain: Any) -> bool:
    """Whether a ``pretrain`` node (typed or composed) is ``pretrain=episodic``'s stage."""
    return getattr(pretrain.kind, "value", str(pretrain.kind)) == PretrainKind.episodic.value


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A plain config as ``{dotted.key: value}`` (for config diffs, labels and key hints)."""
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    return {k: v for key, value in tree.items() for k, v in flatten(value, f"{prefix}{key}.").items()}


SCHEMAS = {"train_schema": TrainConfig, "eval_schema": EvalRunConfig, "predict_schema": PredictConfig,
           "export_schema": ExportConfig}
