"""Omniglot: a small generated archive in the original layout (also for tests/data/test_omniglot_files.py),
a chosen root and its cache, and the protocols on the embedded copy."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_tree
from metalearn_cli.data import DATASETS, omniglot_files
from metalearn_cli.errors import ConfigError, DataError


def png(seed: int) -> bytes:
    """A 105x105 1-bit drawing like Omniglot's: black strokes on white."""
    rng = np.random.default_rng(seed)
    pixels = np.ones((105, 105), dtype=bool)
    r, c = rng.integers(10, 80, size=2)
    pixels[r : r + 20, c : c + 4] = False
    buf = io.BytesIO()
    Image.fromarray(pixels).convert("1").save(buf, format="PNG")
    return buf.getvalue()


def make_omniglot(root: Path, background=(("Alpha", 2), ("Beta", 1)), evaluation=(("Gamma", 2),), drawings=4,
                  as_zip=True, skip=None) -> Path:
    """Write images_background / images_evaluation in torchvision's layout (zips or folders)."""
    root.mkdir(parents=True, exist_ok=True)
    char_id = 0
    for set_name, alphabets in (("images_background", background), ("images_evaluation", evaluation)):
        files = {}
        for alphabet, n_chars in alphabets:
            for c in range(1, n_chars + 1):
                char_id += 1
                for d in range(1, drawings + 1):
                    name = f"{set_name}/{alphabet}/character{c:02d}/{char_id:04d}_{d:02d}.png"
                    if name != skip:
                        files[name] = png(char_id * 100 + d)
        write_tree(files, root / f"{set_name}.zip" if as_zip else root, as_zip)
    return root


def test_root_with_lake_split_and_cache(tmp_path):
    background = tuple((f"A{i}", 1) for i in range(7))
    root = make_omniglot(tmp_path, background=background, evaluation=(("E", 3),))
    data = DATASETS.build({"name": "omniglot", "split": "background", "root": str(root)})
    assert (data.train.n_classes, data.val.n_classes, data.test.n_classes) == (2, 5, 3)
    assert data.image_shape == (1, 28, 28) and data.train.n_per_class == 4
    assert (root / omniglot_files.CACHE_NAME.format(size=28)).is_file()
    again = DATASETS.build({"name": "omniglot", "split": "background", "root": str(root)})
    assert np.array_equal(again.test.images.numpy(), data.test.images.numpy())


def test_a_chosen_resolution_is_read_from_the_archives_and_cached_per_size(tmp_path):
    """dataset.image_size resizes the full-resolution drawings (Lanczos); the 28 px copy is the same
    drawing at a quarter of the pixels, so the 56 px version pooled 2x2 is nearly parallel to it."""
    import torch.nn.functional as F

    background = tuple((f"A{i}", 1) for i in range(7))
    root = make_omniglot(tmp_path, background=background, evaluation=(("E", 3),))
    small = DATASETS.build({"name": "omniglot", "split": "background", "root": str(root)})
    large = DATASETS.build({"name": "omniglot", "split": "background", "root": str(root), "image_size": 56})
    assert large.image_shape == (1, 56, 56) and small.image_shape == (1, 28, 28)
    assert (root / omniglot_files.CACHE_NAME.format(size=56)).is_file() and (root / omniglot_files.CACHE_NAME.format(size=28)).is_file()
    pooled = F.avg_pool2d(large.test.images.float().flatten(0, 1), 2, 2).unflatten(0, large.test.images.shape[:2])
    assert F.cosine_similarity(pooled.flatten(), small.test.images.float().flatten(), dim=0) > 0.9  # the same drawings
    assert large.train.images.float().mean() > 0  # strokes bright, as at 28 px


def test_another_resolution_needs_the_archives_and_a_sane_size():
    with pytest.raises(ConfigError, match="the embedded copy is 28 px; pass dataset.root"):
        DATASETS.build({"name": "omniglot", "image_size": 56})
    with pytest.raises(ConfigError, match="too small"):
        DATASETS.build({"name": "omniglot", "image_size": 4})


def test_vinyals_split_needs_every_character(tmp_path):
    root = make_omniglot(tmp_path)
    with pytest.raises(DataError, match="lacks .* characters of the split"):
        DATASETS.build({"name": "omniglot", "split": "vinyals", "root": str(root)})


def test_download_needs_a_root():
    with pytest.raises(DataError, match="needs dataset.root"):
        DATASETS.build({"name": "omniglot", "download": True})


def test_embedded_vinyals_split_matches_the_protocol():
    data = DATASETS.build({"name": "omniglot"})
    assert (data.train.n_classes, data.val.n_classes, data.test.n_classes) == (4 * 1028, 4 * 172, 4 * 423)
    assert data.image_shape == (1, 28, 28) and data.train.n_per_class == 20
    # Rotated classes are the base character turned by 90 degrees.
    names = data.train.class_names
    base, turned = names.index("Angelic/character01"), names.index("Angelic/character01/rot090")
    import torch

    assert torch.equal(torch.rot90(data.train.images[base], 1, dims=(-2, -1)), data.train.images[turned])


def test_trainval_trains_on_all_1200_vinyals_characters_as_snell_et_al_final_runs():
    """dataset.val=trainval: the 172 validation characters (x 4 rotations) join training; validation still
    draws them (seen classes); the test's 423 characters are untouched and disjoint from training."""
    plain = DATASETS.build({"name": "omniglot"})
    data = DATASETS.build({"name": "omniglot", "val": "trainval"})
    assert data.train.n_classes == 4 * 1200 and data.train.class_names == plain.train.class_names + plain.val.class_names
    assert data.val.class_names == plain.val.class_names and data.test.class_names == plain.test.class_names
    assert not set(data.train.class_names) & set(data.test.class_names)


def test_trainval_on_the_background_split_trains_on_every_background_drawing():
    """Lake et al.'s training set whole: all 30 alphabets and all 20 drawers train (turned copies too);
    validation draws the upright characters' same images; the evaluation alphabets test."""
    held = DATASETS.build({"name": "omniglot", "split": "background"})
    data = DATASETS.build({"name": "omniglot", "split": "background", "val": "trainval", "rotations": 4})
    upright = sorted(held.train.class_names + held.val.class_names)
    assert data.train.n_classes == 4 * 964 and data.train.n_per_class == 20
    assert sorted(data.val.class_names) == upright and data.val_drawings
    assert data.test.class_names == held.test.class_names
    first = data.train.class_names.index(data.val.class_names[0])
    assert torch.equal(data.train.images[first], data.val.images[0])


def test_embedded_lake_split_uses_background_and_evaluation_alphabets():
    data = DATASETS.build({"name": "omniglot", "split": "background"})
    assert data.train.n_classes + data.val.n_classes == 964
    assert data.test.n_classes == 659


def test_failed_download_is_one_line(tmp_path, monkeypatch):
    import torchvision.datasets

    class Offline:  # as torchvision does: its folder made, then the fetch fails
        def __init__(self, root, *args, **kwargs):
            (Path(root) / "omniglot-py").mkdir(parents=True, exist_ok=True)
            raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "Omniglot", Offline)
    with pytest.raises(DataError, match="could not download Omniglot .*network is unreachable"):
        DATASETS.build({"name": "omniglot", "root": str(tmp_path), "download": True})
    assert tmp_path.is_dir() and list(tmp_path.iterdir()) == []  # the user's folder stays, with nothing left in it
    with pytest.raises(DataError, match="could not download Omniglot"):
        DATASETS.build({"name": "omniglot", "root": str(tmp_path / "new" / "root"), "download": True})
    assert list(tmp_path.iterdir()) == []  # nor any folder it made above it


def test_download_fetches_only_the_missing_sets_and_keeps_the_users_archives(tmp_path, monkeypatch):
    """dataset.download=true with the archives there (rebuilt zips, whose md5 torchvision would refuse) uses them and
    asks torchvision for nothing; with one set missing it fetches that set alone."""
    import torchvision.datasets

    asked = []

    class Recording:  # as if offline: a call here is a download attempt
        def __init__(self, root, background=True, download=False, **kwargs):
            asked.append(background)
            raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "Omniglot", Recording)
    background = tuple((f"A{i}", 1) for i in range(7))
    root = make_omniglot(tmp_path / "omni" / "omniglot-py", background=background, evaluation=(("E", 3),)).parent
    zips = {p: p.read_bytes() for p in (root / "omniglot-py").glob("*.zip")}
    data = DATASETS.build({"name": "omniglot", "split": "background", "root": str(root), "download": True})
    assert asked == [] and data.test.n_classes == 3
    assert {p: p.read_bytes() for p in (root / "omniglot-py").glob("*.zip")} == zips  # untouched
    (root / "omniglot-py" / "images_evaluation.zip").unlink()
    with pytest.raises(DataError, match="could not download Omniglot .*put images_evaluation.zip there yourself"):
        DATASETS.build({"name": "omniglot", "split": "background", "root": str(root), "download": True})
    assert asked == [False]  # images_evaluation alone
    assert (root / "omniglot-py" / "images_background.zip").read_bytes() == zips[root / "omniglot-py" / "images_background.zip"]
    (root / "omniglot-py" / "images_evaluation.zip").write_bytes(b"<html>proxy error</html>")  # a failed download's
    with pytest.raises(DataError, match="could not download Omniglot"):  # leftover is fetched again, not read
        DATASETS.build({"name": "omniglot", "split": "background", "root": str(root), "download": True})
    assert asked == [False, False]


def test_a_root_that_is_a_zip_or_is_absent_is_named_so(tmp_path):
    root = make_omniglot(tmp_path / "omni_both")
    with pytest.raises(DataError, match=r"images_background.zip is a file, not a folder; give the folder that holds "
                                        r"images_background\(.zip\) and images_evaluation\(.zip\), here dataset.root=.*omni_both$"):
        DATASETS.build({"name": "omniglot", "split": "background", "root": str(root / "images_background.zip")})
    with pytest.raises(DataError, match="is a file, not a folder"):  # also before any download
        DATASETS.build({"name": "omniglot", "root": str(root / "images_background.zip"), "download": True})
    with pytest.raises(DataError, match=r"Omniglot not found in .*nowhere: that folder does not exist; put the original archives there"):
        DATASETS.build({"name": "omniglot", "split": "background", "root": str(tmp_path / "nowhere")})


def test_converting_says_so_once_and_an_unwritable_cache_is_warned_about(tmp_path, monkeypatch, caplog):
    import errno
    import logging

    background = tuple((f"A{i}", 1) for i in range(7))
    root = make_omniglot(tmp_path, background=background, evaluation=(("E", 3),))
    spec = {"name": "omniglot", "split": "background", "root": str(root)}
    with caplog.at_level(logging.INFO, logger="metalearn_cli.data.omniglot_files"):
        DATASETS.build(spec)
        DATASETS.build(spec)  # from the cache: said nothing
    said = [r.getMessage() for r in caplog.records if "converting" in r.getMessage()]
    assert said == [f"converting the Omniglot archives in {root} to 28 px, once: cached in {root / '.metalearn-omniglot28.npz'}"]

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(omniglot_files.np, "savez_compressed", full_disk)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="metalearn_cli.data.omniglot_files"):
        data = DATASETS.build({**spec, "image_size": 32})  # a new size: converted, its cache not written
    assert data.image_shape == (1, 32, 32)
    assert [r.getMessage() for r in caplog.records] == [
        f"could not cache the converted Omniglot in {root} (No space left on device), so each run converts the archives "
        "again; make that folder writable or free disk space there (dataset.cache=false: convert without trying)"]


def test_cache_false_converts_each_time_and_writes_nothing_into_the_data_folder(tmp_path, caplog):
    import logging

    root = make_omniglot(tmp_path, background=tuple((f"A{i}", 1) for i in range(7)), evaluation=(("E", 3),))
    spec = {"name": "omniglot", "split": "background", "root": str(root), "cache": False}
    before = sorted(p.name for p in root.iterdir())
    with caplog.at_level(logging.INFO, logger="metalearn_cli.data.omniglot_files"):
        first = DATASETS.build(spec)
        second = DATASETS.build(spec)
    assert sorted(p.name for p in root.iterdir()) == before  # no .metalearn-omniglot28.npz
    said = [r.getMessage() for r in caplog.records if "converting" in r.getMessage()]
    assert said == [f"converting the Omniglot archives in {root} to 28 px (dataset.cache=false: not kept)"] * 2
    assert torch.equal(first.test.images, second.test.images)
    cached = DATASETS.build({**spec, "cache": True})  # the same images as the cached conversion
    assert (root / ".metalearn-omniglot28.npz").is_file() and torch.equal(cached.test.images, first.test.images)


def test_a_missing_alphabet_fails_the_vinyals_split_with_the_character_named(tmp_path):
    root = make_omniglot(tmp_path)
    with pytest.raises(DataError, match=r"lacks \d+ characters of the split \(e.g. [A-Za-z_()\-]+/character\d+\)"):
        DATASETS.build({"name": "omniglot", "root": str(root)})


def test_the_old_split_name_lake_is_refused_with_its_new_name():
    import pytest

    from metalearn_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="renamed dataset.split=background.*not Lake et al.'s within-alphabet"):
        DATASETS.build({"name": "omniglot", "split": "lake"})


def test_drawers_validation_keeps_every_background_alphabet_for_training(tmp_path):
    """dataset.val=drawers: all background characters train on their first drawers, validation is
    their last 5 drawings (Lake et al. train on all 30 alphabets; no alphabet is held out)."""
    background = tuple((f"A{i}", 2) for i in range(7))
    root = make_omniglot(tmp_path, background=background, evaluation=(("E", 3),), drawings=8)
    data = DATASETS.build({"name": "omniglot", "split": "background", "root": str(root), "val": "drawers"})
    assert data.train.class_names == data.val.class_names and data.train.n_classes == 14
    assert (data.train.n_per_class, data.val.n_per_class, data.test.n_classes) == (3, 5, 3)
    train, val = data.train.images.flatten(2), data.val.images.flatten(2)
    assert not any(bool((t == v).all()) for c in range(14) for t in train[c] for v in val[c])  # other drawings
    held_out = DATASETS.build({"name": "omniglot", "split": "background", "root": str(root)})
    assert (held_out.train.n_classes, held_out.val.n_classes) == (4, 10)  # the default: 5 alphabets held out


def test_drawers_validation_needs_the_background_split_and_enough_drawings(tmp_path):
    from metalearn_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="dataset.val=drawers is for dataset.split=background"):
        DATASETS.build({"name": "omniglot", "split": "vinyals", "val": "drawers"})
    root = make_omniglot(tmp_path, background=tuple((f"A{i}", 1) for i in range(7)), drawings=4)
    with pytest.raises(DataError, match="drawings"):
        DATASETS.build({"name": "omniglot", "split": "background", "root": str(root), "val": "drawers"})


def test_a_within_alphabet_augmented_lake_run_through_the_console_script(tmp_path):
    import json
    import subprocess
    import sys

    run = tmp_path / "lake run"
    exe = Path(sys.executable).with_name("metalearn")
    proc = subprocess.run([str(exe), "train", "dataset=omniglot_background", "dataset.val=drawers", "episode=lake20way1shot",
                           "trainer.within_alphabet=1", "trainer.augment=auto", "trainer.train_way=20", "trainer.iterations=6",
                           "trainer.val_every=3", "trainer.val_episodes=6", "trainer.log_every=3", "eval.episodes=20",
                           "encoder=conv4", "encoder.width=16", f"hydra.run.dir='{run}'"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    config = (run / ".hydra" / "config.yaml").read_text()
    assert "within_alphabet: 1" in config and "augment: auto" in config and "val: drawers" in config
    results = json.loads((run / "results.json").read_text())
    assert results["protocol"] == "lake" and results["episodes"] == 20 and results["way"] == 20


def test_rotations_turn_each_training_character_into_four_alphabets_and_leave_val_and_test_upright(tmp_path):
    """dataset.rotations=4 on the background split: each training character and its three turns are
    four classes; a turned alphabet is an alphabet of its own for within-alphabet tasks; validation
    (held-out alphabets or drawers) and the test (Lake's runs) stay unrotated."""
    import torch

    from metalearn_cli.episodes import alphabet_groups

    background = tuple((f"A{i}", 2) for i in range(7))
    root = make_omniglot(tmp_path, background=background, evaluation=(("E", 3),), drawings=8)
    spec = {"name": "omniglot", "split": "background", "root": str(root)}
    upright, turned = DATASETS.build(spec), DATASETS.build({**spec, "rotations": 4})
    assert turned.train.n_classes == 4 * upright.train.n_classes
    assert turned.val.class_names == upright.val.class_names and turned.test.class_names == upright.test.class_names
    names = turned.train.class_names
    for k in (1, 2, 3):
        i = names.index(f"A0/character01/rot{k * 90:03d}")
        assert torch.equal(turned.train.images[i], torch.rot90(turned.train.images[names.index("A0/character01")], k, dims=(-2, -1)))
    assert len(alphabet_groups(turned.train)) == 4 * len(alphabet_groups(upright.train))
    drawers = DATASETS.build({**spec, "rotations": 4, "val": "drawers"})
    assert drawers.train.n_classes == 56 and drawers.val.n_classes == 14
    assert not any("/rot" in n for n in drawers.val.class_names)
    with pytest.raises(ConfigError, match="dataset.rotations=3"):
        DATASETS.build({**spec, "rotations": 3})
    with pytest.raises(ConfigError, match="only with dataset.split=background"):
        DATASETS.build({"name": "omniglot", "rotations": 4})


def test_mirror_adds_each_training_class_mirrored_as_an_alphabet_of_its_own_and_leaves_val_and_test_upright(tmp_path):
    """dataset.mirror=true: each training class (and each of its turns) also enters mirrored left-right
    as a new class of a new alphabet, on either split; validation (held-out alphabets or drawers) and the test do not."""
    import torch

    from metalearn_cli.episodes import alphabet_groups

    root = make_omniglot(tmp_path, background=tuple((f"A{i}", 2) for i in range(7)), evaluation=(("E", 3),), drawings=8)
    spec = {"name": "omniglot", "split": "background", "root": str(root)}
    upright, both = DATASETS.build(spec), DATASETS.build({**spec, "rotations": 4, "mirror": True})
    assert both.train.n_classes == 8 * upright.train.n_classes and len(alphabet_groups(both.train)) == 8 * 2
    assert both.val.class_names == upright.val.class_names and both.test.class_names == upright.test.class_names
    names, images = both.train.class_names, both.train.images
    original = images[names.index("A0/character01")]
    assert torch.equal(images[names.index("A0/character01/mirror")], original.flip(-1))
    assert torch.equal(images[names.index("A0/character01/mirror/rot090")], torch.rot90(original.flip(-1), 1, dims=(-2, -1)))
    assert not torch.equal(original.flip(-1), original)  # the generated drawings are not symmetric: the test can fail
    drawers = DATASETS.build({**spec, "mirror": True, "val": "drawers"})
    assert drawers.train.n_classes == 28 and drawers.val.n_classes == 14 and "/mirror" not in "".join(drawers.val.class_names)
    vinyals, mirrored = DATASETS.build({"name": "omniglot"}), DATASETS.build({"name": "omniglot", "mirror": True})
    assert mirrored.train.n_classes == 2 * vinyals.train.n_classes and mirrored.test.class_names == vinyals.test.class_names


def test_the_56px_lake_data_needs_the_archives_and_runs_on_them_through_the_console_script(tmp_path):
    """dataset=omniglot_background_56px_rotations (the 56 px Lake recipe of docs/benchmarks.md) trains at 56 px on
    rotated classes: without dataset.root it stops with one line naming the fix; with a (generated) archive folder
    it trains on 4 x the classes and tests on Lake's runs."""
    import json
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("metalearn")
    small = ["pretrain.epochs=1", "pretrain.batch_size=16", "pretrain.val_episodes=4", "trainer.iterations=2",
             "trainer.val_every=1", "trainer.val_episodes=4", "eval.episodes=4", "encoder.width=8"]
    preset = ["experiment=metanet_omniglot_lake20w1s", "dataset=omniglot_background_56px_rotations", "encoder.blocks=5"]
    bare = subprocess.run([str(exe), "train", *preset, *small, f"hydra.run.dir='{tmp_path / 'bare'}'"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert bare.returncode != 0 and "Traceback" not in bare.stderr
    assert "pass dataset.root=DIR" in bare.stderr.strip().splitlines()[-1]
    root = make_omniglot(tmp_path / "Omniglot 原本", background=tuple((f"A{i}", 20) for i in range(6)),
                         evaluation=(("E", 20),), drawings=6)
    run = tmp_path / "best lake"
    proc = subprocess.run([str(exe), "train", *preset, *small, f"dataset.root='{root}'",
                           f"hydra.run.dir='{run}'"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((run / "results.json").read_text())
    assert (results["protocol"], results["way"], results["episodes"]) == ("lake", 20, 4)
    stage = json.loads((run / "pretrain" / "results.json").read_text())  # the supervised stage: tested on Lake's runs too
    assert (stage["protocol"], stage["way"]) == ("lake", 20)
    assert "rotations: 4" in (run / ".hydra" / "config.yaml").read_text() and (root / ".metalearn-omniglot56.npz").is_file()


def test_drawers_on_the_vinyals_split_is_one_readable_line_from_the_console_script(tmp_path):
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("metalearn")
    proc = subprocess.run([str(exe), "train", "dataset=omniglot", "dataset.val=drawers",
                           f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "dataset.val=drawers is for dataset.split=background" in proc.stderr


def test_an_ensemble_reads_archive_members_from_dataset_root_and_keeps_embedded_members_embedded(tmp_path):
    """`metalearn eval ... ensemble=[...] dataset_root=DIR`: every member that read archives reads them from DIR,
    at its own size, drawing the same tasks; a member on the embedded copy keeps it (so here, beside tiny
    archives, its test classes differ and it is refused); without dataset_root the archive member is named."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from metalearn_cli import eval_inputs, evaluation
    from metalearn_cli.ensemble import Ensemble, LockstepTasks

    root = str(make_omniglot(tmp_path / "archives", background=tuple((f"A{i}", 1) for i in range(7)), evaluation=(("E", 3),)))

    def saved(size, where):
        return OmegaConf.create({"name": "omniglot", "split": "background", "root": where, "image_size": size})

    member = SimpleNamespace(model=None)
    pair = Ensemble([member, member], ["a", "b"], [saved(28, "/moved/away"), saved(56, "/moved/away")])
    first = DATASETS.build(eval_inputs.dataset_of(pair.datasets[0], root, "a", eval_inputs.reads_folder(pair)))
    datas = eval_inputs.member_data(pair, first, "test", root)
    assert datas[0] is first and datas[1].image_shape == (1, 56, 56) and datas[1].test.class_names == first.test.class_names
    assert isinstance(evaluation.member_tasks(datas, "test", (3, 1, 1), 0, torch.device("cpu"), False), LockstepTasks)
    trio = Ensemble([member] * 3, ["a", "b", "c"], [*pair.datasets, saved(28, None)])
    with pytest.raises(ConfigError, match="member c was trained on other data than a .*its test classes differ"):
        eval_inputs.member_data(trio, first, "test", root)
    with pytest.raises(ConfigError, match="a was trained on omniglot read from /moved/away; eval reads a data folder only where the command names it"
                       r".*that folder is gone from this machine; add dataset_root=DIR"):
        eval_inputs.member_data(pair, first, "test", None)
