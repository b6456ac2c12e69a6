"""Lake et al.'s runs as a test set: within one alphabet, two drawers, fixed by the seed; accuracy per alphabet."""

import pytest
import torch


def test_lake_runs_are_within_one_alphabet_with_two_different_drawers():
    from metalearn_cli.episodes import ClassImages
    from metalearn_cli.lake_runs import LakeRuns

    # 3 alphabets of 25, 25 and 5 characters, 4 drawers; pixel value = character, a channel per drawer id
    names = [f"A{a}/character{c:02d}" for a, n in ((0, 25), (1, 25), (2, 5)) for c in range(n)]
    images = torch.zeros(len(names), 4, 2, 2, 2, dtype=torch.uint8)
    for i in range(len(names)):
        images[i, :, 0] = i
        for d in range(4):
            images[i, d, 1] = d
    runs = LakeRuns(ClassImages(images, names), 20, seed=3)
    batches = list(runs.fixed(10, 4))
    assert [b.tasks for b in batches] == [4, 4, 2]
    for b in batches:
        assert (b.n_way, b.k_shot, b.n_query) == (20, 1, 1)
        chars = (b.support_images[:, :, 0, 0, 0] * 255).round().long()
        assert torch.equal(chars, (b.query_images[:, :, 0, 0, 0] * 255).round().long())  # query i is character i
        for t in range(b.tasks):
            alphabets = {names[c].split("/")[0] for c in chars[t].tolist()}
            assert len(alphabets) == 1 and alphabets != {"A2"} and len(set(chars[t].tolist())) == 20
            s_drawer = (b.support_images[t, :, 1] * 255).round().unique()
            q_drawer = (b.query_images[t, :, 1] * 255).round().unique()
            assert len(s_drawer) == len(q_drawer) == 1 and s_drawer.item() != q_drawer.item()
    again = list(runs.fixed(10, 5))  # fixed by the seed, whatever the batching
    assert torch.equal(torch.cat([b.support_images for b in batches]), torch.cat([b.support_images for b in again]))


def test_lake_runs_accuracy_by_alphabet_counts_each_run_under_its_own_alphabet():
    from metalearn_cli.episodes import ClassImages
    from metalearn_cli.lake_runs import LakeRuns

    names = [f"A{a}/character{c:02d}" for a, n in ((0, 6), (1, 6), (2, 2)) for c in range(n)]
    images = torch.arange(len(names), dtype=torch.uint8).view(-1, 1, 1, 1, 1).expand(-1, 3, 1, 1, 1).contiguous()
    runs = LakeRuns(ClassImages(images, names), 5, seed=1)
    chars = torch.cat([(b.support_images[:, 0, 0, 0, 0] * 255).round().long() for b in runs.fixed(40, 7)])
    alphabet = [names[c].split("/")[0] for c in chars.tolist()]  # each run's alphabet, read off its images
    accs = torch.rand(40, generator=torch.Generator().manual_seed(0))
    by = runs.by_alphabet(accs)
    assert set(by) == set(alphabet) == {"A0", "A1"}  # A2 has too few characters for 5-way runs
    for name, v in by.items():
        mine = [float(a) for a, n in zip(accs, alphabet) if n == name]
        assert v["runs"] == len(mine) and v["accuracy"] == pytest.approx(sum(mine) / len(mine))


def test_lake_runs_refuse_a_split_without_alphabets():
    import pytest

    from metalearn_cli.episodes import ClassImages
    from metalearn_cli.lake_runs import LakeRuns
    from metalearn_cli.errors import DataError

    images = torch.zeros(30, 4, 1, 2, 2, dtype=torch.uint8)
    with pytest.raises(DataError, match="trained with dataset=omniglot_background"):
        LakeRuns(ClassImages(images, [f"A/c{i}/rot000" for i in range(30)]), 20, seed=0)


def alphabet_split(per_alphabet: tuple[int, ...], per_class: int = 4):
    from metalearn_cli.episodes import ClassImages

    names = [f"alpha{a}/char{c}" for a, n in enumerate(per_alphabet) for c in range(n)]
    return ClassImages(torch.zeros(len(names), per_class, 1, 4, 4, dtype=torch.uint8), names)


def test_lake_runs_take_alphabets_of_exactly_n_way_and_two_drawers():
    from metalearn_cli.errors import DataError
    from metalearn_cli.lake_runs import LakeRuns

    runs = LakeRuns(alphabet_split((5, 3), per_class=2), 5, seed=0)
    assert runs.alphabets == [[0, 1, 2, 3, 4]]
    with pytest.raises(DataError, match="Lake et al.'s runs need alphabets of at least 5 characters drawn by two"):
        LakeRuns(alphabet_split((4, 3), per_class=4), 5, seed=0)
    with pytest.raises(DataError, match="drawn by two people or more"):
        LakeRuns(alphabet_split((6,), per_class=1), 5, seed=0)


def test_a_lake_test_of_other_shots_says_which_keys_to_drop():
    from metalearn_cli.episodes import ClassImages
    from metalearn_cli.errors import ConfigError
    from metalearn_cli.evaluation import fixed_tasks

    class Data:
        test = ClassImages(torch.zeros(6, 4, 1, 2, 2, dtype=torch.uint8), [f"A/c{i}" for i in range(6)])

        def split(self, name):
            return self.test

    with pytest.raises(ConfigError, match="this test is 5-shot with 1 query: drop episode.shot and episode.query"):
        fixed_tasks(Data(), "test", (5, 5, 1), 0, torch.device("cpu"), lake=True)
