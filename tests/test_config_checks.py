from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import compose_config
from metalearn_cli.config_checks import check_typed_pretrain_keys, seen_class_validation
from metalearn_cli.errors import ConfigError
from metalearn_cli.schema import PretrainConfig, PretrainKind


def _cfg(kind, iterations=100):
    return OmegaConf.create({"pretrain": OmegaConf.structured(PretrainConfig(kind=kind, iterations=iterations))})


def test_a_typed_key_the_stage_does_not_read_is_refused_naming_it(caplog):
    episodic, supervised = _cfg(PretrainKind.episodic), _cfg(PretrainKind.supervised)
    check_typed_pretrain_keys(episodic, ["pretrain", "pretrain.train_way", "pretrain.within_alphabet", "seed"])  # its own
    check_typed_pretrain_keys(supervised, ["pretrain.batch_size", "pretrain.optimizer.lr", "trainer.train_way"])
    assert not caplog.records
    check_typed_pretrain_keys(_cfg(PretrainKind.episodic, iterations=0), ["pretrain.batch_size"])  # no stage: said, not refused
    assert "pretrain.batch_size: read by a pre-training stage only, and this run has none" in caplog.text
    for cfg, key, kind in [(episodic, "pretrain.batch_size", "episodic"), (episodic, "pretrain.optimizer.schedule.kind", "episodic"),
                           (episodic, "pretrain.label_smoothing", "episodic"), (supervised, "pretrain.train_query", "supervised"),
                           (supervised, "pretrain.within_alphabet", "supervised")]:
        with pytest.raises(ConfigError, match=f"{key} is read by pretrain=.* only; this run's stage is pretrain={kind}"):
            check_typed_pretrain_keys(cfg, ["seed", key])


@pytest.mark.parametrize("overrides, seen", [([], True), (["dataset=omniglot"], False),
                                             (["experiment=best_omniglot_20w1s"], True),
                                             (["dataset=omniglot_background", "dataset.val=drawers"], True),
                                             (["dataset=synthetic"], False)])
def test_a_sweep_is_told_when_validation_draws_training_classes(overrides, seen):
    assert (seen_class_validation(compose_config("train", overrides)) is not None) == seen


def test_pretrain_none_over_a_preset_that_sets_its_stage_is_refused_not_run_as_supervised(tmp_path):
    """best_omniglot_lake20w1s sets pretrain.iterations=30000 itself, after the group: pretrain=none alone would have
    run 30,000 steps of a supervised stage the user asked not to have."""
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("metalearn")
    run = tmp_path / "run"
    proc = subprocess.run([str(exe), "train", "experiment=best_omniglot_lake20w1s", "pretrain=none", f"hydra.run.dir={run}"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2 and "add pretrain.iterations=0" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not run.exists()


def test_pretrain_epochs_beside_pretrain_none_is_said_and_the_run_goes_on_without_a_stage(tmp_path, capfd):
    """As every other pretrain.* key: a sweep over pretrain=none,supervised shares it, and its none job runs."""
    from conftest import FAST
    from metalearn_cli.cli import main

    assert main(["train", *FAST, "pretrain=none", "pretrain.epochs=3", f"hydra.run.dir={tmp_path / 'run'}"]) == 0
    assert "pretrain.epochs: read by a pre-training stage only, and this run has none" in "".join(capfd.readouterr())
    assert not (tmp_path / "run" / "pretrain").exists()


@pytest.mark.parametrize("typed, needle", [
    (["strategy=fomaml", "strategy.first_order=false"], "is second-order MAML, and its runs would be labelled fomaml"),
    (["strategy=anil", "strategy.adapt=all"], "strategy=anil with strategy.adapt=all is MAML"),
    (["strategy=metasgd", "strategy.learn_inner_lr=false"], "is MAML without learned per-parameter rates"),
    (["strategy=fomaml", "strategy.first_order_until=5"], "is first-order throughout"),
    (["strategy=maml", "strategy.first_order=true", "strategy.first_order_until=5"], "is first-order throughout"),
    (["strategy=maml", "strategy.inner_steps=0"], "training stays at chance"),
    (["strategy=anil", "strategy.inner_steps=0"], "training stays at chance"),
    (["strategy=anil", "strategy.adapt_norm=false"], "strategy=anil adapts the head alone"),
])
def test_a_strategy_undone_by_its_own_options_is_refused_not_run_under_its_name(typed, needle):
    from metalearn_cli.config_checks import validate

    with pytest.raises(ConfigError, match=needle):
        validate(compose_config("train", typed))
    validate(compose_config("train", typed[:1]))  # the strategy as it is


def test_a_run_saved_before_the_variant_check_still_loads(tmp_path):
    """The check is the configuring run's: a checkpoint whose config it would refuse (trained before it) still
    evaluates, exports and resumes."""
    import torch

    from conftest import FAST
    from metalearn_cli import load
    from metalearn_cli.training import train

    run = tmp_path / "run"
    train(compose_config("train", [*FAST, "strategy=anil", "trainer.iterations=1", "eval.episodes=2"]), run)
    best = run / "checkpoints" / "best.pt"
    state = torch.load(best, map_location="cpu", weights_only=True)
    state["config"]["strategy"]["adapt"] = "all"  # accepted before 2026-12-07 (MAML, labelled anil)
    torch.save(state, best)
    assert load(best, "cpu").step >= 0


@pytest.mark.parametrize("strategy", ["maml", "fomaml", "anil", "metasgd"])
def test_film_under_an_inner_loop_is_refused_as_it_learns_nothing(strategy):
    from metalearn_cli.config_checks import validate

    with pytest.raises(ConfigError, match=f"decoder=film with strategy={strategy} diverges.*use strategy=mgd"):
        validate(compose_config("train", [f"strategy={strategy}", "decoder=film"]))
    with pytest.raises(ConfigError, match="diverges"):  # no inner step in training, but at test
        validate(compose_config("train", [f"strategy={strategy}", "decoder=film", "strategy.inner_steps=0",
                                          "strategy.eval_inner_steps=2"]))
    validate(compose_config("train", [f"strategy={strategy}", "decoder=film", "strategy.inner_steps=0",
                                      "strategy.eval_inner_steps=0"]))  # no inner step: it trains
    validate(compose_config("train", ["strategy=mgd", "decoder=film"]))


def test_an_unknown_key_in_a_files_config_is_not_blamed_on_the_command_line():
    from metalearn_cli.config_checks import validate_train_config
    from metalearn_cli.errors import ConfigError as Refused

    with pytest.raises(Refused, match="a key this metalearn does not know: the file was written by another version"):
        validate_train_config({"unknown_new_key": 1})
    with pytest.raises(Refused, match="no such key: remove it"):
        validate_train_config({"unknown_new_key": 1}, typed=True)


@pytest.mark.parametrize("typed", ["trainer.init_from=", "trainer.init_from=' '"])
def test_an_empty_init_from_is_refused_not_taken_as_random_weights(typed):
    from metalearn_cli.config_checks import validate

    with pytest.raises(ConfigError, match="trainer.init_from is empty"):
        validate(compose_config("train", [typed]))
