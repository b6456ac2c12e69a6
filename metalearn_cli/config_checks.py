"""Every range check of a run's config, in one place, before anything is written: the run-level
settings (:func:`validate`), the pre-training stage's keys, evaluation's options, and a checkpoint's
saved config against :class:`~metalearn_cli.schema.TrainConfig` (:func:`validate_train_config`).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Iterable, Optional

import torch

from omegaconf import DictConfig, ListConfig, OmegaConf

from metalearn_cli.compat import migrate_config
from metalearn_cli.components import REGISTRIES
from metalearn_cli.console import did_you_mean
from metalearn_cli.episodes import check_shape
from metalearn_cli.errors import ConfigError
from metalearn_cli.optim import check_optimizer
from metalearn_cli.schema import TrainConfig, is_episodic

log = logging.getLogger(__name__)


def non_finite(node: Any, prefix: str = "") -> Optional[str]:
    """The first ``key=value`` of a config whose number is NaN or infinite, or None."""
    if isinstance(node, (dict, DictConfig)):
        for key, value in node.items():
            found = non_finite(value, f"{prefix}{key}.")
            if found:
                return found
    elif isinstance(node, (list, tuple, ListConfig)):
        for i, value in enumerate(node):
            found = non_finite(value, f"{prefix}{i}.")
            if found:
                return found
    elif isinstance(node, float) and not math.isfinite(node):
        return f"{prefix.rstrip('.')}={node}"
    return None


def validate(cfg: Any) -> TrainConfig:
    """Every run-level range check of a training config, and each component's own parameters;
    returns it typed (enums, dataclasses). Unknown keys (``+key=value``) are refused here: the run's own
    checkpoint would not load later."""
    typed = OmegaConf.to_object(validate_train_config(cfg, typed=True))
    bad = non_finite(OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg)
    if bad:
        raise ConfigError(f"{bad} is not a finite number; give a finite value")
    check_seed(cfg.seed)
    t, e = cfg.trainer, cfg.eval
    check_counts("trainer", t, ("meta_batch", "val_every", "val_episodes", "checkpoint_every", "log_every", "train_way",
                                "train_query", "val_way"))
    if not 0 <= t.within_alphabet <= 1:
        raise ConfigError(f"trainer.within_alphabet={t.within_alphabet} is a share of the training tasks: give 0 to 1")
    if t.ema is not None and not 0 < t.ema < 1:
        raise ConfigError(f"trainer.ema={t.ema} is the weight average's decay per step: give 0 < ema < 1 (e.g. 0.999), "
                          "or null for none")
    if t.init_from is not None and not str(t.init_from).strip():  # an unset shell variable: random weights, unsaid
        raise ConfigError("trainer.init_from is empty (an unset shell variable?); give a checkpoint, run dir or export "
                          "to start from, or leave the key out to start from random weights")
    initialised = bool(t.init_from) or cfg.pretrain.iterations > 0
    if t.iterations == 0 and not initialised:
        raise ConfigError("trainer.iterations=0 trains nothing; it is for evaluating pre-trained weights: add "
                          "pretrain=supervised, pretrain=episodic or trainer.init_from=RUN, or give trainer.iterations >= 1")
    if t.freeze_encoder and not initialised:
        raise ConfigError("trainer.freeze_encoder=true would keep a random encoder; add pretrain=supervised, "
                          "pretrain=episodic or trainer.init_from=RUN, or drop freeze_encoder")
    check_shape("test", cfg.episode.way, cfg.episode.shot, cfg.episode.query)  # the data's own limits: when it is read
    check_film_strategy(cfg)
    check_unadapted_head(cfg)
    check_strategy_variant(cfg.strategy)
    validate_pretrain(cfg)
    validate_eval(e)
    validate_host(cfg)
    check_optimizer(cfg.optimizer)
    for group, registry in REGISTRIES.items():
        registry.params_of(cfg[group])  # types and the component's own __post_init__ checks
    return typed


def check_film_strategy(cfg: Any) -> None:
    """decoder=film under an inner loop (maml, fomaml, anil, metasgd) learns nothing: SGD steps on its generators and
    its generated dot-product head diverge (Omniglot 5-way 1-shot, 100 iterations: training loss 13.7 at step 40,
    test 19.97%, chance; on generated data the loss reaches 2,286, also at an inner rate of 0.01). CNAPs adapts in
    one forward pass, under strategy=mgd; with strategy.inner_steps=0 (and eval_inner_steps=0) the same run trains."""
    test_steps = cfg.strategy.get("eval_inner_steps")
    steps = max(cfg.strategy.get("inner_steps") or 0, test_steps if test_steps is not None else 0)  # at test too
    if cfg.decoder.get("name") == "film" and steps > 0:
        raise ConfigError(f"decoder=film with strategy={cfg.strategy.name} diverges: its {steps} inner SGD step(s) over "
                          "FiLM's generators and generated dot-product head wreck it (strategy=maml on Omniglot: "
                          "chance after 100 iterations); CNAPs adapts to a task in one forward pass, so use strategy=mgd (the cnaps_* presets)")


UNDONE = {"fomaml": ("first_order", False, "second-order MAML"), "anil": ("adapt", "all", "MAML"),
          "metasgd": ("learn_inner_lr", False, "MAML without learned per-parameter rates")}  # a variant's defining flag, off


def check_strategy_variant(strategy: Any) -> None:
    """A MAML variant whose defining flag is turned off is another method run under its name; first_order_until
    means nothing under first-order meta-gradients. Checked when a run is configured, not when a checkpoint is read:
    runs saved before the check still evaluate, export and resume."""
    name = str(strategy.get("name"))
    if name in UNDONE and str(getattr(strategy.get(UNDONE[name][0]), "value", strategy.get(UNDONE[name][0]))) == str(UNDONE[name][1]):
        key, value, method = UNDONE[name]
        raise ConfigError(f"strategy={name} with strategy.{key}={str(value).lower()} is {method}, and its runs would be "
                          f"labelled {name}; use strategy=maml")
    if strategy.get("first_order") and (strategy.get("first_order_until") or 0) > 0:
        raise ConfigError(f"strategy.first_order_until={strategy.first_order_until} counts first-order meta-iterations "
                          f"before second-order ones, but strategy={name} is first-order throughout (first_order=true); "
                          "first_order_until needs strategy=maml with first_order=false, or drop it")
    if strategy.get("adapt_norm") is False and str(getattr(strategy.get("adapt"), "value", strategy.get("adapt"))) == "head":
        raise ConfigError(f"strategy.adapt_norm=false keeps the encoder's norm layers out of the inner loop, but "
                          f"strategy={name} adapts the head alone (adapt=head): drop it")


def check_unadapted_head(cfg: Any) -> None:
    """decoder=linear is a head of random initial weights that only the inner loop fits to a task's labels: with no
    inner step in training it answers every task by one fixed classifier of shuffled classes, at chance (the
    strategy refuses the same at test, ``eval_inner_steps=0``)."""
    if cfg.decoder.get("name") == "linear" and "inner_steps" in cfg.strategy and cfg.strategy.get("inner_steps") == 0:
        raise ConfigError("strategy.inner_steps=0 with decoder=linear never fits the head to a training task's labels, so "
                          "training stays at chance; give it 1 or more steps (a head fitted without steps: strategy=mgd "
                          "decoder=prototype)")


def check_seed(seed: Any) -> None:
    """Seeds feed Python's, NumPy's and torch's generators and the per-split task streams: 0 <= seed < 2**63."""
    if seed is not None and not 0 <= int(seed) < 2**63:
        raise ConfigError(f"seed={seed} is out of range; use an integer from 0 to {2**63 - 1}")


COUNTED = {"meta_batch": "tasks per meta-update", "val_every": "steps between validations", "val_episodes": "validation tasks",
           "checkpoint_every": "steps between checkpoints", "log_every": "steps between log lines",
           "batch_size": "images per pre-training step", "iterations": "steps (0: none)",
           "train_way": "classes of a training task", "train_query": "queries per class of a training task",
           "val_way": "classes of a validation task"}
DEFAULTS_TO = {"train_way": "episode.way", "train_query": "episode.query", "val_way": "episode.way"}  # null means these


def check_counts(node: str, values: Any, positive: tuple[str, ...]) -> None:
    """Each of ``positive`` >= 1 (or null where null takes the episode's value), ``iterations`` >= 0; the
    line names every key that is not, with what it counts."""
    wrong = [f"{node}.{k}={values[k]} counts {COUNTED[k]}: give >= 1"
             + (f", or null for {DEFAULTS_TO[k]}" if k in DEFAULTS_TO else "")
             for k in positive if values.get(k) is not None and values[k] < 1]
    wrong += [f"{node}.iterations={values.iterations} counts {COUNTED['iterations']}: give >= 0"] if values.iterations < 0 else []
    if wrong:
        raise ConfigError("; ".join(wrong))


def validate_pretrain(cfg: Any) -> None:
    p = cfg.pretrain
    episodic = is_episodic(p)
    check_counts("pretrain", p, ("batch_size", "val_every", "val_episodes", "train_way", "train_query"))
    if not 0 <= p.label_smoothing < 1:
        raise ConfigError("pretrain.label_smoothing must be in [0, 1)")
    if p.max_iterations is not None and p.max_iterations < 1:
        raise ConfigError(f"pretrain.max_iterations={p.max_iterations} caps the stage's steps: give >= 1 or null "
                          "(pretrain=none turns the stage off)")
    if p.iterations > 0 and not episodic:  # the node's types and ranges, as the optimizer group's are checked
        try:
            check_optimizer(p.optimizer)
        except ConfigError as exc:
            raise ConfigError(f"pretrain.optimizer: {exc}") from None
    if episodic and p.epochs is not None:
        raise ConfigError(f"pretrain.epochs={p.epochs}: pretrain=episodic counts meta-iterations (pretrain.iterations); "
                          "pass pretrain.epochs=null")
    if episodic and not 0 <= p.within_alphabet <= 1:
        raise ConfigError(f"pretrain.within_alphabet={p.within_alphabet} is a share of the stage's training tasks: give 0 to 1")
    if p.epochs is not None and not p.epochs > 0:
        raise ConfigError(f"pretrain.epochs={p.epochs} is the supervised stage's length: give epochs > 0, or "
                          "pretrain.epochs=null to count pretrain.iterations")
    if p.iterations and cfg.trainer.init_from:
        raise ConfigError("pretrain.iterations > 0 and trainer.init_from both set the starting weights; choose one")


SUPERVISED_ONLY = ("batch_size", "label_smoothing", "optimizer")  # pretrain=episodic draws tasks, steps with the run's optimizer
EPISODIC_ONLY = ("train_way", "train_query", "within_alphabet")  # pretrain=supervised classifies over every class


def check_typed_pretrain_keys(cfg: Any, typed: Iterable[str], choice: Optional[str] = None) -> None:
    """A pre-training key typed on the command line that the run's kind of stage does not read is
    refused: a silent no-op would leave the user believing the stage ran as they asked. Keys set by
    config files (presets, ``debug=smoke``, which layer over either kind) are left to them. So is a
    stage turned on over ``pretrain=none`` (``choice``: the group's option), which would be supervised."""
    p, typed = cfg.pretrain, list(typed)
    if cfg.get("resume"):  # a resume repeats the run's own command line, checked by the resume
        return
    if p.iterations == 0 and choice not in (None, "none") and {"pretrain", "pretrain.iterations"} <= set(typed):
        raise ConfigError(f"pretrain={choice} asks for a pre-training stage, but pretrain.iterations=0 runs none: give "
                          f"pretrain.iterations >= 1 (or pretrain.epochs), or drop pretrain={choice}")
    if p.iterations <= 0:
        idle = [k for k in typed if k.startswith("pretrain.") and k != "pretrain.iterations"]  # epochs: the stage's length
        if idle:  # a warning, not a refusal: a sweep over pretrain=none,supervised shares the other jobs' keys
            log.warning("%s: read by a pre-training stage only, and this run has none (pretrain.iterations=0), so %s "
                        "nothing; add pretrain=supervised, rfs or episodic to run one", ", ".join(idle),
                        "it changes" if len(idle) == 1 else "they change")
        return
    if choice == "none" and "pretrain.iterations" in typed:
        raise ConfigError(f"pretrain.iterations={p.iterations} turns a pre-training stage on, but pretrain=none chose none: "
                          "name its kind too (pretrain=supervised, rfs or episodic), or drop pretrain.iterations")
    if choice == "none" and "pretrain" in typed:  # a preset's own pretrain.iterations comes after the group's 0
        raise ConfigError(f"pretrain=none asks for no pre-training stage, but the config still sets pretrain.iterations="
                          f"{p.iterations} (an experiment's own pretrain keys come after the group's), which would run a "
                          "supervised stage: add pretrain.iterations=0 to drop it")
    episodic = is_episodic(p)
    kind, other = ("episodic", "supervised") if episodic else ("supervised", "episodic")
    for key in typed:
        parts = key.split(".")
        if parts[0] == "pretrain" and len(parts) > 1 and parts[1] in (SUPERVISED_ONLY if episodic else EPISODIC_ONLY):
            raise ConfigError(f"{key} is read by pretrain={other} only; this run's stage is pretrain={kind}, which does "
                              f"not use it (drop it, or choose pretrain={other})")


def validate_eval(e: Any) -> None:
    if e.episodes < 1 or e.batch_tasks < 1:
        raise ConfigError("eval.episodes and eval.batch_tasks must be >= 1")
    for key, value in (("finetune_steps", e.finetune_steps), ("finetune_lr", e.finetune_lr),
                       *(("finetune_lr_search", lr) for lr in e.finetune_lr_search or [])):
        if value < 0:
            what = {"finetune_steps": "a count of steps", "finetune_lr": "a learning rate"}.get(key, "learning rates")
            shown = list(e.finetune_lr_search) if key == "finetune_lr_search" else value
            raise ConfigError(f"eval.{key}={shown}: give {what} >= 0 (0 = off)")
    if e.finetune_search_episodes < 1 or (e.finetune_lr_search is not None and not e.finetune_lr_search):
        raise ConfigError("eval.finetune_search_episodes must be >= 1 and eval.finetune_lr_search a non-empty list (or null)")
    if e.support_copies < 0:
        raise ConfigError(f"eval.support_copies={e.support_copies}: give how many augmented copies replace each support "
                          "image at test (RFS: 5; 0 = off)")
    if e.soft_kmeans_steps < 0:
        raise ConfigError(f"eval.soft_kmeans_steps={e.soft_kmeans_steps}: give the soft k-means steps that refine the "
                          "prototypes with the test queries (>= 0; Ren et al.: 1; 0 = off)")
    if e.tta_shift < 0:
        raise ConfigError(f"eval.tta_shift={e.tta_shift}: give the pixels to shift each test image's copies by (>= 0; 0 = off)")
    for key, top, what, usual in (("tta_rotate", 90, "degrees to turn", "a few degrees"),
                                  ("tta_scale", 1, "fraction to scale", "a tenth or so"),
                                  ("tta_shear", 1, "factor to shear", "a tenth or so")):
        if not 0 <= getattr(e, key) < top:
            raise ConfigError(f"eval.{key}={getattr(e, key)}: give the {what} each test image's copies by, in [0, {top}) "
                              f"({usual}, as in training's distortions; 0 = off)")


def check_tta_shift(shift: int, image_shape: tuple[int, ...]) -> None:
    """Refuse, before anything runs, a test-time shift that would move every copy off the image."""
    side = min(image_shape[-2:])
    if shift >= side:
        raise ConfigError(f"eval.tta_shift={shift} moves every copy off the {side}-pixel images; give a few pixels "
                          f"(about a tenth of the side, e.g. {max(1, side // 10)}) or 0 for no test-time augmentation")


def validate_host(cfg: Any) -> None:
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError("threads must be >= 1 or null")
    parse_device(str(cfg.device))


def parse_device(name: str, spell: Callable[[str], str] = "device={}".format) -> Optional[torch.device]:
    """``device=`` as a torch device (None for auto), refused when no machine has it: its spelling alone,
    so a config meant for another machine (a GPU one) is checked here too (``--cfg``). ``spell`` writes a
    setting as the caller's user typed it (the command line's ``device=cpu``, the Python API's ``device='cpu'``)."""
    if name == "auto":
        return None
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"{spell(name)} is not a device; use auto, cpu, cuda or cuda:N") from exc
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"{spell(name)} is not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cpu" and device.index not in (None, 0):  # torch accepts cpu:1 and runs on the one CPU device
        raise ConfigError(f"{spell(name)}: the CPU is one device; use {spell('cpu')} (threads=N sets how many cores "
                          f"it uses)")
    return device


def code_key(node: Any, prefix: str = "") -> Optional[str]:
    """The first key that would name code (``_target_``, ``_recursive_``, ...), or None."""
    if isinstance(node, dict):
        for key, value in node.items():
            if str(key).startswith("_"):
                return f"{prefix}{key}"
            found = code_key(value, f"{prefix}{key}.")
            if found:
                return found
    return None


def validate_train_config(cfg: Any, typed: bool = False) -> DictConfig:
    """Check a plain or composed config against :class:`TrainConfig` (a checkpoint's, for instance; ``typed``: the
    command line's, whose unknown key the user added and may remove)."""
    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    named = code_key(plain)
    if named:
        raise ConfigError(f"{named} is not a metalearn option: configs choose components by registry name, never by "
                          "code path; remove it")
    try:
        return OmegaConf.merge(OmegaConf.structured(TrainConfig), migrate_config(plain))
    except Exception as exc:
        first = str(exc).splitlines()[0]
        unknown = "not in '" in first
        hint = did_you_mean(first) or (None if not unknown else "no such key: remove it (add --cfg job to see the keys "
                                       "there are)" if typed else "a key this metalearn does not know: the file was "
                                       "written by another version, or damaged")
        raise ConfigError(f"invalid run config: {first}" + (f"; {hint}" if hint else "")) from exc


def seen_class_validation(cfg: Any) -> Optional[str]:
    """Why a sweep over this config would rank trials by classes that also train, or None: the default
    data set option (and the best presets) validate on their training characters (``dataset.val=trainval``)."""
    from metalearn_cli.params.datasets import seen_validation

    val = OmegaConf.select(cfg, "dataset.val")
    if (what := seen_validation(val)) is None:
        return None
    return (f"dataset.val={getattr(val, 'value', val)} validates on {what}, so this sweep ranks its trials by seen classes; add dataset=omniglot "
            "(or dataset.val=alphabets on split=background) to rank them by held-out ones")
