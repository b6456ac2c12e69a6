import pytest
import torch

from metalearn_cli.episodes import ClassImages, EpisodeSampler, check_fits, split_seed
from metalearn_cli.errors import DataError


def make_split(classes: int = 12, per_class: int = 6) -> ClassImages:
    # Each image encodes (class, example) in two pixels, so episodes can be decoded exactly.
    images = torch.zeros(classes, per_class, 1, 4, 4, dtype=torch.uint8)
    for c in range(classes):
        for e in range(per_class):
            images[c, e, 0, 0, 0] = c
            images[c, e, 0, 0, 1] = e
    return ClassImages(images, [f"c{i}" for i in range(classes)])


def decode(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    raw = (images * 255).round().long()
    return raw[..., 0, 0, 0], raw[..., 0, 0, 1]


def test_episode_shapes_labels_and_structure():
    sampler = EpisodeSampler(make_split(), n_way=5, k_shot=2, n_query=3, seed=0)
    batch = sampler.sample(4)
    assert batch.support_images.shape == (4, 10, 1, 4, 4)
    assert batch.query_images.shape == (4, 15, 1, 4, 4)
    assert batch.tasks == 4 and (batch.n_way, batch.k_shot, batch.n_query) == (5, 2, 3)
    for t in range(4):
        s_cls, s_ex = decode(batch.support_images[t])
        q_cls, q_ex = decode(batch.query_images[t])
        assert sorted(set(batch.support_labels[t].tolist())) == list(range(5))
        assert torch.equal(torch.bincount(batch.query_labels[t]), torch.full((5,), 3))
        for label in range(5):
            classes = set(s_cls[batch.support_labels[t] == label].tolist()) | set(q_cls[batch.query_labels[t] == label].tolist())
            assert len(classes) == 1  # one class per label, support and query agree
        assert len(set(s_cls.tolist())) == 5  # five distinct classes
        pairs = list(zip(s_cls.tolist(), s_ex.tolist())) + list(zip(q_cls.tolist(), q_ex.tolist()))
        assert len(set(pairs)) == len(pairs)  # no image is both support and query


def test_same_seed_same_episodes_independent_of_batching():
    a = EpisodeSampler(make_split(), 5, 1, 2, seed=3)
    b = EpisodeSampler(make_split(), 5, 1, 2, seed=3)
    one = a.sample(6)
    parts = [b.sample(2) for _ in range(3)]
    assert torch.equal(one.support_images, torch.cat([p.support_images for p in parts]))
    assert torch.equal(one.query_images, torch.cat([p.query_images for p in parts]))
    c = EpisodeSampler(make_split(), 5, 1, 2, seed=4)
    assert not torch.equal(one.support_images, c.sample(6).support_images)


def test_fixed_episodes_repeat_and_leave_the_stream_alone():
    sampler = EpisodeSampler(make_split(), 5, 1, 2, seed=1)
    first = torch.cat([b.support_images for b in sampler.fixed(7, 3)])
    sampler.sample(5)
    second = torch.cat([b.support_images for b in sampler.fixed(7, 4)])
    assert first.shape[0] == 7 and torch.equal(first, second)
    state = sampler.get_state()
    list(sampler.fixed(3, 3))
    assert torch.equal(state, sampler.get_state())


def test_split_seeds_differ_per_split():
    assert len({split_seed(0, s) for s in ("train", "val", "test")}) == 3


@pytest.mark.parametrize(
    "way,shot,query,match",
    [(13, 1, 1, "13-way episodes need 13 classes"), (5, 4, 3, "need 7 images per class"), (1, 1, 1, "way >= 2")],
)
def test_check_fits_explains_the_fix(way, shot, query, match):
    with pytest.raises(DataError, match=match):
        check_fits(make_split(), "train", "toy", way, shot, query)


def test_lake_runs_are_within_one_alphabet_with_two_different_drawers():
    from metalearn_cli.episodes import ClassImages, LakeRuns

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


def test_lake_runs_refuse_a_split_without_alphabets():
    import pytest

    from metalearn_cli.episodes import ClassImages, LakeRuns
    from metalearn_cli.errors import DataError

    images = torch.zeros(30, 4, 1, 2, 2, dtype=torch.uint8)
    with pytest.raises(DataError, match="dataset.split=background"):
        LakeRuns(ClassImages(images, [f"A/c{i}/rot000" for i in range(30)]), 20, seed=0)


def alphabets(per_alphabet: tuple[int, ...], per_class: int = 4) -> ClassImages:
    names = [f"alpha{a}/char{c}" for a, n in enumerate(per_alphabet) for c in range(n)]
    return ClassImages(torch.zeros(len(names), per_class, 1, 4, 4, dtype=torch.uint8), names)


def test_within_alphabet_tasks_take_every_class_from_one_alphabet():
    split = alphabets((6, 8, 3, 10))
    sampler = EpisodeSampler(split, n_way=5, k_shot=1, n_query=1, seed=0, within=1.0)
    alphabet_of = [name.split("/")[0] for name in split.class_names]
    seen = set()
    for _ in range(50):
        classes = sampler._classes(sampler.generator)
        names = {alphabet_of[int(c)] for c in classes}
        assert len(names) == 1 and len(set(classes.tolist())) == 5  # one alphabet, five different characters
        seen |= names
    assert seen == {"alpha0", "alpha1", "alpha3"}  # alpha2 has too few characters for 5-way


def test_a_within_alphabet_share_mixes_both_kinds_and_zero_changes_nothing():
    split = alphabets((10, 10, 10, 10))
    alphabet_of = [name.split("/")[0] for name in split.class_names]
    mixed = EpisodeSampler(split, 5, 1, 1, seed=0, within=0.5)
    kinds = [len({alphabet_of[int(c)] for c in mixed._classes(mixed.generator)}) == 1 for _ in range(200)]
    assert 60 < sum(kinds) < 140  # about half within one alphabet (a random 5 of 40 rarely are)
    plain, zero = EpisodeSampler(split, 5, 1, 1, seed=3), EpisodeSampler(split, 5, 1, 1, seed=3, within=0.0)
    assert torch.equal(plain.sample(4).support_images, zero.sample(4).support_images)


def test_within_alphabet_needs_alphabets_large_enough():
    from metalearn_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="the largest has 6"):
        EpisodeSampler(alphabets((6, 4)), 20, 1, 1, seed=0, within=1.0)
    plain = ClassImages(torch.zeros(8, 4, 1, 4, 4, dtype=torch.uint8), [f"c{i}" for i in range(8)])
    with pytest.raises(ConfigError, match="name no alphabet"):
        EpisodeSampler(plain, 5, 1, 1, seed=0, within=0.5)
    assert EpisodeSampler(plain, 5, 1, 1, seed=0).sample(1).n_way == 5  # without the option: as before
