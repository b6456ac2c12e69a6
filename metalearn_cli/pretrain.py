"""The pre-training stage, before meta-training: plain supervised classification over every
training class (``pretrain=supervised``: Tian et al. 2020, RFS; Chen et al. 2021, Meta-Baseline; the
features LEO and CNAPs started from), or ProtoNet meta-training on tasks of another shape than the
run's (``pretrain=episodic``: e.g. 60-way cross-alphabet tasks before within-alphabet ones).

Owns: ``<run>/pretrain/``, a run directory of its own (config, metrics.jsonl, TensorBoard,
``checkpoints/last.pt`` and ``best.pt``, ``results.json``). Supervised: the encoder is trained with a
linear head over all training classes (Omniglot's Vinyals split: 4,112 classes with rotations) on
augmented mini-batches drawn from the resident images. Episodic: prototypes and mgd on the stage's
own ``train_way`` / ``train_query`` / ``within_alphabet`` tasks. Either way the best checkpoint is
chosen by *episodic* validation (nearest-centroid accuracy on the run's fixed validation tasks), and
the stage's ``results.json`` is that encoder's nearest-centroid accuracy on the run's test. The stage
checkpoint is a ProtoNet checkpoint (``metalearn eval RUN/pretrain`` works on it; a supervised one also
carries the head), so an interrupted stage resumes. The stage runs in the one loop
(:mod:`metalearn_cli.loop`) with a :class:`~metalearn_cli.objectives.SupervisedObjective` or
:class:`~metalearn_cli.objectives.EpisodicObjective`; meta-training then starts from its ``best.pt``
(see :mod:`metalearn_cli.training`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import OmegaConf

from metalearn_cli.assemble import build_strategy, resolve_bn_mode, seed_everything
from metalearn_cli.config_checks import validate_train_config
from metalearn_cli.augment import augmentation
from metalearn_cli.bn_modes import available, resolve
from metalearn_cli.data import DATASETS, FewShotData
from metalearn_cli.episodes import EpisodeSampler, TaskShapes, alphabet_groups, is_lake, resident, split_seed, validation_sampler
from metalearn_cli.errors import ConfigError, DataError
from metalearn_cli.evaluation import score_checkpoint
from metalearn_cli.lake_original import OriginalRuns
from metalearn_cli.stage import Stage
from metalearn_cli.objectives import EpisodicObjective, SupervisedObjective
from metalearn_cli.files import read_json
from metalearn_cli.rundir import STAGE, RunDir
from metalearn_cli.schema import is_episodic
from metalearn_cli.strategies import STRATEGIES
from metalearn_cli.strategies.mgd import MGD

log = logging.getLogger(__name__)



def stage_dir(run_dir: Path) -> Path:
    return Path(run_dir) / STAGE


def resolve_budget(cfg: Any, data: FewShotData) -> None:
    """``pretrain.epochs`` -> ``pretrain.iterations``, now that the training images are counted (the
    saved config holds both, so a resume and a report see the steps the stage took); then
    ``pretrain.max_iterations``, which shortens a stage but never turns one on."""
    p = cfg.pretrain
    if counts_epochs(p):
        steps = math.ceil(p.epochs * data.train.n_classes * data.train.n_per_class / p.batch_size)
        if steps != p.iterations:  # said: the epochs decide, whatever iterations the config or command line held
            log.info("pre-training for pretrain.epochs=%g: %d steps of %d images (pretrain.iterations=%d only turns the "
                     "stage on; pretrain.epochs=null counts iterations instead)", p.epochs, steps, p.batch_size, p.iterations)
        p.iterations = steps
    if p.max_iterations is not None and p.iterations > p.max_iterations:  # said: the saved config holds the cap's count
        log.info("pretrain.max_iterations=%d caps the stage at %d of its %d steps (debug=smoke sets it; "
                 "pretrain.max_iterations=null lifts it)", p.max_iterations, p.max_iterations, p.iterations)
        p.iterations = p.max_iterations


def counts_epochs(p: Any) -> bool:
    """Whether ``pretrain.epochs`` decides the stage's length (a supervised stage that is on), not ``pretrain.iterations``."""
    return p.epochs is not None and p.iterations > 0 and not is_episodic(p)


def epochs_note(cfg: Any) -> Optional[str]:
    """In words, what a run changes of the ``pretrain.iterations`` that ``--cfg job`` prints where ``pretrain.epochs``
    counts the steps (pretrain=rfs): the printed number only turns the stage on; :func:`resolve_budget` counts them
    once the training images are read (a printed config reads no data). None where the printed number runs."""
    p = cfg.pretrain
    if not counts_epochs(p):
        return None
    cap = f", at most pretrain.max_iterations={p.max_iterations}" if p.max_iterations is not None else ""
    return (f"pretrain.iterations={p.iterations} only turns the stage on: pretrain.epochs={p.epochs:g} counts its steps, "
            f"ceil(epochs x training images / pretrain.batch_size={p.batch_size}){cap}, once the data set is read (the "
            "run's saved config holds that count)")


def check_stage_fits(cfg: Any, data: FewShotData) -> None:
    """A stage that cannot run is refused before anything is written: an ``eval.bn_mode`` its
    prototypes under mgd cannot be evaluated in (it validates and tests in that mode), or episodic
    tasks the training split cannot supply."""
    if cfg.pretrain.iterations == 0:
        return
    stage_modes = available(MGD.bn_auto, MGD.stored_statistics)
    try:
        resolve(cfg.eval.bn_mode, stage_modes)
    except ConfigError:
        raise ConfigError(f"eval.bn_mode={getattr(cfg.eval.bn_mode, 'value', cfg.eval.bn_mode)} is not possible in the "
                          f"pre-training stage (prototypes under mgd); use {' or '.join(stage_modes)} (or auto), or pre-train "
                          "in a run of its own and pass trainer.init_from=RUN") from None
    if not is_episodic(cfg.pretrain):
        return
    p, e, train = cfg.pretrain, cfg.episode, data.train
    way, query = p.train_way or e.way, p.train_query or e.query
    if not 2 <= way <= train.n_classes:
        raise DataError(f"pretrain=episodic: {way}-way tasks need 2 to {train.n_classes} classes (the train split of "
                        f"{data.name}); give pretrain.train_way in that range")
    if query < 1 or e.shot + query > train.n_per_class:
        raise DataError(f"pretrain=episodic: tasks of {e.shot} shot + {query} queries per class need that many of the "
                        f"{train.n_per_class} images per class of {data.name}'s train split; lower pretrain.train_query")
    if p.within_alphabet > 0 and not any(len(g) >= way for g in alphabet_groups(data.train)):
        raise ConfigError(f"pretrain.within_alphabet={p.within_alphabet} needs an alphabet of {way} characters in the training "
                          "split (classes named Alphabet/character); lower pretrain.train_way or set pretrain.within_alphabet=0")


def stage_summary(cfg: Any, run_dir: Path) -> dict[str, Any]:
    """What the run's results.json says of its pre-training stage (its own results.json holds the rest):
    the kind, its steps and time, its nearest-centroid test accuracy. Empty without a stage."""
    if cfg.pretrain.iterations <= 0:
        return {}
    done = read_json(RunDir(stage_dir(run_dir)).results)  # the stage's results.json alone, not its whole record
    return {"pretrain": {"kind": getattr(cfg.pretrain.kind, "value", str(cfg.pretrain.kind)),
                         **{k: done.get(k) for k in ("iterations", "train_seconds", "accuracy", "ci95", "best_step")}}}


def pretrained_checkpoint(cfg: Any, run_dir: Path) -> Optional[Path]:
    """The checkpoint meta-training starts from when the run has a pre-training stage."""
    return RunDir(stage_dir(run_dir)).best if cfg.pretrain.iterations > 0 else None


def protonet_config(cfg: Any) -> dict[str, Any]:
    """The stage's own config: the run's data, episode and encoder under a prototype decoder and mgd;
    an episodic stage's trainer trains on the stage's task shape (what ``metalearn train`` with those
    settings would run, so the stage is that run, in ``<run>/pretrain``)."""
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    config["decoder"] = {"name": "prototype"}
    config["strategy"] = OmegaConf.to_container(OmegaConf.structured(STRATEGIES.params_of({"name": "mgd"})), enum_to_str=True)
    trainer = {**config["trainer"], "init_from": None, "freeze_encoder": False, "iterations": cfg.pretrain.iterations}
    if is_episodic(cfg.pretrain):
        p = config["pretrain"]
        trainer.update({key: p[key] for key in ("train_way", "train_query", "within_alphabet", "augment", "val_every", "val_episodes")})
    config["trainer"], config["resume"] = trainer, None
    return config


def pretrain_stage(cfg: Any, run_dir: Path, data: FewShotData, device: torch.device,
                   original: Optional[OriginalRuns] = None) -> tuple[Optional[Stage], Optional[Path]]:
    """The stage of ``<run>/pretrain`` and the checkpoint it resumes from; ``(None, None)`` once it is
    done (tested). ``original``: Lake et al.'s runs the run tests on (``eval.lake_runs``), read once by the run."""
    files = RunDir(stage_dir(run_dir))
    if files.results.is_file() and files.best.is_file():
        return None, None
    build = _episodic if is_episodic(cfg.pretrain) else _supervised
    return build(cfg, Path(run_dir), data, device, original), (files.last if files.last.is_file() else None)


def _stage(cfg: Any, run_dir: Path, data: FewShotData, device: torch.device, strategy: Any,
           original: Optional[OriginalRuns], **settings: Any) -> Stage:
    """What both kinds of stage share: the run's fixed validation tasks, and the final test:
    nearest-centroid on the run's own test (Lake's runs when the run's are), as ``metalearn eval
    RUN/pretrain`` gives it."""
    e, p = cfg.episode, cfg.pretrain
    lake = is_lake(e)

    def test() -> dict[str, Any]:  # its test_outcomes.npz pairs it with the run's (metalearn compare RUN/pretrain RUN)
        return score_checkpoint(strategy, data, "test", (e.way, e.shot, e.query), cfg.eval, cfg.seed, device,
                                stage_dir(run_dir), progress=cfg.trainer.progress, lake=lake, original=original)

    return Stage(run_dir=stage_dir(run_dir), iterations=p.iterations, iterations_key="pretrain.iterations",
                 log_every=cfg.trainer.log_every, val_every=p.val_every, val_episodes=p.val_episodes,
                 val_sampler=validation_sampler(data.val, e, cfg.seed, device, TaskShapes.of(cfg).val_way),
                 logger=cfg.logger, test=test, resume_hint=run_dir, pixel_mean=data.pixel_mean, **settings)


def _supervised(cfg: Any, run_dir: Path, data: FewShotData, device: torch.device, original: Optional[OriginalRuns]) -> Stage:
    """Classification over every training class. Built in the order the weights were always drawn:
    the run's meta-network, then the stage's encoder, then the head."""
    p, config = cfg.pretrain, protonet_config(cfg)
    stage_cfg = validate_train_config(config)
    typed = OmegaConf.to_object(stage_cfg)
    strategy = build_strategy(stage_cfg, data.image_shape, device)
    objective = SupervisedObjective(strategy, resident(data.train, device).images, p.batch_size, p.label_smoothing,
                                    augmentation(p.augment, DATASETS.params_of(cfg.dataset).augment, data.image_shape),
                                    split_seed(cfg.seed, "pretrain"))

    def extras() -> dict[str, Any]:
        return {"dataset": data.name, "strategy": "pretrain", "stage": "supervised pre-training, nearest-centroid evaluation"}

    return _stage(cfg, run_dir, data, device, strategy, original, name="pre-training", step_name="pre-training step",
                  objective=objective, trainer=typed.trainer, evaluation=typed.eval,
                  config=config, optimizer=p.optimizer, optimizer_key="pretrain.optimizer", checkpoint_every=p.val_every,
                  val_bn_mode="running", extras=extras)


def _episodic(cfg: Any, run_dir: Path, data: FewShotData, device: torch.device, original: Optional[OriginalRuns]) -> Stage:
    """ProtoNet meta-training on the stage's tasks, under the run's optimizer. Its weights are drawn
    from the run's seed afresh and its tasks from the training stream, so the stage is exactly the
    run ``metalearn train decoder=prototype strategy=mgd`` with the stage's task shape would be."""
    config = protonet_config(cfg)
    stage_cfg = validate_train_config(config)
    typed = OmegaConf.to_object(stage_cfg)
    seed_everything(cfg.seed)
    strategy = build_strategy(stage_cfg, data.image_shape, device)
    s = TaskShapes.of(stage_cfg)
    sampler = EpisodeSampler(resident(data.train, device), s.train_way, s.shot, s.train_query, split_seed(cfg.seed, "train"),
                             device, within=cfg.pretrain.within_alphabet)
    objective = EpisodicObjective(strategy, sampler, cfg.trainer.meta_batch, (0, 1),
                                  augmentation(cfg.pretrain.augment, DATASETS.params_of(cfg.dataset).meta_augment, data.image_shape))

    def extras() -> dict[str, Any]:
        return {"dataset": data.name, "strategy": "pretrain", "train_way": s.train_way, "train_query": s.train_query,
                "stage": "episodic pre-training (prototypes, mgd), nearest-centroid evaluation"}

    return _stage(cfg, run_dir, data, device, strategy, original, name="episodic pre-training", step_name="pre-training iteration",
                  objective=objective, trainer=typed.trainer, evaluation=typed.eval, config=config, optimizer=cfg.optimizer,
                  optimizer_key="optimizer", checkpoint_every=cfg.trainer.checkpoint_every,
                  val_bn_mode=resolve_bn_mode(cfg.eval.bn_mode, strategy), extras=extras)
