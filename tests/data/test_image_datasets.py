"""Image-folder data sets (folder, mini_imagenet, cifar_fs) on tiny generated files."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metalearn_cli.data import DATASETS
from metalearn_cli.data import mini_imagenet as mini
from metalearn_cli.data.class_cache import CACHE_DIR
from metalearn_cli.errors import DataError
from metalearn_cli.training import train
from conftest import FAST, compose_config


def make_folder(root: Path, classes: list[str], per_class: int = 3, size=(20, 14), flat: bool = False) -> None:
    rng = np.random.default_rng(0)
    for c in classes:
        for j in range(per_class):
            img = Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8))
            if flat:
                (root / "images").mkdir(parents=True, exist_ok=True)
                img.save(root / "images" / f"{c}{j:08d}.jpg")
            else:
                (root / c).mkdir(parents=True, exist_ok=True)
                img.save(root / c / f"{j}.png")


def test_folder_split_by_ratios_is_seeded_disjoint_and_cached(tmp_path, monkeypatch):
    make_folder(tmp_path, [f"class{i:02d}" for i in range(10)], per_class=4)
    cfg = {"name": "folder", "root": str(tmp_path), "image_size": 8}
    data = DATASETS.build(cfg)
    assert (data.train.n_classes, data.val.n_classes, data.test.n_classes) == (6, 2, 2)
    assert data.image_shape == (3, 8, 8) and data.train.n_per_class == 4
    again = DATASETS.build(cfg)
    assert again.test.class_names == data.test.class_names and torch.equal(again.test.images, data.test.images)
    assert DATASETS.build({**cfg, "split_seed": 1}).test.class_names != data.test.class_names
    assert len(list((tmp_path / CACHE_DIR).iterdir())) == 1  # another split of the same images: the same cache
    # The second build read the cache: converting an image would now fail.
    from metalearn_cli.data import class_cache

    monkeypatch.setattr(class_cache, "read_image", lambda *a, **k: (_ for _ in ()).throw(AssertionError("converted again")))
    assert torch.equal(DATASETS.build(cfg).train.images, data.train.images)


def test_a_damaged_cache_is_rebuilt(tmp_path):
    make_folder(tmp_path, ["a", "b", "c"], per_class=2)
    cfg = {"name": "folder", "root": str(tmp_path), "image_size": 6}
    first = DATASETS.build(cfg)
    (cache,) = (tmp_path / CACHE_DIR).iterdir()
    state = torch.load(cache, weights_only=True)
    state["images"][0, 0, 0, 0, 0] ^= 1  # a flipped bit: the checksum no longer matches
    torch.save(state, cache)
    assert torch.equal(DATASETS.build(cfg).train.images, first.train.images)


def test_a_changed_data_set_replaces_its_cache_and_keeps_other_sizes(tmp_path):
    """Each edit of the images made a new cache file beside the old ones; now the new one replaces the
    caches of the same image size (and those of earlier versions), and a cache of another size stays."""
    make_folder(tmp_path, ["a", "b", "c"], per_class=2)
    legacy = tmp_path / CACHE_DIR / "0123456789abcdef0123.pt"
    legacy.parent.mkdir()
    legacy.write_bytes(b"a cache of an earlier version")
    (tmp_path / CACHE_DIR / "notes.pt").write_bytes(b"not ours")
    DATASETS.build({"name": "folder", "root": str(tmp_path), "image_size": 6})
    DATASETS.build({"name": "folder", "root": str(tmp_path), "image_size": 8})
    assert len(list((tmp_path / CACHE_DIR).glob("*.pt"))) == 3 and not legacy.exists()
    Image.fromarray(np.zeros((20, 14, 3), dtype=np.uint8)).save(tmp_path / "a" / "0.png")
    changed = DATASETS.build({"name": "folder", "root": str(tmp_path), "image_size": 6})
    assert changed.train.images.sum() >= 0 and len(list((tmp_path / CACHE_DIR).glob("*.pt"))) == 3
    assert (tmp_path / CACHE_DIR / "notes.pt").exists()


def test_folder_split_file_and_its_errors(tmp_path, caplog):
    make_folder(tmp_path / "data", ["a", "b", "c", "d e"], per_class=2)
    split = tmp_path / "split.txt"
    split.write_text("# class split\na train\nb,train\nc val\n\"d e\" test\n")  # a name with a space, quoted or not
    with caplog.at_level("WARNING"):
        data = DATASETS.build({"name": "folder", "root": str(tmp_path / "data"), "image_size": 6, "split_file": str(split)})
    assert data.train.class_names == ["a", "b"] and data.test.class_names == ["d e"]
    assert "in no split" not in caplog.text  # every folder listed: nothing to say
    make_folder(tmp_path / "data", ["f"], per_class=2)
    with caplog.at_level("WARNING"):  # a folder the split file leaves out is said, as eval says it
        DATASETS.build({"name": "folder", "root": str(tmp_path / "data"), "image_size": 6, "split_file": str(split)})
    assert f"1 class folder (f) is in no split of {split}, so not used" in caplog.text
    shutil.rmtree(tmp_path / "data" / "f")
    split.write_text("a train\nb train\nc val\nd e test\n")
    assert DATASETS.build({"name": "folder", "root": str(tmp_path / "data"), "image_size": 6,
                           "split_file": str(split)}).test.class_names == ["d e"]
    split.write_text("a train\nb\n")
    with pytest.raises(DataError, match="expected '<class> <train|val|test>', got 'b'"):
        DATASETS.build({"name": "folder", "root": str(tmp_path / "data"), "split_file": str(split)})
    split.write_text("a train\nb train\nc val\nd e test\nc val\n")
    with pytest.raises(DataError, match="class 'c' is twice in the val split; list each class once"):
        DATASETS.build({"name": "folder", "root": str(tmp_path / "data"), "image_size": 6, "split_file": str(split)})
    split.write_text("a train\nzzz test\n")
    with pytest.raises(DataError, match="class zzz has no folder"):
        DATASETS.build({"name": "folder", "root": str(tmp_path / "data"), "split_file": str(split)})
    (tmp_path / "data" / "e").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        DATASETS.build({"name": "folder", "root": str(tmp_path / "data"), "image_size": 6})
    with pytest.raises(DataError, match="needs dataset.root"):
        DATASETS.build({"name": "folder"})
    with pytest.raises(DataError, match=r"split file .* is a folder; pass dataset.split_file=FILE"):
        DATASETS.build({"name": "folder", "root": str(tmp_path / "data"), "split_file": str(tmp_path)})
    for bad, needle in (({"images_per_class": 1}, r"images_per_class=1: .* \(>= 2"), ({"ratios": [1, 0, 0]}, "three shares > 0"),
                        ({"channels": 2}, r"dataset.channels=2 must be 1 \(grey\) or 3")):
        with pytest.raises(DataError, match=needle):  # refused before any image is read
            DATASETS.build({"name": "folder", "root": str(tmp_path / "nowhere"), **bad})


def test_training_on_a_folder_data_set_learns(tmp_path, monkeypatch, capsys):
    """Class structure survives the folder reader: glyph images written as files, read back through
    dataset=folder, are learned far above chance (a reader that mixed up classes would sit at 20%). A relative
    dataset.root is saved absolute, so the run resumes (and is evaluated) from any folder."""
    import json

    synthetic = DATASETS.build({"name": "synthetic", "train_classes": 24, "val_classes": 8, "test_classes": 8,
                                "images_per_class": 8})
    for split in (synthetic.train, synthetic.val, synthetic.test):
        for c, name in enumerate(split.class_names):
            (tmp_path / "data" / name).mkdir(parents=True)
            for j in range(split.images.shape[1]):
                Image.fromarray(split.images[c, j, 0].numpy()).save(tmp_path / "data" / name / f"{j}.png")
    fast = [o for o in FAST if not o.startswith(("dataset", "trainer.iterations", "eval.episodes"))]
    monkeypatch.chdir(tmp_path)
    cfg = compose_config("train", fast + ["dataset=folder", "dataset.root=data", "dataset.image_size=28",
                                          "dataset.channels=1", "dataset.ratios=[0.6,0.2,0.2]", "trainer.iterations=30",
                                          "trainer.val_every=30", "eval.episodes=40"])
    train(cfg, tmp_path / "run")
    accuracy = json.loads((tmp_path / "run" / "results.json").read_text())["accuracy"]
    assert accuracy > 0.5, accuracy  # 5-way: chance is 0.2; 40 tasks x 15 queries
    from metalearn_cli.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["config"]["dataset"]["root"] == str(tmp_path / "data")
    from metalearn_cli.cli import main

    (tmp_path / "data").rename(tmp_path / "moved data")  # a resume whose data moved says how to point it there
    assert main(["train", f"resume={tmp_path / 'run'}", "trainer.iterations=32"]) == 2
    assert "(moved since the run started? resume with resume=" in capsys.readouterr().err
    assert main(["train", f"resume={tmp_path / 'run'}", "trainer.iterations=32", "dataset.root='moved data'"]) == 0


@pytest.mark.parametrize("layout", ["images", "per_class", "per_split"])
def test_mini_imagenet_reads_each_usual_layout_with_the_ravi_split(tmp_path, layout):
    split = mini.ravi_split()
    assert [len(split[s]) for s in ("train", "val", "test")] == [64, 16, 20]
    wnids = [w for s in split.values() for w in s]
    if layout == "images":
        make_folder(tmp_path, wnids, per_class=2, size=(10, 12), flat=True)
    elif layout == "per_class":
        make_folder(tmp_path, wnids, per_class=2, size=(10, 12))
    else:
        for s, ws in split.items():
            make_folder(tmp_path / s, ws, per_class=2, size=(10, 12))
    data = DATASETS.build({"name": "mini_imagenet", "root": str(tmp_path), "image_size": 8, "images_per_class": 2})
    assert data.test.class_names == split["test"] and data.image_shape == (3, 8, 8)
    assert (data.train.n_classes, data.val.n_classes, data.test.n_classes) == (64, 16, 20)


def test_mini_imagenet_missing_images_say_where_to_put_them(tmp_path):
    with pytest.raises(DataError, match="needs dataset.root"):
        DATASETS.build({"name": "mini_imagenet"})
    make_folder(tmp_path, mini.ravi_split()["train"][:3], per_class=1, flat=True)
    with pytest.raises(DataError, match=r"lacks 97 of the 100 classes .*images/ as <wnid><index>.jpg"):
        DATASETS.build({"name": "mini_imagenet", "root": str(tmp_path)})
    with pytest.raises(DataError, match=r"lacks 100 .*the folder that holds images/: dataset.root="):
        DATASETS.build({"name": "mini_imagenet", "root": str(tmp_path / "images")})


def test_mini_imagenet_refuses_a_class_folder_linked_to_another_and_skips_empty_leftovers(tmp_path):
    """A test class's folder that links to a training class's would test on training images; an empty
    ``<wnid>/`` left beside ``train/<wnid>/`` must not hide the images there."""
    split = mini.ravi_split()
    for s, ws in split.items():
        make_folder(tmp_path / s, ws, per_class=2, size=(10, 12))
    (tmp_path / split["train"][0]).mkdir()  # empty, looked at first
    data = DATASETS.build({"name": "mini_imagenet", "root": str(tmp_path), "image_size": 8, "images_per_class": 2})
    assert data.train.n_classes == 64
    shutil.rmtree(tmp_path / "test" / split["test"][0])
    (tmp_path / "test" / split["test"][0]).symlink_to(tmp_path / "train" / split["train"][1])
    with pytest.raises(DataError, match="are one folder"):
        DATASETS.build({"name": "mini_imagenet", "root": str(tmp_path), "image_size": 8, "images_per_class": 2})


def write_fake_cifar100(root: Path, per_class: int = 2) -> list[str]:
    """torchvision's cifar-100-python layout with random pixels (integrity checks patched in the test)."""
    names = sorted({w for s in ("train", "val", "test") for w in
                    (Path(__file__).parents[2] / "metalearn_cli" / "data" / "assets" / "cifar_fs" / f"{s}.txt").read_text().split()})
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for part, n in (("train", per_class), ("test", 1)):
        labels = [c for c in range(100) for _ in range(n)]
        data = rng.integers(0, 255, (len(labels), 3072), dtype=np.uint8)
        with open(base / part, "wb") as f:
            pickle.dump({"data": data, "fine_labels": labels}, f)
    with open(base / "meta", "wb") as f:
        pickle.dump({"fine_label_names": names}, f)
    return names


def test_cifar_fs_uses_torchvisions_cifar100_and_the_bertinetto_split(tmp_path, monkeypatch):
    from torchvision.datasets import cifar

    write_fake_cifar100(tmp_path)
    monkeypatch.setattr(cifar.CIFAR100, "_check_integrity", lambda self: True)  # the fake files have other MD5s
    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)
    data = DATASETS.build({"name": "cifar_fs", "root": str(tmp_path)})
    assert (data.train.n_classes, data.val.n_classes, data.test.n_classes) == (64, 16, 20)
    assert data.image_shape == (3, 32, 32) and data.train.n_per_class == 3
    assert "whale" in data.test.class_names and "dolphin" in data.train.class_names
    assert DATASETS.build({"name": "cifar_fs", "root": str(tmp_path), "image_size": 16}).image_shape == (3, 16, 16)


def test_cifar_fs_missing_is_one_line(tmp_path):
    with pytest.raises(DataError, match="CIFAR-100 not found or corrupted .*dataset.download=true") as info:
        DATASETS.build({"name": "cifar_fs", "root": str(tmp_path)})
    assert "download=True" not in str(info.value)  # torchvision's Python argument, not this command line's
    with pytest.raises(DataError, match=f"dataset.root={tmp_path / 'nowhere'} does not exist; put torchvision's"):
        DATASETS.build({"name": "cifar_fs", "root": str(tmp_path / "nowhere")})
    write_fake_cifar100(tmp_path)  # there, but not the official archive's files
    with pytest.raises(DataError, match="cifar-100-python is there but its files .* fail torchvision's checksums"):
        DATASETS.build({"name": "cifar_fs", "root": str(tmp_path)})
    with pytest.raises(DataError, match=f"is cifar-100-python/ itself; pass the folder that holds it: dataset.root={tmp_path}"):
        DATASETS.build({"name": "cifar_fs", "root": str(tmp_path / "cifar-100-python")})


def test_a_class_of_one_image_is_named_and_files_beside_the_classes_are_said(tmp_path, caplog):
    make_folder(tmp_path, [f"class{i:02d}" for i in range(4)], per_class=3)
    (tmp_path / "README.txt").write_text("my notes")
    Image.new("L", (8, 8)).save(tmp_path / "stray.png")
    with caplog.at_level("WARNING"):
        DATASETS.build({"name": "folder", "root": str(tmp_path), "image_size": 6})
    assert "skipped 2 files beside the class folders (README.txt, stray.png)" in caplog.text
    for extra in ("1.png", "2.png"):
        (tmp_path / "class02" / extra).unlink()
    with pytest.raises(DataError, match="class class02 has 1 image, .* add images there or remove its folder"):
        DATASETS.build({"name": "folder", "root": str(tmp_path), "image_size": 6})


def test_a_short_class_is_named_when_every_class_is_cut_to_it(tmp_path, caplog):
    make_folder(tmp_path, [f"class{i:02d}" for i in range(6)], per_class=4)
    for extra in ("2.png", "3.png"):
        (tmp_path / "class03" / extra).unlink()
    with caplog.at_level("WARNING"):
        data = DATASETS.build({"name": "folder", "root": str(tmp_path), "image_size": 6})
    assert data.train.n_per_class == 2
    assert ("cut to the first 2, the count of class03 (add images there, or move that class out of the root and any "
            "split file: dataset.images_per_class can only cut more)") in caplog.text


def test_class_folders_nested_one_level_too_deep_say_how_to_lay_them_out(tmp_path):
    """root/train|val|test/<class>/ (mini-ImageNet's layout) read as three class folders holding only folders."""
    for split, classes in (("train", ["a", "b"]), ("val", ["c"]), ("test", ["d"])):
        make_folder(tmp_path / split, classes)
    with pytest.raises(DataError, match=r"holds no images but folders \(\w\): .* list each class's split in "
                                        r"dataset.split_file=FILE"):
        DATASETS.build({"name": "folder", "root": str(tmp_path), "image_size": 6})


def test_a_cifar_root_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "cifar").write_text("not a folder")
    with pytest.raises(DataError, match="is a file, not a folder; pass the folder that holds cifar-100-python/"):
        DATASETS.build({"name": "cifar_fs", "root": str(tmp_path / "cifar")})


def test_an_image_replaced_with_its_size_and_mtime_kept_is_converted_again(tmp_path):
    """``cp new.png 0.png; touch -r old 0.png``: same size, same mtime, other pixels; the cache must not hide it."""
    import os
    import shutil

    make_folder(tmp_path / "data", ["a", "b", "c"], per_class=2, size=(8, 8))
    cfg = {"name": "folder", "root": str(tmp_path / "data"), "image_size": 8}
    first = DATASETS.build(cfg)
    target = tmp_path / "data" / "a" / "0.png"
    other = tmp_path / "other.png"
    Image.fromarray(np.full((8, 8, 3), 255, np.uint8)).save(other)
    stat = target.stat()
    while other.stat().st_size != stat.st_size:  # pad the PNG to the same byte size (after IEND, readers ignore it)
        assert other.stat().st_size < stat.st_size
        with open(other, "ab") as f:
            f.write(b"\0" * (stat.st_size - other.stat().st_size))
    shutil.copyfile(other, target)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert target.stat().st_size == stat.st_size and target.stat().st_mtime_ns == stat.st_mtime_ns
    again = DATASETS.build(cfg)
    names = again.train.class_names + again.val.class_names + again.test.class_names
    split = next(s for s in (again.train, again.val, again.test) if "a" in s.class_names)
    before = next(s for s in (first.train, first.val, first.test) if "a" in s.class_names)
    assert "a" in names and (split.images[split.class_names.index("a"), 0] == 255).all()
    assert not torch.equal(split.images, before.images)


def test_a_folder_run_keeps_its_split_when_classes_are_added_renamed_or_moved(tmp_path):
    """The split was worked out again from the folders there now: a class added or renamed after training
    moved classes the run trained on into the test split of `metalearn eval` and of a resume, without a word.
    The run records its split; eval uses it (an added class is left out, said), a missing class is refused,
    `compare` refuses runs scored on other classes, and a resume follows the data set to where it moved."""
    import json
    import shutil
    import subprocess
    import sys

    from metalearn_cli.checkpoint import load_checkpoint

    make_folder(tmp_path / "data", [f"class{i:02d}" for i in range(12)], per_class=6)
    base = ["-m", "metalearn_cli"]
    train_args = ["dataset=folder", "dataset.root=data", "dataset.image_size=20", "encoder=conv4", "encoder.width=8",
                  "episode.way=2", "episode.query=3", "trainer.train_way=5", "trainer.train_query=3", "trainer.meta_batch=2",
                  "trainer.iterations=4", "trainer.val_every=2", "trainer.val_episodes=10", "trainer.checkpoint_every=2",
                  "eval.episodes=10", "eval.batch_tasks=5"]

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *base, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)

    done = cli("train", *train_args, "hydra.run.dir=run")
    assert done.returncode == 0, done.stderr[-2000:]
    recorded = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")["config"]["dataset"]["classes"]
    trained = json.loads((tmp_path / "run" / "results.json").read_text())
    make_folder(tmp_path / "data", ["aaa_added"], per_class=6)  # sorts first: a fresh ratio split would move classes
    again = cli("eval", "checkpoint=run", "dataset_root=data", "hydra.run.dir=eval_added")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "1 class folder (aaa_added) is not in the run's recorded split, so not used" in again.stdout + again.stderr
    scored = json.loads((tmp_path / "eval_added" / "results.json").read_text())
    assert scored["split_digest"] == trained["split_digest"] and scored["accuracy"] == trained["accuracy"]
    Image.fromarray(np.full((20, 14, 3), 7, dtype=np.uint8)).save(tmp_path / "data" / recorded["test"][0] / "0.png")
    edited = cli("eval", "checkpoint=run", "dataset_root=data", "hydra.run.dir=eval_edited")
    assert edited.returncode == 0 and "the test split read now holds other images or classes than the one" in \
        edited.stdout + edited.stderr, edited.stdout[-2000:]
    assert "holds other images" not in again.stdout + again.stderr  # the added class alone: the same test split
    other = cli("train", *train_args, "hydra.run.dir=run_other")  # trained on the 13 classes: another split
    assert other.returncode == 0, other.stderr[-2000:]
    refused = cli("compare", "run", "run_other", "--out", "cmp")
    assert refused.returncode == 2 and "the test split holds other classes" in refused.stderr, refused.stderr
    from metalearn_cli.report import describe
    from metalearn_cli.run_settings import config_labels

    runs = [tmp_path / "run", tmp_path / "run_other"]  # legends name the splits briefly, not every class
    labels = config_labels(runs, [describe(r, tmp_path) for r in runs])
    assert all("items]" in label and len(label) < 300 for label in labels), labels
    shutil.move(tmp_path / "data" / recorded["test"][0], tmp_path / "data" / "renamed")
    gone = cli("eval", "checkpoint=run", "dataset_root=data", "hydra.run.dir=eval_renamed")
    assert gone.returncode == 2 and f"has no class folder {recorded['test'][0]}, which the run's test split holds" \
        in gone.stderr, gone.stderr
    shutil.move(tmp_path / "data" / "renamed", tmp_path / "data" / recorded["test"][0])
    shutil.move(tmp_path / "data", tmp_path / "moved data")  # a resume follows the data set where it went
    resumed = cli("train", "resume=run", "trainer.iterations=6", "dataset.root=moved data")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "continues on the data set in dataset.root=" in resumed.stdout + resumed.stderr
    # said before the run dir was accepted, and in its log file too (it once went to the console alone)
    assert "continues on the data set" in (tmp_path / "run" / "train.log").read_text()
    assert "is not in the run's recorded split" in (tmp_path / "eval_added" / "eval.log").read_text()
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["step"] == 6 and state["config"]["dataset"]["root"] == str(tmp_path / "moved data")
    assert state["config"]["dataset"]["classes"] == recorded


def test_split_ids_tell_classes_from_images():
    """compare pairs runs on the same classes (at any image size); eval's warning needs the images too."""
    from metalearn_cli.data import split_ids
    from metalearn_cli.episodes import ClassImages

    images = torch.zeros(3, 2, 1, 4, 4, dtype=torch.uint8)
    base = split_ids(ClassImages(images, ["a", "b", "c"]))
    bigger = split_ids(ClassImages(torch.zeros(3, 2, 1, 8, 8, dtype=torch.uint8), ["a", "b", "c"]))
    assert bigger["split_classes"] == base["split_classes"] and bigger["split_digest"] != base["split_digest"]
    assert split_ids(ClassImages(images, ["a", "c", "b"]))["split_classes"] != base["split_classes"]
    assert split_ids(ClassImages(images.clone(), ["a", "b", "c"])) == base


def test_runs_on_two_class_sets_of_one_folder_keep_a_cache_each(tmp_path):
    """A run that recorded 3 classes and one trained after a fourth was added read one folder: each keeps
    its cache (they evicted each other's, and every switch converted the images again)."""
    make_folder(tmp_path, ["a", "b", "c"], per_class=2)
    three = {"name": "folder", "root": str(tmp_path), "image_size": 6,
             "classes": {"train": ["a"], "val": ["b"], "test": ["c"]}}
    DATASETS.build(three)
    make_folder(tmp_path, ["d"], per_class=2)
    DATASETS.build({"name": "folder", "root": str(tmp_path), "image_size": 6})  # all four classes
    DATASETS.build(three)
    assert len(list((tmp_path / CACHE_DIR).glob("*.pt"))) == 2


def test_class_names_typed_composed_find_folders_written_decomposed(tmp_path):
    """macOS writes ``café`` decomposed (e + a combining accent); a split file or a run's record typed composed
    names the same folder, as predict reads class folders."""
    import unicodedata

    nfd = [unicodedata.normalize("NFD", n) for n in ("café", "crème brûlée", "été")]
    make_folder(tmp_path / "data", [*nfd, "plain"], per_class=2)
    split = tmp_path / "split file.txt"
    split.write_text("café train\ncrème brûlée train\nété val\nplain test\n", encoding="utf-8")
    data = DATASETS.build({"name": "folder", "root": str(tmp_path / "data"), "image_size": 6, "split_file": str(split)})
    assert data.train.class_names == nfd[:2] and data.val.class_names == [nfd[2]]
    recorded = {"train": ["café", "crème brûlée"], "val": ["été"], "test": ["plain"]}
    data = DATASETS.build({"name": "folder", "root": str(tmp_path / "data"), "image_size": 6, "classes": recorded})
    assert data.train.class_names == nfd[:2] and data.test.class_names == ["plain"]
