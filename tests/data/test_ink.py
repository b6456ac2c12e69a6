"""dataset.normalise: each drawing framed by its own ink's moments, alone, the same for training and test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from metalearn_cli.data import DATASETS
from metalearn_cli.data.ink import INK_RADIUS, MAX_ZOOM, ink_moments, normalise_ink
from metalearn_cli.params.datasets import InkNormalise


def drawing(top: int, left: int, height: int, width: int, size: int = 28) -> np.ndarray:
    image = np.zeros((size, size), dtype=np.uint8)
    image[top:top + height, left:left + width] = 255
    return image


def moments(images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return ink_moments(torch.from_numpy(images).float().div(255).unsqueeze(1))


def test_centre_moves_each_drawings_ink_to_the_image_centre_and_keeps_its_amount():
    images = np.stack([drawing(2, 3, 6, 4), drawing(15, 18, 10, 2), drawing(8, 8, 3, 12)])
    cx, cy, _ = moments(images)
    assert (cx.abs() + cy.abs()).min() > 0.1  # off centre to begin with
    framed = normalise_ink(images, InkNormalise.centre)
    cx, cy, _ = moments(framed)
    assert cx.abs().max() < 0.02 and cy.abs().max() < 0.02  # within a third of a pixel
    assert np.allclose(framed.astype(float).sum((1, 2)), images.astype(float).sum((1, 2)), rtol=0.02)


def test_centre_scale_gives_each_drawing_the_sets_ink_radius_within_the_zoom_limits():
    images = np.stack([drawing(4, 5, 20, 19), drawing(2, 2, 24, 24), drawing(9, 9, 10, 10)])
    _, _, before = moments(images)
    framed = normalise_ink(images, InkNormalise.centre_scale)
    _, _, after = moments(framed)
    target = 2 * INK_RADIUS  # affine_grid's units: the side spans 2
    wanted = (before * (target / before).clamp(1 / MAX_ZOOM, MAX_ZOOM))
    assert torch.allclose(after, wanted, rtol=0.05)
    assert abs(after[0] - target) < 0.02  # within the limits: the set's radius
    assert after[1] > target > after[2]  # the large square shrunk, the small one zoomed, each by the most allowed


def test_none_returns_the_images_untouched_and_a_blank_image_stays_blank():
    images = np.stack([drawing(2, 3, 6, 4), np.zeros((28, 28), np.uint8)])
    assert normalise_ink(images, InkNormalise.none) is images
    framed = normalise_ink(images, InkNormalise.centre_scale)
    assert framed[1].max() == 0 and framed.shape == images.shape and framed.dtype == np.uint8


def test_each_image_is_framed_alone_whatever_else_is_in_the_set():
    """Inductive: a test image's frame cannot depend on the other images of its run."""
    images = np.stack([drawing(2, 3, 6, 4), drawing(15, 18, 10, 2), drawing(8, 8, 3, 12)])
    together = normalise_ink(images, InkNormalise.centre_scale)
    alone = np.stack([normalise_ink(image[None], InkNormalise.centre_scale)[0] for image in images])
    assert np.array_equal(together, alone)


def test_the_option_frames_train_val_and_test_images_of_the_embedded_set():
    plain = DATASETS.build({"name": "omniglot", "split": "background", "val": "trainval"})
    framed = DATASETS.build({"name": "omniglot", "split": "background", "val": "trainval", "normalise": "centre"})
    for part in ("train", "val", "test"):
        a, b = getattr(plain, part).images[:40], getattr(framed, part).images[:40]
        assert a.shape == b.shape and a.dtype == b.dtype == torch.uint8
        off = [torch.stack(ink_moments(x.flatten(0, 1).float().div(255))[:2]).abs().amax(0) for x in (a, b)]
        assert off[0].median() > 0.05  # drawn off centre ...
        assert off[1].median() < 0.002 and (off[1] < 0.01).float().mean() > 0.8  # ... at the centre (some lose ink off the edge)


def test_a_wrong_value_is_one_line_naming_the_choices(tmp_path):
    exe = Path(sys.executable).with_name("metalearn")
    proc = subprocess.run([str(exe), "train", "dataset=omniglot_background", "dataset.normalise=center",
                           f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode != 0
    assert "centre_scale" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("mode", ["centre_scale"])
def test_a_framed_lake_run_through_the_console_script_records_the_option(tmp_path, mode):
    run = tmp_path / "framed run"
    exe = Path(sys.executable).with_name("metalearn")
    proc = subprocess.run([str(exe), "train", "dataset=omniglot_background", f"dataset.normalise={mode}",
                           "episode=lake20way1shot", "trainer.train_way=20", "trainer.iterations=4", "trainer.val_every=2",
                           "trainer.val_episodes=4", "trainer.log_every=2", "eval.episodes=10", "encoder=conv4", "encoder.width=16",
                           f"hydra.run.dir='{run}'"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"normalise: {mode}" in (run / ".hydra" / "config.yaml").read_text()
    assert json.loads((run / "results.json").read_text())["protocol"] == "lake"


def test_an_ensemble_member_framed_otherwise_reads_its_own_copy_of_the_same_tasks():
    """A framed and an unframed run may be scored as one: each member reads the same test drawings in its
    own frame; a member whose images differ for any other reason is still refused."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from metalearn_cli import eval_inputs
    from metalearn_cli.ensemble import Ensemble, check_same_test_data
    from metalearn_cli.errors import ConfigError

    def saved(normalise, split="background"):
        return OmegaConf.create({"name": "omniglot", "split": split, "normalise": normalise})

    member = SimpleNamespace(model=None)
    pair = Ensemble([member, member], ["a", "b"], [saved("none"), saved("centre_scale")])
    check_same_test_data(pair.datasets[0], pair.datasets[1], "b", "a")
    first = DATASETS.build(eval_inputs.dataset_of(pair.datasets[0], None, "a"))
    datas = eval_inputs.member_data(pair, first, "test", None)
    assert datas[0] is first and datas[1] is not first
    assert datas[1].test.class_names == first.test.class_names
    assert not torch.equal(datas[1].test.images, first.test.images)
    with pytest.raises(ConfigError, match="dataset.split='vinyals' against 'background'"):
        check_same_test_data(pair.datasets[0], saved("centre_scale", "vinyals"), "c", "a")


def test_a_users_drawing_is_framed_as_the_training_drawings_were(tmp_path):
    """predict and load().adapt read a user's files with the data set's ImageFormat: a framed run's format frames
    them too, so they look to the model as its training and test drawings did; an export without the key reads none."""
    from PIL import Image

    from metalearn_cli.data import image_format
    from metalearn_cli.data.images import ImageFormat, read_image

    framed, plain = image_format({"name": "omniglot", "normalise": "centre_scale"}), image_format({"name": "omniglot"})
    assert (framed.normalise, plain.normalise) == ("centre_scale", "none")
    ink = drawing(2, 3, 6, 4)  # bright strokes, off centre
    Image.fromarray(255 - ink).save(tmp_path / "mine.png")  # as a user's file: dark strokes on white
    assert np.array_equal(read_image(tmp_path / "mine.png", framed)[0].numpy(), normalise_ink(ink[None], InkNormalise.centre_scale)[0])
    assert np.array_equal(read_image(tmp_path / "mine.png", plain)[0].numpy(), ink)
    older = {k: v for k, v in framed.to_dict().items() if k != "normalise"}
    assert ImageFormat.from_dict(older).normalise == "none"
