"""Lake et al.'s 20 original runs (``eval.lake_runs``): read from an archive laid out as Lake's
``all_runs.zip``, found among the test drawings pixel for pixel, scored as given; bad archives are one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from conftest import write_tree
from metalearn_cli.data import image_format
from metalearn_cli.data.ink import normalise_ink
from metalearn_cli.episodes import ClassImages
from metalearn_cli.errors import ConfigError, DataError
from metalearn_cli.lake_original import original_runs, read_runs
from metalearn_cli.lake_runs import LakeRuns
from metalearn_cli.params.datasets import InkNormalise


def omniglot(normalise: str = "none") -> object:
    return OmegaConf.create({"name": "omniglot", "split": "background", "normalise": normalise})


def write_runs(root: Path, raw: torch.Tensor, runs: list[list[tuple[int, int, int]]], as_zip: bool = True) -> Path:
    """An archive laid out as Lake's: per run, ``(character, support drawer, query drawer)`` of ``raw``
    (strokes bright, as the model sees them; written dark on white, as Omniglot's files are), the test
    items in another order than the classes, and ``class_labels.txt`` pairing them."""
    files: dict[str, bytes] = {}
    for r, run in enumerate(runs, 1):
        lines = []
        order = list(reversed(range(len(run))))  # item k is the character of class len-1-k
        for k, i in enumerate(order, 1):
            lines.append(f"run{r:02d}/test/item{k:02d}.png run{r:02d}/training/class{i + 1:02d}.png")
        for i, (char, support, query) in enumerate(run):
            files[f"run{r:02d}/training/class{i + 1:02d}.png"] = png(raw[char, support])
            files[f"run{r:02d}/test/item{order.index(i) + 1:02d}.png"] = png(raw[char, query])
        files[f"run{r:02d}/class_labels.txt"] = "\n".join(lines).encode() + b"\n"
    return write_tree(files, root, as_zip)


def png(image: torch.Tensor) -> bytes:
    import io

    out = io.BytesIO()
    Image.fromarray((255 - image[0]).numpy()).save(out, format="PNG")
    return out.getvalue()


def drawings(alphabets: int = 2, chars: int = 6, drawers: int = 4, side: int = 28) -> tuple[torch.Tensor, list[str]]:
    g = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 256, (alphabets * chars, drawers, 1, side, side), generator=g, dtype=torch.uint8)
    return raw, [f"Alpha{a}/character{c + 1:02d}" for a in range(alphabets) for c in range(chars)]


RUNS = [[(0, 1, 2), (3, 1, 2), (5, 1, 2), (2, 1, 2), (4, 1, 2)],  # one alphabet, one drawer pair (as Lake's)
        [(7, 0, 3), (6, 2, 1), (11, 3, 0), (9, 0, 3), (8, 1, 2)]]  # the second alphabet, drawers per character


@pytest.mark.parametrize("normalise", ["none", "centre_scale"])
def test_original_runs_are_found_among_the_test_drawings_and_scored_as_given(tmp_path, normalise):
    raw, names = drawings()
    seen = torch.from_numpy(normalise_ink(raw.numpy(), InkNormalise(normalise)))  # the split as the data set frames it
    split = ClassImages(seen, names)
    runs = read_runs(write_runs(tmp_path / "all_runs.zip", raw, RUNS), split, image_format(omniglot(normalise)))
    assert runs.names == ["run01", "run02"]
    assert runs.characters == [[c for c, _, _ in run] for run in RUNS]
    assert runs.drawers == [[(s, q) for _, s, q in run] for run in RUNS]
    lake = LakeRuns(split, 5, seed=0, original=runs)
    batches = list(lake.fixed(2, 1))
    assert lake.task_classes(2) == runs.characters
    for batch, run in zip(batches, RUNS):
        want_support = torch.stack([seen[c, s] for c, s, _ in run]).float() / 255
        want_query = torch.stack([seen[c, q] for c, _, q in run]).float() / 255
        assert torch.equal(batch.support_images[0], want_support) and torch.equal(batch.query_images[0], want_query)
        assert torch.equal(batch.query_labels[0], torch.arange(5))  # query i is of character i
    by = lake.by_alphabet(torch.tensor([1.0, 0.5]))
    assert by == {"Alpha0": {"accuracy": 1.0, "runs": 1}, "Alpha1": {"accuracy": 0.5, "runs": 1}}
    folder = read_runs(write_runs(tmp_path / "extracted", raw, RUNS, as_zip=False), split, image_format(omniglot(normalise)))
    assert (folder.characters, folder.drawers) == (runs.characters, runs.drawers)
    assert folder.record()["digest"] == runs.record()["digest"] and runs.record()["queries"] == 10
    with zipfile.ZipFile(tmp_path / "all_runs.zip") as zf:  # re-zipped under a top folder, beside other files
        files = {f"all_runs/{n}": zf.read(n) for n in zf.namelist()} | {"README.txt": b"Lake's runs"}
    nested = read_runs(write_tree(files, tmp_path / "nested.zip", True), split, image_format(omniglot(normalise)))
    assert (nested.names, nested.characters, nested.drawers) == (runs.names, runs.characters, runs.drawers)


def _edit(path: Path, name: str, data: bytes | None) -> None:
    """Rewrite the zip at ``path`` with ``name`` replaced by ``data`` (dropped when None)."""
    with zipfile.ZipFile(path) as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    if data is None:
        files.pop(name)
    else:
        files[name] = data
    with zipfile.ZipFile(path, "w") as zf:
        for n, d in files.items():
            zf.writestr(n, d)


@pytest.mark.parametrize("change, message", [
    ("missing", "does not exist; give the path of all_runs.zip"),
    ("not a zip", "is not a readable zip"),
    ("no runs", "holds no runNN/class_labels.txt"),
    ("bad line", "is not 'test image, training image'"),
    ("image gone", "lacks run01/training/class01.png"),
    ("other drawing", "is none of the test split's drawings"),
    ("two characters", "pairs drawings of two characters"),
    ("a character twice", "must name each character once"),
    ("a run missing", "holds run02 but not run01: a run is missing"),
])
def test_a_bad_archive_is_one_line_that_says_what_to_do(tmp_path, change, message):
    raw, names = drawings()
    split, fmt = ClassImages(raw, names), image_format(omniglot())
    path = write_runs(tmp_path / "all_runs.zip", raw, RUNS)
    labels = "run01/class_labels.txt"
    if change == "missing":
        path = tmp_path / "nowhere.zip"
    elif change == "not a zip":
        path.write_bytes(b"not a zip at all")
    elif change == "no runs":
        _edit(path, labels, None)
        _edit(path, "run02/class_labels.txt", None)
    elif change == "bad line":
        _edit(path, labels, b"run01/test/item01.png\n")
    elif change == "image gone":
        _edit(path, "run01/training/class01.png", None)
    elif change == "other drawing":
        _edit(path, "run01/training/class01.png", png(torch.zeros(1, 28, 28, dtype=torch.uint8)))
    elif change == "two characters":
        _edit(path, labels, b"run01/test/item01.png run01/training/class01.png\n")
    elif change == "a character twice":
        _edit(path, labels, b"run01/test/item05.png run01/training/class01.png\n" * 2)
    elif change == "a run missing":
        _edit(path, labels, None)
    with pytest.raises(DataError, match=message) as info:
        read_runs(path, split, fmt)
    assert "\n" not in str(info.value)


def test_the_runs_need_lake_s_protocol_and_its_way(tmp_path):
    raw, names = drawings()
    split = ClassImages(raw, names)
    path = write_runs(tmp_path / "all_runs.zip", raw, RUNS)
    settings = OmegaConf.create({"lake_runs": str(path)})
    assert original_runs(OmegaConf.create({"lake_runs": None}), omniglot(), split, 5, lake=False) is None
    with pytest.raises(ConfigError, match="add episode=lake20way1shot"):
        original_runs(settings, omniglot(), split, 5, lake=False)
    with pytest.raises(ConfigError, match="are 5-way and the test is 4-way; give episode.way=5"):
        original_runs(settings, omniglot(), split, 4, lake=True)
    assert original_runs(settings, omniglot(), split, 5, lake=True).characters == [[c for c, _, _ in r] for r in RUNS]


def test_eval_command_scores_lake_s_own_runs_of_a_background_model(tmp_path, capsys):
    """``python -m metalearn_cli eval ... eval.lake_runs=DIR`` (a folder with a space and non-ASCII in its name)
    scores exactly the archive's runs: as many tasks as runs, recorded as their own protocol; a training run
    given the archive's relative path saves it absolute and tests on the same runs, its pre-training stage too."""
    from metalearn_cli.data import DATASETS

    test = DATASETS.build(omniglot()).test
    alphabet = [i for i, n in enumerate(test.class_names) if n.startswith(test.class_names[0].split("/")[0] + "/")]
    runs = [[(c, 0, 1) for c in alphabet[:20]], [(c, 3, 2) for c in alphabet[:20][::-1]], [(c, 5, 4) for c in alphabet[:20]]]
    folder = write_runs(tmp_path / "Lake runs ü", test.images, runs, as_zip=False)
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "metalearn_cli", "train", "dataset=omniglot_background", "encoder=conv4",
                           "encoder.width=8", "trainer.iterations=2", "trainer.val_every=2", "trainer.val_episodes=4",
                           "trainer.train_way=20", "episode=lake20way1shot", "eval.lake_runs=\"Lake runs ü\"",
                           "pretrain=episodic", "pretrain.iterations=2", "pretrain.val_every=2", "pretrain.val_episodes=4",
                           "pretrain.train_way=20",
                           "trainer.progress=false", "device=cpu", f"hydra.run.dir={run}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    trained = json.loads((run / "results.json").read_text())
    saved = OmegaConf.load(run / ".hydra" / "config.yaml")
    assert saved.eval.lake_runs == str(folder) and trained["protocol"] == "lake_original" and trained["episodes"] == 3
    stage = json.loads((run / "pretrain" / "results.json").read_text())  # the pre-training stage tests on them too
    assert (stage["protocol"], stage["lake_runs"]) == ("lake_original", trained["lake_runs"])
    proc = subprocess.run([sys.executable, "-m", "metalearn_cli", "eval", f"checkpoint={run}", "device=cpu",
                           f"hydra.run.dir={tmp_path / 'eval'}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert (again["accuracy"], again["lake_runs"]) == (trained["accuracy"], trained["lake_runs"])
    assert again["lake_runs"]["runs"] == 3 and again["lake_runs"]["queries"] == 60
    assert sum(v["runs"] for v in again["by_alphabet"].values()) == 3
    predicted = np.load(tmp_path / "eval" / "test_outcomes.npz")["predicted"]
    assert predicted.shape == (3, 20)
    proc = subprocess.run([sys.executable, "-m", "metalearn_cli", "eval", f"checkpoint={run}", "device=cpu", "eval.lake_runs=''",
                           "eval.episodes=5", f"hydra.run.dir={tmp_path / 'drawn'}"], capture_output=True, text=True, timeout=300)
    drawn = json.loads((tmp_path / "drawn" / "results.json").read_text())
    assert proc.returncode == 0 and (drawn["protocol"], drawn["episodes"]) == ("lake", 5) and "lake_runs" not in drawn
    # compare pairs two tests of Lake's runs, and refuses drawn runs beside them
    from metalearn_cli.cli import main

    # another episode tests without the checkpoint's runs (said); a task count cannot apply to them (said)
    assert main(["eval", f"checkpoint={run}", "device=cpu", "episode=5way1shot", "eval.episodes=4",
                 f"hydra.run.dir={tmp_path / 'five'}"]) == 0
    five = json.loads((tmp_path / "five" / "results.json").read_text())
    assert (five["protocol"], five["way"], five["episodes"]) == ("random", 5, 4) and "lake_runs" not in five
    assert main(["eval", f"checkpoint={run}", "device=cpu", "eval.episodes=7", f"hydra.run.dir={tmp_path / 'seven'}"]) == 0
    assert json.loads((tmp_path / "seven" / "results.json").read_text())["episodes"] == 3
    assert "eval.episodes=7 is not used" in (tmp_path / "seven" / "eval.log").read_text()

    assert main(["compare", str(run), str(tmp_path / "eval"), "--out", str(tmp_path / "cmp")]) == 0
    assert main(["compare", str(run), str(tmp_path / "drawn")]) == 2
    # another seed tests on the same published runs, so it pairs with seed 0; another copy of the runs does not
    proc = subprocess.run([sys.executable, "-m", "metalearn_cli", "eval", f"checkpoint={run}", "device=cpu", "seed=1",
                           f"hydra.run.dir={tmp_path / 'seed1'}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert main(["compare", "--setting", str(run), "--setting", str(tmp_path / "seed1"), "--out", str(tmp_path / "cmp1")]) == 0
    import csv

    rows = list(csv.DictReader(open(tmp_path / "cmp1" / "compare.csv", encoding="utf-8")))
    assert len(rows) == 1 and (rows[0]["seeds"], rows[0]["tasks"]) == ("1", "3")
    assert rows[0]["accuracy_run"] == rows[0]["accuracy_reference"]  # the same network on the same runs
    shutil.copytree(tmp_path / "seed1", tmp_path / "other")
    record = json.loads((tmp_path / "other" / "results.json").read_text())
    record["lake_runs"]["digest"] = "0" * 12
    (tmp_path / "other" / "results.json").write_text(json.dumps(record))
    assert main(["compare", "--setting", str(run), "--setting", str(tmp_path / "other")]) == 2
    assert "different copies of Lake et al.'s runs" in capsys.readouterr().err
