"""Paired statistics of two runs' per-query outcomes on the same fixed test tasks: the outcomes as
``test_outcomes.npz`` holds them, the interval of the difference (a bootstrap over tasks for one seed;
Student's t over the seeds' differences for several), the sign test over tasks, McNemar's test over
queries and how many predictions differ.
``metalearn compare``, ``report``'s seed bands and the benches share them."""

from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path
from typing import Any, Optional

from metalearn_cli.console import shell_override
from metalearn_cli.errors import MetalearnError
from metalearn_cli.files import read_json
from metalearn_cli.rundir import RESULTS


# Student's t 97.5% quantiles by degrees of freedom (CI95 of a mean over a few seeds); 1.96 beyond 30.
T975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23, 15: 2.13, 20: 2.09,
        30: 2.04, 40: 2.02, 60: 2.00, 120: 1.98}


def t975(df: int) -> float:
    """Student's t 97.5% quantile for ``df`` degrees of freedom (the table's entry at or below it: never narrower)."""
    return T975[max(k for k in T975 if k <= df)] if df <= 120 else 1.96


UNREADABLE = (OSError, EOFError, ValueError, TypeError, KeyError, zipfile.BadZipFile, zlib.error)  # a cut or changed npz


def read_outcomes(run: Path) -> tuple[Any, Any]:
    """The run's per-query correctness ``[tasks, queries]`` (numpy bool) and predicted classes (int16;
    None for a file written before they were kept), read in one pass. A file that does not read back whole
    (cut, emptied, a changed byte, arrays that disagree with each other or with results.json) is one line."""
    import numpy as np

    path = run / "test_outcomes.npz"
    if not path.is_file():
        raise MetalearnError(f"{run} holds no test_outcomes.npz (written by every test since 2026-12-01: an older run, or "
                             f"the file was removed); score it again with metalearn eval {shell_override('checkpoint', run)} "
                             "hydra.run.dir=NEW_DIR, then compare that dir")
    rescore = (f"score the run again with metalearn eval {shell_override('checkpoint', run)} hydra.run.dir=NEW_DIR, "
               "then compare that dir")
    try:
        with np.load(path) as f:
            shape = tuple(int(s) for s in f["shape"])
            packed, predicted = f["packed"], (f["predicted"] if "predicted" in f.files else None)
            problem = _disagreement(shape, packed, predicted, read_json(run / RESULTS))
            if problem is None:
                correct = np.unpackbits(packed, count=int(np.prod(shape))).reshape(shape).astype(bool)
                return correct, predicted
    except UNREADABLE as exc:
        raise MetalearnError(f"{path} is damaged ({exc.__class__.__name__}); {rescore}") from exc
    raise MetalearnError(f"{path} is damaged ({problem}); {rescore}")


def _disagreement(shape: tuple[int, ...], packed: Any, predicted: Any, results: dict[str, Any]) -> Optional[str]:
    """What in an outcomes file disagrees with the rest of it or with its run's results.json, else None."""
    import numpy as np

    if len(shape) != 2 or min(shape) < 0:
        return f"shape {list(shape)} is not [tasks, queries]"
    if packed.dtype != np.uint8 or packed.shape != ((shape[0] * shape[1] + 7) // 8,):
        return f"{packed.size} packed bytes for {shape[0]} x {shape[1]} outcomes"
    if predicted is not None and (predicted.shape != shape or predicted.dtype.kind not in "iu"):
        return f"predictions of shape {list(predicted.shape)} for {shape[0]} x {shape[1]} outcomes"
    tasks, way, query = (results.get(k) for k in ("episodes", "way", "query"))
    if isinstance(tasks, int) and tasks != shape[0]:
        return f"{shape[0]} tasks, though {RESULTS} says {tasks}"
    if isinstance(way, int) and isinstance(query, int) and way * query != shape[1]:
        return f"{shape[1]} queries per task, though {RESULTS} says {way} ways x {query}"
    return None


def outcomes(run: Path) -> Any:
    """The run's per-query correctness ``[tasks, queries]`` (numpy bool)."""
    return read_outcomes(run)[0]


def predictions(run: Path) -> Any:
    """The run's predicted classes ``[tasks, queries]``, or None for a file written before they were kept."""
    return read_outcomes(run)[1]


def differing(a: list[Any], b: list[Any]) -> tuple[Optional[int], int]:
    """How many of the queries two runs predict differently (None when a file holds no predictions), of how many."""
    if any(x is None for x in [*a, *b]):
        return None, 0
    return int(sum((x != y).sum() for x, y in zip(a, b))), sum(x.size for x in a)


def binomial_two_sided(a: int, b: int) -> float:
    """Exact two-sided p-value of ``a`` against ``b`` successes under Binomial(a + b, 1/2): twice the smaller tail
    (integers throughout, so a tail below the smallest double is 0.0, never an overflow)."""
    n = a + b
    term = tail = 1  # C(n, 0); each next coefficient from the last, exactly: milliseconds at 50,000 tasks
    for i in range(min(a, b)):
        term = term * (n - i) // (i + 1)
        tail += term
    return min(1.0, 2 * tail / 2**n)


def sign_test(a_better: int, b_better: int) -> float:
    """Two-sided sign test over tasks: of the tasks where the two runs' accuracies differ, how often each is the
    better one. Tasks are the units drawn independently; the queries of one task share its support set and its
    classes, so a test over queries (McNemar's) counts one task's luck many times."""
    return binomial_two_sided(a_better, b_better)


def mcnemar(only_a: int, only_b: int) -> float:
    """Two-sided p-value of McNemar's test from the discordant counts."""
    n = only_a + only_b
    if n < 25:  # exact: the smaller count under Binomial(n, 1/2)
        return binomial_two_sided(only_a, only_b)
    statistic = (abs(only_a - only_b) - 1) ** 2 / n
    return math.erfc(math.sqrt(statistic / 2))  # chi-square with one degree of freedom


def paired(a: Any, b: Any, resamples: int = 10_000, seed: int = 0) -> dict[str, float]:
    """B against A on the same tasks: mean per-task difference, its CI95, McNemar. ``a`` and ``b`` are ``[tasks,
    queries]`` outcomes (the interval: a bootstrap over tasks), or lists of them paired by seed.

    Over seeds the interval is Student's t over each seed's mean difference (``seeds - 1`` degrees of freedom): the
    question is whether one setting trains better networks, and a few seeds say little of that. A bootstrap over 2
    or 3 seeds has only 3 or 10 distinct draws of them and gave intervals far narrower than the seeds' spread.
    The sign test (tasks) and McNemar's test (queries) pool every seed's: they ask whether these trained networks
    differ on these tasks; of the two, the sign test is the one whose units are independent draws."""
    import numpy as np

    a_seeds, b_seeds = (list(x) if isinstance(x, (list, tuple)) else [x] for x in (a, b))
    diff = [bs.mean(1) - as_.mean(1) for as_, bs in zip(a_seeds, b_seeds)]  # per seed, [tasks] (seeds may differ in tasks)
    per_seed = np.array([d.mean() for d in diff])
    if len(diff) == 1:
        rng = np.random.default_rng(seed)
        means = diff[0][rng.integers(0, len(diff[0]), size=(resamples, len(diff[0])))].mean(1)
        low, high = np.percentile(means, [2.5, 97.5])
    else:
        half = t975(len(per_seed) - 1) * per_seed.std(ddof=1) / len(per_seed) ** 0.5
        low, high = per_seed.mean() - half, per_seed.mean() + half
    a_all, b_all = (np.concatenate([x.reshape(-1) for x in seeds]) for seeds in (a_seeds, b_seeds))
    only_a, only_b = int((a_all & ~b_all).sum()), int((~a_all & b_all).sum())
    a_tasks, b_tasks = int(sum((d < 0).sum() for d in diff)), int(sum((d > 0).sum() for d in diff))  # ties say nothing
    return {"seeds": len(diff), "tasks": min(len(d) for d in diff), "accuracy_reference": 100 * a_all.mean(),
            "accuracy_run": 100 * b_all.mean(), "difference": 100 * per_seed.mean(), "ci95_low": 100 * low,
            "ci95_high": 100 * high, "only_reference_right": only_a, "only_run_right": only_b,
            "reference_better_tasks": a_tasks, "run_better_tasks": b_tasks, "sign_p": sign_test(a_tasks, b_tasks),
            "mcnemar_p": mcnemar(only_a, only_b)}
