"""The pre-training stage: plain supervised classification over every training class, before
meta-training (Tian et al. 2020, RFS; Chen et al. 2021, Meta-Baseline; the features LEO and CNAPs
started from).

Owns: ``<run>/pretrain/``, a run directory of its own (config, metrics.jsonl, TensorBoard,
``checkpoints/last.pt`` and ``best.pt``, ``results.json``). The encoder is trained with a linear
head over all training classes (Omniglot's Vinyals split: 4,112 classes with rotations) on
augmented mini-batches drawn from the resident images; the best checkpoint is chosen by *episodic*
validation (nearest-centroid accuracy on the same fixed validation tasks every method uses), and the
stage's ``results.json`` is that encoder's nearest-centroid test accuracy. The stage checkpoint is a
ProtoNet checkpoint (``metalearn eval RUN/pretrain`` works on it) that also carries the head, so an
interrupted stage resumes. The stage runs in the one loop (:mod:`metalearn_cli.loop`) with a
:class:`~metalearn_cli.objectives.SupervisedObjective`; meta-training then starts from its ``best.pt``
(see :mod:`metalearn_cli.training`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import OmegaConf

from metalearn_cli.assemble import build_strategy, validate_train_config
from metalearn_cli.augment import augmentation
from metalearn_cli.data import DATASETS, FewShotData
from metalearn_cli.episodes import TaskShapes, resident, split_seed, validation_sampler
from metalearn_cli.evaluation import score_checkpoint
from metalearn_cli.loop import Stage
from metalearn_cli.objectives import SupervisedObjective
from metalearn_cli.rundir import RunDir
from metalearn_cli.strategies import STRATEGIES

STAGE = "pretrain"  # the stage's sub-directory of a run


def stage_dir(run_dir: Path) -> Path:
    return Path(run_dir) / STAGE


def resolve_budget(cfg: Any, data: FewShotData) -> None:
    """``pretrain.epochs`` -> ``pretrain.iterations``, now that the training images are counted (the
    saved config holds both, so a resume and a report see the steps the stage took)."""
    p = cfg.pretrain
    if p.epochs is not None and p.iterations > 0:
        p.iterations = math.ceil(p.epochs * data.train.n_classes * data.train.n_per_class / p.batch_size)


def pretrained_checkpoint(cfg: Any, run_dir: Path) -> Optional[Path]:
    """The checkpoint meta-training starts from when the run has a pre-training stage."""
    return RunDir(stage_dir(run_dir)).best if cfg.pretrain.iterations > 0 else None


def protonet_config(cfg: Any) -> dict[str, Any]:
    """The stage's own config: the run's data, episode and encoder under a prototype decoder and mgd."""
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    config["decoder"] = {"name": "prototype"}
    config["strategy"] = OmegaConf.to_container(OmegaConf.structured(STRATEGIES.params_of({"name": "mgd"})), enum_to_str=True)
    config["trainer"] = {**config["trainer"], "init_from": None, "freeze_encoder": False, "iterations": cfg.pretrain.iterations}
    config["resume"] = None
    return config


def pretrain_stage(cfg: Any, run_dir: Path, data: FewShotData, device: torch.device) -> tuple[Optional[Stage], Optional[Path]]:
    """The stage of ``<run>/pretrain`` and the checkpoint it resumes from; ``(None, None)`` once it is
    done (tested). Built in the order the weights were always drawn: the encoder, then the head."""
    p, directory = cfg.pretrain, stage_dir(run_dir)
    files = RunDir(directory)
    if files.results.is_file() and files.best.is_file():
        return None, None
    config = protonet_config(cfg)
    stage_cfg = validate_train_config(config)
    typed = OmegaConf.to_object(stage_cfg)
    strategy = build_strategy(stage_cfg, data.image_shape, device)
    objective = SupervisedObjective(strategy, resident(data.train, device).images, p.batch_size, p.label_smoothing,
                                    augmentation(p.augment, DATASETS.params_of(cfg.dataset).augment, data.image_shape),
                                    split_seed(cfg.seed, "pretrain"))
    e = cfg.episode
    val_sampler = validation_sampler(data.val, e, cfg.seed, device, TaskShapes.of(cfg).val_way)

    def test() -> dict[str, Any]:  # nearest-centroid, as ``metalearn eval RUN/pretrain`` gives it
        return score_checkpoint(strategy, data, "test", (e.way, e.shot, e.query), cfg.eval, cfg.seed, device)

    def extras() -> dict[str, Any]:
        return {"dataset": data.name, "strategy": "pretrain", "stage": "supervised pre-training, nearest-centroid evaluation"}

    stage = Stage(name="pre-training", step_name="pre-training step", run_dir=directory,
                  objective=objective, trainer=typed.trainer, evaluation=typed.eval, logger=stage_cfg.logger,
                  config=config, optimizer=p.optimizer, optimizer_key="pretrain.optimizer",
                  iterations=p.iterations, iterations_key="pretrain.iterations", log_every=cfg.trainer.log_every, val_every=p.val_every,
                  checkpoint_every=p.val_every, val_sampler=val_sampler, val_episodes=p.val_episodes,
                  val_bn_mode="running", test=test, extras=extras, resume_hint=Path(run_dir),
                  pixel_mean=data.pixel_mean)
    return stage, (files.last if files.last.is_file() else None)
