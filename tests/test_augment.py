"""Per-image augmentation of training images: each image its own draw, the data set's defaults, and
never at validation or test."""

from __future__ import annotations

import json

import pytest
import torch

from metalearn_cli import augment as augment_module
from metalearn_cli import objectives, training
from metalearn_cli.augment import augment_images, augmentation
from metalearn_cli.params import PARAMS


def square(size: int = 28) -> torch.Tensor:
    image = torch.zeros(1, size, size)
    image[:, 10:18, 10:18] = 1
    return image


@pytest.mark.parametrize("kind", ["crop", "affine"])
def test_each_image_gets_its_own_draw(kind):
    out = augmentation(kind, None, (1, 28, 28))(square().expand(16, -1, -1, -1))
    assert out.shape == (16, 1, 28, 28)
    assert len({o.numpy().tobytes() for o in out}) > 8  # 16 copies of one image, many different results


def test_affine_is_koch_et_al_rotation_shear_scale_and_shift():
    torch.manual_seed(0)
    out = augmentation("affine", None, (1, 28, 28))(square().expand(64, -1, -1, -1))
    mass = out.sum((1, 2, 3))
    assert mass.min() < 64 * 0.9 and mass.max() > 64 * 1.1  # scaled both ways (the square covers 64 pixels)
    tilted = ((out > 0.1) & (out < 0.9)).flatten(1).sum(1)  # rotation and shear leave grey edges; a pure shift none
    assert (tilted > 4).float().mean() > 0.5


def test_auto_is_the_data_sets_own_and_none_is_nothing():
    assert augmentation("auto", "none", (1, 16, 16)) is None and augmentation("none", "affine", (1, 16, 16)) is None
    assert augmentation("auto", "affine", (1, 28, 28)) is not None
    assert PARAMS["dataset"]["omniglot"]().meta_augment.value == "affine"
    for name, params in PARAMS["dataset"].items():  # a new data set cannot silently get none
        assert {"augment", "meta_augment"} <= set(params.__dataclass_fields__), name


def test_augmented_support_images_differ_from_the_raw_ones():
    images = torch.rand(2, 5, 1, 28, 28)
    out = augment_images(augmentation("affine", None, (1, 28, 28)), images)
    assert out.shape == images.shape and not torch.equal(out, images)
    assert all(not torch.equal(out[t, i], images[t, i]) for t in range(2) for i in range(5))


def test_meta_training_augments_training_tasks_only(compose_train, run_dir, monkeypatch):
    """One call per meta-iteration (support and query), none in validation or the final test."""
    calls = []
    real = augment_module.augment_images

    def counted(fn, images):
        calls.append(images.shape)
        return real(fn, images)

    monkeypatch.setattr(objectives, "augment_images", counted)
    training.train(compose_train("trainer.augment=crop"), run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    assert len(calls) == 2 * results["iterations"] and results["episodes"] == 10


def test_evaluating_an_augmented_run_draws_no_transform_at_all(compose_train, tmp_path, monkeypatch):
    """Every way into a random transform raises while the run's checkpoint is evaluated, and nothing raises."""
    from conftest import compose_config
    from metalearn_cli import evaluation, finetune

    training.train(compose_train("trainer.augment=affine"), tmp_path / "run")

    def refused(*_):
        raise AssertionError("evaluation drew a random transform")

    for module, name in [(augment_module, "augment_images"), (augment_module, "koch_affine"),
                         (augment_module, "augmentation"), (objectives, "augment_images"), (finetune, "augment_images"),
                         (finetune, "augmentation")]:
        monkeypatch.setattr(module, name, refused)
    cfg = compose_config("eval", [f"checkpoint={tmp_path / 'run'}", "eval.episodes=6", "device=cpu"])
    assert 0 <= evaluation.evaluate(cfg, tmp_path / "eval") <= 1


def test_without_augment_the_run_is_what_it_was(compose_train, tmp_path):
    training.train(compose_train(), tmp_path / "a")
    training.train(compose_train("trainer.augment=none"), tmp_path / "b")
    training.train(compose_train("trainer.augment=crop"), tmp_path / "c")
    acc = {n: json.loads((tmp_path / n / "metrics.jsonl").read_text().splitlines()[-1]) for n in "abc"}
    assert acc["a"] == acc["b"] and acc["a"] != acc["c"]


def test_shifted_moves_the_image_and_fills_with_zeros_without_wrapping():
    from metalearn_cli.augment import shift_views, shifted

    image = torch.arange(1, 26, dtype=torch.float32).reshape(1, 1, 5, 5)
    down = shifted(image, 2, 0)
    assert torch.equal(down[..., 2:, :], image[..., :3, :]) and not down[..., :2, :].any()
    left = shifted(image, 0, -1)
    assert torch.equal(left[..., :, :4], image[..., :, 1:]) and not left[..., :, 4].any()
    assert shifted(image, 0, 0) is image and shift_views(0) == ((0, 0),) and len(set(shift_views(3))) == 5


def test_turned_is_an_exact_quarter_turn_at_90_degrees_and_the_image_itself_at_no_change():
    from metalearn_cli.augment import turned

    image = torch.rand(2, 3, 1, 6, 6)
    quarter = turned(image, 90)
    assert any(torch.allclose(quarter, torch.rot90(image, k, (-2, -1)), atol=1e-5) for k in (1, 3))
    torch.testing.assert_close(turned(image), image)
    assert turned(image, 90).shape == image.shape and turned(image.double(), 5).dtype == torch.float64
    big = turned(torch.ones(1, 1, 8, 8), scale=0.5)  # shrunk to half: the border is empty, the centre still ink
    assert big[..., 0, 0] == 0 and big[..., 4, 4] == 1
    sheared = turned(torch.eye(8)[None, None], shear=0.3)
    assert not torch.allclose(sheared, torch.eye(8)) and torch.allclose(turned(torch.eye(8)[None, None], shear=0.0), torch.eye(8))


def test_tta_views_come_from_the_eval_config_and_bad_amounts_are_one_line(compose_train):
    from metalearn_cli.augment import TtaViews
    from metalearn_cli.config_checks import validate_eval
    from metalearn_cli.errors import ConfigError

    cfg = compose_train("eval.tta_shift=2", "eval.tta_rotate=10", "eval.tta_shear=0.2")
    assert TtaViews.of(cfg.eval) == TtaViews(2, 10.0, 0.0, 0.2) and TtaViews.of(3) == TtaViews(shift=3)
    assert len(TtaViews.of(cfg.eval).copies()) == 9 and len(TtaViews().copies()) == 1
    for bad in ("eval.tta_rotate=-5", "eval.tta_scale=1.5", "eval.tta_shear=-0.1"):
        with pytest.raises(ConfigError, match=bad.replace(".", r"\.")):
            validate_eval(compose_train(bad).eval)


def test_support_copies_replace_each_support_image_by_augmented_draws_in_class_order():
    from types import SimpleNamespace

    from metalearn_cli.augment import SupportCopies

    images = torch.rand(2, 6, 1, 12, 12)  # 2 tasks, 3 classes x 2 shots
    labels = torch.arange(3).repeat_interleave(2).expand(2, 6)
    copies = SupportCopies.of(SimpleNamespace(support_copies=4), "crop", (1, 12, 12))
    many, many_labels = copies(images, labels)
    assert many.shape == (2, 24, 1, 12, 12) and many_labels.tolist()[0] == [c for c in range(3) for _ in range(8)]
    assert not torch.equal(many[:, ::4], images)  # augmented, not the raw images
    assert SupportCopies.of(SimpleNamespace(support_copies=0), "crop", (1, 12, 12)) is None
