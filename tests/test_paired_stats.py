"""The paired statistics behind metalearn compare: McNemar, the sign test over tasks, the interval over tasks
and seeds, and the count of differing predictions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metalearn_cli.paired_stats import differing, mcnemar, paired, sign_test


def test_mcnemar_exact_and_chi_square():
    assert mcnemar(0, 0) == 1.0
    assert mcnemar(0, 6) == pytest.approx(2 / 64)  # exact: both tails of Binomial(6, 1/2) at 0
    assert mcnemar(3, 3) == 1.0
    assert mcnemar(10, 40) == pytest.approx(math.erfc(math.sqrt((30 - 1) ** 2 / 50 / 2)))


def test_paired_counts_and_interval():
    rng = np.random.default_rng(0)
    a = rng.random((200, 15)) < 0.6
    b = a.copy()
    b[:, 0] = True  # B also gets every first query right
    result = paired(a, b)
    assert result["only_reference_right"] == 0 and result["only_run_right"] == int((~a[:, 0]).sum())
    assert result["difference"] == pytest.approx(100 * (b.mean() - a.mean()))
    assert result["ci95_low"] <= result["difference"] <= result["ci95_high"] and result["ci95_low"] > 0
    same = paired(a, a)
    assert same["difference"] == same["ci95_low"] == same["ci95_high"] == 0 and same["mcnemar_p"] == 1.0


def test_differing_predictions_are_counted_over_seeds_and_unknown_for_old_files():
    a = [np.array([[0, 1, 2], [3, 4, 0]]), np.array([[1, 1, 1], [2, 2, 2]])]
    b = [np.array([[0, 2, 2], [3, 4, 1]]), np.array([[1, 1, 1], [2, 2, 2]])]
    assert differing(a, b) == (2, 12) and differing(a, a) == (0, 12)
    assert differing(a, [b[0], None]) == (None, 0)


def test_paired_over_seeds_is_the_mean_of_seeds_and_holds_their_spread():
    rng = np.random.default_rng(1)
    a = [rng.random((300, 10)) < 0.6 for _ in range(3)]
    shifts = (0.0, 0.1, 0.2)  # B's gain differs by seed
    b = [x | (rng.random(x.shape) < s) for x, s in zip(a, shifts)]
    both = paired(a, b)
    per_seed = [paired(x, y)["difference"] for x, y in zip(a, b)]
    assert both["seeds"] == 3 and both["tasks"] == 300
    assert both["difference"] == pytest.approx(np.mean(per_seed))
    pooled = paired(np.concatenate(a), np.concatenate(b))  # as if 900 tasks of one seed
    assert both["ci95_high"] - both["ci95_low"] > 1.5 * (pooled["ci95_high"] - pooled["ci95_low"])
    assert both["only_run_right"] == pooled["only_run_right"] and both["mcnemar_p"] == pooled["mcnemar_p"]
    # Student's t over the seeds' mean differences, 2 degrees of freedom (4.30), not a bootstrap of 3 seeds
    half = 4.30 * np.std(per_seed, ddof=1) / 3**0.5
    assert (both["ci95_low"], both["ci95_high"]) == pytest.approx((np.mean(per_seed) - half, np.mean(per_seed) + half))


def test_two_seeds_that_disagree_give_an_interval_that_says_so():
    """Two seeds whose gains are +15.9 and +14.6 points (trial F's sweep): a t-interval with 1 degree of freedom,
    about [+7, +23], where the earlier two-level bootstrap said [+12.6, +17.9]."""
    a = [np.zeros((100, 10), bool), np.zeros((100, 10), bool)]
    b = [np.zeros((100, 10), bool), np.zeros((100, 10), bool)]
    b[0][:, 0] = b[0][:59, 1] = True  # +15.9 points
    b[1][:, 0] = b[1][:46, 1] = True  # +14.6 points
    result = paired(a, b)
    assert result["difference"] == pytest.approx(15.25)
    assert (result["ci95_low"], result["ci95_high"]) == pytest.approx((15.25 - 12.71 * 0.65, 15.25 + 12.71 * 0.65))


def test_seeds_scored_on_different_numbers_of_tasks_pair_without_a_traceback():
    """Each seed counts once in the interval over seeds, however many tasks it was scored on."""
    a = [np.zeros((40, 5), bool), np.zeros((60, 5), bool)]
    b = [np.ones((40, 5), bool), np.zeros((60, 5), bool)]
    b[1][:, 0] = True
    result = paired(a, b)
    assert result["seeds"] == 2 and result["tasks"] == 40
    assert result["difference"] == pytest.approx((100 + 20) / 2)


def test_the_sign_test_counts_tasks_so_one_task_s_many_queries_count_once():
    """A gain that comes from a few tasks, many queries each: McNemar's test over queries calls it certain, the
    sign test over tasks does not; ties are left out, and an exact tail below the smallest double is 0, not an error."""
    assert sign_test(0, 6) == pytest.approx(2 / 64) and sign_test(3, 3) == 1.0 and sign_test(0, 0) == 1.0
    assert sign_test(0, 2000) == 0.0
    a = np.zeros((200, 100), bool)
    b = a.copy()
    b[:3] = True  # 3 of 200 tasks gained 100 queries each; the other 197 tie
    result = paired(a, b)
    assert (result["run_better_tasks"], result["reference_better_tasks"]) == (3, 0)
    assert result["sign_p"] == pytest.approx(0.25) and result["mcnemar_p"] < 1e-60
    b[3:7, 0] = False  # seeds pool their tasks: two seeds, each with its own ties and wins
    a[3:7, 0] = True
    both = paired([a, a], [b, b])
    assert (both["run_better_tasks"], both["reference_better_tasks"]) == (6, 8)
    assert both["sign_p"] == pytest.approx(2 * sum(math.comb(14, i) for i in range(7)) / 2**14)  # 6 of 14 pairs
    assert sign_test(24000, 26500) == pytest.approx(9.73295e-29, rel=1e-5)  # 50,500 tasks, exact, in well under a second
