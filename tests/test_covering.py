"""The pairwise covering that picks the default run's share of the every-combination test."""

from __future__ import annotations

import itertools

from covering import pairs_of, pairwise_rows


def test_every_pair_of_a_training_row_meets_in_a_chosen_training_row():
    rows = list(itertools.product("abcd", "uvwxyz", "12345", "pq"))
    trains = lambda r: not (r[0] == "a" and r[1] == "u") and not (r[2] == "1" and r[1] in "vw")  # noqa: E731
    chosen = pairwise_rows(rows, trains)
    assert len(chosen) < len(rows) / 3
    covered = set().union(*(pairs_of(r) for r in chosen if trains(r)))
    assert set().union(*(pairs_of(r) for r in rows if trains(r))) <= covered
    refused = [r for r in chosen if not trains(r)]  # each refusal is still tried
    assert any(r[:2] == ("a", "u") for r in refused) and any(r[2] == "1" and r[1] == "v" for r in refused)


def test_a_grid_of_two_factors_is_kept_whole():
    rows = list(itertools.product("abc", "xyz"))
    assert pairwise_rows(rows, lambda r: True) == rows
