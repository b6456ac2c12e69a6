"""A ``metalearn train`` run: ``train(cfg, run_dir)``.

Owns: a run's set-up (device, processes, validation of the config, the data, the meta-network and
where its weights start), its stages in order (the pre-training stage when ``pretrain.iterations >
0``, then meta-training; each a :class:`~metalearn_cli.stage.Stage` run by the one loop), one lock on
the run directory and one stop handler over all stages. Hydra-free: it takes a composed config and a
run directory, so tests call it directly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import OmegaConf
from tqdm.contrib.logging import logging_redirect_tqdm

from metalearn_cli.assemble import build_strategy, freeze_encoder, initialise_from, resolve_bn_mode, seed_everything, select_kernels, setup_device
from metalearn_cli.config_checks import validate
from metalearn_cli.augment import SupportCopies, augmentation
from metalearn_cli.cost import check_memory
from metalearn_cli.data import DATASETS, SPLITS
from metalearn_cli.distributed import World, leave, together, world
from metalearn_cli.console import shell_override
from metalearn_cli.episodes import EpisodeSampler, TaskShapes, check_fits, is_lake, resident, split_seed, validation_sampler
from metalearn_cli.lake_original import original_runs
from metalearn_cli.lake_runs import LakeRuns
from metalearn_cli.errors import ConfigError, DataError, Interrupted
from metalearn_cli.evaluation import score_checkpoint
from metalearn_cli.eval_inputs import check_test_options, say_seen_classes
from metalearn_cli.finetune import Finetuner
from metalearn_cli.loggers import absolute_uri, check_resumable
from metalearn_cli.loop import TrainingRun
from metalearn_cli.stage import RunClock, Stage
from metalearn_cli.objectives import EpisodicObjective
from metalearn_cli.pretrain import check_stage_fits, pretrain_stage, pretrained_checkpoint, resolve_budget, stage_summary
from metalearn_cli.resume import SAVED_ABSOLUTE, resume_checkpoint, resume_value
from metalearn_cli.rundir import exclusive, refuse_held, write_status
from metalearn_cli.run_records import recorded_choices
from metalearn_cli.signals import second_request, stop_requests

log = logging.getLogger(__name__)


class Training:
    """One run: built by ``__init__`` (every check, nothing written yet), executed by :meth:`run`."""

    def __init__(self, cfg: Any, run_dir: Path) -> None:
        self.clock = RunClock()  # wall_seconds: this process's time and, resumed, the earlier processes'
        self.cfg, self.run_dir, self.t = cfg, Path(run_dir), cfg.trainer
        self.device = setup_device(cfg)
        self.ranks = world()
        if self.ranks.size > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", self.ranks.local_rank)
            torch.cuda.set_device(self.device)
        self.main = self.ranks.main  # only rank 0 validates, tests and writes the run dir
        self.shapes = TaskShapes.of(cfg)
        select_kernels(self.device, self.t.deterministic)
        self.typed = validate(cfg)  # TrainConfig: what crosses into the loop is typed
        if self.ranks.size > 1 and cfg.pretrain.iterations > 0:
            raise ConfigError("the pre-training stage runs in one process; pre-train in a single-process run, then pass "
                              "trainer.init_from=RUN to this one")
        if self.t.meta_batch % self.ranks.size:
            counts = [n for n in range(2, self.t.meta_batch + 1) if self.t.meta_batch % n == 0][-3:]
            torchrun = f"torchrun --nproc-per-node={' or '.join(map(str, counts))}, or " if counts else ""
            fix = (f"a resume keeps the run's meta-batch, so resume with a process count that divides it "
                   f"({torchrun}one process: metalearn train without torchrun)" if resume_value(cfg.resume) is not None
                   else f"use a multiple of {self.ranks.size}")
            raise ConfigError(f"trainer.meta_batch={self.t.meta_batch} does not split over {self.ranks.size} processes; {fix}")
        self.resume = resume_checkpoint(cfg.resume, self.run_dir)
        if self.resume is None:
            refuse_held(self.run_dir)
        else:
            check_resumable(cfg.logger, self.run_dir)
        together()  # every rank has looked at the run dir before rank 0 writes in it
        for part, key in (dotted.split(".") for dotted in SAVED_ABSOLUTE):  # saved absolute (a resume's new root
            if cfg[part].get(key):  # too): resume and eval work from any folder
                cfg[part][key] = os.path.abspath(os.path.expanduser(str(cfg[part][key])))
        if cfg.logger.get("tracking_uri"):  # an MLflow store in a folder, likewise
            cfg.logger.tracking_uri = absolute_uri(str(cfg.logger.tracking_uri))
        self._build()
        self.meta = TrainingRun(self.meta_stage(), self.device, self.ranks, self.resume)

    def _build(self) -> None:
        cfg, s = self.cfg, self.shapes
        seed_everything(cfg.seed)
        self.data = data = self._data()
        if self.resume is None and "classes" in cfg.dataset and not cfg.dataset.classes:  # a folder's split, kept for eval and resume
            cfg.dataset.classes = {s: list(getattr(data, s).class_names) for s in SPLITS}
        resolve_budget(cfg, data)
        if self.t.same_drawers and data.name != "omniglot":  # positions are drawers only where files are in drawer order
            log.warning("trainer.same_drawers=true on dataset %s: only Omniglot keeps each class's images in drawer "
                        "order, so here it only ties every class of a task to the same image positions", data.name)
        if is_lake(cfg.episode):  # a data set without alphabets is refused now, not after training, and before its sizes
            LakeRuns(data.test, s.way, cfg.seed)
        self.original = original_runs(cfg.eval, cfg.dataset, data.test, s.way, is_lake(cfg.episode))  # read before training
        # the test's shape first: episode.way too large for any split is named as episode.way, not as trainer.train_way
        check_fits(data.test, "test", data.name, s.way, s.shot, s.query)
        check_fits(data.val, "val", data.name, s.val_way, s.shot, s.query)
        check_fits(data.train, "train", data.name, s.train_way, s.shot, s.train_query)
        check_stage_fits(cfg, data)
        check_memory(cfg, data.image_shape, self.device)
        self.strategy = build_strategy(cfg, data.image_shape, self.device)
        check_test_options([cfg.eval], [data], self.strategy)  # the final test's, as eval checks them, before anything is written
        if self.main:  # the final test's eval.finetune_lr_search on seen classes: said before training, as eval says it
            say_seen_classes("test", cfg.dataset, cfg.eval)
        if self.t.init_from and self.resume is None:
            initialise_from(self.strategy, self.t.init_from)
        if self.t.freeze_encoder:
            freeze_encoder(self.strategy, cfg)
        self.config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        self.config["resume"] = None  # a saved config describes the run, not how it was started

    def _data(self) -> Any:
        """The run's data set; a resume whose recorded folder is gone says how to point it at the new place."""
        try:
            return DATASETS.build(self.cfg.dataset)
        except DataError as exc:
            if self.resume is None or not self.cfg.dataset.get("root"):
                raise
            raise DataError(f"{exc} (moved since the run started? resume with "
                            f"{shell_override('resume', self.run_dir)} dataset.root=NEW_FOLDER)") from None

    def meta_stage(self) -> Stage:
        cfg, s, data = self.cfg, self.shapes, self.data
        train_sampler = EpisodeSampler(resident(data.train, self.device), s.train_way, s.shot, s.train_query,
                                       split_seed(cfg.seed, "train"), self.device, within=self.t.within_alphabet,
                                       same_drawers=self.t.same_drawers)
        meta_augment = DATASETS.params_of(cfg.dataset).meta_augment
        objective = EpisodicObjective(self.strategy, train_sampler, self.t.meta_batch, (self.ranks.rank, self.ranks.size),
                                      augmentation(self.t.augment, meta_augment, data.image_shape))
        finetune = Finetuner.of(cfg.eval, meta_augment, data.image_shape, self.strategy)  # the final test's
        support = SupportCopies.of(cfg.eval, DATASETS.params_of(cfg.dataset).augment, data.image_shape)
        val_sampler = validation_sampler(data.val, cfg.episode, cfg.seed, self.device, s.val_way)

        def test() -> dict[str, Any]:
            return score_checkpoint(self.strategy, data, "test", (s.way, s.shot, s.query), cfg.eval, cfg.seed, self.device,
                                    self.run_dir, progress=self.t.progress,
                                    lake=is_lake(cfg.episode), finetune=finetune, support=support, original=self.original)

        def extras() -> dict[str, Any]:
            return {"meta_batch": self.t.meta_batch, "train_way": s.train_way, "train_query": s.train_query,
                    "device": str(self.device), "processes": self.ranks.size,  # torchrun's process count (1 alone)
                    **({"init_from": str(Path(cfg.trainer.init_from).expanduser().resolve())} if cfg.trainer.init_from else {}),
                    "precision": self.strategy.model.precision,
                    "torch": torch.__version__, "dataset": data.name, "strategy": cfg.strategy.name,
                    "encoder": cfg.encoder.name, "decoder": cfg.decoder.name, "published_accuracy": cfg.reference.accuracy, "published_source": cfg.reference.source,
                    "published_of": cfg.reference.of, **stage_summary(cfg, self.run_dir),
                    **({"choices": picked} if (picked := recorded_choices(self.run_dir)) else {})}  # omniglot_fast, conv4_fast

        return Stage(name="meta-training", step_name="meta-iteration", run_dir=self.run_dir,
                     objective=objective, trainer=self.typed.trainer, evaluation=self.typed.eval, logger=cfg.logger,
                     config=self.config, optimizer=cfg.optimizer, optimizer_key="optimizer",
                     iterations=self.t.iterations, iterations_key="trainer.iterations", log_every=self.t.log_every, val_every=self.t.val_every,
                     checkpoint_every=self.t.checkpoint_every, val_sampler=val_sampler, val_episodes=self.t.val_episodes,
                     val_bn_mode=resolve_bn_mode(cfg.eval.bn_mode, self.strategy),  # fails before anything is written
                     test=test, extras=extras, resume_hint=self.run_dir,
                     pixel_mean=data.pixel_mean, clock=self.clock, earlier_stage=cfg.pretrain.iterations > 0,
                     ema=self.t.ema)

    # ------------------------------------------------------------------ the run
    def run(self) -> float:
        """Every stage, then the final test of ``best.pt``; writes the run dir (holding its lock: one
        writer at a time); returns the best validation accuracy."""
        with exclusive(self.run_dir) if self.main else contextlib.nullcontext():  # rank 0 alone writes
            if self.main and self.resume is None:
                refuse_held(self.run_dir)  # written since __init__ looked
            with stop_requests() as stop, logging_redirect_tqdm():
                try:
                    self.pretrain(stop)
                except (Interrupted, KeyboardInterrupt) as exc:
                    write_status(self.run_dir, "interrupted", step=0, iterations=self.t.iterations,
                                 processes=self.ranks.size, wall_seconds=round(self.clock.seconds(), 2))
                    if isinstance(exc, KeyboardInterrupt):  # a second Ctrl-C between the stage's saves
                        name, both = second_request(stop)
                        raise Interrupted(name, f"{both}: stopped at once during pre-training; continue "
                                                f"with: metalearn train {shell_override('resume', self.run_dir)}") from None
                    raise
                return self.meta.run(stop)

    def pretrain(self, stop: dict[str, Optional[str]]) -> None:
        """The pre-training stage, before the first meta-iteration: runs, resumes or finds it done in
        ``<run>/pretrain``, then meta-training starts from its best.pt. A step-0 last.pt is written
        first, so ``resume=true`` continues an interrupted stage."""
        source = pretrained_checkpoint(self.cfg, self.run_dir)
        if source is None or self.meta.step > 0 or not self.main:
            return
        self.meta.save_last()
        stage, resume = pretrain_stage(self.cfg, self.run_dir, self.data, self.device, self.original)
        if stage is not None:
            TrainingRun(dataclasses.replace(stage, clock=self.clock), self.device, World(), resume).run(stop)
        initialise_from(self.strategy, str(source))
        self.meta.save_last()


def train(cfg: Any, run_dir: Path) -> float:
    """Pre-train (when asked), meta-train, validate, test ``best.pt``; writes the run dir; returns the
    best validation accuracy."""
    finished = False
    try:
        best = Training(cfg, run_dir).run()
        finished = True
        return best
    finally:
        leave(finished)
