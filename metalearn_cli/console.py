"""What the console shows of an error: one line, what is wrong and how to fix it, with a "did you
mean" where a key, an option or a command is close to a real one."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional, TextIO

from metalearn_cli.errors import ConfigError, FileSystemError, MetalearnError


def as_user_error(exc: BaseException, written: str = "hydra.run.dir") -> MetalearnError:
    """An OSError or a config library's error raised inside a job, as a user error of ours
    (``written``: what the command writes, for the hint)."""
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return FileSystemError(f"cannot access {where}{exc.strerror or exc}; check that the path exists and is "
                               f"readable, and that {written} is writable")
    return ConfigError(one_line(exc))


def one_line(exc: BaseException) -> str:
    """The first line of an error and of its cause: what is wrong, without the traceback."""
    parts: list[str] = []
    chain: list[BaseException] = [exc]
    while len(chain) < 4 and (chain[-1].__cause__ or chain[-1].__context__) is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)  # type: ignore[arg-type]
    for e in chain:
        line = str(e).strip().splitlines()[0].strip().rstrip(".:") if str(e).strip() else ""
        if line and line not in parts and (len(parts) < 2 or e is chain[-1]):
            parts.append(line)
    options = getattr(exc, "options", None)  # MissingConfigException lists a group's valid options
    if options:
        missing_option = str(getattr(exc, "missing_cfg_file", "") or "").rsplit("/", 1)[-1]
        close = closest(missing_option, options)
        parts.append((f"did you mean {close}? " if close else "") + f"choose one of: {', '.join(options)}")
    if mismatch := preset_for_another(" ".join(parts)):
        return mismatch
    suggestion = did_you_mean(" ".join(parts)) or whole_number(" ".join(parts))
    if suggestion:
        parts.append(suggestion)
    missing = str(getattr(exc, "missing_cfg_file", "") or "")
    if missing.startswith(("hydra/sweeper", "hydra/launcher")):
        parts.append('the sweeper/launcher plugins come with the extras: pip install -e ".[sweep]" (optuna, joblib) '
                     'or ".[cluster]" (submitit)')
    return ": ".join(parts) or exc.__class__.__name__


class _HeldLines:
    """stderr with our own ``metalearn ...`` lines held back (for :func:`errors_once_under_torchrun`)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream, self.lines, self._partial = stream, [], ""

    def write(self, text: str) -> int:
        self._partial += text
        *complete, self._partial = self._partial.split("\n")
        for line in complete:
            if line.startswith("metalearn"):
                self.lines.append(line)
            else:
                self.stream.write(line + "\n")
        return len(text)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding: the real stream's
        return getattr(self.stream, name)


@contextlib.contextmanager
def errors_once_under_torchrun(rank: int, pause: float = 3.0) -> Iterator[None]:
    """Under torchrun every process checks the same config and data, so a user error would be printed
    once per process. A rank other than 0 holds its one-line errors and prints them, marked with its
    rank, only if it is still alive after ``pause`` seconds: torchrun ends every process within a
    tenth of a second of the first failure, so an error rank 0 shares is printed once (by rank 0), and
    one of this rank's own still reaches the user."""
    if rank == 0:
        yield
        return
    held = _HeldLines(sys.stderr)
    sys.stderr = held  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stderr = held.stream
        if held._partial:
            held.write("\n")
        if held.lines:
            time.sleep(pause)
            for line in held.lines:
                print(f"[rank {rank}] {line}", file=sys.stderr)


def whole_number(message: str) -> Optional[str]:
    """For ``1e3`` given to an integer key (YAML reads it as the float 1000.0): the integer to write."""
    import re

    match = re.search(r"override ([\w.]+)=\S+?:? Value '(-?\d+)\.0' of type 'float' could not be converted to Integer", message)
    return f"write it as an integer: {match.group(1)}={match.group(2)}" if match else None


def did_you_mean(message: str) -> Optional[str]:
    """For ``Key 'x' not in 'SomeParams'``: the closest key that dataclass does have."""
    import dataclasses
    import re

    match = re.search(r"Key '([^']+)' not in '([^']+)'", message)
    if not match:
        return None
    from metalearn_cli import schema
    from metalearn_cli.params import PARAMS  # torch-free: a config error never loads a model

    classes = [v for v in vars(schema).values() if dataclasses.is_dataclass(v)]
    classes += [params for entries in PARAMS.values() for params in entries.values()]
    seen = list(classes)
    while seen:  # nested dataclasses (ScheduleParams, ClipParams, ...)
        for f in dataclasses.fields(seen.pop()):
            kind = f.type if isinstance(f.type, type) else None
            if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                kind = type(f.default_factory())  # type: ignore[misc]
            if kind is not None and dataclasses.is_dataclass(kind) and kind not in classes:
                classes.append(kind)
                seen.append(kind)
    keys = [f.name for c in classes if c.__name__ == match.group(2) for f in dataclasses.fields(c)]
    close = closest(match.group(1), keys)
    if close:
        return f"did you mean '{close}'?"
    typed = re.search(r"override '([\w.]+)'", message)
    homes = [path for path in key_paths(match.group(2)) if path.rsplit(".", 1)[-1] == match.group(1)
             and (typed is None or path != typed.group(1))]
    if not homes or len(homes) > 3:
        return None
    where = (f"a key of {homes[0].rsplit('.', 1)[0]}" if "." in homes[0] else "a top-level key") if len(homes) == 1 else ""
    return "did you mean " + " or ".join(f"'{h}'" for h in homes) + "?" + (f" ({match.group(1)} is {where})" if where else "")


def key_paths(owner: str = "") -> list[str]:
    """Every key of a command as it is typed (``trainer.iterations``, ``optimizer.lr``, ``optimizer.schedule.warmup``):
    where a key typed under the wrong section belongs (``trainer.lr``). The command is the one whose schema holds the
    class ``owner`` (``EvalChoices``: eval's, where ``split`` is a key of its own); train's by default. Torch-free."""
    import dataclasses

    from metalearn_cli import schema
    from metalearn_cli.params import PARAMS

    def below(prefix: str, cls: Any, names: set[str]) -> list[str]:
        names.add(cls.__name__)
        out = []
        for f in dataclasses.fields(cls):
            kind = type(f.default_factory()) if f.default_factory is not dataclasses.MISSING else f.type  # type: ignore[misc]
            nested = isinstance(kind, type) and dataclasses.is_dataclass(kind)
            out += below(f"{prefix}{f.name}.", kind, names) if nested else [prefix + f.name]
        return out

    for root in (schema.TrainConfig, *schema.SCHEMAS.values()):
        names: set[str] = set()
        paths = below("", root, names)
        if root is schema.TrainConfig:  # its groups' components (optimizer.lr, encoder.width) are keys of train's
            for group, entries in PARAMS.items():
                paths += [p for params in entries.values() for p in below(f"{group}.", params, names)]
        if owner in names:
            return list(dict.fromkeys(paths))
    return []


def preset_for_another(message: str) -> Optional[str]:
    """For a preset's key that the component chosen beside it lacks (``experiment=maml_omniglot_5w1s strategy=mgd``:
    ``Key 'inner_lr' not in 'MGDParams'``): the preset was written for another component."""
    import re

    match = re.search(r"In '(experiment/[^']+)'.*Key '([^']+)' not in '([^']+)'", message)
    if not match:
        return None
    from metalearn_cli.params import PARAMS

    preset, key, params = match.groups()
    for group, entries in PARAMS.items():
        for name, cls in entries.items():
            if cls.__name__ == params:
                return (f"{preset.replace('/', '=', 1)} sets {group}.{key}, which {group}={name} does not have: the preset "
                        f"is written for another {group}; drop {group}={name}, or choose a preset of {group}={name} "
                        "(configs/experiment/)")
    return None


def first_names(names: list[str], limit: int = 3) -> str:
    """The first ``limit`` of ``names`` for a one-line message, ``, ...`` when there are more."""
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def shell_override(key: str, value: object) -> str:
    """``key=value`` as a user pastes it into a shell: bare when plain, else quoted for Hydra and for the shell
    (``'resume="my runs/été"'``), so a printed command works for a path with spaces or non-ASCII letters."""
    import re
    import shlex

    text = str(value)
    if re.fullmatch(r"[\w./@:+-]+", text, flags=re.ASCII):  # no comma: a,b is a sweep
        return f"{key}={text}"
    # Hydra's quoted values: a backslash is doubled only before a quote or at the end; ${ would interpolate
    escaped = re.sub(r'(\\+)(?="|$)', lambda m: m.group(1) * 2, text).replace('"', '\\"').replace("${", "\\${")
    return shlex.quote(f'{key}="{escaped}"')


def help_text(doc: str) -> str:
    """A module docstring's first paragraph as ``--help`` prints it: one line, without reST markup."""
    import re

    first = doc.strip().split("\n\n")[0].replace("\n", " ")
    return re.sub(r"(:\w+:)?`+([^`]+)`+", r"\2", first)


def closest(word: str, choices: list[str]) -> Optional[str]:
    """The choice nearest to a mistyped word, case aside (``MAML`` -> ``maml``), or None."""
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1)
    return lowered[close[0]] if close else None


def suggest(word: str, choices: list[str]) -> str:
    """``did you mean 'x'? `` for the closest choice, or nothing."""
    close = closest(word, choices)
    return f"did you mean '{close}'? " if close else ""


def folder_arg(text: str) -> Path:
    """An ``--out`` folder; an empty one (an unset shell variable) is refused, not read as the current folder.
    A leading ``~`` is the home folder, quoted or not, as in the ``key=value`` commands' values."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty (an unset shell variable?); name a folder")
    return Path(text).expanduser()


def int_list(text: str) -> list[int]:
    """A comma-separated list of whole numbers (``--seeds 0,1,2``), an argparse type: a mistake is argparse's one
    line, not a traceback later."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of whole numbers (e.g. 0,1,2)") from None
    if not values:
        raise argparse.ArgumentTypeError("is empty; give whole numbers separated by commas (e.g. 0,1,2)")
    return values


class OneLineParser(argparse.ArgumentParser):
    """argparse for the ``--flag`` commands, its errors one line of ours (usage goes to --help)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        if message.startswith("unrecognized arguments: "):  # key=value, the Hydra commands' grammar
            for word in message.split(": ", 1)[1].split():
                key, _, value = word.partition("=")
                if value and f"--{key.replace('_', '-')}" in self._option_string_actions:
                    message += f"; this command takes flags: write --{key.replace('_', '-')} {value}"
                    break
        raise ConfigError(f"{message} (see {self.prog} --help)")
