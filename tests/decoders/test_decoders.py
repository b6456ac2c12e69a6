import torch

from metalearn_cli.decoders import DECODERS


def test_prototype_logits_are_negative_squared_distances_to_class_means():
    torch.manual_seed(0)
    decoder = DECODERS.build({"name": "prototype"}, in_dim=8)
    support = torch.randn(2, 6, 8)
    labels = torch.tensor([[0, 1, 2, 0, 1, 2], [2, 2, 1, 1, 0, 0]])
    query = torch.randn(2, 4, 8)
    logits = decoder(support, labels, query, 3)
    for t in range(2):
        protos = torch.stack([support[t][labels[t] == c].mean(0) for c in range(3)])
        expected = -torch.cdist(query[t], protos).square()
        torch.testing.assert_close(logits[t], expected, atol=1e-4, rtol=1e-4)


def test_every_decoder_gives_task_logits():
    for name in DECODERS.names():
        decoder = DECODERS.build({"name": name}, in_dim=5, max_way=4, film_channels=(4,))
        logits = decoder(torch.randn(3, 4, 5), torch.tensor([[0, 1, 0, 1]] * 3), torch.randn(3, 7, 5), 2)
        assert logits.shape == (3, 7, 2)


def test_latent_steps_lower_the_support_loss_and_expose_regularisers():
    torch.manual_seed(0)
    decoder = DECODERS.build({"name": "latent", "latent_dim": 8, "latent_steps": 5, "latent_lr": 1.0}, in_dim=6)
    decoder.eval()
    support, labels = torch.randn(2, 6, 6), torch.tensor([[0, 1, 2, 0, 1, 2]] * 2)
    logits = decoder(support, labels, torch.randn(2, 4, 6), 3)
    assert logits.shape == (2, 4, 3)
    assert len(decoder.support_losses) == 5 and decoder.support_losses[-1] < decoder.support_losses[0]
    assert decoder.regularizer > 0


def test_latent_with_a_prototype_residual_starts_as_prototypes_and_its_gate_learns():
    torch.manual_seed(0)
    latent = DECODERS.build({"name": "latent", "latent_dim": 4, "prototype_residual": True}, in_dim=8)
    proto = DECODERS.build({"name": "prototype"}, in_dim=8)
    support, labels = torch.randn(2, 6, 8), torch.tensor([[0, 1, 2, 0, 1, 2]] * 2)
    query = torch.randn(2, 5, 8)
    latent.eval()
    out = latent(support, labels, query, 3)
    # -||q - c||^2 = 2 q.c - ||c||^2 - ||q||^2: the same softmax, shifted by ||q||^2 per query.
    torch.testing.assert_close(out - query.square().sum(-1, keepdim=True), proto(support, labels, query, 3),
                               atol=1e-4, rtol=1e-4)
    torch.nn.functional.cross_entropy(out.flatten(0, 1), torch.tensor([0, 1, 2, 0, 1] * 2)).backward()
    assert latent.gate.grad is not None and latent.gate.grad.abs() > 0


def test_latent_is_deterministic_at_evaluation_and_sampled_in_training():
    torch.manual_seed(0)
    decoder = DECODERS.build({"name": "latent", "latent_dim": 4}, in_dim=5)
    args = (torch.randn(1, 4, 5), torch.tensor([[0, 1, 0, 1]]), torch.randn(1, 3, 5), 2)
    decoder.eval()
    assert torch.equal(decoder(*args), decoder(*args))
    decoder.train()
    assert not torch.equal(decoder(*args), decoder(*args))


def test_film_modulates_the_encoder_per_task_and_ignores_support_order():
    from omegaconf import OmegaConf

    from metalearn_cli.model import build_meta_model

    torch.manual_seed(0)
    cfg = OmegaConf.create({"encoder": {"name": "conv4", "width": 8}, "decoder": {"name": "film", "hidden": 16},
                            "episode": {"way": 3, "shot": 2, "query": 2}})
    model = build_meta_model(cfg, (1, 28, 28)).eval()
    for layer in model.decoder.film:  # leave the zero init so modulation is visible
        torch.nn.init.normal_(layer.weight, std=0.5)
    sx, sy, qx = torch.rand(2, 6, 1, 28, 28), torch.tensor([[0, 0, 1, 1, 2, 2]] * 2), torch.rand(2, 4, 1, 28, 28)
    logits = model(sx, sy, qx, 3)
    assert logits.shape == (2, 4, 3)
    film = model.decoder.modulation(model.embed(sx), sy)
    assert len(film) == 4 and film[0][0].shape == (2, 8) and not torch.allclose(film[0][0][0], film[0][0][1])
    perm = torch.tensor([5, 3, 1, 4, 2, 0])
    torch.testing.assert_close(model(sx[:, perm], sy[:, perm], qx, 3), logits, atol=1e-4, rtol=1e-4)


def test_film_refuses_encoders_without_modulation():
    import pytest
    from omegaconf import OmegaConf

    from metalearn_cli.errors import ConfigError
    from metalearn_cli.model import build_meta_model

    cfg = OmegaConf.create({"encoder": {"name": "rnn", "hidden": 8}, "decoder": {"name": "film"}})
    with pytest.raises(ConfigError, match="decoder=film needs an encoder that accepts FiLM modulation .* RNNEncoder"):
        build_meta_model(cfg, (1, 28, 28))
