"""Scoring a meta-network on fixed tasks: the one code path behind validation, a training run's
``results.json`` and ``metalearn eval``.

Owns: accuracy per task on the sampler's fixed tasks (one task at a time where batch statistics
must not mix tasks), the summary (mean and CI95 = 1.96 std / sqrt(n)), ``task_stats.csv`` and the
``eval`` command itself, which accepts a checkpoint, a run dir or an export.
"""

from __future__ import annotations

import contextlib
import dataclasses
import csv
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from omegaconf import OmegaConf

from metalearn_cli.assemble import load_strategy, resolve_bn_mode, setup_device, startup_line
from metalearn_cli.augment import SupportCopies, TtaViews
from metalearn_cli.config_checks import check_seed
from metalearn_cli.checkpoint import read_meta_knowledge
from metalearn_cli.data import DATASETS, FewShotData, split_ids
from metalearn_cli.confusions import OUTCOMES, collapsed, log_confused_pairs, write_outcomes
from metalearn_cli.episodes import EpisodeSampler, check_fits, is_lake, resident, split_seed
from metalearn_cli.lake_original import OriginalRuns, original_runs
from metalearn_cli.lake_runs import LakeRuns, accuracy_by_alphabet
from metalearn_cli.progress import TaskBar
from metalearn_cli.errors import ConfigError
from metalearn_cli.ensemble import Ensemble, LockstepTasks, ensemble_paths, load_ensemble
from metalearn_cli.eval_inputs import (
    check_ensemble_options, check_test_options, dataset_of, eval_settings, member_data, member_settings, published_runs_settings, reads_folder,
    say_seen_classes,
)
from metalearn_cli.finetune import Finetuner
from metalearn_cli.resume import run_dir_of, unfinished_note
from metalearn_cli.files import read_json
from metalearn_cli.rundir import RunDir, write_results, write_status
from metalearn_cli.strategies import Strategy, query_accuracy

log = logging.getLogger(__name__)


def evaluate_tasks(
    strategy: Strategy | Ensemble, sampler: EpisodeSampler, episodes: int, batch_tasks: int, bn_mode: str | list[str],
    stats: Optional[list[dict[str, float]]] = None, progress: bool = False, outcomes: Optional[list[torch.Tensor]] = None,
    finetune: Optional[Finetuner] = None, views: TtaViews | int = 0, support: Optional[SupportCopies] = None,
) -> torch.Tensor:
    """Per-task query accuracy ``[episodes]`` on the sampler's fixed tasks, of a strategy or an
    :class:`~metalearn_cli.ensemble.Ensemble` of them.

    With ``stats`` (a list), one row per task is appended: the norms the decoder reports for what
    it generated (prototypes, latent codes, weights, FiLM modulations) on that task. With
    ``outcomes`` (a list), each batch's predicted classes ``[tasks, queries]`` are appended, then its
    query labels (for ``metalearn compare``: paired tests, and how many predictions two runs differ in). With ``finetune``, each task is scored after its own
    test-time fine-tuning (one task at a time); with ``support``, on augmented copies of its support images (RFS).
    """
    if episodes < 1 or batch_tasks < 1:
        raise ConfigError("eval.episodes, eval.batch_tasks and trainer.val_episodes must be >= 1")
    accs = []
    scored = strategy if isinstance(strategy, Ensemble) else Ensemble([strategy])
    if finetune is not None and len(scored.members) > 1:
        raise ConfigError("eval.finetune_steps cannot be combined with an ensemble; drop one of the two")
    # Transductive statistics must come from one task at a time, never a mix of tasks.
    one_by_one = scored.mixes_tasks(scored.modes(bn_mode)) or finetune is not None
    bar = TaskBar("test", episodes, progress, log)
    with scored.statistics(bn_mode):
        for batch in sampler.fixed(episodes, batch_tasks):
            for part in batch.split_tasks() if one_by_one else [batch]:
                if support is not None:
                    images, labels = support(part.support_images, part.support_labels)
                    part = dataclasses.replace(part, support_images=images, support_labels=labels,
                                               k_shot=part.k_shot * support.copies)
                if finetune is not None:
                    out = finetune.predict(scored, part, views, with_stats=stats is not None)
                else:
                    out = scored.predict(part, views, with_stats=stats is not None)
                acc = query_accuracy(out.logits.detach(), part.query_labels)
                accs.append(acc)
                if outcomes is not None:
                    outcomes += [out.logits.detach().argmax(-1).cpu(), part.query_labels.cpu()]
                if stats is not None:
                    values = {k: v.detach().float().cpu() for k, v in out.stats.items()}
                    for t in range(acc.numel()):
                        stats.append({"episode": len(stats), "accuracy": acc[t].item(),
                                      **{k: v[t].item() for k, v in values.items()}})
            bar.update(batch.tasks)
    bar.close()
    return torch.cat(accs).cpu()


def record_outcomes(run_dir: Path, outcomes: list[torch.Tensor], data: FewShotData, split: str, shapes: tuple[int, int, int],
                    seed: int, lake: bool, original: Optional[OriginalRuns], summary: dict[str, float]) -> dict[str, Any]:
    """``test_outcomes.npz``, and results.json's ``confused_pairs`` and ``one_class_tasks`` from the same predictions."""
    write_outcomes(run_dir / OUTCOMES, outcomes)
    predicted = torch.cat(outcomes[0::2])
    replay = fixed_tasks(data, split, shapes, seed, torch.device("cpu"), lake, original)  # each task's classes, drawn again
    return {"confused_pairs": log_confused_pairs(replay, predicted.shape[0], predicted, outcomes[1][0],
                                                 data.split(split).class_names),
            **collapsed(predicted, outcomes[1][0], summary["accuracy"], summary["ci95"], shapes[0])}


def write_task_stats(path: Path, rows: list[dict[str, float]]) -> None:
    """``task_stats.csv``: one row per test task."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        fields = list(rows[0]) if rows else ["episode", "accuracy"]
        writer = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def summarize(accs: torch.Tensor) -> dict[str, float]:
    """Mean accuracy and its 95% confidence half-width, 1.96 * std / sqrt(n)."""
    n = accs.numel()
    std = accs.std(unbiased=True).item() if n > 1 else 0.0
    return {"accuracy": accs.mean().item(), "ci95": 1.96 * std / math.sqrt(n), "episodes": n}


def test_protocol(strategy: Strategy | Ensemble, each: list[Any]) -> tuple[list[str], list[TtaViews]]:
    """Each member's resolved batch-norm mode and test views, from its eval settings (one for a single network)."""
    modes = (strategy.resolve_modes([e.bn_mode for e in each] if len(each) > 1 else each[0].bn_mode)
             if isinstance(strategy, Ensemble) else [resolve_bn_mode(each[0].bn_mode, strategy)])
    return modes, [TtaViews.of(e) for e in each]


def score_checkpoint(
    strategy: Strategy | Ensemble, data: FewShotData, split: str, shapes: tuple[int, int, int], eval_cfg: Any,
    seed: int, device: torch.device, run_dir: Optional[Path] = None, progress: bool = False, lake: bool = False,
    finetune: Optional[Finetuner] = None, members: Optional[list[FewShotData]] = None, each: Optional[list[Any]] = None,
    support: Optional[SupportCopies] = None, original: Optional[OriginalRuns] = None,
    started: Optional[Callable[[], None]] = None,
) -> dict[str, Any]:
    """Accuracy on fixed tasks of ``split`` (``test`` or ``val``), as results.json reports it (``eval.save_task_stats``: also
    ``run_dir/task_stats.csv``); ``original``: Lake's published runs, not drawn ones. An ensemble's ``members``: its data per
    member (:func:`~metalearn_cli.eval_inputs.member_data`); ``each``: their eval settings; ``started``: once nothing is refused."""
    original = original if split == "test" else None  # the archive's runs are of the evaluation alphabets
    sampler = member_tasks(members or [data], split, shapes, seed, device, lake, original)
    episodes = len(original.names) if original is not None else eval_cfg.episodes
    modes, member_views = test_protocol(strategy, each or [eval_cfg])
    val_tasks = fixed_tasks(data, "val", shapes, seed, device, lake) if finetune and eval_cfg.finetune_lr_search else None
    (started or (lambda: None))()  # every refusal of the tasks and the protocol is made: the caller's start line
    views = member_views if len(set(member_views)) > 1 else member_views[0]
    stats: Optional[list[dict[str, float]]] = [] if eval_cfg.save_task_stats and run_dir is not None else None
    outcomes: Optional[list[torch.Tensor]] = [] if run_dir is not None else None
    with refining(strategy, each or [eval_cfg]):
        search = None if val_tasks is None else search_rate(strategy, finetune, val_tasks, eval_cfg, modes, views, split_seed(seed, "val"), device)
        start = time.perf_counter()
        drawn = finetune is not None or support is not None  # random augmentations: from the test's own seed
        with seeded(split_seed(seed, split), device) if drawn else contextlib.nullcontext():  # repeats exactly
            accs = evaluate_tasks(strategy, sampler, episodes, eval_cfg.batch_tasks, modes, stats, progress, outcomes,
                                  finetune, views, support)
        seconds = time.perf_counter() - start
    if stats is not None:
        write_task_stats(Path(run_dir) / "task_stats.csv", stats)
    summary = summarize(accs)
    confused = record_outcomes(Path(run_dir), outcomes, data, split, shapes, seed, lake, original, summary) if outcomes else {}
    return {
        **summary,
        **({"by_alphabet": accuracy_by_alphabet(data, split, shapes[0], seed, accs, original)} if lake else {}),
        **confused,
        "split": split, **dict(zip(("way", "shot", "query"), shapes)), "bn_mode": modes[0], "seed": seed,
        **split_ids(getattr(data, split)),
        **({"ensemble_bn_modes": modes} if len(modes) > 1 else {}),
        "protocol": ("lake_original" if original is not None else "lake") if lake else "random",
        **({"lake_runs": original.record()} if original is not None else {}),
        "inner_steps_at_test": strategy.test_inner_steps(),
        **({"ensemble_inner_steps_at_test": strategy.inner_steps_each()} if len(modes) > 1 else {}),
        "finetune_steps": finetune.steps if finetune is not None else 0, **member_views[0].summary(),
        "support_copies": support.copies if support is not None else 0, **({"task_stats": "task_stats.csv"} if stats is not None else {}),
        **refinement_record(each or [eval_cfg]),
        **({"ensemble_tta": [v.summary() for v in member_views]} if len(set(member_views)) > 1 else {}),
        **({"finetune_lr": finetune.lr, "finetune_params": finetune.params, "finetune_augment": finetune.augment_name, "finetune_search": search}
           if finetune is not None else {}),
        "eval_seconds": round(seconds, 3), "eval_tasks_per_s": round(accs.numel() / seconds, 2),
        "cpu_threads": torch.get_num_threads()}  # CPU results depend on it (a joblib job gets its share of the cores)


def search_rate(strategy: Strategy | Ensemble, finetune: Finetuner, val: EpisodeSampler, eval_cfg: Any, modes: list[str],
                views: TtaViews | list[TtaViews], seed: int, device: torch.device) -> dict[str, float]:
    """P>M>F's choice of ``finetune.lr`` among ``eval.finetune_lr_search`` on validation tasks (it is set on
    ``finetune``); each rate's validation accuracy."""
    def score(tuner: Finetuner) -> float:
        with seeded(seed, device):  # every rate sees the same augmentations
            return float(evaluate_tasks(strategy, val, eval_cfg.finetune_search_episodes, eval_cfg.batch_tasks,
                                        modes, finetune=tuner, views=views).mean())

    search = finetune.search(list(eval_cfg.finetune_lr_search), score)
    log.info("test-time fine-tuning: lr %g chosen on %d validation tasks (%s)", finetune.lr,
             eval_cfg.finetune_search_episodes, ", ".join(f"{k}: {100 * v:.2f}%" for k, v in search.items()))
    return search


def refinement_record(each: list[Any]) -> dict[str, Any]:
    """results.json's ``soft_kmeans_steps`` (the first network's) and, where an ensemble's members differ, each one's."""
    steps = [e.soft_kmeans_steps for e in each]
    return {"soft_kmeans_steps": steps[0], **({"ensemble_soft_kmeans_steps": steps} if len(set(steps)) > 1 else {})}


@contextlib.contextmanager
def refining(strategy: Strategy | Ensemble, each: list[Any]) -> Iterator[None]:
    """Each network scores with its own ``eval.soft_kmeans_steps`` (an ensemble's members, their own settings)."""
    members = strategy.members if isinstance(strategy, Ensemble) else [strategy]
    with contextlib.ExitStack() as stack:
        for member, settings in zip(members, each):
            stack.enter_context(member.model.refining(settings.soft_kmeans_steps))
        yield


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Random draws inside (test-time fine-tuning's augmentations) from ``seed``; the caller's streams untouched."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed % 2**63)
        yield


def fixed_tasks(data: FewShotData, split: str, shapes: tuple[int, int, int], seed: int, device: torch.device,
                lake: bool, original: Optional[OriginalRuns] = None) -> Any:
    """The fixed tasks of ``split`` (Lake's runs, drawn or ``original``, or random tasks), from the seed: the same on every call."""
    way, shot, query = shapes
    classes = data.split(split)
    if lake:
        if (shot, query) != (1, 1):
            raise ConfigError(f"Lake et al.'s runs are one-shot with one query per class, and this test is {shot}-shot with "
                              f"{query} quer{'y' if query == 1 else 'ies'}: drop episode.shot and episode.query (or set both "
                              "to 1); the way may differ (episode.way=N: N characters of one alphabet a run)")
        return LakeRuns(resident(classes, device), way, split_seed(seed, split), device, original)
    check_fits(classes, split, data.name, way, shot, query)
    return EpisodeSampler(resident(classes, device), way, shot, query, split_seed(seed, split), device)


def member_tasks(datas: list[FewShotData], split: str, shapes: tuple[int, int, int], seed: int, device: torch.device,
                 lake: bool, original: Optional[OriginalRuns] = None) -> Any:
    """The fixed tasks for each member's data (:func:`~metalearn_cli.eval_inputs.member_data`): one sampler when they all read the
    same images, else the same tasks drawn in lockstep at each image size."""
    distinct = list({id(d): d for d in datas}.values())
    if len(distinct) == 1:
        return fixed_tasks(distinct[0], split, shapes, seed, device, lake, original)
    samplers = [fixed_tasks(d, split, shapes, seed, device, lake, original) for d in distinct]
    return LockstepTasks(samplers, [next(i for i, d in enumerate(distinct) if d is m) for m in datas])


def warn_other_data(source: str, result: dict[str, Any]) -> None:
    """Say when the split scored (``result``) is not the one the checkpoint's run tested (its ``results.json``):
    a folder data set edited since, or ``dataset_root`` naming another set under the same class names."""
    tested, split = read_json(RunDir(run_dir_of(Path(source))).results), result["split"]
    if tested.get("split") == split and tested.get("split_digest") not in (None, result["split_digest"]):
        log.warning("the %s split read now holds other images or classes than the one %s was tested on (the data set "
                    "changed since, or dataset_root names another): these numbers are not comparable with the run's own",
                    split, run_dir_of(Path(source)))


def _check_split(cfg: Any) -> None:
    if cfg.split not in ("test", "val"):
        raise ConfigError(f"split={cfg.split} is not an evaluation split; use test or val")
    if cfg.split != "test" and OmegaConf.select(cfg, "eval.lake_runs"):
        raise ConfigError("eval.lake_runs are runs of the evaluation alphabets, the test split: drop split=val or eval.lake_runs")


def _say_unfinished(checkpoints: list[Any], reads: list[dict[str, Any]]) -> list[str]:
    """A warning per checkpoint of a run that has not finished (results.json keeps them as ``unfinished``);
    ``reads``: each one as read (an export of such a run says so itself)."""
    notes = [note for path, read in zip(checkpoints, reads) if (note := unfinished_note(path, read))]
    for note in notes:
        log.warning("%s", note)
    return notes


def _say_start(strategy: Any, train_cfg: Any, device: torch.device, run_dir: Path) -> None:
    first = strategy.members[0] if isinstance(strategy, Ensemble) else strategy  # the first member describes an ensemble
    log.info(startup_line("evaluation", device, train_cfg.trainer.precision, first, run_dir))
    if isinstance(strategy, Ensemble):
        log.info("an ensemble of %d: the mean of the class probabilities of %s", len(strategy.members),
                 ", ".join(strategy.sources))


def evaluate(cfg: Any, run_dir: Path) -> float:
    """``metalearn eval``: test a checkpoint or export on fixed tasks; writes ``results.json``; returns accuracy."""
    wall_start = time.perf_counter()
    _check_split(cfg)
    check_seed(cfg.seed)
    device = setup_device(cfg)
    others = ensemble_paths(cfg.ensemble)
    knowledge = read_meta_knowledge(cfg.checkpoint)
    strategy, train_cfg = load_strategy(knowledge, device)
    eval_cfg = eval_settings(cfg.eval, OmegaConf.select(train_cfg, "eval"))
    source = str(Path(knowledge["source"]).resolve())
    if others:
        strategy = load_ensemble(strategy, train_cfg, source, others, device)
    unfinished = _say_unfinished([cfg.checkpoint, *others], [knowledge, *getattr(strategy, "exported_notes", [])])
    optional = isinstance(strategy, Ensemble) and reads_folder(strategy)
    data = DATASETS.build(dataset_of(train_cfg.dataset, cfg.dataset_root, knowledge["source"], optional))
    members = member_data(strategy, data, cfg.split, cfg.dataset_root) if others else [data]
    if others:
        check_ensemble_options(cfg.eval, eval_cfg, members)
    each = member_settings(cfg.eval, strategy, eval_cfg) if isinstance(strategy, Ensemble) else [eval_cfg]
    check_test_options(each, members, strategy)
    episode = cfg.episode if cfg.episode is not None else train_cfg.episode
    published_runs_settings(cfg.eval, eval_cfg, episode)
    say_seen_classes(cfg.split, train_cfg.dataset, eval_cfg)
    seed = cfg.seed if cfg.seed is not None else train_cfg.seed
    finetune = Finetuner.of(eval_cfg, DATASETS.params_of(train_cfg.dataset).meta_augment, data.image_shape, strategy)
    support = SupportCopies.of(eval_cfg, DATASETS.params_of(train_cfg.dataset).augment, data.image_shape)
    original = original_runs(eval_cfg, train_cfg.dataset, data.test, episode.way, is_lake(episode))
    result = score_checkpoint(strategy, data, cfg.split, (episode.way, episode.shot, episode.query), eval_cfg, seed,
                              device, run_dir, progress=True, lake=is_lake(episode), finetune=finetune,
                              members=members, each=each, support=support, original=original,
                              started=lambda: _say_start(strategy, train_cfg, device, run_dir))  # after every refusal
    result.update({
        "checkpoint": source, "checkpoint_step": knowledge["step"],
        **({"ensemble": strategy.sources} if isinstance(strategy, Ensemble) else {}),
        "wall_seconds": round(time.perf_counter() - wall_start, 2), "device": str(device),
        "precision": strategy.model.precision, "torch": torch.__version__,
        "dataset": data.name, "strategy": train_cfg.strategy.name,  # as a training run's results.json says them
        "encoder": train_cfg.encoder.name, "decoder": train_cfg.decoder.name,
        **({"unfinished": unfinished} if unfinished else {}),  # a checkpoint of a run that had not finished: said
    })
    warn_other_data(source, result)  # the digest of what was scored: the split is hashed once
    write_results(run_dir, result)
    write_status(run_dir, "completed", accuracy=result["accuracy"])
    over = (f"Lake et al.'s {result['episodes']} original runs" if original is not None
            else f"{result['episodes']} {episode.way}-way {episode.shot}-shot tasks")
    log.info("%s accuracy %.2f%% ± %.2f%% over %s; %s", cfg.split, 100 * result["accuracy"], 100 * result["ci95"], over, run_dir)
    return result["accuracy"]
