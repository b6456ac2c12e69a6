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
interrupted stage resumes. Meta-training then starts from its ``best.pt`` (see ``loop``).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from tqdm import tqdm

from metalearn_cli.assemble import build_strategy, first_non_finite
from metalearn_cli.augment import augmentation
from metalearn_cli.checkpoint import capture_rng, load_checkpoint, load_states, restore_rng, save_checkpoint
from metalearn_cli.data import DATASETS, FewShotData
from metalearn_cli.episodes import EpisodeSampler, resident, split_seed
from metalearn_cli.errors import Diverged, Interrupted
from metalearn_cli.evaluation import evaluate_tasks, score_checkpoint, summarize
from metalearn_cli.metrics import MetricsLog
from metalearn_cli.optim import OPTIMIZERS, build_schedule, meta_step
from metalearn_cli.rundir import RESULTS, RunDir, write_results, write_status
from metalearn_cli.strategies import STRATEGIES, Strategy

log = logging.getLogger(__name__)

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


class Pretraining:
    """One pre-training stage in ``<run>/pretrain``; :meth:`run` returns its ``best.pt``."""

    def __init__(self, cfg: Any, run_dir: Path, data: FewShotData, device: torch.device) -> None:
        self.p, self.dir, self.device, self.data = cfg.pretrain, stage_dir(run_dir), device, data
        self.config = protonet_config(cfg)
        self.cfg = OmegaConf.create(self.config)
        self.strategy: Strategy = build_strategy(self.cfg, data.image_shape, device)
        self.images = resident(data.train, device).images  # [classes, per class, C, H, W] uint8
        classes, per_class = self.images.shape[:2]
        self.head = nn.Linear(self.strategy.model.encoder.out_dim, classes).to(device)
        self.parameters = [p for p in [*self.strategy.parameters(), *self.head.parameters()] if p.requires_grad]
        # The optimizer group's registry, schedule and clipping, and the update through meta_step: one
        # definition of each for both stages.
        optimizer = OPTIMIZERS.params_of(self.p.optimizer)
        self.optimizer = OPTIMIZERS.build(self.p.optimizer, parameters=self.parameters)
        self.schedule = build_schedule(optimizer.schedule, self.optimizer, self.p.iterations)
        self.clip, self.nan_policy = optimizer.clip, getattr(cfg.trainer.nan_policy, "value", str(cfg.trainer.nan_policy))
        self.augment = augmentation(self.p.augment, DATASETS.params_of(cfg.dataset).augment, data.image_shape)
        self.generator = torch.Generator().manual_seed(split_seed(cfg.seed, "pretrain"))
        self.val_sampler = EpisodeSampler(resident(data.val, device), cfg.episode.way, cfg.episode.shot, cfg.episode.query,
                                          split_seed(cfg.seed, "val"), device)
        self.seed, self.eval_cfg, self.progress = cfg.seed, cfg.eval, cfg.trainer.progress
        self.step, self.best_val, self.best_step = 0, -1.0, -1
        self.pixel_mean = float(data.train.images.float().mean() / 255)

    # ------------------------------------------------------------------ state
    def snapshot(self) -> dict[str, Any]:
        return {"config": self.config, "model": self.strategy.state_dict(), "head": self.head.state_dict(),
                "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(), "step": self.step,
                "best_val": self.best_val, "best_step": self.best_step, "generator": self.generator.get_state(),
                "rng": capture_rng(), "pixel_mean": self.pixel_mean}

    def restore(self, path: Path) -> None:
        state = load_checkpoint(path)
        load_states(path, state, {"model": self.strategy, "head": self.head, "optimizer": self.optimizer,
                                  "schedule": self.schedule}, "pre-training")
        self.generator.set_state(state["generator"])
        restore_rng(state["rng"])
        self.step, self.best_val, self.best_step = int(state["step"]), float(state["best_val"]), int(state["best_step"])
        log.info("resuming pre-training at step %d of %d", self.step, self.p.iterations)

    # ------------------------------------------------------------------ one step
    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        classes, per_class = self.images.shape[:2]
        index = torch.randint(classes * per_class, (self.p.batch_size,), generator=self.generator)
        labels = index.div(per_class, rounding_mode="floor")
        index, labels = index.to(self.images.device), labels.to(self.device)
        images = self.images.flatten(0, 1)[index].to(self.device).float().div_(255.0)
        return (self.augment(images) if self.augment else images), labels

    def train_step(self) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """One supervised step; None when ``trainer.nan_policy=skip`` dropped a non-finite one."""
        images, labels = self.batch()
        logits = self.head(self.strategy.model.embed(images))
        loss = F.cross_entropy(logits, labels, label_smoothing=self.p.label_smoothing)
        result = meta_step(loss, self.parameters, self.optimizer, self.clip)
        self.schedule.step()
        self.step += 1
        if result.nonfinite is not None:  # checked on the host; fused CUDA kernels skip on the device (NaN in the window)
            if self.nan_policy == "stop":
                raise Diverged(f"pre-training: non-finite {result.nonfinite} at step {self.step}; "
                               "lower pretrain.optimizer.lr, set pretrain.optimizer.clip.norm, or pass trainer.nan_policy=skip")
            return None
        return loss.detach(), (logits.argmax(-1) == labels).float().mean()

    def check_finite(self) -> None:
        bad = first_non_finite(self.strategy.state_dict())
        if bad is not None:
            raise Diverged(f"pre-training: non-finite values in {bad} at step {self.step}; lower pretrain.optimizer.lr or set pretrain.optimizer.clip.norm")

    def validate(self, metrics: MetricsLog) -> None:
        self.check_finite()
        val = summarize(evaluate_tasks(self.strategy, self.val_sampler, self.p.val_episodes, self.eval_cfg.batch_tasks, "running"))
        self.strategy.train()
        metrics.log(self.step, "val", val)
        log.info("pre-training step %d: val nearest-centroid accuracy %.4f ± %.4f", self.step, val["accuracy"], val["ci95"])
        if val["accuracy"] > self.best_val:
            self.best_val, self.best_step = val["accuracy"], self.step
            save_checkpoint(RunDir(self.dir).best, self.snapshot())
        self.save_last()

    def save_last(self) -> None:
        self.check_finite()
        save_checkpoint(RunDir(self.dir).last, self.snapshot())
        write_status(self.dir, "running", step=self.step, iterations=self.p.iterations)

    # ------------------------------------------------------------------ the stage
    def run(self, stop: dict[str, Any]) -> Path:
        """Train (or resume, or skip when done) and test; ``stop["signal"]`` ends it at the next validation."""
        best = RunDir(self.dir).best
        if (self.dir / RESULTS).is_file() and best.is_file():
            return best
        if (RunDir(self.dir).last).is_file():
            self.restore(RunDir(self.dir).last)
        self.dir.mkdir(parents=True, exist_ok=True)
        metrics = MetricsLog(self.dir, self.step if self.step else None, self.cfg.logger, self.cfg)
        start, window = time.perf_counter(), []
        bar = tqdm(total=self.p.iterations, initial=self.step, unit="it", dynamic_ncols=True, desc="pre-train",
                   disable=not (self.progress and sys.stderr.isatty()))
        try:
            self.strategy.train()
            while self.step < self.p.iterations:
                done = self.train_step()
                if done is not None:
                    window.append(done)
                bar.update(1)
                last = self.step == self.p.iterations
                if (self.step % 50 == 0 or last) and window:
                    loss, acc = (torch.stack(v).mean().item() for v in zip(*window))
                    window.clear()
                    if not math.isfinite(loss):
                        raise Diverged(f"pre-training: non-finite loss at step {self.step}; lower pretrain.optimizer.lr or set pretrain.optimizer.clip.norm")
                    metrics.log(self.step, "pretrain", {"loss": loss, "accuracy": acc, "lr": self.optimizer.param_groups[0]["lr"]})
                if self.step % self.p.val_every == 0 or last:
                    self.validate(metrics)
                if stop.get("signal") and not last:  # obeyed within one step: saved, not validated
                    self.save_last()
                    write_status(self.dir, "interrupted", step=self.step, iterations=self.p.iterations)
                    raise Interrupted(stop["signal"], f"{stop['signal']} during pre-training at step {self.step}/"
                                      f"{self.p.iterations}; saved {RunDir(self.dir).last}; continue with: "
                                      f"metalearn train resume={self.dir.parent}")
        finally:
            bar.close()
            metrics.close()
        self.finish(time.perf_counter() - start)
        return best

    def finish(self, seconds: float) -> None:
        """Nearest-centroid test accuracy of ``best.pt``, as ``metalearn eval RUN/pretrain`` gives it."""
        self.strategy.load_state_dict(load_checkpoint(RunDir(self.dir).best)["model"])
        e = self.cfg.episode
        result = score_checkpoint(self.strategy, self.data, "test", (e.way, e.shot, e.query), self.cfg.eval, self.seed,
                                  self.device)
        result.update({"checkpoint": "checkpoints/best.pt", "best_step": self.best_step, "val_accuracy": self.best_val,
                       "iterations": self.p.iterations, "train_seconds": round(seconds, 2), "dataset": self.data.name,
                       "strategy": "pretrain", "stage": "supervised pre-training, nearest-centroid evaluation"})
        write_results(self.dir, result)
        write_status(self.dir, "completed", step=self.step, iterations=self.p.iterations, accuracy=result["accuracy"])
        log.info("pre-training done: nearest-centroid test accuracy %.2f%% ± %.2f%% (best val at step %d)",
                 100 * result["accuracy"], 100 * result["ci95"], self.best_step)
