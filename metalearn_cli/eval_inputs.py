"""What ``metalearn eval`` reads from the checkpoints it tests: each one's data set (nothing read or
downloaded that the user did not name), each ensemble member's data at its own image size, and the test
settings (``eval.*``) a checkpoint was scored with, under those the command line sets."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import OmegaConf

from metalearn_cli.config_checks import check_tta_shift, validate_eval
from metalearn_cli.console import shell_override
from metalearn_cli.data import DATASETS, FewShotData
from metalearn_cli.ensemble import Ensemble, other_data
from metalearn_cli.episodes import is_lake
from metalearn_cli.errors import ConfigError
from metalearn_cli.schema import EvalConfig

log = logging.getLogger(__name__)


def member_data(ensemble: Ensemble, first: FewShotData, split: str, root: Optional[str]) -> list[FewShotData]:
    """Each member's data set as it reads the test tasks: ``first`` where it reads the same images (other
    training-only settings, such as rotated training classes, do not matter), its own copy where it reads
    the same classes at another image size or framing (``dataset.normalise``); a member tested on other
    classes or images is refused."""
    optional = reads_folder(ensemble)
    configs = [dataset_of(saved, root, source, optional) for saved, source in zip(ensemble.datasets, ensemble.sources)]
    datas, built = [first], {repr(sorted(configs[0].items())): first}
    want = first.split(split)
    for config, saved, source in zip(configs[1:], ensemble.datasets[1:], ensemble.sources[1:]):
        key = repr(sorted(config.items()))
        data = built[key] = built.get(key) or DATASETS.build(config)
        mine = data.split(split)
        if data.name != first.name or mine.class_names != want.class_names or mine.n_per_class != want.n_per_class:
            raise other_data(ensemble.datasets[0], saved, source, ensemble.sources[0], f"its {split} classes differ")
        if mine.images.shape == want.images.shape and config.get("normalise") == configs[0].get("normalise"):
            if not torch.equal(mine.images, want.images):
                raise other_data(ensemble.datasets[0], saved, source, ensemble.sources[0], f"its {split} images differ")
            data = first
        datas.append(data)
    return datas


def reads_folder(ensemble: Ensemble) -> bool:
    """Whether some member reads its data set from a folder: then ``dataset_root`` is for those members, and
    the others keep their embedded copy (without one, ``dataset_root`` applies to every member as to one run)."""
    return any(OmegaConf.select(d, "root") is not None for d in ensemble.datasets)


def dataset_of(saved: Any, root: Optional[str], source: str, root_optional: bool = False) -> Any:
    """The checkpoint's data set, touching only what the user names: a checkpoint is data, so its
    ``root`` is not read unless ``dataset_root=`` says where the data set is, and nothing is downloaded."""
    dataset = OmegaConf.to_container(saved, resolve=True)
    if "download" in dataset:
        dataset["download"] = False
    if root_optional and dataset.get("root") is None:  # an ensemble member on the embedded copy: dataset_root is another's
        return dataset
    if dataset.get("root") is not None or root is not None:
        if root is None:
            raise ConfigError(f"{source} was trained on {dataset.get('name')} read from {dataset['root']}; eval reads a data "
                              "folder only where the command names it (a checkpoint's recorded path is not followed on its "
                              f"own: it may come from another machine): {_root_advice(dataset['root'])}")
        if "root" not in dataset:
            raise ConfigError(f"dataset_root={root} but {source}'s data set ({dataset.get('name')}) is not read from a folder; drop it")
        if not Path(root).is_dir():
            raise ConfigError(f"dataset_root={root} {'is a file, not a folder' if Path(root).exists() else 'does not exist'}; "
                              f"pass the folder {source}'s data set was read from (in training: {dataset.get('root')})")
        dataset["root"] = str(Path(root).expanduser().absolute())  # messages name it wherever it was typed from
    return dataset


def _root_advice(recorded: str) -> str:
    """The fix for a missing ``dataset_root``: the recorded folder where it is still there, else where to point."""
    if Path(recorded).expanduser().is_dir():
        return f"add {shell_override('dataset_root', recorded)}"
    return "that folder is gone from this machine; add dataset_root=DIR, the folder that holds the data set now"


def check_typed_eval(cfg: Any) -> None:
    """The command line's eval.* checked on their own, before the eval dir is written (a refusal leaves nothing, as
    train's range checks do); what holds only with the checkpoint's own values is checked by :func:`eval_settings`."""
    typed = {key: value for key, value in cfg.eval.items() if value is not None}
    if typed:
        validate_eval(OmegaConf.merge(OmegaConf.structured(EvalConfig), typed))


def eval_settings(choices: Any, saved: Any, whose: str = "the checkpoint") -> Any:
    """``metalearn eval``'s eval.*: the checkpoint's own (those its results.json was scored with), each key the
    command line set (not null) replacing the checkpoint's value; checked as one config."""
    typed = {key: value for key, value in choices.items() if value is not None}
    merged = OmegaConf.merge(OmegaConf.structured(EvalConfig), saved if saved is not None else {}, typed)
    validate_eval(merged)
    default = OmegaConf.structured(EvalConfig)
    kept = [f"eval.{k}={v.name if hasattr(v, 'name') else v}" for k, v in merged.items()
            if k not in typed and v != default[k]]
    if kept:
        log.info("%s's own test settings: %s (set any of them on the command line to change it)", whose, " ".join(kept))
    own = OmegaConf.merge(default, saved if saved is not None else {})
    changed = [f"eval.{k}={_shown(merged[k])} (its own: {_shown(own[k])})" for k in typed
               if k in own and merged[k] != own[k] and k not in ("episodes", "batch_tasks", "save_task_stats")]
    if changed:  # so a figure is not read as the run's own test (soft k-means, another batch-norm mode)
        log.info("the command line changes %s's test: %s", whose, " ".join(changed))
    idle = [f"eval.{k}" for k in typed if k.startswith("finetune_") and k != "finetune_steps"]
    if idle and not merged.finetune_steps:
        log.warning("%s %s nothing: test-time fine-tuning is off (eval.finetune_steps=0); add eval.finetune_steps=N "
                    "to fine-tune", " and ".join(idle), "changes" if len(idle) == 1 else "change")
    return merged


def _shown(value: Any) -> str:
    return value.name if hasattr(value, "name") else str(value)


def published_runs_settings(typed: Any, settings: Any, episode: Any) -> None:
    """The checkpoint's ``eval.lake_runs`` (Lake et al.'s published runs) is its test of Lake's protocol: another
    episode named on the command line tests without them (said); a task count cannot apply to 20 fixed runs (said)."""
    if settings.lake_runs and not is_lake(episode) and not typed.lake_runs:
        log.info("the checkpoint's eval.lake_runs (Lake et al.'s published runs) is not used: episode=%d-way %d-shot "
                 "tasks are drawn", episode.way, episode.shot)
        settings.lake_runs = None
    elif settings.lake_runs and is_lake(episode) and typed.episodes is not None:
        log.warning("eval.episodes=%s is not used: eval.lake_runs scores every one of the runs Lake et al. published "
                    "(eval.lake_runs='' scores that many drawn runs instead)", typed.episodes)


def member_settings(choices: Any, ensemble: Ensemble, first: Any) -> list[Any]:
    """Each member's eval.*: its own saved settings under the command line's, as it would be tested alone
    (its test views and batch-norm mode; the ensemble's task count and batching are the first's)."""
    return [first, *(eval_settings(choices, saved, f"ensemble member {source}")
                     for saved, source in zip(ensemble.evals[1:], ensemble.sources[1:]))]


def check_ensemble_options(typed: Any, settings: Any, members: list[FewShotData]) -> None:
    """What an ensemble cannot be tested with: test-time fine-tuning (the steps of one network), and support
    copies when its members read the support images at different sizes or framings (copies of one set are drawn)."""
    if settings.finetune_steps:
        whose = "" if typed.finetune_steps is not None else " (the checkpoint's own)"
        raise ConfigError(f"eval.finetune_steps={settings.finetune_steps}{whose} cannot be combined with ensemble=; "
                          "drop ensemble= or set eval.finetune_steps=0")
    if settings.support_copies and len({id(m) for m in members}) > 1:
        raise ConfigError(f"eval.support_copies={settings.support_copies} draws copies of the support images at one image "
                          "size, but the ensemble's members read them at different sizes or framings; drop one of the two")


def check_test_options(each: list[Any], datas: list[FewShotData], strategy: Any) -> None:
    """Each network's test settings against its data and decoder, before anything is scored: a shift that moves
    every copy off its images, soft k-means where its decoder has no prototypes."""
    networks = strategy.members if isinstance(strategy, Ensemble) else [strategy]
    for settings, data, network in zip(each, datas, networks):
        check_tta_shift(settings.tta_shift, data.image_shape)
        network.model.check_refinement(settings.soft_kmeans_steps)


def say_seen_classes(split: str, dataset: Any, settings: Any) -> None:
    """A warning where what eval reads from the validation split was seen in training (``dataset.val=trainval``, the
    default run's, or ``drawers``): ``split=val`` then scores no held-out classes, and ``eval.finetune_lr_search``
    picks its rate on classes the network knows (the test itself stays on held-out ones). ``metalearn train`` says
    it of its final test (``split="test"``)."""
    from metalearn_cli.params.datasets import seen_validation

    val = OmegaConf.select(dataset, "val")
    if (what := seen_validation(val)) is None:
        return
    val = getattr(val, "value", val)
    if split == "val":
        log.warning("split=val scores %s (the run's dataset.val=%s), not held-out classes; split=test scores held-out "
                    "ones", what, val)
    if settings.finetune_lr_search and settings.finetune_steps:
        log.warning("eval.finetune_lr_search picks its rate on validation tasks of %s (the run's dataset.val=%s), which "
                    "may favour less fine-tuning than held-out classes need", what, val)
