"""An Optuna study continued from its storage (``hydra.sweeper.storage``) by a new sweep.

A seeded sampler starts its random stream afresh in each process: TPE's first ``n_startup_trials`` (10) are
random draws, so a second sweep with the same seed proposes the points the first sweep measured, one by one,
and spends its trials repeating them (runs are deterministic: the same results again). Such a sweep is refused
before any job, with a seed whose draws are new. Whether it would repeat is found as Optuna would draw: the
sampler's first draws over the sweep's search space, made here in memory, against the trials the storage holds.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any

from metalearn_cli.errors import ConfigError

SEEDS_TRIED = 100  # seeds looked at for one whose draws are new


def refuse_repeated_trials(sweeper: Any, overrides: list[str]) -> None:
    """Refuse a sweep whose seeded random draws would repeat trials its study's storage holds (TPE's until
    ``n_startup_trials`` have completed, a seeded RandomSampler's always); ``overrides``: the command line's
    own (not hydra.*) key=value overrides, which Optuna's sweeper adds to ``hydra.sweeper.params``."""
    sampler = sweeper.get("sampler") or {}
    seed, target = sampler.get("seed"), str(sampler.get("_target_", ""))
    random_draws = target.endswith(("TPESampler", "RandomSampler"))
    if not sweeper.get("storage") or seed is None or not random_draws or "optuna" not in str(sweeper.get("_target_", "")).lower():
        return
    with _quiet():
        trials = _stored_trials(sweeper)
        completed = sum(t.state.name == "COMPLETE" for t in trials)
        if not trials or (target.endswith("TPESampler") and completed >= int(sampler.get("n_startup_trials", 10))):
            return  # TPE's draws follow the study from there on
        seen = [t.params for t in trials]
        space = _search_space(sweeper, overrides)
        if not space or not _repeats(_draws(sampler, seed, space, len(seen)), seen):
            return
        fresh = next((s for s in range(seed + 1, seed + SEEDS_TRIED)
                      if not _repeats(_draws(sampler, s, space, len(seen)), seen)), None)
    fix = (f"add hydra.sweeper.sampler.seed={fresh} (its draws are new)" if fresh is not None
           else "add hydra.sweeper.sampler.seed=N with a seed its sweeps have not used")
    raise ConfigError(f"hydra.sweeper.storage={sweeper.storage} holds {len(trials)} trials of study {sweeper.study_name}, "
                      f"and hydra.sweeper.sampler.seed={seed} would draw the same points again (a seeded sampler starts "
                      f"its draws afresh in each sweep); to continue the study with new points, {fix}")


def _stored_trials(sweeper: Any) -> list[Any]:
    """The study's trials in its storage (none where the study or the file is not there yet)."""
    import optuna

    storage = str(sweeper.storage)
    if storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///"):]).expanduser().is_file():
        return []  # not there yet: opening it would create it
    try:
        return optuna.load_study(study_name=str(sweeper.study_name), storage=storage).trials
    except Exception:  # noqa: BLE001  no such study yet, or storage Optuna itself will report when the sweep opens it
        return []


def _search_space(sweeper: Any, overrides: list[str]) -> dict[str, Any]:
    """The distributions Optuna's sweeper suggests from, in its order (hydra.sweeper.params, then the command
    line's overrides), fixed values left out."""
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    params = [f"{key!s}={value}" for key, value in (sweeper.get("params") or {}).items()]
    space, fixed = create_params_from_overrides([*params, *overrides])
    return {name: dist for name, dist in space.items() if name not in fixed}


def _draws(sampler: Any, seed: int, space: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """The params of a fresh study's first trials (``count``, at most 3) from this sampler with ``seed``, as the
    sweeper suggests them: random draws, as TPE's before its ``n_startup_trials``."""
    import optuna
    from hydra.utils import instantiate

    study = optuna.create_study(sampler=instantiate({**sampler, "seed": seed}))
    drawn = []
    for _ in range(min(count, 3)):
        trial = study.ask()
        for name, distribution in space.items():
            trial._suggest(name, distribution)  # noqa: SLF001  the sweeper's own call (_configure_trials)
        drawn.append(dict(trial.params))
    return drawn


def _repeats(drawn: list[dict[str, Any]], seen: list[dict[str, Any]]) -> bool:
    """Whether the stored trials hold these draws one after another, as an earlier sweep with the same seed left them
    (a single equal point in a small discrete space may be chance; the same run of points is the seed)."""
    return any(seen[i:i + len(drawn)] == drawn for i in range(len(seen) - len(drawn) + 1))


@contextlib.contextmanager
def _quiet() -> Any:
    """Optuna logs each study it creates or loads: these in-memory ones are not the user's."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's ExperimentalWarning and the like, of these probes
            yield
    finally:
        optuna.logging.set_verbosity(level)
