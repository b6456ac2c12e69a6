"""Every config in configs/ composes, validates against its schema, and runs one meta-step."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from conftest import FAST, compose_config
from covering import pairwise_rows
from encoders.test_encoders import SMALL
from metalearn_cli import training
from metalearn_cli.checkpoint import load_checkpoint
from metalearn_cli.errors import ConfigError, DataError
from metalearn_cli.components import REGISTRIES
from metalearn_cli.schema import SCHEMAS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
GROUPS = ["dataset", "episode", "encoder", "decoder", "strategy", "optimizer", "pretrain", "debug", "experiment", "sweep"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.mark.smoke
@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes(group, option):
    cfg = compose_config("train", [f"{group}={option}"])
    assert cfg.trainer.iterations >= 1 or cfg.pretrain.iterations >= 1
    if group in REGISTRIES:
        assert cfg[group].name in REGISTRIES[group].names()
        if group == "dataset" and option in NEEDS_ROOT:  # refused without its images' folder, before any is read
            with pytest.raises((ConfigError, DataError), match="dataset.root=DIR"):
                REGISTRIES[group].params_of(cfg[group])
            cfg[group].root = "images"
        REGISTRIES[group].params_of(cfg[group])  # validates against the registered dataclass


NEEDS_ROOT = ("cifar_fs", "folder", "mini_imagenet", "omniglot_background_56px_rotations")  # not shipped (at that size)


def test_every_registry_entry_has_a_config_and_every_config_a_registry_entry():
    for group, registry in REGISTRIES.items():
        named = {compose_config("train", [f"{group}={o}"])[group].name for o in options(group)}
        assert named == set(registry.names()), group


def test_predict_and_export_configs_compose_and_type_their_keys():
    cfg = compose_config("predict", ["checkpoint=c.pt", "support=s", "query=q", "show=3"])
    assert (cfg.checkpoint, cfg.support, cfg.query, cfg.show) == ("c.pt", "s", "q", 3)
    assert compose_config("export", ["checkpoint=c.pt", "out=o.pt"]).out == "o.pt"
    with pytest.raises(Exception, match="show"):
        compose_config("predict", ["show=many"])


def test_eval_config_composes_with_and_without_an_episode():
    assert compose_config("eval", ["checkpoint=x"]).episode is None
    assert compose_config("eval", ["checkpoint=x", "episode=20way5shot"]).episode.way == 20


@pytest.mark.parametrize("override", ["encoder.width=abc", "trainer.iterations=1.5", "eval.bn_mode=sometimes",
                                      "optimizer.schedule.kind=linear", "seed=x"])
def test_wrong_types_fail_at_compose_time(override):
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose_config("train", [override])


@pytest.mark.parametrize("override", ["encoder.depth=3", "trainer.epochs=3", "dataset.colour=1", "learning_rate=1"])
def test_unknown_keys_fail_at_compose_time(override):
    with pytest.raises(ConfigCompositionException):
        compose_config("train", [override])


def test_defaults_are_the_documented_ones():
    cfg = compose_config("train")
    assert (cfg.dataset.name, cfg.encoder.name, cfg.decoder.name, cfg.strategy.name) == ("omniglot", "conv4", "prototype", "mgd")
    assert (cfg.episode.way, cfg.episode.shot) == (5, 1) and cfg.eval.episodes == 1000
    # the fast recipe (README, "What it reaches"): experiment=fast_omniglot_5w1s is the same run with its published figure
    plain_values = OmegaConf.to_container(cfg, enum_to_str=True)
    recipe = tuple(plain_values[group][key] for group, key in (("dataset", "val"), ("dataset", "normalise"), ("encoder", "widths"),
                   ("encoder", "global_pool"), ("trainer", "iterations"), ("trainer", "train_query"), ("trainer", "augment"),
                   ("eval", "tta_shift")))
    assert recipe == ("trainval", "centre_scale", [32, 64, 128, 128], True, 3700, 2, "auto", 2)
    named = compose_config("train", ["experiment=fast_omniglot_5w1s"])
    assert {k: v for k, v in OmegaConf.to_container(named).items() if k != "reference"} == \
        {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "reference"}
    # another data set, or an experiment, drops the recipe: nothing of it leaks into a preset
    plain = compose_config("train", ["dataset=omniglot"])
    assert (plain.trainer.iterations, plain.trainer.train_query, plain.trainer.augment.value, plain.eval.tta_shift) == (5000, 5, "none", 0)
    snell = compose_config("train", ["experiment=protonet_omniglot_5w1s"])
    assert (snell.trainer.train_query, snell.trainer.augment.value, snell.eval.tta_shift, snell.encoder.widths) == (5, "none", 0, None)


def test_experiment_headers_name_the_command_and_the_published_figure():
    for path in (CONFIGS / "experiment").glob("*.yaml"):
        lines = path.read_text().splitlines()
        assert lines[0] == "# @package _global_", path
        header = "\n".join(lines[:12])
        assert "metalearn train experiment=" + path.stem in header and "published" in header.lower(), path


PRESETS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))


def test_recipe_presets_carry_a_measured_figure_with_its_date_and_machine():
    """The project's own recipes (best_*, the Lake presets) are judged by what they measured, not by a paper."""
    recipes = [p for p in PRESETS if p.startswith(("best_", "fast_")) or p.endswith("_lake20w1s")]
    assert {"best_omniglot_5w1s", "best_omniglot_20w1s", "fast_omniglot_5w1s", "metanet_omniglot_lake20w1s"} <= set(recipes)
    for name in recipes:
        header = "\n".join((CONFIGS / "experiment" / f"{name}.yaml").read_text().splitlines()[:12])
        measured = re.search(r"# Measured \((\d{4}-\d{2}-\d{2}), ([^)]*)\): [\s\S]*?(\d+\.\d+)%", header)
        assert measured and "cores" in measured.group(2), name
        assert 0 < float(measured.group(3)) <= 100, name


def test_presets_cover_the_reproduction_table_and_carry_their_published_figure():
    for method in ("protonet", "maml", "metasgd", "anil", "latent", "rfs"):
        for shape in ("5w1s", "5w5s", "20w1s", "20w5s"):
            assert f"{method}_omniglot_{shape}" in PRESETS
        for shape in ("5w1s", "5w5s"):
            for encoder in ("conv4", "resnet12"):
                assert f"{method}_mini_{shape}_{encoder}" in PRESETS
    cfg = compose_config("train", ["experiment=protonet_omniglot_20w5s"])
    assert (cfg.reference.accuracy, cfg.episode.way, cfg.episode.shot, cfg.trainer.train_way) == (98.9, 20, 5, 60)
    cfg = compose_config("train", ["experiment=maml_mini_5w5s_conv4"])
    assert (cfg.reference.accuracy, cfg.dataset.name, cfg.encoder.width, cfg.strategy.inner_steps) == (63.11, "mini_imagenet", 32, 5)


def test_the_best_presets_are_one_training_tested_on_two_task_shapes(tmp_path):
    """best_omniglot_5w1s's header quotes best_omniglot_20w1s's run tested 5-way: that holds only while
    the two train, validate and pick best.pt identically, which 20-way validation (trainer.val_way) allows."""
    five, twenty = (compose_config("train", [f"experiment=best_omniglot_{s}"]) for s in ("5w1s", "20w1s"))
    def but_the_test(cfg: Any) -> dict:
        return {k: v for k, v in OmegaConf.to_container(cfg).items() if k not in ("episode", "reference")}
    assert but_the_test(five) == but_the_test(twenty)
    assert (five.episode.way, twenty.episode.way, five.trainer.val_way) == (5, 20, 20)
    best = {}
    for shape in ("5w1s", "20w1s"):  # the same, run: generated data, 10-way training, 20-way validation
        cfg = compose_config("train", [f"experiment=best_omniglot_{shape}", "debug=smoke", "encoder.width=8", "encoder.widths=null",
                                       "trainer.train_way=10",
                                       "trainer.iterations=4", "trainer.val_every=2", "eval.episodes=2", "device=cpu"])
        training.train(cfg, tmp_path / shape)
        best[shape] = load_checkpoint(tmp_path / shape / "checkpoints" / "best.pt")["model"]
        assert json.loads((tmp_path / shape / "results.json").read_text())["way"] == cfg.episode.way
    assert best["5w1s"].keys() == best["20w1s"].keys()
    assert all(torch.equal(best["5w1s"][k], best["20w1s"][k]) for k in best["5w1s"])


@pytest.mark.smoke
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_runs_one_step_under_debug_smoke(tmp_path, preset):
    """`debug=smoke` comes last in the defaults: any preset becomes a seconds-long run on generated data."""
    cfg = compose_config("train", [f"experiment={preset}", "debug=smoke"])
    assert cfg.dataset.name == "synthetic" and cfg.trainer.meta_batch == 2
    assert cfg.pretrain.epochs is None and cfg.pretrain.max_iterations == 20  # a preset's stage shrinks too
    shrink = {"conv4": ["encoder.width=8", "encoder.widths=null"], "resnet12": ["encoder.channels=[8,8,8,8]"]}[cfg.encoder.name]
    cfg = compose_config("train", [f"experiment={preset}", "debug=smoke", *shrink, "trainer.iterations=1", "trainer.val_every=1",
                                   "trainer.val_episodes=2", "eval.episodes=2", "episode.query=1", "trainer.train_query=1",
                                   "device=cpu", *(["pretrain.iterations=2", "pretrain.val_every=1", "pretrain.val_episodes=2"]
                                                   if cfg.pretrain.iterations else [])])
    training.train(cfg, tmp_path / "run")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["published_accuracy"] == cfg.reference.accuracy and results["way"] == cfg.episode.way


COMBOS = list(itertools.product(*(REGISTRIES[g].names() for g in ("encoder", "decoder", "strategy", "optimizer"))))


def refusal(encoder: str, decoder: str, strategy: str) -> str | None:
    """What a combination that cannot be trained must say; None for every combination that trains."""
    if decoder == "film" and strategy != "mgd":  # refused by the config checks, before any model is built
        return f"decoder=film with strategy={strategy} diverges"
    if decoder == "film" and encoder in ("rnn", "transformer"):
        return "decoder=film needs an encoder that accepts FiLM modulation"
    if strategy == "anil" and decoder in ("prototype", "logistic"):
        return "nothing to adapt"
    if strategy == "mgd" and decoder == "linear":
        return "ignores the support set and strategy=mgd never adapts it"
    return None


def _combinations() -> list[Any]:
    """Every combination; those outside a pairwise covering set (every two choices meet at least once,
    tests/covering.py) are slow, so the default run tries each pair and ``pytest -m slow`` the rest."""
    covering = set(pairwise_rows(COMBOS, lambda row: refusal(*row[:3]) is None))
    return [pytest.param(*row, marks=() if row in covering else pytest.mark.slow) for row in COMBOS]


@pytest.mark.smoke
@pytest.mark.parametrize("encoder,decoder,strategy,optimizer", _combinations())
def test_one_meta_step_for_every_combination(tmp_path, encoder, decoder, strategy, optimizer):
    small = [f"encoder.{k}={v}".replace(" ", "") for k, v in SMALL[encoder].items() if k != "drop_rate"]
    fast = [o for o in FAST if not o.startswith("encoder.")]
    cfg = compose_config("train", [*fast, f"encoder={encoder}", f"decoder={decoder}", f"strategy={strategy}",
                                   f"optimizer={optimizer}", *small, "trainer.iterations=1", "trainer.val_every=1",
                                   "trainer.val_episodes=2", "eval.episodes=2"])
    expected = refusal(encoder, decoder, strategy)
    if expected is not None:  # an invalid combination says so in one line, before anything is written
        with pytest.raises(ConfigError, match=expected) as info:
            training.train(cfg, tmp_path / "run")
        assert "\n" not in str(info.value) and not (tmp_path / "run").exists()
        return
    training.train(cfg, tmp_path / "run")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert (results["strategy"], results["encoder"], results["decoder"]) == (strategy, encoder, decoder)


def _restated(raw: Any, defaults: Any, prefix: str = "") -> list[str]:
    """Keys of ``raw`` whose value differs from the schema's default at the same place."""
    out = []
    for key, value in raw.items():
        if key in ("defaults", "hydra"):
            continue
        default = defaults.get(key) if isinstance(defaults, dict) else None
        if isinstance(value, dict) and isinstance(default, dict):
            out += _restated(value, default, f"{prefix}{key}.")
        elif value != default:
            out.append(f"{prefix}{key}: {value!r} (schema default {default!r})")
    return out


def _schema_defaults(node: Any) -> Any:
    return OmegaConf.to_container(OmegaConf.structured(node), enum_to_str=True)


@pytest.mark.parametrize("group", sorted(REGISTRIES))
def test_option_yamls_never_restate_a_default_with_another_value(group):
    """One source for every default: the dataclass. A YAML may repeat a default for readability, never change it."""
    for path in (CONFIGS / group).glob("*.yaml"):
        name = compose_config("train", [f"{group}={path.stem}"])[group].name
        raw = yaml.safe_load(path.read_text()) or {}
        if path.stem != name:  # a variant of an entry (dataset=omniglot_background): it exists to set values
            continue
        if path.read_text().startswith("# @package _global_"):  # a strategy that brings its paper's setting
            own = raw.get(group, {})
            assert set(raw) <= {"defaults", group, "trainer"}, path
            assert not _restated(raw.get("trainer", {}), _schema_defaults(SCHEMAS["train_schema"])["trainer"]) or \
                raw["trainer"] == {"train_way": None, "train_query": None}, path
            raw = own
        assert not _restated(raw, _schema_defaults(REGISTRIES[group].get(name).params)), path


@pytest.mark.smoke
@pytest.mark.parametrize("strategy", REGISTRIES["strategy"].names())
def test_every_strategy_trains_and_tests_on_the_default_data_set_option(tmp_path, strategy):
    """`metalearn train strategy=X` keeps the default data set option's distortions and shifted test copies (debug=smoke
    would swap the data set and drop both): every strategy trains on the framed Omniglot with them and tests with them."""
    cfg = compose_config("train", [f"strategy={strategy}", "encoder.widths=[8,8,8,8]", "trainer.iterations=1", "trainer.val_every=1",
                                   "trainer.val_episodes=2", "trainer.train_way=5", "eval.episodes=2", "device=cpu",
                                   "trainer.progress=false"])
    assert (cfg.dataset.normalise.value, cfg.trainer.augment.value, cfg.eval.tta_shift) == ("centre_scale", "auto", 2)
    training.train(cfg, tmp_path / "run")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["way"] == 5 and 0 <= results["accuracy"] <= 1


@pytest.mark.parametrize("strategy", ["maml", "fomaml", "anil", "metasgd"])
def test_a_gradient_based_strategy_brings_its_papers_decoder_and_task_shape(strategy):
    cfg = compose_config("train", [f"strategy={strategy}"])
    assert (cfg.decoder.name, cfg.trainer.train_way, cfg.trainer.train_query) == ("linear", None, None)
    cfg = compose_config("train", [f"strategy={strategy}", "decoder=latent", "trainer.train_way=20"])
    assert (cfg.decoder.name, cfg.trainer.train_way) == ("latent", 20)  # what the user types wins
    cfg = compose_config("train")  # the default data set option brings the fast recipe's 2 queries; a strategy's shape wins
    assert (cfg.decoder.name, cfg.trainer.train_way, cfg.trainer.train_query) == ("prototype", 60, 2)
    cfg = compose_config("train", ["dataset=omniglot"])
    assert (cfg.decoder.name, cfg.trainer.train_way, cfg.trainer.train_query) == ("prototype", 60, 5)


def test_primary_yamls_never_restate_a_default_with_another_value():
    for name, schema in SCHEMAS.items():
        raw = yaml.safe_load((CONFIGS / f"{name.removesuffix('_schema')}.yaml").read_text()) or {}
        assert not _restated(raw, _schema_defaults(schema)), name
