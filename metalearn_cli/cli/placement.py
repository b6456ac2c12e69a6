"""Before Hydra runs: each override read as Hydra reads it, the run dir placed and checked, ``--help``."""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from metalearn_cli.command_help import render_help
from metalearn_cli.command_line import (
    CONFIG_FLAGS, PRINTING_FLAGS, VALUE_FLAGS, add_override, claim_fresh, flag_present, hydra_quote, rank, refuse_foreign_target,
    sweep_requested, with_run_dir,
)
from metalearn_cli.console import one_line
from metalearn_cli.errors import ConfigError
from metalearn_cli.cli.optuna_study import refuse_repeated_trials
from metalearn_cli.cli.sweep_dirs import check_sweep, sweep_overrides
from metalearn_cli.rundir import canonical, held, refuse_replacing
from metalearn_cli.schema import flatten


claimed: Optional[Path] = None  # the default run dir this command made (removed if refused)


def override_values(args: list[str]) -> dict[str, Any]:
    """The value of each ``key=value`` override as Hydra reads it (quotes removed, escapes applied)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, values = OverridesParser.create(), {}
    sweep = sweep_requested(args)
    for before, arg in zip(["", *args], args):
        if arg.startswith("-") or (before.startswith("-") and before.split("=", 1)[0] in VALUE_FLAGS):
            continue
        if arg.startswith("~") and not arg[1:].startswith("hydra"):
            raise ConfigError(f"{arg!r} deletes {arg[1:].split('=', 1)[0]} from the config (Hydra's ~key); every key of "
                              "metalearn's config is needed, so set it instead: key=value, or key=null where a key "
                              "allows none (each key's choices: --help)")
        if "=" not in arg:
            raise ConfigError(f"{arg!r} is not key=value; if it is the rest of a value with spaces, quote the whole value "
                              "inside the shell's quotes: 'key=\"my folder\"' (see docs/faq.md)")
        try:
            override = parser.parse_override(arg)
        except HydraException as exc:
            key, value = arg.split("=", 1)
            char = re.search(r"token recognition error at: '(.)'", str(exc))
            named = f"{char.group(1)!r} needs" if char and not char.group(1).isspace() else "it needs"
            hint = ("a list needs both brackets: key=[a,b]" if value.count("[") != value.count("]") else
                    f"quote each item that needs it, inside the list: '{key}=[a,\"my folder/ü.pt\"]'" if value.startswith("[") else
                    f"{named} the value in quotes inside the shell's: '{key}=\"{value}\"'"
                    if value.strip() == value and not re.search("['\"]", value) else
                    "a value with spaces or non-ASCII characters needs quotes inside the shell's: 'key=\"my folder/ü\"'")
            raise ConfigError(f"cannot read {arg!r} ({one_line(exc)}); {hint} (see docs/faq.md)") from None
        if override.is_sweep_override() and not sweep:
            raise ConfigError(f"{arg!r} gives several values, which Hydra reads as a sweep: add -m to run one job per "
                              "value, or give one value (a list is key=[a,b], in brackets)")
        if not override.is_delete() and not override.is_sweep_override():
            values[override.key_or_group] = override.value()
    return values


def check_resume_target(resume: Optional[str], named: Optional[str]) -> None:
    """``resume=`` names one run (its dir or a checkpoint in it), or ``true`` with ``hydra.run.dir``; anything
    else is refused with what it is and what to pass."""
    from metalearn_cli.resume import run_dir_of

    if resume == "true" and named is None:
        raise ConfigError("resume=true continues the run in hydra.run.dir, and none is named (the default is a new "
                          "dir); pass resume=<run dir>, or resume=true hydra.run.dir=<run dir>")
    if resume in (None, "true"):
        return
    if not Path(resume).exists():
        guess = str(resume).lower() in ("yes", "y", "on", "1", "no", "n", "off", "0")
        raise ConfigError(f"resume={resume} " + ("is not a choice: resume takes true, false or a run dir" if guess else
                          "does not exist; pass the run dir to continue (or its checkpoints/last.pt)"))
    if (Path(resume) / "multirun.yaml").is_file():
        from metalearn_cli.sweep_record import sweep_again

        raise ConfigError(f"resume={resume} is a sweep's dir, not one run's; finish the sweep with: "
                          f"{sweep_again(canonical(resume))}")
    if not held(run_dir_of(Path(resume))):
        raise ConfigError(f"resume={resume} is not a run dir or a checkpoint inside one; pass the run dir a "
                          "training run wrote (or its checkpoints/last.pt)")


def place_run(command: str, args: list[str], values: dict[str, Any], scratch: list[Path]) -> tuple[list[str], Optional[Path]]:
    """The run dir a single job will write, in its canonical spelling, and the arguments that hand
    Hydra exactly that path (None: a sweep, or a flag that writes no run dir). A default dir is
    claimed fresh; a dir named on the command line is checked before Hydra writes anything in it."""
    from metalearn_cli.resume import refuse_another_dir, resume_value, run_dir_of

    multirun = check_sweep(command, args, values)
    if multirun and not flag_present(args, PRINTING_FLAGS) and any(a.split("=", 1)[0].lstrip("+~").startswith(("sweep", "hydra/sweeper", "hydra.sweeper.")) for a in args):
        sweeper = composed_sweeper(command, args)  # a sweep=/hydra.sweeper option: an Optuna study's storage?
        if sweeper is not None:
            refuse_repeated_trials(sweeper, sweep_overrides(args))
    if multirun and not flag_present(args, PRINTING_FLAGS) and isinstance(swept := values.get("hydra.sweep.dir"), str) \
            and swept.strip() and "${" not in swept:  # one spelling, as a run dir's: symlinks and ".." resolved once
        return add_override(args, f"hydra.sweep.dir={hydra_quote(str(canonical(swept)))}"), None
    if multirun or flag_present(args, PRINTING_FLAGS) or flag_present(args, CONFIG_FLAGS):
        return args, None
    named = values.get("hydra.run.dir")
    if named is not None and (not isinstance(named, (str, int, float)) or str(named).strip() in ("", "???")):
        raise ConfigError(f"hydra.run.dir={named!r} is not a folder; name a folder for the run, or leave it out for "
                          "outputs/<command>/<time>")
    named = None if named is None else str(named)
    resume = resume_value(values.get("resume"))
    check_resume_target(resume, named)
    if resume not in (None, "true"):
        named = named or str(run_dir_of(Path(resume)))  # resume=<run> continues in that run's own dir
    if rank() > 0 and named is None:
        scratch.append(Path(tempfile.mkdtemp(prefix="metalearn-rank-")))  # Hydra creates its run dir; rank 0 writes the real one
        return with_run_dir(args, scratch[-1]), None
    if named is None or "${" in str(named):
        resolved = composed_run_dir(command, args)
        if resolved is None:
            return args, None  # the config does not compose: Hydra reports why before writing anything
        if named is None:
            global claimed  # noqa: PLW0603
            claimed = claim_fresh(canonical(resolved))
            return with_run_dir(args, claimed), claimed
        named = resolved
    run_dir = canonical(named)
    if command == "export" and isinstance(values.get("out"), str):
        refuse_replacing(values["out"])
    if command == "predict":
        refuse_inside_task(run_dir, values)
    if resume not in (None, "true"):
        refuse_another_dir(resume, Path(resume), run_dir)
    if rank() > 0:
        return with_run_dir(args, run_dir), None
    refuse_foreign_target(command, run_dir, resuming=resume is not None)
    return with_run_dir(args, run_dir), run_dir


def refuse_inside_task(run_dir: Path, values: dict[str, Any]) -> None:
    """A predict run dir inside its support or query folder would be read as a class folder of the task."""
    for key in ("support", "query"):
        folder = values.get(key)
        if isinstance(folder, str) and folder.strip() and Path(folder).is_dir():
            task = canonical(folder)
            if run_dir == task or task in run_dir.parents:
                raise ConfigError(f"hydra.run.dir={run_dir} lies inside {key}={folder}, where its files would be read as "
                                  "a class of the task; put the run dir outside the task's folders")


def config_keys(command: str) -> list[str]:
    """Every dotted key of ``command``'s default config (for "write it as key=value" hints)."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="metalearn_cli.configs", version_base="1.3"):
        return list(flatten(OmegaConf.to_container(compose(config_name=command), resolve=False)))


def compose(command: str, args: list[str]) -> DictConfig:
    """``command``'s config with the overrides in ``args``, as Hydra composes it (``hydra`` node included)."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="metalearn_cli.configs", version_base="1.3"):
        cfg = compose(config_name=command, overrides=[a for a in args if not a.startswith("-")], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        return cfg


def composed_sweeper(command: str, args: list[str]) -> Optional[DictConfig]:
    """``hydra.sweeper`` as Hydra will compose it (the swept overrides left out: composing takes one value of each,
    and they do not change the sweeper's node); None where the config does not compose (Hydra says why)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides([a for a in args if not a.startswith("-")])
        single = [o.input_line for o in parsed if not o.is_sweep_override()]
        return OmegaConf.select(compose(command, single), "hydra.sweeper")
    except (HydraException, OmegaConfBaseException, ValueError):
        return None


def composed_run_dir(command: str, args: list[str]) -> Optional[str]:
    """``hydra.run.dir`` resolved as Hydra will resolve it (interpolations, the default's time)."""
    try:
        return str(OmegaConf.select(compose(command, args), "hydra.run.dir"))
    except (HydraException, OmegaConfBaseException, ValueError):
        return None


def print_help(command: str, args: list[str]) -> int:
    """``--help``: the command's help template and its config composed with the overrides given,
    in a quarter of a second (Hydra's own lists every group of every package, 1.5 s)."""
    try:
        cfg = compose(command, args)
    except (HydraException, OmegaConfBaseException) as exc:
        print(f"metalearn {command}: config error: {one_line(exc)} (see metalearn {command} --help)", file=sys.stderr)
        return 2
    template = str(OmegaConf.select(cfg, "hydra.help.template"))
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    print(render_help(command, template, OmegaConf.to_yaml(cfg, resolve=flag_present(args, ("--resolve",)) is not None)), end="")
    return 0


def refused_config(command: str, args: list[str], adjusted: Optional[list[str]] = None) -> Optional[str]:
    """Why ``metalearn train`` would refuse the config that ``--cfg`` printed, or None: Hydra prints a
    config without running the job, where every range check is made, so a config checked by printing
    it would otherwise fail only once submitted. ``adjusted`` gets what a run changes of the printed config
    (:func:`~metalearn_cli.smoke.keep_what_was_asked`, :func:`~metalearn_cli.pretrain.epochs_note`), in words."""
    if command != "train" or sweep_requested(args):
        return None
    import torch

    from metalearn_cli.assemble import build_strategy, freeze_encoder, resolve_bn_mode
    from metalearn_cli.command_line import typed_keys
    from metalearn_cli.config_checks import check_typed_pretrain_keys, validate
    from metalearn_cli.data import DATASETS
    from metalearn_cli.errors import MetalearnError
    from metalearn_cli.pretrain import epochs_note
    from metalearn_cli.smoke import keep_what_was_asked

    overrides = [a for before, a in zip(["", *args], args)
                 if not a.startswith("-") and not (before.startswith("-") and before in VALUE_FLAGS)]
    try:
        cfg = compose(command, overrides)
        run = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        said = keep_what_was_asked(run, cfg.hydra.runtime.choices, typed_keys(overrides))  # as the run would
        if adjusted is not None:
            adjusted.extend([*said, *filter(None, [epochs_note(run)])])
        validate(run)
        check_typed_pretrain_keys(run, typed_keys(overrides), cfg.hydra.runtime.choices.get("pretrain"))
        strategy = build_strategy(run, DATASETS.params_of(run.dataset).image_format().shape, torch.device("cpu"))  # fit
        resolve_bn_mode(run.eval.bn_mode, strategy)
        if run.trainer.freeze_encoder:
            freeze_encoder(strategy, run)
    except (MetalearnError, HydraException, OmegaConfBaseException) as exc:
        return one_line(exc) if not isinstance(exc, MetalearnError) else str(exc)
    return None
