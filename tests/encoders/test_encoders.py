"""Every registered encoder: forward/backward on small images, its declared output width, and
second-order gradients under its declared context."""

import pytest
import torch

from metalearn_cli.encoders import ENCODERS
from metalearn_cli.errors import ConfigError

# Small settings per encoder so the whole matrix runs in seconds on a CPU.
SMALL = {
    "conv4": {"width": 8},
    "resnet12": {"channels": [8, 8, 16, 16], "drop_rate": 0.1},
    "rnn": {"hidden": 8},
    "transformer": {"width": 16, "depth": 1, "heads": 2},
}


def build(name, image_shape, **extra):
    return ENCODERS.build({"name": name, **SMALL.get(name, {}), **extra}, image_shape=image_shape)


def test_every_encoder_has_small_test_settings():
    assert set(SMALL) == set(ENCODERS.names())


@pytest.mark.parametrize("name", ENCODERS.names())
@pytest.mark.parametrize("image_shape", [(1, 28, 28), (3, 32, 32)])
def test_forward_backward_and_out_dim(name, image_shape):
    torch.manual_seed(0)
    encoder = build(name, image_shape)
    x = torch.rand(6, *image_shape, requires_grad=True)
    out = encoder(x)
    assert out.shape == (6, encoder.out_dim) and torch.isfinite(out).all()
    out.square().sum().backward()
    assert x.grad is not None
    assert all(p.grad is not None for p in encoder.parameters()), [n for n, p in encoder.named_parameters() if p.grad is None]
    assert isinstance(encoder.supports_vmap, bool)


@pytest.mark.parametrize("name", ENCODERS.names())
def test_second_order_gradients_exist_under_the_declared_context(name):
    torch.manual_seed(0)
    encoder = build(name, (1, 28, 28))
    x = torch.rand(4, 1, 28, 28)
    params = [p for p in encoder.parameters()]
    with encoder.second_order_context():
        loss = encoder(x).square().mean()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        second = torch.autograd.grad(sum(g.square().sum() for g in grads), params, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in second)


@pytest.mark.parametrize("name,extra", [("rnn", {"sequence": "patches", "patch": 7}), ("rnn", {"cell": "gru", "bidirectional": False}),
                                        ("transformer", {"pooling": "mean"})])
def test_encoder_variants(name, extra):
    encoder = build(name, (1, 28, 28), **extra)
    assert encoder(torch.rand(3, 1, 28, 28)).shape == (3, encoder.out_dim)


def test_resnet12_on_84px_images_and_its_standard_width():
    assert build("resnet12", (3, 84, 84))(torch.rand(2, 3, 84, 84)).shape == (2, 16)
    assert ENCODERS.build({"name": "resnet12"}, image_shape=(3, 84, 84)).out_dim == 640


@pytest.mark.parametrize("name,extra,match", [("conv4", {}, "at least 16 px"), ("transformer", {"patch": 3}, "does not divide"),
                                              ("rnn", {"sequence": "patches", "patch": 3}, "does not divide")])
def test_impossible_settings_are_config_errors(name, extra, match):
    shape = (1, 8, 8) if name == "conv4" else (1, 28, 28)
    with pytest.raises(ConfigError, match=match):
        build(name, shape, **extra)


def test_conv4_width():
    assert ENCODERS.build({"name": "conv4", "width": 32}, image_shape=(1, 84, 84)).out_dim == 32 * 5 * 5


def test_conv4_widths_per_block():
    """encoder.widths sets each block's channels: the embedding takes the last one, FiLM gets one per block."""
    encoder = ENCODERS.build({"name": "conv4", "widths": [8, 8, 16, 24]}, image_shape=(1, 28, 28))
    assert encoder.out_dim == 24 and encoder.film_channels == (8, 8, 16, 24)
    assert encoder(torch.rand(3, 1, 28, 28)).shape == (3, 24)
    film = [(torch.ones(3, c), torch.zeros(3, c)) for c in encoder.film_channels]
    assert encoder(torch.rand(3, 1, 28, 28), film).shape == (3, 24)
    with pytest.raises(ConfigError, match="one of encoder.widths per block"):
        ENCODERS.build({"name": "conv4", "widths": [8, 8]}, image_shape=(1, 28, 28))
    with pytest.raises(ConfigError, match="both set, and only one can apply"):  # neither may be silently unused
        ENCODERS.build({"name": "conv4", "width": 16, "widths": [8, 8, 16, 24]}, image_shape=(1, 28, 28))
    assert ENCODERS.build({"name": "conv4"}, image_shape=(1, 28, 28)).out_dim == 64  # neither: the standard 64
    with pytest.raises(ConfigError, match=r"encoder.widths=\[\] names no block"):  # typed, so not taken as null
        ENCODERS.build({"name": "conv4", "width": None, "widths": []}, image_shape=(1, 28, 28))


def test_conv4_global_pool_takes_the_whole_last_map():
    """At 28 px the last block's 2x2 window pools only the top-left 2x2 of its 3x3 map;
    encoder.global_pool=true takes the maximum over all nine positions (at 84 px: width features, not 5x5 x width)."""
    torch.manual_seed(0)
    whole = ENCODERS.build({"name": "conv4", "width": 8, "global_pool": True}, image_shape=(1, 28, 28)).eval()
    images = torch.rand(4, 1, 28, 28)
    last_map = whole.net[:-2](images)  # the last block's batch-normed 3x3 map, before its pool and ReLU
    assert last_map.shape[-2:] == (3, 3)
    assert torch.allclose(whole(images), last_map.amax(dim=(2, 3)).relu())
    window = ENCODERS.build({"name": "conv4", "width": 8}, image_shape=(1, 28, 28)).eval()
    window.load_state_dict(whole.state_dict())  # the same weights: only the last pool differs
    assert torch.allclose(window(images), last_map[..., :2, :2].amax(dim=(2, 3)).relu())
    assert whole.out_dim == 8 and whole(images).shape == (4, 8)
    assert ENCODERS.build({"name": "conv4", "width": 8, "global_pool": True}, image_shape=(3, 84, 84)).out_dim == 8
