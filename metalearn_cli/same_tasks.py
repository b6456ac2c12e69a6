"""Whether two tested runs scored the same test tasks, and under which test protocol: what ``compare`` pairs
must hold the same tasks (refused otherwise, with the ``metalearn eval`` that would make them so); a
different protocol on the same tasks (test-time augmentation, fine-tuning, batch-norm mode) is said."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from metalearn_cli.errors import MetalearnError
from metalearn_cli.run_records import read_run
from metalearn_cli.rundir import RESULTS

SAME_TASKS = ("dataset", "split", "way", "shot", "query", "seed", "episodes", "protocol")  # what fixes the test tasks


def published(results: dict[str, Any]) -> bool:
    """Whether a test was of Lake et al.'s published runs (``eval.lake_runs``), the same whatever the seed."""
    return results.get("protocol") == "lake_original" and isinstance(results.get("lake_runs"), dict)


TEST_SETTINGS = ("bn_mode", "tta_shift", "tta_rotate", "tta_scale", "tta_shear", "support_copies", "soft_kmeans_steps",
                 "finetune_steps", "finetune_lr", "finetune_params", "finetune_augment")  # the last three where both fine-tuned
BEFORE_THE_KEY = {"soft_kmeans_steps": 0}  # a setting results.json lacked once: every earlier test ran without it


def same_tasks(reference: Path, run: Path) -> None:
    """Refuse a pair that did not score the same tasks (or has no tests to pair); say a protocol that differs."""
    records = {path: read_run(path) for path in (reference, run)}
    for path, record in records.items():
        if record["command"] in ("predict", "export"):
            raise MetalearnError(f"{path} is a {record['command']} dir: it scored no fixed test tasks; compare train or eval dirs "
                                 "(metalearn eval checkpoint=RUN scores a run's checkpoint on them)")
        if record["status"] == "failed":
            raise MetalearnError(f"{path} failed ({path / 'error.txt'} says why) and has no test results; fix it and run it again")
        if RESULTS in record["damaged"]:
            raise MetalearnError(f"{path / RESULTS} is damaged (not readable JSON); restore it, or score the run again with "
                                 "metalearn eval checkpoint=RUN and compare that eval dir")
        if not record["results"]:
            stopped = record["status"] == "interrupted"
            raise MetalearnError(f"{path} has no test results (status: {record['status']}); " + (
                "it is still running (another process holds its lock): compare it once it has finished"
                if record["status"] == "running"
                else "an eval stopped before its end: run the same metalearn eval again" if record["command"] == "eval" and stopped
                else "resume it to finish and test it (metalearn train resume=RUN)" if stopped
                else "test it with metalearn eval checkpoint=RUN"))
    a, b = records[reference]["results"], records[run]["results"]
    fixed = published(a) and published(b)  # Lake et al.'s published runs: the archive fixes the tasks, not the seed
    differ = [k for k in SAME_TASKS if a.get(k) != b.get(k) and not (fixed and k == "seed")]
    if fixed and a["lake_runs"].get("digest") != b["lake_runs"].get("digest"):
        raise MetalearnError(f"{run} and {reference} were scored on different copies of Lake et al.'s runs "
                             f"(eval.lake_runs={b['lake_runs'].get('source')} vs {a['lake_runs'].get('source')}, other "
                             "characters or drawers); score both on one archive to compare them")
    if differ:
        raise MetalearnError(f"{run} was not scored on the tasks of {reference} ({', '.join(f'{k}: {a.get(k)} vs {b.get(k)}' for k in differ[:3])}); "
                             f"{same_tasks_hint(a, differ)}")
    if a.get("split_classes") and b.get("split_classes") and a["split_classes"] != b["split_classes"]:
        raise MetalearnError(f"{run} was not scored on the classes of {reference}: the same task seeds, but the "
                             f"{a.get('split', 'test')} split holds other classes (a folder data set changed or re-split "
                             "between the runs); pairing them would compare different tasks")
    a, b = ({**BEFORE_THE_KEY, **r} for r in (a, b))  # results written before a key existed ran with its default
    protocol = [k for k in TEST_SETTINGS if None not in (a.get(k), b.get(k)) and a[k] != b[k]]  # older results lack some
    if protocol:  # the same tasks under another test protocol: said, not refused
        print(f"note: {run} and {reference} were tested differently ({', '.join(f'eval.{k}={b[k]} vs {a[k]}' for k in protocol)}): "
              f"the difference includes that (metalearn eval checkpoint=RUN eval.{protocol[0]}=... tests both alike)",
              file=sys.stderr)
    for path, results in ((reference, a), (run, b)):
        if results.get("unfinished"):  # an eval of a checkpoint whose run had not finished (results.json says which)
            print(f"note: {path} scored a checkpoint of a run that had not finished: {results['unfinished'][0]}",
                  file=sys.stderr)
    if None not in (a.get("split_digest"), b.get("split_digest")) and a["split_digest"] != b["split_digest"]:
        print(f"note: {run} and {reference} read other images of the same classes (a data-set setting such as "
              "dataset.normalise or image_size differs, or the files changed): the difference includes that", file=sys.stderr)


def same_tasks_hint(a: dict[str, Any], differ: list[str]) -> str:
    """The ``metalearn eval`` keys that score a checkpoint on the reference's tasks (an episode option needs an
    episode named first, as eval asks); another data set has no such keys."""
    if "dataset" in differ:
        return f"they test other data sets ({a.get('dataset')}): no eval makes these the same tasks"
    named = [f"{k}={a.get(k)}" for k in ("seed", "split") if k in differ]
    if a.get("protocol") == "lake" and {"protocol", "way", "shot", "query"} & set(differ):
        named.append("episode=lake20way1shot")
    elif {"protocol", "way", "shot", "query"} & set(differ):
        named += ["episode=5way1shot", *(f"episode.{k}={a.get(k)}" for k in ("way", "shot", "query"))]
    if "episodes" in differ:
        named.append(f"eval.episodes={a.get('episodes')}")
    return f"score both on the same tasks (metalearn eval checkpoint=RUN {' '.join(named)}) to compare them"
