"""What a command line asks of the file system before Hydra runs it (Hydra-free, so tests call it).

The CLI reads the run dir a command will write once, in one canonical spelling
(:func:`~metalearn_cli.rundir.canonical`), and hands Hydra exactly that path: the lock, the
snapshot that undoes a refused command and the refusals below all look at the folder Hydra creates,
however the user spelled it (quoted, relative, through a symlink, with spaces or non-ASCII).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from omegaconf import OmegaConf

from metalearn_cli.errors import ConfigError
from metalearn_cli.rundir import CHECKPOINTS, STAGE, foreign, held, refuse_held

FLAG_COMMANDS = ("report", "sample-task", "compare")  # argparse commands (--flags), beside the Hydra ones (key=value)
MODIFIERS = ("experiment", "debug", "sweep")  # groups whose options set keys anywhere (@package _global_)

GROUPS = {  # the config groups each command accepts (its --help lists only these): train takes every folder of configs/
    "train": tuple(sorted(d.name for d in resources.files("metalearn_cli.configs").iterdir()
                          if d.is_dir() and d.name not in ("hydra", "__pycache__"))),
    "eval": ("episode",), "predict": (), "export": (),
}

# Hydra flags after which no run dir is written (they print and exit), or that choose another config
# whose run dir the CLI does not compose.
PRINTING_FLAGS = ("--cfg", "-c", "--info", "-i", "--help", "-h", "--resolve", "--shell-completion", "-sc")
CONFIG_FLAGS = ("--config-name", "-cn", "--config-dir", "-cd", "--config-path", "-cp", "--experimental-rerun")
VALUE_FLAGS = (*CONFIG_FLAGS, "--cfg", "-c", "--package", "-p", "--info", "-i")  # flags followed by a value


def rank() -> int:
    """This process's rank under torchrun (0 alone: rank 0 alone locks and writes the run dir)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def typed_keys(overrides: list[str]) -> dict[str, str]:
    """The config keys (or groups) a command line sets, each with the override as typed (for
    messages); ``"*"`` when a modifier may set any key."""
    keys: dict[str, str] = {}
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if key in MODIFIERS:
            keys["*"] = item
        elif key != "resume" and not key.startswith("hydra"):
            keys[key.split("@", 1)[0]] = item
    return keys


def check_debug(args: list[str], values: dict[str, Any]) -> None:
    """``debug=smoke`` runs on generated data: a data set or Lake's runs chosen on the same command
    line cannot be honoured."""
    if values.get("debug") != "smoke":
        return
    chosen = [a for a in args if a.startswith("dataset=") and a != "dataset=synthetic"]
    if chosen:
        raise ConfigError(f"debug=smoke runs on generated data (dataset=synthetic), so {chosen[0]} cannot apply; "
                          "drop one of them (for a short run on real data: trainer.iterations=50 eval.episodes=100)")
    if values.get("episode") == "lake20way1shot" or values.get("episode.protocol") == "lake":
        raise ConfigError("debug=smoke runs on generated data, which has no alphabets for Lake et al.'s within-alphabet "
                          "runs; drop one of them (Lake's runs need dataset=omniglot_background)")
    presets = [v for a in args if a.startswith("experiment=") for v in a.split("=", 1)[1].split(",")]  # swept too
    if any(p in group_options("experiment") for p in presets):  # a typo's error comes alone, without the note
        print("metalearn train: note: debug=smoke replaces the preset's data set by generated 20x20 images and "
              "shrinks its budget; its figures are not comparable with the published one", file=sys.stderr)


def group_options(group: str) -> list[str]:
    """The options of a config group: the YAML files in ``configs/<group>/``."""
    folder = resources.files("metalearn_cli.configs") / group
    return sorted(f.name[:-5] for f in folder.iterdir() if f.name.endswith(".yaml")) if folder.is_dir() else []


def check_groups(command: str, values: dict[str, Any]) -> None:
    """Two spellings Hydra answers with a traceback: a group set to null (``encoder=null``), and, in eval, a
    key of the episode while the episode is the checkpoint's own (``episode`` is null until an option is named)."""
    for group in GROUPS.get(command, ()):
        if group in values and values[group] is None:
            default = "to test on the checkpoint's own" if command == "eval" else "for the default"
            raise ConfigError(f"{group}=null: {group} is a config group and takes one of its options "
                              f"({', '.join(group_options(group))}); leave it out {default}")
    keys = [k for k in values if k.startswith("episode.")]
    if command == "eval" and keys and "episode" not in values:
        typed = values[keys[0]]
        valid = (typed in ("random", "lake") if keys[0] == "episode.protocol" else
                 isinstance(typed, int) and not isinstance(typed, bool) and typed >= 1)
        example = typed if valid else "random" if keys[0] == "episode.protocol" else "N"  # never an invalid value again
        raise ConfigError(f"{keys[0]}={values[keys[0]]} changes an episode option, but eval tests on the checkpoint's own "
                          f"episode unless one is named; name one first, e.g. episode=5way1shot {keys[0]}={example} "
                          f"(options: {', '.join(group_options('episode'))})")


def hydra_quote(text: str) -> str:
    """``text`` as one quoted Hydra override value that parses back to exactly ``text``."""
    escaped = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, text).replace("'", "\\'").replace("${", "\\${")
    return f"'{escaped}'"


HOME = re.compile(r"~[\w.-]*(?=/|$)")  # ~ or ~user, then a slash or nothing: what a shell expands


def _home_expanded(value: str) -> Optional[str]:
    """``value`` with a leading ``~`` expanded as a shell would, Hydra-quoted; None if it has none."""
    inner = value[1:-1] if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"" else value
    if not HOME.match(inner) or os.path.expanduser(inner) == inner:
        return None
    return hydra_quote(os.path.expanduser(inner))


def expand_home(args: list[str]) -> list[str]:
    """``key=~/x`` (or ``key="~/x"``, or ``key=[~/a,~/b]``) with the home folder written out: the
    shells other than bash leave a ``~`` after ``=`` alone, Hydra's grammar refuses it unquoted and keeps it quoted,
    and a path starting with a literal ``~`` folder is never what was meant."""
    out = []
    for before, arg in zip(["", *args], args):
        key, eq, value = arg.partition("=")
        if arg.startswith("-") or not eq or (before.startswith("-") and before.split("=", 1)[0] in VALUE_FLAGS):
            out.append(arg)
            continue
        if value.startswith("[") and value.endswith("]") and not re.search("['\"]", value):
            items = [_home_expanded(item.strip()) or item for item in value[1:-1].split(",")] if value[1:-1] else []
            out.append(f"{key}=[{','.join(items)}]" if items else arg)
            continue
        expanded = _home_expanded(value)
        out.append(f"{key}={expanded}" if expanded else arg)
    return out


def claim_fresh(path: Path) -> Path:
    """A default run dir of its own: ``path``, else ``path_1``, ``path_2``, ... created atomically
    (``mkdir`` fails if another process took the name first), so two runs started in the same second
    never share one."""
    for i in range(10_000):
        candidate = path if i == 0 else path.with_name(f"{path.name}_{i}")
        try:
            candidate.mkdir(parents=True, exist_ok=False)
            return candidate
        except FileExistsError:
            continue
        except OSError as exc:  # a read-only working directory, a full disk
            raise ConfigError(f"cannot create the default run dir {candidate} ({exc.strerror or exc}); run from a "
                              "writable folder, or pass hydra.run.dir=DIR") from None
    raise ConfigError(f"no free run dir next to {path}; pass hydra.run.dir=DIR")


def refuse_foreign_target(command: str, run_dir: Path, resuming: bool) -> None:
    """A new training run, ``eval``, ``predict`` and ``export`` write a run dir of their own: never a
    training run's, and never an earlier command's (checked before Hydra writes ``.hydra/``)."""
    outer = next((d for d in run_dir.parents if held(d)), None)
    if outer is not None:
        if resuming and run_dir.name == STAGE and run_dir.parent == outer:  # a stage goes on with its run
            raise ConfigError(f"{run_dir} is the pre-training stage of the run {outer}; a stage goes on with its run: "
                              f"metalearn train resume={outer}")
        raise ConfigError(f"{run_dir} is inside the run {outer}; give metalearn {command} a hydra.run.dir of its own, "
                          "outside any run dir")
    if command == "train":
        if not resuming:
            refuse_held(run_dir)
            refuse_foreign_files(command, run_dir)
        return
    found = held(run_dir)
    if found and stopped_before_its_end(command, run_dir):
        return  # the same command stopped there: run again, it starts that dir over (what the stop line says)
    if found:
        kind = "a training run" if (run_dir / CHECKPOINTS).is_dir() else "an earlier run"
        raise ConfigError(f"{run_dir} is {kind} ({', '.join(found[:3])}); metalearn {command} writes its own files, so "
                          f"give it another hydra.run.dir (or leave it out: outputs/{command}/<time>)")
    refuse_foreign_files(command, run_dir)


def stopped_before_its_end(command: str, run_dir: Path) -> bool:
    """Whether ``run_dir`` is an eval, predict or export of ``command`` that was stopped (Ctrl-C, SIGTERM)
    before it wrote anything but its record and log: nothing in it is lost when it runs again."""
    from metalearn_cli.files import read_json
    from metalearn_cli.rundir import STATUS

    if read_json(run_dir / STATUS).get("status") != "interrupted" or not (run_dir / f"{command}.log").is_file():
        return False  # its log names the command that ran there
    return all(p.name in {".hydra", ".lock", STATUS, f"{command}.log"} for p in run_dir.iterdir())


def refuse_foreign_files(command: str, run_dir: Path) -> None:
    """A run dir is the run's alone: a folder of other files (a project, a home dir) is not written into."""
    found = foreign(run_dir)
    if found:
        more = f" and {len(found) - 3} more" if len(found) > 3 else ""
        raise ConfigError(f"{run_dir} holds files that are not a metalearn run's ({', '.join(found[:3])}{more}); a run "
                          f"writes into a new or empty folder of its own, so give metalearn {command} another "
                          f"hydra.run.dir (or leave it out: outputs/{command}/<time>)")


def with_run_dir(args: list[str], run_dir: Path) -> list[str]:
    """``args`` with every ``hydra.run.dir=`` replaced by one naming ``run_dir`` in Hydra's quoting."""
    return add_override(args, f"hydra.run.dir={hydra_quote(str(run_dir))}")


def add_override(args: list[str], override: str) -> list[str]:
    """``args`` with ``override`` beside the other overrides (Hydra's parser takes them as one run
    of words: one after a flag such as ``-cd DIR`` that follows them would not parse), in place of
    any the user gave for the same key (``+``/``++``/``~`` spellings included)."""
    key = override.split("=", 1)[0]
    kept = [a for a in args if a.startswith("-") or a.split("=", 1)[0].lstrip("+~") != key]
    places = [i for i, a in enumerate(kept) if "=" in a and not a.startswith("-")
              and not (i and kept[i - 1].split("=", 1)[0] in VALUE_FLAGS)]
    at = places[-1] + 1 if places else 0  # none yet: first, where no flag with an optional value (--info) takes it
    return [*kept[:at], override, *kept[at:]]


def flags_first(args: list[str]) -> list[str]:
    """``args`` with every flag (and a value flag's value) before the overrides, in their orders: Hydra's parser
    takes the overrides as one run of words, so ``train debug=smoke -m seed=0,1`` would fail on ``seed=0,1``; its
    meaning is plain, so it runs as ``train -m debug=smoke seed=0,1``."""
    flags: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("-"):
            flags.append(arg)
            optional = arg in ("--info", "-i")  # its value is optional: a following override is not it
            if arg in VALUE_FLAGS and i + 1 < len(args) and not (optional and ("=" in args[i + 1] or args[i + 1][:1] == "-")):
                flags.append(args[i + 1])
                i += 1
            elif optional:  # bare, it would take the first override as its value: Hydra's own default, said
                flags.append("all")
        else:
            overrides.append(arg)
        i += 1
    return [*flags, *overrides]


def flag_present(args: list[str], flags: tuple[str, ...]) -> Optional[str]:
    return next((a for a in args if a.split("=", 1)[0] in flags), None)


def sweep_requested(args: list[str]) -> bool:
    """Whether a command line asks for a sweep: ``-m``, ``--multirun`` or ``hydra.mode=MULTIRUN``."""
    return any(a in ("-m", "--multirun") or a.replace(" ", "").upper() == "HYDRA.MODE=MULTIRUN" for a in args)


HYDRA_FLAGS = (*PRINTING_FLAGS, *VALUE_FLAGS, "--hydra-help", "--version", "--run", "-r", "--multirun", "-m")


def refuse_unknown_flags(command: str, args: list[str], keys: Callable[[str], list[str]]) -> None:
    """``--iterations 5`` (other tools' habit) is one line saying how to write it here: ``trainer.iterations=5``."""
    for i, arg in enumerate(args):
        name = arg.split("=", 1)[0]
        if not arg.startswith("--") or name in HYDRA_FLAGS:
            continue
        value = arg.split("=", 1)[1] if "=" in arg else (args[i + 1] if i + 1 < len(args) and "=" not in args[i + 1] else "...")
        word = name[2:].replace("-", "_")
        found = [k for k in keys(command) if k == word or k.endswith("." + word)]
        hint = f"write it as {' or '.join(f'{k}={value}' for k in found[:2])}" if found else "settings are key=value"
        raise ConfigError(f"{name} is not a flag of metalearn {command}; {hint} (see metalearn {command} --help)")


@contextlib.contextmanager
def hydra_argv(argv: list[str]) -> Iterator[None]:
    """``sys.argv`` as Hydra reads it, and Hydra's errors raised to us instead of its multi-line report."""
    saved_env, saved_argv = os.environ.get("HYDRA_FULL_ERROR"), sys.argv
    os.environ["HYDRA_FULL_ERROR"] = "1"
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved_argv
        if saved_env is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_env


def required(cfg: Any, command: str, *keys: str) -> None:
    """Every path ``command`` needs is given, and none is empty (``checkpoint=$UNSET`` is not the working directory)."""
    missing = [k for k in keys if OmegaConf.is_missing(cfg, k)]
    if missing:
        raise ConfigError(f"metalearn {command} needs {' and '.join(f'{k}=...' for k in missing)} (see metalearn {command} --help)")
    empty = [k for k in keys if not str(OmegaConf.select(cfg, k) or "").strip()]
    if empty:
        raise ConfigError(f"{empty[0]}= is empty (an unset shell variable?); metalearn {command} needs a path there "
                          f"(see metalearn {command} --help)")
