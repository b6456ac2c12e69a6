"""``metalearn_cli.load([A, B])``: trained meta-networks answering as one from Python, as ``ensemble=`` does in
``metalearn predict`` (each member on its own, at its own image size; the mean of their probabilities)."""

from __future__ import annotations

import pytest
import torch

import metalearn_cli
from conftest import write_image_task
from metalearn_cli import training
from metalearn_cli.errors import ConfigError, DataError
from metalearn_cli.knowledge_ensemble import EnsembleClassifier, KnowledgeEnsemble


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny runs of one recipe (seeds 0 and 1) and one at 32 px; a task of 3 classes as files."""
    from conftest import compose_config, FAST

    root = tmp_path_factory.mktemp("ensemble")
    made = {}
    for name, extra in (("a", ["seed=0"]), ("b ü", ["seed=1"]), ("larger", ["seed=3", "dataset.image_size=32"])):
        made[name] = root / name
        made[name].mkdir()
        training.train(compose_config("train", [*FAST, *extra]), made[name])
    names = write_image_task(root / "task", classes=3, support=(1, 2), query=2)
    support = [p for n in names for p in sorted((root / "task" / "support" / n).iterdir())]
    labels = [i for i, n in enumerate(names) for _ in (root / "task" / "support" / n).iterdir()]
    queries = sorted((root / "task" / "query").rglob("*.png"))
    return made, support, labels, queries


def test_a_list_of_paths_loads_an_ensemble_whose_answer_is_the_members_mean(runs):
    made, support, labels, queries = runs
    ensemble = metalearn_cli.load([str(made["a"]), made["b ü"]], device="cpu")
    assert isinstance(ensemble, KnowledgeEnsemble) and len(ensemble.members) == 2
    classify = ensemble.adapt(support, labels)  # files: each member reads them
    assert isinstance(classify, EnsembleClassifier) and classify.n_classes == 3
    alone = [metalearn_cli.load(made[n], device="cpu") for n in ("a", "b ü")]
    each = [k.adapt(k.read_images(support), labels)(k.read_images(queries)) for k in alone]
    assert not torch.allclose(each[0], each[1], atol=1e-6)  # the members differ, so the mean is neither
    assert torch.allclose(classify(queries), (each[0] + each[1]) / 2, atol=1e-6)
    pixels = ensemble.read_images(queries)  # one image format: pixels as well as files
    assert torch.allclose(classify(pixels), (each[0] + each[1]) / 2, atol=1e-6)
    assert torch.equal(classify.logits(pixels).argmax(-1), classify(pixels).argmax(-1))


def test_members_of_two_image_sizes_each_read_the_files_and_pixels_are_refused_with_the_fix(runs):
    made, support, labels, queries = runs
    ensemble = metalearn_cli.load((made["a"], made["larger"]), device="cpu")
    alone = [metalearn_cli.load(made[n], device="cpu") for n in ("a", "larger")]
    each = [k.adapt(support, labels)(queries) for k in alone]
    assert torch.allclose(ensemble.adapt(support, labels)(queries), (each[0] + each[1]) / 2, atol=1e-6)
    with pytest.raises(DataError, match=r"members read images in different formats \(1-channel 28 px, 1-channel 32 px\)"
                                        r", so read_images\(\) cannot fit them all: give adapt\(\) and the classifier the files"):
        ensemble.read_images(queries)
    with pytest.raises(DataError, match=r"different formats .*, so pixels cannot fit them all"):  # one size fits one member
        ensemble.adapt(alone[0].read_images(support), labels)
    once = ensemble.adapt(iter(support), labels)  # a generator (Path.glob) is read once, for every format
    assert torch.allclose(once(q for q in queries), (each[0] + each[1]) / 2, atol=1e-6)


def test_a_copy_of_a_member_an_empty_list_and_bad_labels_are_one_line(runs, tmp_path):
    made, support, labels, _ = runs
    with pytest.raises(ConfigError, match=r"best.pt\) is listed twice; list each trained run once"):  # the dir: its file named
        metalearn_cli.load([made["a"] / "checkpoints" / "best.pt", made["a"]], device="cpu")
    with pytest.raises(ConfigError, match=r"best.pt is listed twice; list each trained run once$"):  # the file: said once
        metalearn_cli.load([made["a"] / "checkpoints" / "best.pt"] * 2, device="cpu")
    with pytest.raises(ConfigError, match="at least one trained meta-network"):
        metalearn_cli.load([], device="cpu")
    ensemble = metalearn_cli.load([made["a"], made["b ü"]], device="cpu")
    with pytest.raises(DataError, match="support labels must be integers"):
        ensemble.adapt(support, ["cat"] * len(support))
    with pytest.raises(DataError, match="2 support images but"):
        ensemble.adapt(support[:2], labels)


def test_members_trained_on_different_data_sets_are_averaged_with_a_warning(runs, caplog):
    """eval refuses such an ensemble (its test classes differ); from Python or predict the user brings the task, so
    the mean is given, and the warning names each data set's members."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from metalearn_cli.knowledge_ensemble import say_other_data

    def member(name, source):
        return SimpleNamespace(config=OmegaConf.create({"dataset": {"name": name}}), source=source)

    say_other_data([member("omniglot", "/r/a.pt"), member("omniglot", "/r/b.pt")])
    assert not caplog.records
    say_other_data([member("omniglot", "/r/a.pt"), member("mini_imagenet", "/r/b.pt"), member("omniglot", "/r/c.pt")])
    (record,) = caplog.records
    assert record.levelname == "WARNING" and "trained on different data sets (omniglot: /r/a.pt, /r/c.pt; " \
        "mini_imagenet: /r/b.pt); their probabilities are averaged as asked" in record.getMessage()


def test_members_trained_on_two_folders_are_two_data_sets_and_omniglot_read_from_a_folder_is_one(caplog):
    """dataset=folder names any folder of images: its root is which data set (two folders warn, one folder does not);
    Omniglot's root is only where the same drawings were read from (embedded beside a folder: one data set)."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from metalearn_cli.knowledge_ensemble import say_other_data

    def member(source, **dataset):
        return SimpleNamespace(config=OmegaConf.create({"dataset": dataset}), source=source)

    say_other_data([member("/r/a.pt", name="omniglot", root=None), member("/r/b.pt", name="omniglot", root="/data/omniglot")])
    say_other_data([member("/r/a.pt", name="folder", root="/data/birds", split_seed=0),
                    member("/r/b.pt", name="folder", root="/data/birds", split_seed=1)])
    assert not caplog.records
    say_other_data([member("/r/a.pt", name="folder", root="/data/birds"), member("/r/b.pt", name="folder", root="/data/cars")])
    (record,) = caplog.records
    assert "trained on different data sets (folder /data/birds: /r/a.pt; folder /data/cars: /r/b.pt)" in record.getMessage()
