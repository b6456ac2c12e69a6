"""MetaModel composition, kernels (channels_last, bf16) and the batch-norm evaluation modes."""

import torch
from omegaconf import OmegaConf

from metalearn_cli.data import DATASETS
from metalearn_cli.episodes import EpisodeSampler
from metalearn_cli.encoders.norm import batch_norm_mode
from metalearn_cli.model import build_meta_model


def make():
    torch.manual_seed(0)
    data = DATASETS.build({"name": "synthetic", "train_classes": 10, "images_per_class": 6})
    cfg = OmegaConf.create({"encoder": {"name": "conv4", "width": 16}, "decoder": {"name": "prototype"},
                            "episode": {"way": 5, "shot": 1, "query": 3}})
    model = build_meta_model(cfg, data.image_shape)
    return model, EpisodeSampler(data.train, 5, 1, 3, seed=0).sample(3)


def test_embedding_width_is_wired_into_the_decoder():
    model, batch = make()
    assert model.decoder.in_dim == model.encoder.out_dim == 16
    assert model.episode_output(batch).logits.shape == (3, 15, 5)


def test_channels_last_and_bf16_agree_with_the_reference():
    model, batch = make()
    model.eval()
    reference = model.episode_output(batch).logits
    model.use_channels_last(True)
    torch.testing.assert_close(model.episode_output(batch).logits, reference, atol=1e-3, rtol=1e-4)
    model.use_precision("bf16")
    logits = model.episode_output(batch).logits
    assert logits.dtype == torch.float32  # the decoder computes in fp32
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() > 0.9
    torch.testing.assert_close(logits, reference, atol=0.1 * reference.abs().max().item(), rtol=0.05)


def test_batch_norm_modes_use_the_right_statistics_and_leave_the_model_unchanged():
    model, batch = make()
    model.train()
    for _ in range(3):
        model.episode_output(batch).logits  # fill running statistics
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with batch_norm_mode(model, "running"):
        running = model.episode_output(batch).logits
        assert not model.training
    with batch_norm_mode(model, "transductive"):
        transductive = model.episode_output(batch).logits
    assert model.training
    assert not torch.allclose(running, transductive)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_transductive_mode_switches_only_batch_norm_to_batch_statistics():
    """Dropout-like layers stay off at evaluation whichever statistics batch norm uses."""
    model, batch = make()
    model.train()
    with batch_norm_mode(model, "transductive"):
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        others = [m for m in model.modules() if not isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m is not model]
        assert norms and all(m.training and not m.track_running_stats for m in norms)
        assert all(not m.training for m in others)
    assert model.training and all(m.track_running_stats for m in norms)


def test_test_views_embed_each_image_as_the_mean_over_its_shifted_copies_then_come_back():
    """eval.tta_shift: inside ``test_views`` the features of an image are the mean of the features of
    the image and its 4 shifted copies; outside (and after), the single pass as before."""
    from metalearn_cli.augment import shifted

    model, batch = make()
    model.eval()
    images = batch.support_images
    plain = model.embed(images)
    with model.test_views(2):
        viewed = model.embed(images)
        logits = model.episode_output(batch).logits
    by_hand = torch.stack([model.embed(shifted(images, dy, dx)) for dy, dx in ((0, 0), (2, 0), (-2, 0), (0, 2), (0, -2))]).mean(0)
    torch.testing.assert_close(viewed, by_hand)
    assert not torch.allclose(viewed, plain) and not torch.allclose(logits, model.episode_output(batch).logits)
    assert torch.equal(model.embed(images), plain) and len(model.views) == 1
    with model.test_views(0):
        assert torch.equal(model.embed(images), plain)


def test_test_views_add_turned_scaled_and_sheared_copies_in_pairs():
    """eval.tta_rotate / tta_scale / tta_shear: each adds its + and - copy to the mean (7 views for all three)."""
    from metalearn_cli.augment import TtaViews, turned

    model, batch = make()
    model.eval()
    images = batch.support_images
    views = TtaViews(rotate=10, scale=0.1, shear=0.2)
    with model.test_views(views):
        viewed = model.embed(images)
        assert len(model.views) == 7
    copies = [images, turned(images, 10), turned(images, -10), turned(images, scale=1.1), turned(images, scale=0.9),
              turned(images, shear=0.2), turned(images, shear=-0.2)]
    torch.testing.assert_close(viewed, torch.stack([model.embed(c) for c in copies]).mean(0))
    assert len(model.views) == 1 and len(TtaViews(shift=1, rotate=5).copies()) == 7
