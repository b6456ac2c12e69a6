import pytest
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


def test_soft_kmeans_moves_each_prototype_to_its_support_and_weighted_queries():
    """One step of Ren et al.'s refinement by hand: each prototype becomes the mean of its support embeddings
    (weight 1 each: a class with 3 shots weighs 3 against the queries, one with 1 shot weighs 1) and of every
    query weighted by its softmax assignment; 0 steps are the plain decoder."""
    torch.manual_seed(0)
    decoder = DECODERS.build({"name": "prototype"}, in_dim=4)
    support, labels, query = torch.randn(1, 6, 4), torch.tensor([[0, 0, 0, 1, 2, 2]]), torch.randn(1, 5, 4)
    plain = decoder(support, labels, query, 3).logits
    torch.testing.assert_close(decoder.refined(support, labels, query, 3, 0).logits, plain)
    weights = plain[0].softmax(-1)  # [Q, N]
    protos = torch.stack([(support[0][labels[0] == c].sum(0) + weights[:, c] @ query[0])
                          / ((labels[0] == c).sum() + weights[:, c].sum()) for c in range(3)])
    expected = -torch.cdist(query[0], protos).square()
    torch.testing.assert_close(decoder.refined(support, labels, query, 3, 1).logits[0], expected, atol=1e-4, rtol=1e-4)
    two = decoder.refined(support, labels, query, 3, 2).logits
    assert not torch.allclose(two, decoder.refined(support, labels, query, 3, 1).logits)
    # A query's answer depends on the other queries (transductive): dropping the last changes the first's logits.
    fewer = decoder.refined(support, labels, query[:, :4], 3, 1).logits
    assert not torch.allclose(fewer, decoder.refined(support, labels, query, 3, 1).logits[:, :4])


def test_only_a_decoder_of_class_means_offers_soft_kmeans():
    from metalearn_cli.model import MetaModel
    from metalearn_cli.encoders import ENCODERS
    from metalearn_cli.errors import ConfigError

    encoder = ENCODERS.build({"name": "conv4"}, image_shape=(1, 28, 28))
    offered = {name: DECODERS.build({"name": name}, in_dim=encoder.out_dim, max_way=5, film_channels=encoder.film_channels,
                                    encoder_name="encoder=conv4", image_shape=(1, 28, 28)).refines_with_queries
               for name in ("prototype", "feat", "latent", "logistic", "linear")}
    assert offered == {"prototype": True, "feat": False, "latent": False, "logistic": False, "linear": False}
    model = MetaModel(encoder, DECODERS.build({"name": "logistic"}, in_dim=encoder.out_dim))
    with pytest.raises(ConfigError, match="eval.soft_kmeans_steps=1 refines prototypes .* decoder=prototype"):
        model.check_refinement(1)
    model.check_refinement(0)

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
    mean, raw = decoder.codes(support, labels, 3).chunk(2, dim=-1)
    std = (torch.exp(raw) - 1).clamp(min=1e-10)  # LEO's code noise
    expected = 0.5 * (std.square() + mean.square() - 1) - std.log()
    torch.testing.assert_close(kl, 2.0 * expected.mean())  # a mean over the code's dimensions, as LEO's
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
    for site in model.decoder.film:  # leave the zero init so modulation is visible
        torch.nn.init.normal_(site[-1].weight, std=0.5)
    sx, sy, qx = torch.rand(2, 6, 1, 28, 28), torch.tensor([[0, 0, 1, 1, 2, 2]] * 2), torch.rand(2, 4, 1, 28, 28)
    logits = model(sx, sy, qx, 3).logits
    assert logits.shape == (2, 4, 3)
    film = model.decoder.modulation(sx, sy)
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
    with pytest.raises(ConfigError, match="decoder=film needs an encoder that accepts FiLM modulation .* encoder=rnn does not"):
        build_meta_model(cfg, (1, 28, 28))


# ----------------------------------------------------------------------------- RFS's logistic regression
def test_logistic_fit_reaches_the_optimum_of_the_regularised_objective():
    """At the fitted weights the gradient of sum CE + ||W||^2 / (2C) vanishes (scikit-learn's objective)."""
    import torch.nn.functional as F

    from metalearn_cli.decoders.logistic import fit_logistic

    torch.manual_seed(0)
    for shape, c in (((3, 5, 16), 1.0), ((2, 100, 32), 0.5)):
        x = F.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1)
        way = 5 if shape[1] == 5 else 20
        y = torch.arange(way).repeat_interleave(shape[1] // way).expand(shape[0], -1)
        w, b = fit_logistic(x, y, way, c, 200)
        w, b = w.requires_grad_(), b.requires_grad_()
        loss = F.cross_entropy((x @ w.transpose(1, 2) + b[:, None]).flatten(0, 1), y.flatten(), reduction="sum")
        grads = torch.autograd.grad(loss + w.square().sum() / (2 * c), (w, b))
        assert max(g.abs().max().item() for g in grads) < 1e-3


def test_logistic_decoder_classifies_a_separable_task():
    torch.manual_seed(0)
    decoder = DECODERS.build({"name": "logistic"}, in_dim=8)
    centres = torch.randn(4, 8) * 3
    labels = torch.arange(4).repeat(3)[None]
    support = centres[labels] + 0.1 * torch.randn(1, 12, 8)
    query = centres[torch.arange(4)][None] + 0.1 * torch.randn(1, 4, 8)
    assert torch.equal(decoder(support, labels, query, 4).logits.argmax(-1), torch.arange(4)[None])


# ----------------------------------------------------------------------------- LEO as published
def _leo(**params):
    torch.manual_seed(0)
    return DECODERS.build({"name": "latent", "latent_dim": 8, "latent_steps": 2, "finetune_steps": 5,
                           "finetune_lr": 0.5, **params}, in_dim=6)


def test_fine_tuning_the_decoded_weights_lowers_the_support_loss():
    decoder = _leo().eval()
    support, labels = torch.randn(2, 6, 6), torch.tensor([[0, 1, 2, 0, 1, 2]] * 2)
    z = decoder.codes(support, labels, 3).chunk(2, dim=-1)[0]
    w, _ = decoder.classifier(z, None)
    tuned, losses = decoder.finetune(w, None, support, labels)
    after = torch.nn.functional.cross_entropy((support @ tuned.transpose(1, 2)).flatten(0, 1), labels.flatten())
    assert len(losses) == 5 and after < losses[0] and all(b < a for a, b in zip(losses, losses[1:]))


def test_fine_tuning_rates_are_per_dimension_and_meta_learned():
    decoder = _leo(learn_rates=True).train()
    support, labels, query = torch.randn(2, 6, 6), torch.tensor([[0, 1, 2, 0, 1, 2]] * 2), torch.randn(2, 6, 6)
    loss = torch.nn.functional.cross_entropy(decoder(support, labels, query, 3).logits.flatten(0, 1), labels.flatten())
    loss.backward()
    assert decoder.finetune_lrs.shape == (6,) and decoder.finetune_lrs.grad.abs().gt(0).all()
    assert decoder.log_latent_lr.shape == (decoder.p.latent_dim,) and decoder.log_latent_lr.grad.abs().gt(0).all()


def test_sampled_weights_use_every_decoder_output_and_only_in_training():
    """No dead outputs: every row of the weight decoder gets gradient from the task loss itself."""
    for sample in (False, True):
        decoder = _leo(sample_weights=sample, orthogonality=0.0, kl_weight=0.0, l2=0.0, finetune_steps=0, latent_steps=0)
        assert decoder.weight_decoder.out_features == (2 if sample else 1) * 6
        support, labels, query = torch.randn(2, 6, 6), torch.tensor([[0, 1, 2, 0, 1, 2]] * 2), torch.randn(2, 6, 6)
        decoder.train()
        out = decoder(support, labels, query, 3)
        torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), labels.flatten()).backward()
        assert decoder.weight_decoder.weight.grad.abs().sum(-1).gt(0).all()
        decoder.eval()
        a, b = decoder(support, labels, query, 3).logits, decoder(support, labels, query, 3).logits
        torch.testing.assert_close(a, b)  # evaluation: the means, no sampling


def test_l2_penalty_is_half_the_sum_of_squared_weights():
    zero = _leo(l2=0.0, kl_weight=0.0, orthogonality=0.0, encoder_penalty=0.0).eval()
    one = _leo(l2=1.0, kl_weight=0.0, orthogonality=0.0, encoder_penalty=0.0).eval()
    one.load_state_dict(zero.state_dict())
    support, labels = torch.randn(1, 6, 6), torch.tensor([[0, 1, 2, 0, 1, 2]])
    expected = sum(m.weight.square().sum() for m in one.modules() if isinstance(m, torch.nn.Linear)) / 2
    got = one(support, labels, support, 3).regularizer - zero(support, labels, support, 3).regularizer
    torch.testing.assert_close(got, expected)


def test_old_latent_files_with_unused_outputs_load_their_means():
    decoder = _leo()
    old = {k: v for k, v in decoder.state_dict().items()}
    old["weight_decoder.weight"] = torch.randn(12, 8)
    old["weight_decoder.bias"] = torch.randn(12)
    decoder.load_state_dict(old)
    torch.testing.assert_close(decoder.weight_decoder.weight, old["weight_decoder.weight"][:6])


# ----------------------------------------------------------------------------- CNAPs
def _film_model(encoder):
    from omegaconf import OmegaConf

    from metalearn_cli.model import build_meta_model

    torch.manual_seed(0)
    enc = {"conv4": {"name": "conv4", "width": 8}, "resnet12": {"name": "resnet12", "channels": [4, 4, 4, 4]}}[encoder]
    cfg = OmegaConf.create({"encoder": enc, "decoder": {"name": "film", "hidden": 16}, "episode": {"way": 3, "shot": 2, "query": 2}})
    model = build_meta_model(cfg, (1, 28, 28)).train()
    for site in model.decoder.film:
        torch.nn.init.normal_(site[-1].weight, std=0.5)
    return model


def film_reaches_every_site(model) -> bool:
    """Whether each FiLM site's modulation changes the model's logits (the test the mutation must fail)."""
    sx, sy, qx = torch.rand(2, 6, 1, 28, 28), torch.tensor([[0, 0, 1, 1, 2, 2]] * 2), torch.rand(2, 6, 1, 28, 28)
    model.eval()
    film = model.decoder.modulation(sx, sy)
    support, query = model.embed_task(sx, qx, film)
    base = model.decoder(support, sy, query, 3).logits
    for k in range(len(film)):
        changed = [(g + (1.0 if i == k else 0.0), b) for i, (g, b) in enumerate(film)]
        support, query = model.embed_task(sx, qx, changed)
        if torch.allclose(model.decoder(support, sy, query, 3).logits, base):
            return False
    return True


@pytest.mark.parametrize("encoder,sites", [("conv4", 4), ("resnet12", 12)])
def test_film_is_applied_after_every_batch_norm(encoder, sites, monkeypatch):
    model = _film_model(encoder)
    assert len(model.decoder.film) == sites == len(model.encoder.film_channels)
    assert film_reaches_every_site(model)
    # Mutation: an encoder that ignores FiLM must fail the check above.
    import metalearn_cli.encoders.conv4 as conv4
    import metalearn_cli.encoders.resnet12 as resnet12

    for module in (conv4, resnet12):
        monkeypatch.setattr(module, "modulate", lambda x, gamma, beta: x)
    assert not film_reaches_every_site(model)


def test_film_backbone_runs_one_modulated_pass_and_no_unmodulated_one():
    """CNAPs' task representation comes from its own set encoder: every backbone batch norm runs
    once per forward (support + query, modulated), so its statistics see only modulated features."""
    model = _film_model("conv4")
    calls = []
    for m in model.encoder.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.register_forward_hook(lambda m, a, o: calls.append(m))
    sx, sy, qx = torch.rand(2, 6, 1, 28, 28), torch.tensor([[0, 0, 1, 1, 2, 2]] * 2), torch.rand(2, 6, 1, 28, 28)
    model(sx, sy, qx, 3)
    assert len(calls) == 4 and len(set(calls)) == 4


def test_cnaps_classifier_starts_at_class_means_without_a_norm_term():
    model = _film_model("conv4")
    means = torch.randn(2, 3, model.encoder.out_dim)
    torch.testing.assert_close(model.decoder.weight_generator(means), means)
    torch.testing.assert_close(model.decoder.bias_generator(means), torch.zeros(2, 3, 1))


# ----------------------------------------------------------------------------- FEAT
def test_feat_adapts_each_prototype_to_the_other_classes_and_is_permutation_equivariant():
    torch.manual_seed(0)
    decoder = DECODERS.build({"name": "feat"}, in_dim=8).eval()
    support, labels, query = torch.randn(1, 4, 8), torch.tensor([[0, 1, 2, 3]]), torch.randn(1, 5, 8)
    logits = decoder(support, labels, query, 4).logits
    perm = torch.tensor([2, 0, 3, 1])  # class i of the new task is class perm[i] of the old one
    relabelled = decoder(support[:, perm], torch.tensor([[0, 1, 2, 3]]), query, 4).logits
    torch.testing.assert_close(relabelled, logits[..., perm], atol=1e-5, rtol=1e-5)
    other = support.clone()
    other[0, 3] += 1.0  # another class changes: class 0's adapted prototype moves with it
    a = decoder.adapt(support)[0, 0]
    b = decoder.adapt(other)[0, 0]
    assert not torch.allclose(a, b)


def test_feat_contrastive_term_is_each_class_as_one_set_scored_against_the_adapted_centres():
    """FEAT's regulariser, written out directly: class n's support and query instances, adapted as one
    set; every instance (unadapted) scored by -||x - centre_n||^2 / temperature2; balance x CE."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    decoder = DECODERS.build({"name": "feat", "balance": 0.5, "temperature2": 4.0}, in_dim=8).eval()
    support, query = torch.randn(2, 3, 8), torch.randn(2, 6, 8)
    support_labels = torch.tensor([[2, 0, 1], [1, 2, 0]])
    query_labels = torch.tensor([[0, 1, 2, 2, 1, 0], [0, 0, 1, 1, 2, 2]])
    got = decoder.labelled_loss(support, support_labels, query, query_labels, 3)
    x, y = torch.cat([support, query], 1), torch.cat([support_labels, query_labels], 1)
    losses = []
    for t in range(2):
        centres = torch.stack([decoder.adapt(x[t][y[t] == n].unsqueeze(0))[0].mean(0) for n in range(3)])
        logits = -((x[t].unsqueeze(1) - centres.unsqueeze(0)) ** 2).sum(-1) / 4.0
        losses.append(F.cross_entropy(logits, y[t], reduction="none"))
    torch.testing.assert_close(got, 0.5 * torch.cat(losses).mean())
    assert DECODERS.build({"name": "feat", "balance": 0.0}, in_dim=8).labelled_loss(support, support_labels, query,
                                                                                   query_labels, 3) is None
    assert DECODERS.build({"name": "prototype"}, in_dim=8).labelled_loss(support, support_labels, query,
                                                                        query_labels, 3) is None


def test_feat_runs_its_codes_recipe_by_default():
    decoder = DECODERS.build({"name": "feat"}, in_dim=64)
    p = decoder.p
    assert (p.temperature, p.temperature2, p.balance, p.lr_mul) == (64.0, 16.0, 1.0, 10.0)
    assert decoder.attention.dropout == 0.1 and decoder.dropout.p == 0.5 and decoder.lr_mul == 10.0
    with pytest.raises(Exception, match="attention_dropout"):
        DECODERS.build({"name": "feat", "attention_dropout": 1.0}, in_dim=64)


def test_a_feat_checkpoint_from_before_the_recipe_keeps_what_it_ran():
    from metalearn_cli.compat import migrate_config

    old = migrate_config({"decoder": {"name": "feat", "heads": 1, "dropout": 0.5, "temperature": 1.0, "layer_norm": True}})
    assert old["decoder"]["attention_dropout"] == 0.5 and old["decoder"]["balance"] == 0.0 and old["decoder"]["lr_mul"] == 1.0
    assert old["decoder"]["temperature"] == 1.0
    new = {"decoder": {"name": "feat", "attention_dropout": 0.1, "balance": 1.0, "lr_mul": 10.0}}
    assert migrate_config(new)["decoder"] == new["decoder"]


def test_latent_normalize_makes_the_decoder_blind_to_the_embedding_scale():
    """Pre-trained features of norm ~50 made LEO's latent steps diverge; normalised, scale is irrelevant."""
    decoder = _leo(normalize=True).eval()
    support, labels, query = torch.randn(2, 6, 6), torch.tensor([[0, 1, 2, 0, 1, 2]] * 2), torch.randn(2, 5, 6)
    torch.testing.assert_close(decoder(50 * support, labels, 50 * query, 3).logits, decoder(support, labels, query, 3).logits,
                               rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- LEO as its code runs it
def _leo_code(**params):
    torch.manual_seed(0)
    return DECODERS.build({"name": "latent", "latent_dim": 6, **params}, in_dim=8)


def test_leo_codes_start_almost_noiseless_as_in_leos_code():
    stats = torch.cat([torch.randn(2, 3, 6), torch.zeros(2, 3, 6)], -1)  # raw scale u = 0, as at the start
    sample, mean, std = _leo_code().train()._gaussian(stats)
    assert std.max() <= 1e-9 and torch.allclose(sample, mean, atol=1e-6)
    sample, mean, std = _leo_code(code_std="logvar").train()._gaussian(stats)
    assert torch.allclose(std, torch.ones_like(std)) and not torch.allclose(sample, mean, atol=0.1)
    with pytest.raises(Exception, match="expected one of \\[leo, logvar\\]"):
        _leo_code(code_std="wide")


def test_leo_kl_is_a_mean_over_code_dimensions():
    decoder = _leo_code(kl_weight=1.0, encoder_penalty=0.0, orthogonality=0.0)
    mean, std = torch.randn(2, 3, 6), torch.rand(2, 3, 6) + 0.5
    z = torch.zeros(2, 3, 6)
    per_dim = 0.5 * (std ** 2 + mean ** 2 - 1) - std.log()
    torch.testing.assert_close(decoder.penalty(mean, std, z, z), per_dim.mean())


def test_leo_dropout_reaches_every_loss_and_the_query_logits():
    decoder = _leo_code(latent_steps=2, finetune_steps=3, dropout=0.3).train()
    calls = []
    decoder.dropout.register_forward_hook(lambda module, args, out: calls.append(args[0].shape))
    support, labels, query = torch.randn(1, 4, 8), torch.tensor([[0, 1, 2, 3]]), torch.randn(1, 5, 8)
    decoder(support, labels, query, 4)
    assert len(calls) == 1 + 2 + 3 + 1  # the code encoder, each latent step, each fine-tuning step, the queries
    assert calls[-1] == query.shape


def test_leo_learns_one_latent_step_size_per_code_dimension_and_old_files_load():
    decoder = _leo_code(latent_steps=1, learn_rates=True, latent_lr=0.5)
    assert decoder.log_latent_lr.shape == (6,) and torch.allclose(decoder.log_latent_lr.exp(), torch.full((6,), 0.5))
    state = decoder.state_dict()
    state["log_latent_lr"] = torch.tensor(0.25).log()  # a file from before: one rate
    decoder.load_state_dict(state)
    assert torch.allclose(decoder.log_latent_lr.exp(), torch.full((6,), 0.25))
    from metalearn_cli.compat import migrate_config

    assert migrate_config({"decoder": {"name": "latent", "latent_dim": 64}})["decoder"]["code_std"] == "logvar"


def test_a_latent_run_from_before_leos_recipe_is_not_resumed():
    from metalearn_cli.compat import refuse_changed_recipe
    from metalearn_cli.errors import CheckpointError

    with pytest.raises(CheckpointError, match="cannot be resumed: start a new run, trainer.init_from=old.pt"):
        refuse_changed_recipe({"decoder": {"name": "latent", "latent_dim": 64}}, "old.pt")
    refuse_changed_recipe({"decoder": {"name": "latent", "code_std": "logvar"}}, "new.pt")  # chosen today: resumes
    refuse_changed_recipe({"decoder": {"name": "prototype"}}, "p.pt")


# ----------------------------------------------------------------------------- what mutation testing asked for
def _task(t=2, way=3, per_class=2, queries=5, dim=6):
    torch.manual_seed(1)
    labels = torch.arange(way).repeat(per_class).expand(t, -1)
    return torch.randn(t, way * per_class, dim), labels, torch.randn(t, queries, dim), way


def test_each_decoders_stats_are_named_and_measured_over_its_features():
    """The per-task stats are norms over the feature axis, averaged over classes: recomputed here."""
    support, labels, query, way = _task()
    means = torch.stack([torch.stack([support[t][labels[t] == c].mean(0) for c in range(way)]) for t in range(2)])
    proto = DECODERS.build({"name": "prototype"}, in_dim=6)
    torch.testing.assert_close(proto(support, labels, query, way, with_stats=True).stats,
                               {"prototype_norm": means.norm(dim=-1).mean(-1)})
    feat = DECODERS.build({"name": "feat", "heads": 1}, in_dim=6).eval()
    adapted = feat.adapt(means)
    torch.testing.assert_close(feat(support, labels, query, way, with_stats=True).stats,
                               {"prototype_norm": means.norm(dim=-1).mean(-1), "adapted_norm": adapted.norm(dim=-1).mean(-1),
                                "adaptation_shift": (adapted - means).norm(dim=-1).mean(-1)})
    keys = {name: set(DECODERS.build({"name": name}, in_dim=6, max_way=4, film_channels=(4,))(
        support, labels, query, way, with_stats=True).stats) for name in ("latent", "logistic", "film")}
    assert keys == {"latent": {"code_norm", "initial_code_norm", "weight_norm"}, "logistic": {"weight_norm"},
                    "film": {"gamma_norm", "beta_norm", "weight_norm"}}


def test_logistic_normalises_each_embedding_on_its_own():
    """RFS's L2 normalisation is per image: rescaling any one image's embedding changes nothing."""
    support, labels, query, way = _task(t=1)
    decoder = DECODERS.build({"name": "logistic"}, in_dim=6)
    scale_s, scale_q = torch.rand(1, support.shape[1], 1) * 5 + 0.1, torch.rand(1, query.shape[1], 1) * 5 + 0.1
    out, scaled = decoder(support, labels, query, way, with_stats=True), decoder(support * scale_s, labels, query * scale_q, way, with_stats=True)
    torch.testing.assert_close(scaled.logits, out.logits, atol=1e-4, rtol=1e-4)
    from metalearn_cli.decoders.logistic import fit_logistic
    import torch.nn.functional as F

    w, _ = fit_logistic(F.normalize(support, dim=-1), labels, way, 1.0, 200)
    torch.testing.assert_close(out.stats["weight_norm"], w.norm(dim=-1).mean(-1), atol=1e-4, rtol=1e-4)


def test_logistic_fit_converges_for_a_strong_and_a_weak_penalty():
    import torch.nn.functional as F

    from metalearn_cli.decoders.logistic import fit_logistic

    torch.manual_seed(0)
    x = F.normalize(torch.randn(2, 40, 16, dtype=torch.float64), dim=-1) * 3
    y = torch.arange(4).repeat_interleave(10).expand(2, -1)
    for c in (0.05, 20.0):
        w, b = fit_logistic(x, y, 4, c, 500)
        w, b = w.requires_grad_(), b.requires_grad_()
        loss = F.cross_entropy((x @ w.transpose(1, 2) + b[:, None]).flatten(0, 1), y.flatten(), reduction="sum")
        grads = torch.autograd.grad(loss + w.square().sum() / (2 * c), (w, b))
        assert max(g.abs().max().item() for g in grads) < 1e-3, c


@pytest.mark.parametrize("name,params,message", [
    ("latent", {"latent_lr": 0.0}, "decoder=latent needs latent_dim >= 1, latent_steps >= 0 and latent_lr > 0"),
    ("latent", {"latent_steps": -1}, "decoder=latent needs latent_dim >= 1, latent_steps >= 0 and latent_lr > 0"),
    ("latent", {"finetune_steps": -1}, "decoder=latent needs"),
    ("latent", {"finetune_lr": 0.0}, "decoder=latent needs"),
    ("film", {"hidden": 0}, "decoder=film needs hidden >= 1"),
    ("logistic", {"steps": 0}, "decoder=logistic needs"),
])
def test_each_impossible_decoder_setting_is_refused_alone(name, params, message):
    from metalearn_cli.errors import ConfigError

    with pytest.raises(ConfigError) as refused:
        DECODERS.build({"name": name, **params}, in_dim=6, film_channels=(4,))
    assert str(refused.value).startswith(message)


def test_the_smallest_allowed_settings_build():
    assert DECODERS.build({"name": "film", "hidden": 1}, in_dim=6, film_channels=(4,))
    assert DECODERS.build({"name": "logistic", "steps": 1}, in_dim=6)


def test_the_mlps_are_the_papers_linear_relu_stacks():
    from torch import nn

    film = DECODERS.build({"name": "film"}, in_dim=6, film_channels=(4,))
    latent = DECODERS.build({"name": "latent"}, in_dim=6)
    stack = [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert [type(m) for m in film.shared.net] == stack and [type(m) for m in film.weight_generator.net] == stack
    assert [type(m) for m in latent.relation] == stack


def test_film_logits_add_the_generated_bias():
    support, labels, query, way = _task()
    decoder = DECODERS.build({"name": "film"}, in_dim=6, film_channels=(4,))
    with torch.no_grad():
        decoder.bias_generator.net[-1].bias.fill_(0.7)  # a bias of 0.7 on top of the generated one
    means = torch.stack([torch.stack([support[t][labels[t] == c].mean(0) for c in range(way)]) for t in range(2)])
    weight, bias = decoder.weight_generator(means), decoder.bias_generator(means)[..., 0]
    torch.testing.assert_close(decoder(support, labels, query, way).logits, query @ weight.transpose(1, 2) + bias[:, None])


def test_sampled_codes_and_weights_are_the_mean_plus_std_times_a_standard_normal():
    decoder = _leo(sample_weights=True, code_std="logvar").train()
    stats = torch.cat([torch.full((4000, 3), 0.5), torch.full((4000, 3), 2 * torch.log(torch.tensor(0.3)))], -1)
    sample, mean, std = decoder._gaussian(stats)
    z = (sample - mean) / std
    assert torch.allclose(std, torch.tensor(0.3)) and abs(z.mean()) < 0.05 and 0.95 < z.std() < 1.05
    out = decoder.weight_decoder(torch.zeros(1, 1, decoder.p.latent_dim))
    mean_w, raw = out.chunk(2, dim=-1)
    std_w = (torch.exp(raw) - 1 + (2 / decoder.in_dim) ** 0.5)
    draws = torch.stack([decoder.weights(torch.zeros(1, 1, decoder.p.latent_dim)) for _ in range(4000)])
    z = (draws - mean_w) / std_w
    assert abs(z.mean()) < 0.05 and 0.95 < z.std() < 1.05


@pytest.mark.parametrize("params", [{"name": "prototype"}, {"name": "feat", "heads": 1},
                                    {"name": "latent", "latent_dim": 4, "latent_steps": 2, "finetune_steps": 2},
                                    {"name": "latent", "latent_dim": 4, "normalize": True, "prototype_residual": True}])
def test_a_generated_linear_head_gives_the_decoders_own_predictions(params):
    """``linear_head`` is what ``eval.finetune_params=generated`` moves: the same softmax as ``forward``."""
    support, labels, query, way = _task()
    decoder = DECODERS.build(params, in_dim=6).eval()
    head = decoder.linear_head(support, labels, way)
    expected = decoder(support, labels, query, way).logits.log_softmax(-1)
    assert torch.allclose(head.logits(query, head.weight, head.bias).log_softmax(-1), expected, atol=1e-5)


def test_decoders_whose_classifier_is_not_generated_offer_no_linear_head():
    support, labels, _, way = _task()
    for name in ("linear", "logistic", "film"):
        decoder = DECODERS.build({"name": name}, in_dim=6, max_way=4, film_channels=(4,))
        assert decoder.linear_head(support, labels, way) is None


def _metric_task():
    torch.manual_seed(0)
    return torch.randn(2, 6, 8), torch.tensor([[0, 1, 2, 0, 1, 2]] * 2), torch.randn(2, 5, 8)


def test_metric_starts_as_prototypes_and_its_correction_learns():
    support, labels, query = _metric_task()
    metric = DECODERS.build({"name": "metric"}, in_dim=8)
    proto = DECODERS.build({"name": "prototype"}, in_dim=8)
    logits = metric(support, labels, query, 3).logits
    torch.testing.assert_close(logits, proto(support, labels, query, 3).logits, atol=1e-4, rtol=1e-4)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), torch.tensor([0, 1, 2, 0, 1] * 2)).backward()
    assert metric.correction[-1].weight.grad.abs().sum() > 0
    with torch.no_grad():
        metric.correction[-1].weight.normal_()
    assert not torch.allclose(metric(support, labels, query, 3).logits, logits, atol=1e-3)


def _trained_metric(task_adaptive: bool):
    torch.manual_seed(1)
    metric = DECODERS.build({"name": "metric", "task_adaptive": task_adaptive}, in_dim=8)
    with torch.no_grad():
        metric.correction[-1].weight.normal_()
    return metric


def test_metric_reads_each_dimensions_spread_over_the_tasks_prototypes():
    """A correction that passes its third input through adds sum_d var_n(c_nd) to every distance: the
    task statistic is the spread of the task's class means; with task_adaptive off it is 0."""
    support, labels, query = _metric_task()
    proto = DECODERS.build({"name": "prototype"}, in_dim=8)(support, labels, query, 3).logits
    means = torch.stack([support[:, :3], support[:, 3:]]).mean(0)  # classes 0, 1, 2 in both halves
    spread = means.var(1, unbiased=False).sum(-1)  # [T]
    for adaptive in (True, False):
        metric = DECODERS.build({"name": "metric", "task_adaptive": adaptive}, in_dim=8)
        with torch.no_grad():
            first, last = metric.correction[0], metric.correction[-1]
            first.weight.zero_(), first.bias.zero_(), last.weight.zero_()
            first.weight[0, 2] = 1.0
            last.weight[0, 0] = 1.0
        expected = proto - spread[:, None, None] if adaptive else proto
        torch.testing.assert_close(metric(support, labels, query, 3).logits, expected, atol=1e-4, rtol=1e-4)


def test_metric_is_equivariant_to_the_order_of_classes():
    support, labels, query = _metric_task()
    metric = _trained_metric(True)
    relabel = torch.tensor([2, 0, 1])
    torch.testing.assert_close(metric(support, relabel[labels], query, 3).logits[..., relabel],
                               metric(support, labels, query, 3).logits, atol=1e-4, rtol=1e-4)


def test_metric_refuses_an_empty_correction():
    from metalearn_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="hidden >= 1"):
        DECODERS.build({"name": "metric", "hidden": 0}, in_dim=8)


def test_a_linear_head_asked_for_more_ways_than_it_has_rows_says_both_ways_out():
    from metalearn_cli.errors import ConfigError

    decoder = DECODERS.build({"name": "linear"}, in_dim=5, max_way=5)
    with pytest.raises(ConfigError, match=r"built for up to 5 ways .*this task has 20: test at 5 ways or fewer "
                                          r"\(e.g. episode=5way1shot episode.way=5\), or train with trainer.train_way=20"):
        decoder(torch.randn(1, 20, 5), torch.arange(20).view(1, 20), torch.randn(1, 20, 5), 20)
