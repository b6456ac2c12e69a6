import torch

from metalearn_cli.data import DATASETS


def test_synthetic_is_deterministic_and_sized_by_its_params():
    cfg = {"name": "synthetic", "train_classes": 5, "val_classes": 3, "test_classes": 2, "images_per_class": 4,
           "image_size": 16, "channels": 3}
    a, b = DATASETS.build(cfg), DATASETS.build(cfg)
    assert (a.train.n_classes, a.val.n_classes, a.test.n_classes) == (5, 3, 2)
    assert a.image_shape == (3, 16, 16)
    assert torch.equal(a.train.images, b.train.images)
    assert not torch.equal(a.train.images, DATASETS.build({**cfg, "seed": 1}).train.images)
