"""The training loop shared by every strategy: ``train(cfg, run_dir)``.

Owns: set-up and resume of a run, the meta-iteration (sample -> ``strategy.meta_loss`` ->
:func:`~metalearn_cli.optim.meta_step` -> the NaN policy), metric records, validation and
``best.pt``, ``last.pt`` and signals, and the final test of ``best.pt``. Hydra-free: it takes a
composed config and a run directory, so tests call it directly. Per-step work stays on the device:
metrics are accumulated as tensors and read back every ``trainer.log_every`` meta-iterations.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import OmegaConf
from tqdm.contrib.logging import logging_redirect_tqdm

from metalearn_cli.assemble import (
    build_strategy, first_non_finite, freeze_encoder, initialise_from, load_weights, resolve_bn_mode, resolve_precision, seed_everything,
    select_kernels, setup_device, startup_line, validate,
)
from metalearn_cli.augment import augment_images, augmentation
from metalearn_cli.checkpoint import capture_rng, load_checkpoint, load_states, restore_rng, save_checkpoint
from metalearn_cli.data import DATASETS
from metalearn_cli.distributed import average_metrics, world
from metalearn_cli.episodes import EpisodeBatch, EpisodeSampler, LakeRuns, TaskShapes, check_fits, resident, split_seed
from metalearn_cli.errors import ConfigError, Diverged, Interrupted
from metalearn_cli.evaluation import evaluate_tasks, is_lake, score_checkpoint, summarize
from metalearn_cli.cost import check_memory
from metalearn_cli.metrics import MetricsLog, MetricWindow, step_record
from metalearn_cli.progress import Progress
from metalearn_cli.pretrain import Pretraining, pretrained_checkpoint, resolve_budget
from metalearn_cli.optim import OPTIMIZERS, ClipParams, StepResult, build_schedule, meta_step
from metalearn_cli.files import remove_stale_temporaries
from metalearn_cli.finetune import Finetuner
from metalearn_cli.resume import check_same_run, resume_checkpoint
from metalearn_cli.signals import stop_requests
from metalearn_cli.rundir import RESULTS, RunDir, exclusive, refuse_held, write_results, write_status
from metalearn_cli.strategies import StepOutput, Strategy, query_accuracy

log = logging.getLogger(__name__)

def train_step(strategy: Strategy, batch: EpisodeBatch, optimizer: torch.optim.Optimizer, clip: ClipParams,
               parameters: Optional[list[torch.nn.Parameter]] = None) -> tuple[StepOutput, StepResult]:
    """One meta-iteration on ``batch``: the strategy's meta-loss, then :func:`meta_step` (under the
    strategy's backward context). Used by the loop, the benchmarks and the tests alike."""
    with strategy.backward_context():
        out = strategy.meta_loss(batch)
        result = meta_step(out.loss, parameters if parameters is not None else list(strategy.parameters()),
                           optimizer, clip)
    if result.nonfinite is None:
        strategy.step_done()
    return out, result


class TrainingRun:
    """One run: built by ``__init__`` (nothing written yet), executed by :meth:`run`."""

    def __init__(self, cfg: Any, run_dir: Path) -> None:
        self.wall_start = time.perf_counter()
        self.cfg, self.run_dir, self.t = cfg, Path(run_dir), cfg.trainer
        self.device = setup_device(cfg)
        self.ranks = world()
        if self.ranks.size > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", self.ranks.local_rank)
            torch.cuda.set_device(self.device)
        self.main = self.ranks.main  # only rank 0 validates, tests and writes the run dir
        self.shapes = TaskShapes.of(cfg)
        select_kernels(self.device, self.t.deterministic)
        validate(cfg)
        if self.ranks.size > 1 and cfg.pretrain.iterations > 0:
            raise ConfigError("the pre-training stage runs in one process; pre-train in a single-process run, then pass "
                              "trainer.init_from=RUN to this one")
        if self.t.meta_batch % self.ranks.size:
            raise ConfigError(f"trainer.meta_batch={self.t.meta_batch} does not split over {self.ranks.size} processes; "
                              f"use a multiple of {self.ranks.size}")
        self.resume = resume_checkpoint(cfg.resume, self.run_dir)
        self.files = RunDir(self.run_dir)
        if self.resume is None:
            refuse_held(self.run_dir)
        self._build()
        self.step, self.best_val, self.best_step, self.seconds_before = 0, -1.0, -1, 0.0
        self.saved_step: Optional[int] = None  # the step of the last.pt on disk
        self.window = MetricWindow()
        if self.resume is not None:
            self._restore(self.resume)
        self.val_bn_mode = resolve_bn_mode(cfg.eval.bn_mode, self.strategy)  # fail before anything is written

    def _build(self) -> None:
        cfg, s = self.cfg, self.shapes
        seed_everything(cfg.seed)
        self.data = data = DATASETS.build(cfg.dataset)
        resolve_budget(cfg, data)
        check_fits(data.train, "train", data.name, s.train_way, s.shot, s.train_query)
        check_fits(data.val, "val", data.name, s.way, s.shot, s.query)
        check_fits(data.test, "test", data.name, s.way, s.shot, s.query)
        if is_lake(cfg.episode):
            LakeRuns(data.test, s.way, cfg.seed)  # a data set without alphabets is refused now, not after training
        check_memory(cfg, data.image_shape, self.device)
        self.strategy = build_strategy(cfg, data.image_shape, self.device)
        if self.t.init_from and self.resume is None:
            initialise_from(self.strategy, self.t.init_from)
        if self.t.freeze_encoder:
            freeze_encoder(self.strategy, cfg)
        self.parameters = [p for p in self.strategy.parameters() if p.requires_grad]
        optimizer_params = OPTIMIZERS.params_of(cfg.optimizer)
        self.clip = optimizer_params.clip
        self.optimizer = OPTIMIZERS.build(cfg.optimizer, parameters=self.parameters)
        self.schedule = build_schedule(optimizer_params.schedule, self.optimizer, self.t.iterations)
        self.train_sampler = EpisodeSampler(resident(data.train, self.device), s.train_way, s.shot, s.train_query,
                                            split_seed(cfg.seed, "train"), self.device, within=self.t.within_alphabet)
        self.augment = augmentation(self.t.augment, DATASETS.params_of(cfg.dataset).meta_augment, data.image_shape)
        self.finetune = Finetuner.of(cfg.eval, DATASETS.params_of(cfg.dataset).meta_augment, data.image_shape, self.strategy)  # the final test's
        self.val_sampler = EpisodeSampler(resident(data.val, self.device), s.way, s.shot, s.query,
                                          split_seed(cfg.seed, "val"), self.device)
        # Mean brightness of the training images as the model sees them: predict warns when a user's
        # images look inverted against it (Omniglot files are dark on white, the model sees white strokes).
        self.pixel_mean = float(data.train.images.float().mean() / 255)
        self.config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        self.config["resume"] = None  # a saved config describes the run, not how it was started

    def _restore(self, path: Path) -> None:
        state = load_checkpoint(path)
        check_same_run(state["config"], self.config, path)
        load_weights(self.strategy, state["model"], path)
        load_states(path, state, {"optimizer": self.optimizer, "schedule": self.schedule}, "meta-network")
        self.train_sampler.set_state(state["sampler"])
        restore_rng(state["rng"])
        self.step, self.best_val, self.best_step = int(state["step"]), float(state["best_val"]), int(state["best_step"])
        self.saved_step = self.step
        if (self.run_dir / RESULTS).is_file() and self.t.iterations <= self.step:
            raise ConfigError(f"{self.run_dir} is completed ({self.step} meta-iterations, tested); to train it further "
                              f"pass trainer.iterations=N with N > {self.step} (a new learning-rate schedule over N: "
                              "not the same as a longer run from the start)")
        if self.t.iterations < self.step:
            raise ConfigError(f"trainer.iterations={self.t.iterations} is below the step of {path} ({self.step}); "
                              f"resume with trainer.iterations >= {self.step}")
        self.seconds_before = float(state.get("train_seconds", 0.0))
        self.window = MetricWindow.restore(state.get("window"))
        best = f"best val {self.best_val:.4f} at {self.best_step}" if self.best_step >= 0 else "not validated yet"
        log.info("resuming %s at meta-iteration %d (%s)", path, self.step, best)

    # ------------------------------------------------------------------ checkpoints
    def snapshot(self) -> dict[str, Any]:
        return {
            "config": self.config, "model": self.strategy.state_dict(), "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(), "step": self.step, "best_val": self.best_val,
            "best_step": self.best_step, "sampler": self.train_sampler.get_state(), "rng": capture_rng(),
            "window": self.window.state(), "train_seconds": self.train_seconds(), "pixel_mean": self.pixel_mean,
        }

    def kept(self) -> str:
        """Which checkpoint a stopped run leaves, in words."""
        if self.saved_step is None:
            return "no checkpoint was written yet"
        return f"the last good checkpoint {self.files.last} (meta-iteration {self.saved_step}) is kept"

    def check_finite(self) -> None:
        """No non-finite weight or buffer (e.g. batch-norm statistics) is ever saved or trained on."""
        name = first_non_finite(self.strategy.state_dict())
        if name is not None:
            raise Diverged(f"non-finite values in {name} after meta-iteration {self.step}; nothing non-finite "
                           f"was saved: {self.kept()}; lower optimizer.lr or set optimizer.clip.norm")

    def train_seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.session_start

    def save_last(self) -> None:
        if self.main:
            self.check_finite()
            save_checkpoint(self.files.last, self.snapshot())
            self.saved_step = self.step
            write_status(self.run_dir, "running", step=self.step, iterations=self.t.iterations)

    # ------------------------------------------------------------------ one meta-iteration
    def meta_iteration(self, nan_policy: str) -> None:
        batch = self.train_sampler.sample(self.t.meta_batch, part=(self.ranks.rank, self.ranks.size))
        if self.augment is not None:  # training tasks only: validation and test never see it
            batch = dataclasses.replace(batch, support_images=augment_images(self.augment, batch.support_images),
                                        query_images=augment_images(self.augment, batch.query_images))
        out, result = train_step(self.strategy, batch, self.optimizer, self.clip, self.parameters)
        if result.nonfinite is not None:  # checked on the host: the weights never saw it
            if nan_policy == "stop":
                raise Diverged(f"non-finite {result.nonfinite} at meta-iteration {self.step + 1}; {self.kept()}; "
                               "lower optimizer.lr, set optimizer.clip.norm, or pass trainer.nan_policy=skip")
            self.window.skipped += 1
        else:
            self.window.add(step_record(result.skipped, loss=out.loss,
                                        accuracy=query_accuracy(out.logits, batch.query_labels).mean(),
                                        grad_norm=result.grad_norm))
        self.schedule.step()
        self.step += 1
        self.window.steps += 1

    def record(self, nan_policy: str, metrics: Optional[MetricsLog], progress: Progress) -> None:
        """A metrics record: the window's means, and the non-finite steps flagged on the device."""
        first = self.step - self.window.steps + 1
        average_metrics(self.window.sums)  # ranks > 1: the whole meta-batch's means
        values = self.window.flush(self.t.meta_batch)  # the only host sync of a step
        if values["skipped"] and nan_policy == "stop":  # flagged on the device, never applied
            raise Diverged(
                f"non-finite loss or meta-gradient in {values['skipped']} of meta-iterations {first}-{self.step} "
                f"(skipped on the device, the weights never saw them); {self.kept()}; lower optimizer.lr, set "
                "optimizer.clip.norm, or pass trainer.nan_policy=skip"
            )
        self.check_finite()
        values["lr"] = self.optimizer.param_groups[0]["lr"]
        if metrics is not None:
            metrics.log(self.step, "train", values)
            if first == self.step_at_start + 1:
                progress.estimate(self.step, self.t.meta_batch, values["tasks_per_s"])
        progress.show(first, self.step, values)

    def validate_now(self, metrics: MetricsLog) -> None:
        self.check_finite()
        val = summarize(evaluate_tasks(self.strategy, self.val_sampler, self.t.val_episodes,
                                       self.cfg.eval.batch_tasks, self.val_bn_mode))
        metrics.log(self.step, "val", val)
        log.info("step %d: val accuracy %.4f ± %.4f", self.step, val["accuracy"], val["ci95"])
        if val["accuracy"] > self.best_val:
            self.best_val, self.best_step = val["accuracy"], self.step
            save_checkpoint(self.files.best, self.snapshot())

    def validate_start(self, metrics: MetricsLog) -> None:
        """Step 0 is a candidate too: when every step hurts, best.pt is the weights the run started from
        (pre-trained or initialised). Its own RNG state, so training draws exactly what it drew without it."""
        paused = time.perf_counter()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            self.validate_now(metrics)
        if self.t.iterations == 0:  # nothing to meta-train: the initial weights are the result
            self.save_last()
        self.window.started += time.perf_counter() - paused  # tasks/s counts meta-training only

    # ------------------------------------------------------------------ the run
    def run(self) -> float:
        """Meta-train, validate, test ``best.pt``; writes the run dir (holding its lock: one writer at
        a time); returns the best validation accuracy."""
        with exclusive(self.run_dir) if self.main else contextlib.nullcontext():  # rank 0 alone writes
            if self.main and self.resume is None:
                refuse_held(self.run_dir)  # written since __init__ looked
            return self._run()

    def _run(self) -> float:
        self.session_start, self.step_at_start = time.perf_counter(), self.step
        if self.main:
            log.info(startup_line("meta-training", self.device, self.t.precision, self.strategy, self.run_dir))
            remove_stale_temporaries(self.files.checkpoints)
            write_status(self.run_dir, "running", step=self.step, iterations=self.t.iterations)
        metrics = (MetricsLog(self.run_dir, self.step if self.resume is not None else None, self.cfg.logger, self.cfg)
                   if self.main else None)
        progress = Progress("meta-train", self.t.iterations, self.step, self.t.progress and self.main, log)
        try:
            with stop_requests() as stop, logging_redirect_tqdm():
                try:
                    self.pretrain(stop)
                    if self.main and self.step == 0 and self.best_step < 0:
                        self.validate_start(metrics)
                    self.strategy.train()
                    while self.step < self.t.iterations:
                        self._iterate(stop, metrics, progress)
                finally:
                    progress.close()
                train_seconds = self.train_seconds()
                stop["now"] = (f"during the final test; {self.files.last} holds the finished training; "
                               f"test it with: metalearn train resume={self.run_dir}")
                if self.main:
                    self.finish(train_seconds, metrics)
        except (Interrupted, KeyboardInterrupt) as exc:
            if self.main:
                write_status(self.run_dir, "interrupted", step=self.step, iterations=self.t.iterations)
            if isinstance(exc, KeyboardInterrupt):  # a second Ctrl-C: stopped at once, between two saves
                resume = f"; continue with: metalearn train resume={self.run_dir}" if self.saved_step is not None else ""
                raise Interrupted("SIGINT", f"SIGINT twice: stopped at once; {self.kept()}{resume}") from None
            raise
        finally:
            if metrics is not None:
                metrics.close()  # the logger learns how the run ended
        return self.best_val

    def pretrain(self, stop: dict[str, Optional[str]]) -> None:
        """The pre-training stage (``pretrain.iterations > 0``), before the first meta-iteration: runs,
        resumes or finds it done in ``<run>/pretrain``, then meta-training starts from its best.pt.
        A step-0 last.pt is written first, so ``resume=true`` continues an interrupted stage."""
        source = pretrained_checkpoint(self.cfg, self.run_dir)
        if source is None or self.step > 0 or not self.main:
            return
        self.save_last()
        Pretraining(self.cfg, self.run_dir, self.data, self.device).run(stop)
        initialise_from(self.strategy, str(source))
        self.save_last()

    def _iterate(self, stop: dict[str, Optional[str]], metrics: Optional[MetricsLog], progress: Progress) -> None:
        t, nan_policy = self.t, getattr(self.t.nan_policy, "value", str(self.t.nan_policy))
        self.meta_iteration(nan_policy)
        progress.update()
        last = self.step == t.iterations
        if self.step % t.log_every == 0 or last:
            self.record(nan_policy, metrics, progress)
        paused = time.perf_counter()
        if self.main and (self.step % t.val_every == 0 or last):
            self.validate_now(metrics)
        if self.step % t.checkpoint_every == 0 or last or stop["signal"]:
            self.save_last()
        self.window.started += time.perf_counter() - paused  # tasks/s counts meta-training only
        if stop["signal"]:
            raise Interrupted(stop["signal"], f"{stop['signal']} at meta-iteration {self.step}/{t.iterations}; saved "
                                              f"{self.files.last}; continue with: metalearn train resume={self.run_dir}")

    def finish(self, train_seconds: float, metrics: Optional[MetricsLog]) -> None:
        """Test what validation chose, read back from disk: ``metalearn eval`` on best.pt gives the same numbers."""
        s, t = self.shapes, self.t
        best = load_checkpoint(self.files.best)
        self.strategy.load_state_dict(best["model"])
        result = score_checkpoint(self.strategy, self.data, "test", (s.way, s.shot, s.query), self.cfg.eval,
                                  self.cfg.seed, self.device, self.run_dir, progress=t.progress and sys.stderr.isatty(),
                                  lake=is_lake(self.cfg.episode), finetune=self.finetune)
        result.update({
            "checkpoint": "checkpoints/best.pt", "best_step": self.best_step, "val_accuracy": self.best_val,
            "iterations": t.iterations, "meta_batch": t.meta_batch, "train_way": s.train_way,
            "train_query": s.train_query, "train_seconds": round(train_seconds, 2),
            "train_tasks_per_s": round(t.iterations * t.meta_batch / max(train_seconds, 1e-9), 2),
            "wall_seconds": round(time.perf_counter() - self.wall_start, 2), "device": str(self.device),
            "precision": resolve_precision(t.precision, self.device, self.strategy), "torch": torch.__version__,
            "dataset": self.data.name, "strategy": self.cfg.strategy.name,
            "published_accuracy": self.cfg.reference.accuracy, "published_source": self.cfg.reference.source,
        })
        write_results(self.run_dir, result)
        if metrics is not None:
            metrics.summary(self.step, "test", {k: result[k] for k in ("accuracy", "ci95")})
        write_status(self.run_dir, "completed", step=self.step, iterations=t.iterations, accuracy=result["accuracy"])
        log.info("test accuracy %.2f%% ± %.2f%% over %d %d-way %d-shot tasks (best val %.2f%% at step %d); %s",
                 100 * result["accuracy"], 100 * result["ci95"], result["episodes"], s.way, s.shot,
                 100 * self.best_val, self.best_step, self.run_dir)


def train(cfg: Any, run_dir: Path) -> float:
    """Meta-train, validate, test ``best.pt``; writes the run dir; returns the best validation accuracy."""
    return TrainingRun(cfg, run_dir).run()
