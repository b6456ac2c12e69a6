"""An Optuna study continued from its storage: refused where its seeded sampler would draw measured points again."""

from __future__ import annotations

import importlib.util

import pytest
from omegaconf import OmegaConf

from metalearn_cli.errors import ConfigError

pytestmark = [pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
                                 reason='needs the sweep extra: pip install -e ".[sweep]"'),
              pytest.mark.filterwarnings("ignore:.*is experimental")]  # Optuna's add_trial, used to fill a storage


def sweeper(storage, **sampler):
    return OmegaConf.create({
        "_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper", "storage": storage,
        "study_name": "s", "sampler": {"_target_": "optuna.samplers.TPESampler", "seed": 0, **sampler},
        "params": {"optimizer.lr": "tag(log, interval(0.0001, 0.01))", "trainer.train_way": "choice(20, 30, 60)"}})


def stored(storage, params_list, space):
    import optuna

    study = optuna.create_study(study_name="s", storage=storage, direction="maximize", load_if_exists=True)
    for params in params_list:
        study.add_trial(optuna.trial.create_trial(params=params, distributions=space, value=0.5))


def test_a_seeded_run_of_draws_already_in_the_study_is_refused_with_a_seed_that_draws_anew(tmp_path):
    from metalearn_cli.cli import optuna_study

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    config = sweeper(storage)
    optuna_study.refuse_repeated_trials(config, [])  # no study yet: nothing to repeat, and no file made
    assert not (tmp_path / "study.db").exists()
    space = optuna_study._search_space(config, ["debug=smoke"])
    assert list(space) == ["optimizer.lr", "trainer.train_way"]  # fixed overrides are not searched
    first = optuna_study._draws(config.sampler, 0, space, 2)
    stored(storage, first, space)  # an earlier sweep of 2 trials with seed 0
    with pytest.raises(ConfigError, match=r"holds 2 trials of study s, and hydra.sweeper.sampler.seed=0 would draw the "
                                          r"same points again.*add hydra.sweeper.sampler.seed=(\d+) \(its draws are new\)") as refused:
        optuna_study.refuse_repeated_trials(config, ["debug=smoke"])
    fresh = int(str(refused.value).rsplit("seed=", 1)[1].split(" ")[0])
    assert optuna_study._draws(config.sampler, fresh, space, 2) != first
    optuna_study.refuse_repeated_trials(sweeper(storage, seed=fresh), [])  # that seed is let through
    optuna_study.refuse_repeated_trials(sweeper(storage, seed=None), [])  # unseeded: draws differ each sweep
    random = sweeper(storage)
    random.sampler._target_ = "optuna.samplers.RandomSampler"  # every draw seeded: refused too
    with pytest.raises(ConfigError, match="would draw the same points again"):
        optuna_study.refuse_repeated_trials(random, [])


def test_one_equal_point_among_other_draws_is_chance_not_the_same_seed(tmp_path):
    """In a small discrete space a new seed may draw a point measured before; only the run of points is the seed's."""
    from metalearn_cli.cli import optuna_study

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    config = sweeper(storage)
    space = optuna_study._search_space(config, [])
    first, second = optuna_study._draws(config.sampler, 0, space, 2)
    other = next(d for s in range(1, 50) for d in optuna_study._draws(config.sampler, s, space, 1) if d != second)
    stored(storage, [first, other], space)  # the seed's first point, then not its second
    optuna_study.refuse_repeated_trials(config, [])


def test_tpe_past_its_random_start_follows_the_study_and_is_let_through(tmp_path):
    from metalearn_cli.cli import optuna_study

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    config = sweeper(storage, n_startup_trials=2)
    space = optuna_study._search_space(config, [])
    stored(storage, optuna_study._draws(config.sampler, 0, space, 2), space)
    optuna_study.refuse_repeated_trials(config, [])  # 2 completed: TPE's draws depend on them
