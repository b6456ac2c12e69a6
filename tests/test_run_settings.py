"""What one setting is: runs equal but for their seed, a repeated seed standing alone."""

from metalearn_cli.run_settings import by_setting


def test_a_seed_repeated_within_a_setting_stands_alone_under_its_run_name():
    groups = by_setting(["A", "A", "A", "B", "A"], [0, 0, 1, 0, 1], ["a0", "a0csv", "a1", "b0", "a1again"])
    assert groups == {"A": [0, 2], "A (a0csv)": [1], "B": [3], "A (a1again)": [4]}


def test_the_tested_run_holds_its_seed_whatever_the_order_and_runs_without_a_seed_stay_together():
    names = ["0_failed", "1_rerun", "2_seed1"]
    for order in ([0, 1, 2], [2, 1, 0], [1, 0, 2]):  # compare's order is the command line's
        groups = by_setting(["A"] * 3, [[0, 0, 1][i] for i in order], [names[i] for i in order],
                            [[False, True, True][i] for i in order])
        named = {k: sorted(names[order[i]] for i in v) for k, v in groups.items()}
        assert named == {"A": ["1_rerun", "2_seed1"], "A (0_failed)": ["0_failed"]}
    assert by_setting(["P", "P"], [None, None], ["p1", "p2"], [False, True]) == {"P": [0, 1]}  # predict dirs

