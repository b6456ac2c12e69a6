import torch

from metalearn_cli.decoders import DECODERS


def test_prototype_logits_are_negative_squared_distances_to_class_means():
    torch.manual_seed(0)
    decoder = DECODERS.build({"name": "prototype"}, in_dim=8)
    support = torch.randn(2, 6, 8)
    labels = torch.tensor([[0, 1, 2, 0, 1, 2], [2, 2, 1, 1, 0, 0]])
    query = torch.randn(2, 4, 8)
    logits = decoder(support, labels, query, 3).logits
    for t in range(2):
        protos = torch.stack([support[t][labels[t] == c].mean(0) for c in range(3)])
        expected = -torch.cdist(query[t], protos).square()
        torch.testing.assert_close(logits[t], expected, atol=1e-4, rtol=1e-4)


def test_every_decoder_gives_task_logits():
    for name in DECODERS.names():
        decoder = DECODERS.build({"name": name}, in_dim=5, max_way=4, film_channels=(4,))
        out = decoder(torch.randn(3, 4, 5), torch.tensor([[0, 1, 0, 1]] * 3), torch.randn(3, 7, 5), 2, with_stats=True)
        assert out.logits.shape == (3, 7, 2) and out.regularizer.dim() == 0
        assert out.stats and all(v.shape == (3,) for v in out.stats.values()), name
        assert not decoder(torch.randn(3, 4, 5), torch.tensor([[0, 1, 0, 1]] * 3), torch.randn(3, 7, 5), 2).stats


def test_latent_steps_lower_the_support_loss():
    torch.manual_seed(0)
    decoder = DECODERS.build({"name": "latent", "latent_dim": 8, "latent_steps": 5, "latent_lr": 1.0}, in_dim=6)
    decoder.eval()
    support, labels = torch.randn(2, 6, 6), torch.tensor([[0, 1, 2, 0, 1, 2]] * 2)
    assert decoder(support, labels, torch.randn(2, 4, 6), 3).logits.shape == (2, 4, 3)
    z = decoder.codes(support, labels, 3).chunk(2, dim=-1)[0]
    _, losses = decoder.adapt_codes(z, support, labels, None)
    assert len(losses) == 5 and losses[-1] < losses[0]


def test_latent_regulariser_is_the_weighted_kl_and_orthogonality_penalty():
    """Each term measured on its own: zero weights give exactly 0, and each weight scales its term."""
    support, labels, query = torch.randn(2, 6, 6), torch.tensor([[0, 1, 2, 0, 1, 2]] * 2), torch.randn(2, 4, 6)

    def regulariser(**weights):
        torch.manual_seed(0)
        decoder = DECODERS.build({"name": "latent", "latent_dim": 4, "kl_weight": 0.0, "orthogonality": 0.0,
                                  "encoder_penalty": 0.0, **weights}, in_dim=6).eval()
        return decoder, decoder(support, labels, query, 3).regularizer

    assert regulariser()[1] == 0
    decoder, kl = regulariser(kl_weight=2.0)
    mean, logvar = decoder.codes(support, labels, 3).chunk(2, dim=-1)
    var = torch.exp(logvar.clamp(-10, 10))
    expected = 0.5 * (var + mean.square() - 1 - logvar.clamp(-10, 10))
    torch.testing.assert_close(kl, 2.0 * expected.sum(-1).mean())
    decoder, ortho = regulariser(orthogonality=3.0)
    w = decoder.weight_decoder.weight
    corr = torch.nn.functional.normalize(w, dim=0).T @ torch.nn.functional.normalize(w, dim=0)
    torch.testing.assert_close(ortho, 3.0 * (corr - torch.eye(4)).square().mean())


def test_latent_with_a_prototype_residual_starts_as_prototypes_and_its_gate_learns():
    torch.manual_seed(0)
    latent = DECODERS.build({"name": "latent", "latent_dim": 4, "prototype_residual": True}, in_dim=8)
    proto = DECODERS.build({"name": "prototype"}, in_dim=8)
    support, labels = torch.randn(2, 6, 8), torch.tensor([[0, 1, 2, 0, 1, 2]] * 2)
    query = torch.randn(2, 5, 8)
    latent.eval()
    out = latent(support, labels, query, 3).logits
    # -||q - c||^2 = 2 q.c - ||c||^2 - ||q||^2: the same softmax, shifted by ||q||^2 per query.
    torch.testing.assert_close(out - query.square().sum(-1, keepdim=True), proto(support, labels, query, 3).logits,
                               atol=1e-4, rtol=1e-4)
    torch.nn.functional.cross_entropy(out.flatten(0, 1), torch.tensor([0, 1, 2, 0, 1] * 2)).backward()
    assert latent.gate.grad is not None and latent.gate.grad.abs() > 0


def test_latent_is_deterministic_at_evaluation_and_sampled_in_training():
    torch.manual_seed(0)
    decoder = DECODERS.build({"name": "latent", "latent_dim": 4}, in_dim=5)
    args = (torch.randn(1, 4, 5), torch.tensor([[0, 1, 0, 1]]), torch.randn(1, 3, 5), 2)
    decoder.eval()
    assert torch.equal(decoder(*args).logits, decoder(*args).logits)
    decoder.train()
    assert not torch.equal(decoder(*args).logits, decoder(*args).logits)


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
    logits = model(sx, sy, qx, 3).logits
    assert logits.shape == (2, 4, 3)
    film = model.decoder.modulation(model.embed(sx), sy)
    assert len(film) == 4 and film[0][0].shape == (2, 8) and not torch.allclose(film[0][0][0], film[0][0][1])
    perm = torch.tensor([5, 3, 1, 4, 2, 0])
    torch.testing.assert_close(model(sx[:, perm], sy[:, perm], qx, 3).logits, logits, atol=1e-4, rtol=1e-4)


def test_film_refuses_encoders_without_modulation():
    import pytest
    from omegaconf import OmegaConf

    from metalearn_cli.errors import ConfigError
    from metalearn_cli.model import build_meta_model

    cfg = OmegaConf.create({"encoder": {"name": "rnn", "hidden": 8}, "decoder": {"name": "film"},
                            "episode": {"way": 3, "shot": 1, "query": 1}})
    with pytest.raises(ConfigError, match="decoder=film needs an encoder that accepts FiLM modulation .* RNNEncoder"):
        build_meta_model(cfg, (1, 28, 28))
