"""Pairwise covering of a parameter grid: the rows that put every two choices together at least once.

The full product of encoders, decoders, strategies and optimizers is 280 one-step runs; a defect that
needs two choices to meet (an encoder that breaks one strategy) shows in any row holding that pair, so
the default run takes a covering set (37 rows for today's registries) and ``pytest -m slow`` the rest.
"""

from __future__ import annotations

import itertools
from typing import Callable, Sequence

Row = tuple[str, ...]


def pairs_of(row: Row) -> set[tuple[int, str, int, str]]:
    return {(i, row[i], j, row[j]) for i, j in itertools.combinations(range(len(row)), 2)}


def pairwise_rows(rows: Sequence[Row], trains: Callable[[Row], bool]) -> list[Row]:
    """A subset of ``rows`` (in their order) in which every pair of choices found in a training row
    meets in a training row, and every pair found only in refused rows meets in one of them. Greedy:
    each step takes the first row that covers the most pairs still missing."""
    rows = list(rows)
    good = [r for r in rows if trains(r)]
    bad = [r for r in rows if not trains(r)]
    chosen: set[Row] = set()
    covered: set[tuple[int, str, int, str]] = set()
    for pool in (good, bad):
        missing = set().union(*map(pairs_of, pool)) - covered
        while missing:
            best = max(pool, key=lambda r: len(pairs_of(r) & missing))
            chosen.add(best)
            covered |= pairs_of(best)
            missing -= covered
    return [r for r in rows if r in chosen]
