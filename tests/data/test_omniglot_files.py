"""Omniglot's files: the prepare script on a small generated archive in the original layout, user
folders and zips read alike, and the structure checks that name what is wrong."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

from data.test_omniglot import make_omniglot, png
from metalearn_cli.data import omniglot_files
from metalearn_cli.errors import DataError

ROOT = Path(__file__).resolve().parents[2]


def load_prepare_script():
    spec = importlib.util.spec_from_file_location("prepare_omniglot", ROOT / "scripts" / "prepare_omniglot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prepare_script_converts_a_generated_archive(tmp_path, capsys):
    src = make_omniglot(tmp_path / "src")
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "train.txt").write_text("Alpha/character01/rot000\n")
    out = tmp_path / "out" / "omniglot28.npz"
    assert load_prepare_script().main([str(src), "--out", str(out), "--splits", str(splits)]) == 2  # two of three
    assert "lacks val.txt, test.txt; give the folder that holds all three" in capsys.readouterr().err
    assert not out.exists()
    (splits / "val.txt").write_text("Beta/character01/rot000\n")
    (splits / "test.txt").write_text("Gamma/character01/rot000\n")
    assert load_prepare_script().main([str(src), "--out", str(out), "--splits", str(splits)]) == 0
    assert "5 characters (3 background, 2 evaluation) x 4 drawings" in capsys.readouterr().out
    arrays, _ = omniglot_files.load_arrays(out)
    assert arrays.images.shape == (5, 4, 28, 28) and arrays.images.dtype == np.uint8
    assert arrays.characters == ["Alpha/character01", "Alpha/character02", "Beta/character01",
                                 "Gamma/character01", "Gamma/character02"]
    assert arrays.background.tolist() == [True, True, True, False, False]
    # Inverted: background is dark, the stroke bright.
    assert arrays.images[0, 0, 0, 0] == 0 and arrays.images[0, 0].max() > 200
    assert (out.parent / "splits" / "vinyals" / "train.txt").read_text() == "Alpha/character01/rot000\n"


def test_prepare_script_reports_a_missing_source(tmp_path, capsys):
    assert load_prepare_script().main([str(tmp_path), "--out", str(tmp_path / "o.npz")]) == 2
    assert "missing images_background" in capsys.readouterr().err


def test_the_prepare_script_checks_out_and_says_faults_in_its_own_words(tmp_path):
    """Run as a user runs it: --help says the default rewrites the embedded copy; an --out folder gets
    omniglot28.npz in it; a missing set or a SOURCE that is a zip is one line naming SOURCE (never the CLI's
    dataset.root or dataset.download), exit status 2, no traceback."""
    import subprocess
    import sys

    def script(*args):
        return subprocess.run([sys.executable, str(ROOT / "scripts" / "prepare_omniglot.py"), *map(str, args)],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)

    usage = script("--help")
    assert usage.returncode == 0 and "REWRITES" in " ".join(usage.stdout.split())
    src = make_omniglot(tmp_path / "src")
    (tmp_path / "runs").mkdir()
    wrote = script(src, "--out", tmp_path / "runs")
    assert wrote.returncode == 0, wrote.stderr
    assert omniglot_files.load_arrays(tmp_path / "runs" / "omniglot28.npz")[0].images.shape == (5, 4, 28, 28)
    (src / "images_evaluation.zip").unlink()
    for source, said in ((src, "Omniglot not found in .*src: missing images_evaluation\\(.zip\\); put the original archives "
                               "\\(or their extracted folders\\) there, or pass as SOURCE the folder that holds them"),
                         (src / "images_background.zip", "SOURCE .*images_background.zip is a file, not a folder; .*, here SOURCE .*src")):
        failed = script(source, "--out", tmp_path / "o.npz")
        lines = failed.stderr.strip().splitlines()
        assert failed.returncode == 2 and len(lines) == 1 and "dataset." not in failed.stderr, failed.stderr
        assert re.fullmatch(f"prepare_omniglot.py: error: {said}", lines[0]), lines[0]


def test_the_prepare_script_refuses_a_bad_out_before_converting_and_a_failed_write_in_one_line(tmp_path, capsys, monkeypatch):
    import errno

    src = make_omniglot(tmp_path / "src")
    (tmp_path / "a file").write_text("")
    assert load_prepare_script().main([str(src), "--out", str(tmp_path / "a file" / "o.npz")]) == 2
    out, err = capsys.readouterr()
    assert "converting" not in out  # refused before the conversion
    assert err == f"prepare_omniglot.py: error: --out {tmp_path / 'a file' / 'o.npz'}: {tmp_path / 'a file'} is a file, not a folder; choose another --out\n"

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(omniglot_files.np, "savez_compressed", full_disk)
    assert load_prepare_script().main([str(src), "--out", str(tmp_path / "o.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prepare_omniglot.py: error: could not write the Omniglot array file") and err.count("\n") == 1
    assert err.endswith("free disk space or choose another --out\n")


def test_folders_and_zips_read_the_same(tmp_path):
    from_zip = omniglot_files.read_source(make_omniglot(tmp_path / "z"))
    from_dir = omniglot_files.read_source(make_omniglot(tmp_path / "d" / "omniglot-py", as_zip=False).parent)
    assert from_zip.characters == from_dir.characters
    assert np.array_equal(from_zip.images, from_dir.images)


def test_an_incomplete_character_is_refused(tmp_path):
    root = make_omniglot(tmp_path, skip="images_background/Beta/character01/0003_02.png")
    with pytest.raises(DataError, match="Beta/character01 has 3 images but others have 4"):
        omniglot_files.read_source(root)


def test_a_corrupt_image_is_named(tmp_path):
    root = make_omniglot(tmp_path, as_zip=False)
    bad = root / "images_evaluation" / "Gamma" / "character02" / "0005_01.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot decode image .*0005_01.png"):
        omniglot_files.read_source(root)


def test_a_foreign_layout_is_refused(tmp_path):
    root = make_omniglot(tmp_path, as_zip=False)
    (root / "images_background" / "stray.png").write_bytes(png(0))
    with pytest.raises(DataError, match="unexpected file"):
        omniglot_files.read_source(root)


def test_a_non_image_file_in_a_class_folder_is_refused(tmp_path):
    root = make_omniglot(tmp_path, as_zip=False)
    (root / "images_background" / "Alpha" / "character01" / "notes.txt").write_text("hello")
    (root / "images_background" / "Alpha" / "character01" / ".DS_Store").write_text("ignored")
    with pytest.raises(DataError, match="not a PNG image: images_background/Alpha/character01/notes.txt"):
        omniglot_files.read_source(root)
