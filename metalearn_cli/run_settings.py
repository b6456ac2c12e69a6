"""What setting a run dir is, for ``report`` and ``compare``: its flat config (an eval or predict dir's
through the run that trained its checkpoint, or the export it read), the keys that never make two
runs different settings, and labels that tell settings apart by what differs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from metalearn_cli.compat import migrate_config
from metalearn_cli.run_records import read_run
from metalearn_cli.rundir import STAGE
from metalearn_cli.schema import flatten


def record_of(run: Path) -> dict[str, Any]:
    """:func:`~metalearn_cli.run_records.read_run`, with a resumed training run's config as it last ran
    (``trainer.iterations=8`` after a resume that raised it), not as it began; a pre-training stage
    (``<run>/pretrain``) has its run's config, and ``stage_of`` names the run."""
    from metalearn_cli.resume import last_config, last_overrides

    record = read_run(run)
    if record["command"] == "train" and not record["config"] and run.name == STAGE and (run.parent / ".hydra").is_dir():
        owner = record_of(run.parent)  # a pre-training stage has no .hydra/ of its own: its run's settings
        record.update(config=owner["config"], choices=owner["choices"], overrides=owner["overrides"], stage_of=run.parent)
    elif record["command"] == "train":
        record["config"] = last_config(run, record["config"])
        record["overrides"] = last_overrides(run, record["overrides"])
    return record


def trained_by(record: dict[str, Any]) -> dict[str, Any]:
    """The record of the run whose checkpoint an eval or predict dir used (empty when gone or for a
    training run): where such a dir's dataset, encoder, decoder and strategy are written."""
    from metalearn_cli.resume import run_dir_of

    checkpoint = record["results"].get("checkpoint") or record["config"].get("checkpoint")  # unfinished: as it was given
    if record["command"] not in ("eval", "predict") or not isinstance(checkpoint, str):
        return {}
    checkpoint = Path(record.get("cwd") or ".") / Path(checkpoint).expanduser()  # a relative one from where the command ran
    source = trained_run(run_dir_of(checkpoint))
    return source or exported_by(checkpoint)


def trained_run(folder: Path) -> dict[str, Any]:
    """``folder``'s record (:func:`record_of`) when it is a run with a config; else empty."""
    record = record_of(folder) if folder.is_dir() else {}
    return record if record and record["config"] else {}


def exported_by(export: Path) -> dict[str, Any]:
    """An export's trained run (its ``exported_from``), else the config the export carries; empty when unreadable."""
    from metalearn_cli.checkpoint import read_state
    from metalearn_cli.errors import CheckpointError
    from metalearn_cli.resume import run_dir_of

    try:
        state = read_state(export)
    except CheckpointError:
        return {}
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
        return {}
    origin = trained_run(run_dir_of(Path(str(state.get("exported_from", "")))))
    return origin or {"command": "train", "config": state["config"], "choices": {}, "overrides": [], "results": {}, "status": "completed",
            "metrics": []}


def setting_overrides(record: dict[str, Any], trained: dict[str, Any]) -> str:
    """The overrides that say what a run's setting is, bookkeeping aside. An eval or predict dir's are those of
    the run that trained its checkpoint, then what the dir's own command changed (``eval episode=5way5shot``):
    its ``checkpoint=`` names one seed's run, which would label the setting of all its seeds."""
    own = [o for o in record["overrides"] if not o.startswith(("hydra.", "resume="))]
    if not trained:
        return " ".join(own)
    base = [o for o in trained["overrides"] if not o.startswith(("hydra.", "resume=", "seed="))]
    changed = [o for o in own if o.split("=", 1)[0].lstrip("+~") not in OWN_KEYS_IGNORED]
    return " ".join([*base, record["command"], *changed])


def setting_of(row: dict[str, Any]) -> str:
    """What a run was, without its seed: runs of one setting differ only in ``seed=``."""
    overrides = row.get("_setting_overrides", row["overrides"])  # an eval's: its trained run's (report's rows)
    setting = " ".join(o for o in overrides.split() if not o.startswith("seed=")) or "(defaults)"
    return f"{setting} [{row['dataset']} {row['encoder']} {row['decoder']} {row['strategy']} {row['episode']}]"


BOOKKEEPING = ("seed", "resume", "device", "threads", "trainer.progress", "trainer.log_every", "trainer.checkpoint_every",
               "reference", "logger")  # keys that never make two runs different settings


def bookkeeping(key: str) -> bool:
    return any(key == b or key.startswith(b + ".") for b in BOOKKEEPING)


OWN_KEYS_IGNORED = ("checkpoint", "dataset_root", "support", "query", "show")  # where, not what, an eval or predict dir tested


def _today(config: Any) -> Any:
    """A training run's saved config in today's layout (options added since take the defaults that keep what the run
    did); an eval or predict dir's as saved, whose unset keys are null: only what its command typed."""
    return migrate_config(config) if isinstance(config, dict) and "trainer" in config else config


def setting_config(run: Path, info: Optional[dict[str, Any]] = None, source: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """A run's flat config. An eval or predict dir's is the config of the run that trained its checkpoint
    with what the dir's own command set on top (the ``eval.*`` keys it typed, another ``episode``, an
    ``ensemble``, a split other than ``test``) and ``command``: so evaluations of one recipe's seeds are
    one setting, and a label shows what the test changed (``eval.tta_shift=3``), not the paths."""
    info = info if info is not None else record_of(run)  # the caller's record of it, when it has read it already
    config = with_recipe(flatten(_today(info["config"])), info)  # today's layout: an older run is not another setting
    if info.get("stage_of"):  # its run's settings, but not its run: a stage tests the pre-trained encoder alone
        config["stage"] = STAGE
    source = source if source is not None else trained_by(info)  # the caller's, when it has looked it up already
    if not source:
        return config
    merged = {k: v for k, v in with_recipe(flatten(_today(source["config"])), source).items() if not bookkeeping(k)}
    if source.get("stage_of"):  # the checkpoint tested is a stage's
        merged["stage"] = STAGE
    merged.update({k: v for k, v in config.items()
                   if v is not None and v != [] and k not in OWN_KEYS_IGNORED and (k, v) != ("split", "test")})
    merged["command"] = info["command"]
    return merged


def with_recipe(config: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the pre-training option picked (``pretrain=rfs``; ``none``) as ``pretrain.name``, so a label
    names the option, as it names a strategy, not the settings in which options differ (``pretrain.kind``, the
    optimizer's keys)."""
    picked = (record.get("choices") or {}).get("pretrain")
    return {**config, "pretrain.name": picked} if isinstance(picked, str) and picked else config


COMMON = "(common settings)"  # the label of runs whose configs differ in nothing but seed and bookkeeping


def by_setting(labels: list[str], seeds: list[Any], names: list[str],
               tested: Optional[list[bool]] = None) -> dict[str, list[int]]:
    """Run indices grouped by setting label, groups in the order they first come. Of the runs of one setting
    and seed (a rerun, or runs apart only in bookkeeping such as ``logger``), one holds the seed: the first
    tested one by name, whatever the order given; each other stands alone as ``label (name)``, since one seed
    twice is no spread over seeds (``report``'s charts and seeds table and ``compare`` alike). Runs without
    a seed (predict dirs) are never split."""
    tested = tested if tested is not None else [True] * len(labels)
    owner: dict[tuple[str, Any], int] = {}
    for i in sorted(range(len(labels)), key=lambda i: (not tested[i], names[i])):
        if seeds[i] is not None:
            owner.setdefault((labels[i], seeds[i]), i)
    groups: dict[str, list[int]] = {}
    for i, (label, seed) in enumerate(zip(labels, seeds)):
        key = label if seed is None or owner[(label, seed)] == i else f"{label} ({names[i]})"
        groups.setdefault(key, []).append(i)
    return groups


def config_labels(runs: list[Path], rows: list[dict[str, Any]]) -> list[str]:
    """Each run's setting by the config values that tell it from the others (seed and bookkeeping
    aside), read from the runs' own configs; runs without a readable config fall back on overrides."""
    configs = [setting_config(run) for run in runs]
    if sum(map(bool, configs)) >= 2 and not all(configs) and len(rows) == len(runs):  # e.g. a refused eval dir
        known = iter(config_labels([r for r, c in zip(runs, configs) if c], [row for row, c in zip(rows, configs) if c]))
        return [next(known) if c else f"{run.name} (no config recorded)" for run, c in zip(runs, configs)]
    if len(runs) < 2 or not all(configs):
        return short_settings(rows)
    keys = sorted({k for c in configs for k in c if not bookkeeping(k)})
    differ = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]
    # A component that differs is named by its group (strategy=maml; encoder=conv4_fast, the config file picked,
    # where two files configure one component), not by each of its parameters, unless runs of the same
    # component differ in one (two FEAT recipes beside a ProtoNet).
    files = {g for g in ("dataset", "encoder", "decoder")
             if all(r.get(g) for r in rows) and len({r.get(g) for r in rows}) > 1 and len(rows) == len(configs)}
    swapped = {k[: -len(".name")] for k in differ if k.endswith(".name")} | files

    def component(i: int, group: str) -> Any:
        return rows[i][group] if group in files else configs[i].get(group + ".name")

    def within_component(k: str, group: str) -> bool:
        values: dict[str, set[str]] = {}
        for i, c in enumerate(configs):
            values.setdefault(repr(component(i, group)), set()).add(repr(c.get(k)))
        return any(len(v) > 1 for v in values.values())

    shown = [k for k in differ if all(not k.startswith(g + ".") or within_component(k, g) for g in swapped)]
    return [" ".join([*(f"{g}={component(i, g)}" for g in sorted(swapped)), *(f"{k}={_brief(c.get(k))}" for k in shown if k in c)])
            or COMMON for i, c in enumerate(configs)]


def _brief(value: Any) -> str:
    """A value for a label: a long list (a folder run's recorded classes) by its first items and its length."""
    if isinstance(value, list) and len(value) > 4:
        return f"[{', '.join(map(str, value[:2]))}, ... {len(value)} items]"
    return str(value)


def short_settings(rows: list[dict[str, Any]]) -> list[str]:
    """Each run's setting by the overrides that tell it from the others (seed aside): legends stay short."""
    tokens = [[o for o in r["overrides"].split() if not o.startswith("seed=")] for r in rows]
    common = set.intersection(*(set(t) for t in tokens)) if tokens else set()
    short = [" ".join(o for o in t if o not in common) for t in tokens]
    full = [setting_of(r) for r in rows]
    if len(set(short)) != len(set(full)):  # the overrides alone do not tell the settings apart
        return full
    return [s or COMMON for s in short]
