"""What metalearn compare says: the result line, its notes, the figure, and why seeds of one setting are no
comparison."""

from __future__ import annotations

import json

import numpy as np


def test_a_p_value_below_the_smallest_double_is_a_bound_not_zero():
    from metalearn_cli.compare_lines import p_text

    assert p_text(0.0183) == "= 0.0183" and p_text(0.0) == "< 1e-300"


def test_seeds_of_one_setting_on_lake_s_published_runs_are_told_to_name_each_as_a_setting(tmp_path):
    """Every seed is tested on Lake et al.'s same 20 published runs: the advice is --setting, not a rescore."""
    from metalearn_cli.compare_lines import one_setting

    runs = {}
    for seed in (0, 1):
        (tmp_path / f"r{seed}").mkdir()
        (tmp_path / f"r{seed}" / "results.json").write_text(json.dumps(
            {"seed": seed, "protocol": "lake_original", "lake_runs": {"path": "all_runs.zip"}}))
        runs[seed] = tmp_path / f"r{seed}"
    assert "name each as a setting: --setting A --setting B" in one_setting(runs)
    (tmp_path / "r1" / "results.json").write_text(json.dumps({"seed": 1, "protocol": "lake"}))  # drawn runs: per seed
    assert "score each on one seed's tasks (metalearn eval checkpoint=RUN seed=0)" in one_setting(runs)


def test_the_two_seed_note_comes_where_it_explains_an_interval_that_holds_zero(tmp_path):
    from metalearn_cli.compare_lines import notes

    row = {"seeds": 2, "tasks": 500, "ci95_low": -1.0, "ci95_high": 3.0}
    (tmp_path / "results.json").write_text("{}")
    assert [n for n in notes([row], tmp_path) if "1 degree of freedom" in n]
    assert not notes([{**row, "ci95_low": 14.4, "ci95_high": 17.8}], tmp_path)  # narrow enough to say something
    assert [n for n in notes([{**row, "seeds": 1, "tasks": 40}], tmp_path) if "40 tasks are too few" in n]


def test_the_line_gives_the_sign_test_over_tasks_before_mcnemar_over_queries_and_pools_seeds_in_words():
    from metalearn_cli.compare_lines import result_line
    from metalearn_cli.paired_stats import paired

    a = np.zeros((50, 10), bool)
    b = a.copy()
    b[:5] = True  # 5 tasks better, 45 tied
    row = {"run": "B", "reference": "A", **paired(a, b), "predictions_differ": None, "predictions": 0}
    line = result_line(row)
    assert "better on 5 vs 0 tasks (sign test p = 0.0625); McNemar p" in line and "over queries (50 vs 0 queries" in line
    assert "seeds pooled" not in line and "predictions differ" not in line
    line = result_line({**row, **paired([a, a], [b, b])})
    assert "over seeds (Student's t); for these networks, seeds pooled: better on 10 vs 0 task-seed pairs" in line
