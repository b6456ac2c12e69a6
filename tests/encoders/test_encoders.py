"""Every registered encoder: forward/backward on small images, its declared output width."""

import pytest
import torch

from metalearn_cli.encoders import ENCODERS
from metalearn_cli.errors import ConfigError


@pytest.mark.parametrize("name", ENCODERS.names())
@pytest.mark.parametrize("image_shape", [(1, 28, 28), (3, 32, 32)])
def test_forward_backward_and_out_dim(name, image_shape):
    encoder = ENCODERS.build({"name": name}, image_shape=image_shape)
    x = torch.rand(6, *image_shape, requires_grad=True)
    out = encoder(x)
    assert out.shape == (6, encoder.out_dim)
    out.square().sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in encoder.parameters())
    assert isinstance(encoder.supports_vmap, bool)
    with encoder.second_order_context():
        pass


def test_conv4_width_and_too_small_images():
    assert ENCODERS.build({"name": "conv4", "width": 32}, image_shape=(1, 84, 84)).out_dim == 32 * 5 * 5
    with pytest.raises(ConfigError, match="at least 16 px"):
        ENCODERS.build({"name": "conv4"}, image_shape=(1, 8, 8))
