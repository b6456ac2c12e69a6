"""What one setting is: runs equal but for their seed, a repeated seed standing alone."""

from metalearn_cli.run_settings import by_setting


def test_a_seed_repeated_within_a_setting_stands_alone_under_its_run_name():
    groups = by_setting(["A", "A", "A", "B", "A"], [0, 0, 1, 0, 1], ["a0", "a0csv", "a1", "b0", "a1again"])
    assert groups == {"A": [0, 2], "A (a0csv)": [1], "B": [3], "A (a1again)": [4]}
