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
    [(13, 1, 1, "13-way episodes need 13 classes"), (5, 4, 3, "need 7 images per class"),
     (1, 1, 1, "2 classes or more; raise trainer.train_way"), (5, 0, 1, "shot >= 1 and query >= 1")],
)
def test_check_fits_explains_the_fix(way, shot, query, match):
    with pytest.raises(DataError, match=match):
        check_fits(make_split(), "train", "toy", way, shot, query)


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


def test_same_drawers_gives_every_class_of_a_task_the_same_drawings_positions_supports_apart_from_queries():
    sampler = EpisodeSampler(make_split(12, 6), n_way=5, k_shot=2, n_query=3, seed=0, same_drawers=True)
    batch = sampler.sample(20)
    _, support = decode(batch.support_images.view(20, 5, 2, 1, 4, 4))  # [T, N, K] drawer of each support image
    _, query = decode(batch.query_images.view(20, 5, 3, 1, 4, 4))
    assert (support == support[:, :1]).all() and (query == query[:, :1]).all()  # one set of drawers for every class
    assert all(not set(s[0].tolist()) & set(q[0].tolist()) for s, q in zip(support, query))  # supports and queries apart
    assert len({tuple(s[0].tolist()) for s in support}) > 5  # and the drawers change from task to task
    plain = EpisodeSampler(make_split(12, 6), n_way=5, k_shot=2, n_query=3, seed=0).sample(20)
    _, drawn = decode(plain.support_images.view(20, 5, 2, 1, 4, 4))
    assert not (drawn == drawn[:, :1]).all()  # without the option each class draws its own


def test_within_alphabet_needs_alphabets_large_enough():
    from metalearn_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="the largest has 6"):
        EpisodeSampler(alphabets((6, 4)), 20, 1, 1, seed=0, within=1.0)
    plain = ClassImages(torch.zeros(8, 4, 1, 4, 4, dtype=torch.uint8), [f"c{i}" for i in range(8)])
    with pytest.raises(ConfigError, match="name no alphabet"):
        EpisodeSampler(plain, 5, 1, 1, seed=0, within=0.5)
    assert EpisodeSampler(plain, 5, 1, 1, seed=0).sample(1).n_way == 5  # without the option: as before


def test_validation_tasks_are_of_the_tests_kind():
    """Lake's runs validate on tasks from one alphabet (best.pt is picked for the runs it is scored
    on); a random test validates on random tasks, the stream it drew before this option."""
    from types import SimpleNamespace

    from metalearn_cli.episodes import validation_sampler
    from metalearn_cli.errors import ConfigError

    split = alphabets((6, 8, 3, 10))
    alphabet_of = [name.split("/")[0] for name in split.class_names]
    lake = SimpleNamespace(way=5, shot=1, query=1, protocol="lake")
    sampler = validation_sampler(split, lake, seed=0, device=torch.device("cpu"))
    assert all(len({alphabet_of[int(c)] for c in sampler._classes(sampler.generator)}) == 1 for _ in range(50))
    plain = validation_sampler(split, SimpleNamespace(way=5, shot=1, query=1, protocol="random"), 0, torch.device("cpu"))
    assert plain.within == 0.0
    assert torch.equal(plain.sample(3).support_images, EpisodeSampler(split, 5, 1, 1, split_seed(0, "val")).sample(3).support_images)
    assert sum(len({alphabet_of[int(c)] for c in plain._classes(plain.generator)}) == 1 for _ in range(50)) < 25
    with pytest.raises(ConfigError, match="no validation alphabet has 20 characters; use dataset.val=drawers"):
        validation_sampler(split, SimpleNamespace(way=20, shot=1, query=1, protocol="lake"), 0, torch.device("cpu"))
    with pytest.raises(ConfigError, match="no validation alphabet has 12 characters"):  # trainer.val_way counts, not the test's 5
        validation_sampler(split, lake, 0, torch.device("cpu"), way=12)


def test_validation_may_have_more_ways_than_the_test():
    """trainer.val_way: 5-way Omniglot validation sits near 99% and cannot rank checkpoints; 20-way tasks can."""
    from types import SimpleNamespace

    from metalearn_cli.episodes import validation_sampler

    split = make_split(24, 4)
    five = SimpleNamespace(way=5, shot=1, query=2, protocol="random")
    wide = validation_sampler(split, five, 0, torch.device("cpu"), way=20)
    task = wide.sample(1)
    assert task.n_way == 20 and len(set(task.support_images[0, :, 0, 0, 0].tolist())) == 20
    assert validation_sampler(split, five, 0, torch.device("cpu"), way=None).sample(1).n_way == 5


# ----------------------------------------------------------------------------- the stream, pinned
def test_the_task_stream_is_the_documented_draws_from_the_samplers_own_generator():
    """A task is: its classes (argsort of one uniform per class), then per class the order of its
    examples, all from the sampler's generator; with within=1 the classes come from one alphabet (a
    uniform alphabet, then argsort within it). Changing this changes every benchmark's tasks."""
    split = make_split(12, 6)
    batch = EpisodeSampler(split, 5, 1, 2, seed=3).sample(1)
    g = torch.Generator().manual_seed(3)
    classes = torch.rand(12, generator=g).argsort()[:5]
    examples = torch.rand(5, 6, generator=g).argsort(dim=1)[:, :3]
    got_c, got_e = decode(batch.support_images[0])
    assert torch.equal(got_c, classes) and torch.equal(got_e, examples[:, 0])
    q_c, q_e = decode(batch.query_images[0])
    assert torch.equal(q_c, classes.repeat_interleave(2)) and torch.equal(q_e, examples[:, 1:].flatten())
    torch.manual_seed(0)  # the global generator is never used: reseeding it changes nothing
    split = alphabets((5, 7))
    within = EpisodeSampler(split, 5, 1, 1, seed=4, within=1.0)
    got = within._classes(within.generator)
    g = torch.Generator().manual_seed(4)
    group = [list(range(5)), list(range(5, 12))][int(torch.randint(2, (1,), generator=g))]
    expected = torch.tensor(group)[torch.rand(len(group), generator=g).argsort()[:5]]
    assert torch.equal(got, expected)


def test_an_alphabet_of_exactly_n_way_characters_is_used_and_pixels_scale_to_one():
    split = alphabets((5, 3))
    sampler = EpisodeSampler(split, 5, 1, 1, seed=0, within=1.0)
    assert sorted(sampler._classes(sampler.generator).tolist()) == [0, 1, 2, 3, 4]
    white = ClassImages(torch.full((3, 2, 1, 2, 2), 255, dtype=torch.uint8), ["a", "b", "c"])
    assert EpisodeSampler(white, 2, 1, 1, seed=0).sample(1).support_images.max() == 1.0


def test_a_saved_sampler_state_continues_the_stream():
    a, b = EpisodeSampler(make_split(), 5, 1, 1, seed=1), EpisodeSampler(make_split(), 5, 1, 1, seed=2)
    a.sample(3)
    b.set_state(a.get_state())
    assert torch.equal(a.sample(2).support_images, b.sample(2).support_images)


def test_rank_parts_are_disjoint_and_together_the_whole_meta_batch():
    whole = EpisodeSampler(make_split(), 5, 1, 1, seed=7).sample(4)
    parts = [EpisodeSampler(make_split(), 5, 1, 1, seed=7).sample(4, part=(r, 2)) for r in range(2)]
    assert [p.tasks for p in parts] == [2, 2]
    assert torch.equal(torch.cat([p.support_images for p in parts]), whole.support_images)


def test_split_seeds_are_pinned():
    """The per-split seeds fix every test set; a change would silently change every benchmark's tasks."""
    assert [split_seed(0, s) for s in ("train", "val", "test", "pretrain")] == [0, 7_919, 15_838, 23_757]
    assert split_seed(5, "test") == 5 * 1_000_003 + 2 * 7_919


def test_task_shapes_default_to_the_evaluation_episode():
    from types import SimpleNamespace

    from metalearn_cli.episodes import TaskShapes

    episode = SimpleNamespace(way=5, shot=1, query=3)
    assert TaskShapes.of(_Cfg(episode=episode)) == TaskShapes(5, 1, 3, 5, 3)  # an eval config: no trainer
    trainer = SimpleNamespace(train_way=None, train_query=None)
    assert TaskShapes.of(_Cfg(episode=episode, trainer=trainer)) == TaskShapes(5, 1, 3, 5, 3)
    trainer = SimpleNamespace(train_way=20, train_query=15)
    shapes = TaskShapes.of(_Cfg(episode=episode, trainer=trainer))
    assert shapes == TaskShapes(5, 1, 3, 20, 15) and shapes.max_way == 20 and shapes.query_set == 15
    assert TaskShapes(30, 1, 0, 5, 1).max_way == 30 and TaskShapes(5, 1, 0, 5, 1).query_set == 1
    assert shapes.val_way == 5  # validation is of the test's way unless trainer.val_way says otherwise
    wider = TaskShapes.of(_Cfg(episode=episode, trainer=SimpleNamespace(train_way=None, train_query=None, val_way=30)))
    assert (wider.way, wider.train_way, wider.val_way, wider.max_way) == (5, 5, 30, 30)


class _Cfg(dict):
    """A config as the loop reads it: attributes, and ``in`` for optional nodes."""

    def __getattr__(self, key):
        return self[key]


def test_splitting_a_batch_gives_each_task_alone():
    batch = EpisodeSampler(make_split(), 5, 2, 1, seed=0).sample(3)
    tasks = batch.split_tasks()
    assert len(tasks) == 3 and all(t.tasks == 1 for t in tasks)
    for i, t in enumerate(tasks):
        assert torch.equal(t.support_images[0], batch.support_images[i]) and torch.equal(t.query_images[0], batch.query_images[i])
        assert torch.equal(t.support_labels[0], batch.support_labels[i]) and torch.equal(t.query_labels[0], batch.query_labels[i])
        assert (t.n_way, t.k_shot, t.n_query) == (5, 2, 1)
        assert t.support_labels.shape[0] == t.query_labels.shape[0] == t.query_images.shape[0] == 1


def test_a_rotated_copy_of_an_alphabet_is_its_own_alphabet():
    from metalearn_cli.episodes import alphabet_groups

    names = ["A/c1", "A/c2", "A/c1/rot090", "A/c2/rot090", "B/c1"]
    split = ClassImages(torch.zeros(5, 2, 1, 2, 2, dtype=torch.uint8), names)
    assert sorted(alphabet_groups(split)) == [[0, 1], [2, 3], [4]]


def test_class_images_refuse_what_is_not_a_split():
    with pytest.raises(ValueError, match="uint8 tensor"):
        ClassImages(torch.zeros(2, 2, 1, 4, 4), ["a", "b"])
    with pytest.raises(ValueError, match="uint8 tensor"):
        ClassImages(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), ["a", "b"])
    with pytest.raises(ValueError, match="one class name per class"):
        ClassImages(torch.zeros(2, 2, 1, 4, 4, dtype=torch.uint8), ["a"])


def test_check_fits_accepts_the_edges():
    split = make_split(5, 4)
    check_fits(split, "train", "x", 5, 1, 3)  # every class, every image: fits
    check_fits(split, "train", "x", 2, 1, 1)
    with pytest.raises(DataError, match="a task needs 2 classes or more"):
        check_fits(split, "train", "x", 1, 1, 1)
