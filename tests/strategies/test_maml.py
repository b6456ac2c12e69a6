"""MAML family properties: the inner loop learns, vmap equals the loop, second order is really
second order, zero steps is plain training, and Meta-SGD's learning rates are meta-knowledge."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.func import functional_call

from conftest import FAST, compose_config
from metalearn_cli import evaluation, training
from metalearn_cli.checkpoint import load_checkpoint
from metalearn_cli.data import DATASETS
from metalearn_cli.episodes import EpisodeSampler
from metalearn_cli.host import bf16_pays
from metalearn_cli.errors import ConfigError
from metalearn_cli.objectives import train_step
from metalearn_cli.model import build_meta_model
from metalearn_cli.optim import ClipParams
from metalearn_cli.strategies import STRATEGIES


def setup(decoder="linear", width=4, shot=1, **strategy):
    torch.manual_seed(0)
    data = DATASETS.build({"name": "synthetic", "train_classes": 10, "images_per_class": 6, "image_size": 16})
    cfg = OmegaConf.create({"encoder": {"name": "conv4", "width": width}, "decoder": {"name": decoder},
                            "episode": {"way": 3, "shot": 1, "query": 2}})
    model = build_meta_model(cfg, data.image_shape).double()
    maml = STRATEGIES.build({"name": "maml", **strategy}, model=model)
    maml.check_compatible()
    batch = EpisodeSampler(data.train, 3, shot, 2, seed=0).sample(3)
    batch = type(batch)(batch.support_images.double(), batch.support_labels, batch.query_images.double(),
                        batch.query_labels, 3, shot, 2)
    return maml, batch


def meta_gradients(maml, batch) -> dict[str, torch.Tensor]:
    opt = torch.optim.SGD(maml.parameters(), lr=0.0)
    train_step(maml, batch, opt, ClipParams(norm=None))
    return {n: p.grad.clone() for n, p in maml.named_parameters() if p.grad is not None}


def reference_meta_gradients(maml, batch, lr: float, steps: int, first_order: bool) -> dict[str, torch.Tensor]:
    """MAML written out with torch.autograd.grad(create_graph=True), task by task."""
    model = maml.model
    params = dict(model.named_parameters())
    losses = []
    for t in range(batch.tasks):
        sx, sy, qx = batch.support_images[t : t + 1], batch.support_labels[t : t + 1], batch.query_images[t : t + 1]
        fast = dict(params)
        for _ in range(steps):
            loss = F.cross_entropy(functional_call(model, fast, (sx, sy, None, 3)).logits[0], sy[0])
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = {n: w - lr * (g.detach() if first_order else g) for (n, w), g in zip(fast.items(), grads)}
        losses.append(F.cross_entropy(functional_call(model, fast, (sx, sy, qx, 3)).logits[0], batch.query_labels[t]))
    grads = torch.autograd.grad(torch.stack(losses).mean(), list(params.values()))
    return {f"model.{n}": g for n, g in zip(params, grads)}


def test_one_inner_step_lowers_the_support_loss():
    maml, batch = setup(inner_lr=0.1)
    weights = dict(maml.model.named_parameters())
    sx, sy = batch.support_images[0], batch.support_labels[0]

    def support_loss(steps):
        logits, _, _ = maml._task_logits(weights, sx, sy, sx, 3, steps, create_graph=False)
        return F.cross_entropy(logits, sy).item()

    assert support_loss(1) < support_loss(0)


def test_second_order_maml_matches_the_explicit_computation_and_fomaml_does_not():
    maml, batch = setup(inner_lr=0.3, inner_steps=2, vectorize="loop")
    ours = meta_gradients(maml, batch)
    explicit = reference_meta_gradients(maml, batch, 0.3, 2, first_order=False)
    for name, g in explicit.items():
        torch.testing.assert_close(ours[name], g, rtol=1e-6, atol=1e-9, msg=name)
    fo, _ = setup(inner_lr=0.3, inner_steps=2, vectorize="loop", first_order=True)
    fomaml = meta_gradients(fo, batch)
    first = reference_meta_gradients(fo, batch, 0.3, 2, first_order=True)
    for name, g in first.items():
        torch.testing.assert_close(fomaml[name], g, rtol=1e-6, atol=1e-9, msg=name)
    # The Hessian term is real: a silently first-order "MAML" would fail here.
    gap = max((ours[n] - fomaml[n]).abs().max().item() for n in explicit)
    assert gap > 1e-4


@pytest.mark.parametrize("adapt", ["all", "head"])
@pytest.mark.parametrize("first_order", [False, True])
def test_vmap_equals_the_loop_on_every_meta_gradient(adapt, first_order):
    grads = {}
    for mode in ("loop", "vmap"):
        maml, batch = setup(vectorize=mode, adapt=adapt, first_order=first_order, inner_steps=2, learn_inner_lr=True)
        grads[mode] = meta_gradients(maml, batch)
    assert grads["loop"].keys() == grads["vmap"].keys()
    for name, g in grads["loop"].items():
        torch.testing.assert_close(grads["vmap"][name], g, rtol=1e-5, atol=1e-8, msg=name)


@pytest.mark.parametrize("decoder", ["prototype", "logistic", "latent", "feat", "metric"])
def test_every_decoder_runs_under_vmap_as_in_the_loop(decoder):
    """vmap is the default on CUDA: a decoder that breaks under it (F.one_hot once did) breaks MAML there."""
    grads = {}
    for mode in ("loop", "vmap"):
        maml, batch = setup(decoder=decoder, vectorize=mode, adapt="all", inner_steps=1, first_order=True)
        maml.model.decoder.eval()  # no dropout or sampled codes (FEAT, LEO): both modes compute the same function
        grads[mode] = meta_gradients(maml, batch)
    assert grads["loop"].keys() == grads["vmap"].keys()
    for name, g in grads["loop"].items():
        torch.testing.assert_close(grads["vmap"][name], g, rtol=1e-5, atol=1e-8, msg=name)


def test_zero_inner_steps_is_plain_training():
    maml, batch = setup(inner_steps=0, eval_inner_steps=1)  # tested unadapted, a linear head is refused (below)
    ours = meta_gradients(maml, batch)
    maml.zero_grad()
    logits = torch.stack([maml.model(batch.support_images[t : t + 1], batch.support_labels[t : t + 1],
                                     batch.query_images[t : t + 1], 3).logits[0] for t in range(batch.tasks)])
    F.cross_entropy(logits.flatten(0, 1), batch.query_labels.flatten()).backward()
    for name, p in maml.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, msg=name)


@pytest.mark.parametrize("adapt", ["all", "head"])
def test_meta_gradients_reach_the_encoder(adapt):
    maml, batch = setup(adapt=adapt)
    grads = meta_gradients(maml, batch)
    encoder = [n for n in grads if n.startswith("model.encoder.")]
    assert encoder and all(grads[n].abs().sum() > 0 for n in encoder if n.endswith("weight"))


def test_nothing_to_adapt_is_a_config_error():
    with pytest.raises(ConfigError, match="nothing to adapt .* use decoder=linear"):
        setup(decoder="prototype", adapt="head")


def test_metasgd_learning_rates_are_meta_learned_saved_and_restored(tmp_path):
    run = tmp_path / "run"
    overrides = [*FAST, "strategy=metasgd", "decoder=linear", "encoder.width=8", "strategy.eval_inner_steps=1"]
    training.train(compose_config("train", overrides), run)
    state = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    lrs = {k: v for k, v in state.items() if k.startswith("inner_lrs.")}
    assert lrs and any(not torch.allclose(v, torch.full_like(v, 0.4)) for v in lrs.values())
    out = tmp_path / "eval"
    evaluation.evaluate(compose_config("eval", [f"checkpoint={run / 'checkpoints' / 'best.pt'}", "device=cpu",
                                            "eval.episodes=10", "eval.batch_tasks=4"]), out)
    ours, theirs = (json.loads(p.read_text()) for p in (run / "results.json", out / "results.json"))
    assert ours["accuracy"] == theirs["accuracy"] and ours["bn_mode"] == theirs["bn_mode"] == "transductive"


def test_running_statistics_are_refused_for_maml(tmp_path):
    with pytest.raises(ConfigError, match="eval.bn_mode=running is not possible"):
        training.train(compose_config("train", [*FAST, "strategy=maml", "decoder=linear", "eval.bn_mode=running"]),
                     tmp_path)


@pytest.mark.parametrize("strategy", ["maml", "fomaml", "anil", "metasgd"])
@pytest.mark.parametrize("vectorize", ["vmap", "loop"])
def test_every_variant_trains_through_the_loop_under_its_own_name(tmp_path, strategy, vectorize):
    cfg = compose_config("train", [*FAST, f"strategy={strategy}", "decoder=linear", "encoder.width=8",
                                   f"strategy.vectorize={vectorize}", "trainer.iterations=2", "trainer.val_every=2"])
    training.train(cfg, tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["bn_mode"] == "transductive" and 0 <= results["accuracy"] <= 1
    assert results["strategy"] == strategy
    # Second-order strategies keep fp32 under precision=auto; FOMAML may use bf16 where it pays.
    assert results["precision"] == ("fp32" if strategy != "fomaml" else ("bf16" if bf16_pays(torch.device("cpu")) else "fp32"))


@pytest.mark.parametrize("strategy,flag,value", [("fomaml", "first_order", True), ("anil", "adapt", "head"),
                                                  ("metasgd", "learn_inner_lr", True), ("maml", "first_order", False)])
def test_each_variant_brings_its_own_defaults(strategy, flag, value):
    cfg = compose_config("train", [f"strategy={strategy}"])
    params = STRATEGIES.params_of(cfg.strategy)
    assert params.name == strategy and getattr(getattr(params, flag), "value", getattr(params, flag)) == value


@pytest.mark.parametrize("decoder", ["latent", "film"])
def test_maml_adds_the_decoders_regulariser_to_the_meta_loss(decoder):
    """The meta-loss equals the query loss of the adapted weights plus the decoder's regulariser of that pass."""
    maml, batch = setup(decoder=decoder, width=8, inner_steps=1, inner_lr=0.1, vectorize="loop")
    maml.eval()  # the latent codes at their means: the same value on every call
    logits, regularizer, _ = maml._batch_logits(batch, 1, create_graph=True)
    task = F.cross_entropy(logits.flatten(0, 1), batch.query_labels.flatten())
    # Compared on its own scale (FiLM's is ~1e-12, below any tolerance on the whole loss): a meta-loss
    # without the regulariser fails here.
    torch.testing.assert_close(maml.meta_loss(batch).loss - task, regularizer.mean(), rtol=1e-2, atol=0)


# ----------------------------------------------------------------------------- MAML++ options
def test_multi_step_loss_weights_the_query_loss_after_every_step_and_anneals_to_the_last():
    maml, batch = setup(inner_steps=3, multi_step_loss=True, msl_anneal=4, inner_lr=0.3)
    assert maml.msl_weights(3) == pytest.approx([1 / 3] * 3)
    plain, _ = setup(inner_steps=3, inner_lr=0.3)
    per_step = plain._batch_logits(batch, 3, create_graph=True, every_step=True)[0]  # [T, 3, Q, N]
    assert per_step.shape[:2] == (3, 3)
    assert torch.allclose(per_step[:, -1], plain._batch_logits(batch, 3, create_graph=True)[0])
    expected = sum(F.cross_entropy(per_step[:, j].flatten(0, 1), batch.query_labels.flatten()) for j in range(3)) / 3
    out, _ = train_step(maml, batch, torch.optim.SGD(maml.parameters(), lr=0.0), ClipParams())
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-9)
    maml.meta_iterations.value += 1  # with the meta-step above: 2 of msl_anneal=4
    assert maml.msl_weights(3) == pytest.approx([1 / 6, 1 / 6, 2 / 3])  # half-way
    for _ in range(2):
        maml.meta_iterations.value += 1
    assert maml.msl_weights(3) == [0.0, 0.0, 1.0]  # after msl_anneal: the last step's loss alone, as MAML++ does


def test_per_step_learning_rates_are_learned_per_tensor_and_step():
    maml, batch = setup(inner_steps=2, per_step_lr=True, inner_lr=0.3)
    assert {tuple(p.shape) for p in maml.step_lrs.values()} == {(2,)}
    grads = meta_gradients(maml, batch)
    lr_grads = [g for n, g in grads.items() if n.startswith("step_lrs.")]
    assert len(lr_grads) == len(maml.adapt_names) and all(g.abs().sum() > 0 for g in lr_grads)
    assert all(g[0] != g[1] for g in lr_grads)  # each step's rate gets its own gradient
    # With every per-step rate at inner_lr, the adaptation is plain MAML's.
    plain, _ = setup(inner_steps=2, inner_lr=0.3)
    assert torch.allclose(maml._batch_logits(batch, 2, True)[0], plain._batch_logits(batch, 2, True)[0])
    with pytest.raises(ConfigError, match="choose one"):
        setup(per_step_lr=True, learn_inner_lr=True)


def test_derivative_order_annealing_is_first_order_first_then_second_order():
    annealed, batch = setup(inner_steps=1, inner_lr=0.3, first_order_until=1)
    first, _ = setup(inner_steps=1, inner_lr=0.3, first_order=True)
    second, _ = setup(inner_steps=1, inner_lr=0.3)
    early = meta_gradients(annealed, batch)  # meta-iteration 1: first order
    fo = meta_gradients(first, batch)
    assert all(torch.allclose(early[n], fo[n]) for n in fo)
    late = meta_gradients(annealed, batch)  # meta-iteration 2: second order (lr 0: the weights did not move)
    so = meta_gradients(second, batch)
    assert all(torch.allclose(late[n], so[n]) for n in so)
    assert not all(torch.allclose(late[n], fo[n]) for n in fo)


def test_maml_plus_plus_state_survives_a_checkpoint(tmp_path):
    cfg = compose_config("train", FAST + ["strategy=maml", "decoder=linear", "strategy.inner_steps=2",
                                          "strategy.multi_step_loss=true", "strategy.per_step_lr=true",
                                          "strategy.first_order_until=2"])
    training.train(cfg, tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["model"]["meta_iterations._extra_state"] == {"meta_iterations": 6}
    rebuilt = STRATEGIES.build(cfg.strategy, model=build_meta_model(cfg, (1, 28, 28)))
    rebuilt.load_state_dict(state["model"])
    assert rebuilt.meta_iterations.value == 6
    assert any(not torch.all(v == cfg.strategy.inner_lr) for k, v in state["model"].items() if k.startswith("step_lrs."))


def test_anil_adapts_on_support_features_that_never_see_the_queries():
    """Finn et al.'s code normalises the support set alone: another query set must not move the support
    features (measured before: 19% relative change when ANIL embedded support and queries together)."""
    maml, batch = setup(adapt="head", vectorize="loop")
    weights = dict(maml.model.named_parameters())
    sx, sy = batch.support_images[0], batch.support_labels[0]
    other = batch.query_images[1]  # another task's images: a disjoint query set
    supports = []
    for qx in (batch.query_images[0], other):
        forward, fast, _ = maml._task_function(weights, sx, sy, qx, 3)
        supports.append(forward(fast, None).logits)
    torch.testing.assert_close(supports[0], supports[1], rtol=0, atol=0)


def test_the_final_query_pass_uses_the_query_sets_own_statistics():
    """transductive: changing a query changes other queries' logits only through the query batch's
    statistics, never the classifier the support set gave; transductive_joint mixes both."""
    maml, batch = setup(vectorize="loop", inner_steps=1)
    assert maml.model.statistics == "separate"
    logits = maml.predict(batch).logits
    changed = batch.query_images.clone()
    changed[:, 0] = torch.rand_like(changed[:, 0])
    moved = maml.predict(type(batch)(batch.support_images, batch.support_labels, changed, batch.query_labels,
                                     3, 1, 2)).logits
    assert not torch.allclose(logits[:, 1:], moved[:, 1:])  # batch statistics: the query set is one batch


def test_metasgd_draws_its_rates_as_the_paper_did():
    maml, _ = setup(learn_inner_lr=True, inner_lr_range=[0.005, 0.1])
    rates = torch.cat([r.detach().flatten() for r in maml.inner_lrs.values()])
    assert rates.min() >= 0.005 and rates.max() <= 0.1 and rates.std() > 0.01
    params = STRATEGIES.params_of(compose_config("train", ["strategy=metasgd"]).strategy)
    assert params.inner_lr_range == [0.005, 0.1]
    for preset in ("metasgd_omniglot_5w1s", "metasgd_mini_5w1s_conv4", "metasgd_omniglot_20w1s"):
        cfg = compose_config("train", [f"experiment={preset}"])
        assert cfg.strategy.inner_steps == 1 and cfg.strategy.eval_inner_steps is None, preset
    with pytest.raises(ConfigError, match="inner_lr_range"):
        setup(learn_inner_lr=True, inner_lr_range=[0.1, 0.005])
    same, _ = setup(learn_inner_lr=True, inner_lr_range=[0.05, 0.05])  # a range of one value: every rate is it
    assert all(torch.all(r == 0.05) for r in same.inner_lrs.values())


def test_predict_reports_the_decoders_stats_per_task_when_asked():
    maml, batch = setup(inner_steps=1)
    assert maml.predict(batch).stats == {}
    stats = maml.predict(batch, with_stats=True).stats
    assert stats and all(v.shape == (batch.tasks,) and torch.isfinite(v).all() for v in stats.values())


def test_auto_vectorises_on_cuda_only_and_never_with_per_step_statistics():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    auto = setup(inner_steps=1)[0]
    assert auto.params_.vectorize.value == "auto" and not auto.uses_vmap(cpu) and auto.uses_vmap(cuda)
    assert not setup(inner_steps=1, per_step_bn=True)[0].uses_vmap(cuda)
    assert setup(inner_steps=1, vectorize="vmap")[0].uses_vmap(cpu) and not setup(inner_steps=1, vectorize="loop")[0].uses_vmap(cuda)


@pytest.mark.parametrize("setting,message", [
    ({"inner_steps": -1}, "strategy.inner_steps and strategy.eval_inner_steps must be >= 0"),
    ({"eval_inner_steps": -1}, "strategy.inner_steps and strategy.eval_inner_steps must be >= 0"),
    ({"inner_lr": 0.0}, "strategy.inner_lr must be > 0"),
    ({"msl_anneal": 0}, "strategy.msl_anneal must be >= 1 and strategy.first_order_until >= 0"),
    ({"first_order_until": -1}, "strategy.msl_anneal must be >= 1 and strategy.first_order_until >= 0"),
])
def test_impossible_inner_loop_settings_are_refused_in_one_line(setting, message):
    with pytest.raises(ConfigError) as refused:
        setup(**setting)
    assert str(refused.value) == message
    assert setup(decoder="prototype", adapt="all", eval_inner_steps=0)[0].test_inner_steps() == 0  # the initialisation's
    with pytest.raises(ConfigError, match="shared head is never adapted"):  # a linear head unadapted: every task a guess
        setup(eval_inner_steps=0)


def test_vmap_is_refused_for_an_encoder_that_cannot_batch_tasks():
    data = DATASETS.build({"name": "synthetic", "train_classes": 10, "images_per_class": 6, "image_size": 16})
    cfg = OmegaConf.create({"encoder": {"name": "rnn"}, "decoder": {"name": "linear"}, "episode": {"way": 3, "shot": 1, "query": 2}})
    maml = STRATEGIES.build({"name": "maml", "vectorize": "vmap"}, model=build_meta_model(cfg, data.image_shape))
    with pytest.raises(ConfigError) as refused:
        maml.check_compatible()
    assert str(refused.value) == f"{type(maml.model.encoder).__name__} does not support vmap; use strategy.vectorize=loop or auto"


def test_the_memory_model_counts_every_inner_steps_graph_twice_at_second_order():
    assert setup(inner_steps=3)[0].activation_copies() == 8
    assert setup(inner_steps=3, first_order=True)[0].activation_copies() == 4


def _one_query_changed(batch):
    changed = batch.query_images.clone()
    changed[:, 0] = torch.rand_like(changed[:, 0])
    return type(batch)(batch.support_images, batch.support_labels, changed, batch.query_labels, 3, 1, 2)


@pytest.mark.parametrize("adapt", ["all", "head"])
@pytest.mark.parametrize("mode", ["support", "per_step"])
def test_in_inductive_modes_one_query_never_changes_another(adapt, mode):
    from metalearn_cli.encoders.norm import batch_norm_mode

    maml, batch = setup(vectorize="loop", inner_steps=2, adapt=adapt, per_step_bn=mode == "per_step")
    assert mode in maml.bn_modes
    with batch_norm_mode(maml.model, mode):
        a, b = maml.predict(batch).logits, maml.predict(_one_query_changed(batch)).logits
    torch.testing.assert_close(a[:, 1:], b[:, 1:])
    assert not torch.allclose(a[:, 0], b[:, 0])


def test_per_step_statistics_are_learned_per_inner_step_saved_and_used_in_evaluation(tmp_path):
    """MAML++ BNRS: each inner step's batch statistics move that step's stored set (and only in
    training); evaluation in per_step mode normalises with them. auto stays transductive: MAML++'s code
    normalises with batch statistics at every step, at evaluation too."""
    from metalearn_cli.assemble import resolve_bn_mode
    from metalearn_cli.encoders.norm import batch_norm_mode

    maml, batch = setup(vectorize="loop", inner_steps=2, per_step_bn=True)
    norm = maml.bn_steps.norms[0]
    assert norm.step_mean.shape == (2, 4) and resolve_bn_mode("auto", maml) == "transductive"
    assert resolve_bn_mode("per_step", maml) == "per_step"
    with batch_norm_mode(maml.model, "per_step"):
        before = maml.predict(batch).logits
    assert torch.equal(norm.step_mean, torch.zeros(2, 4))  # evaluating never moves them
    meta_gradients(maml, batch)
    moved = (norm.step_mean != 0).any(-1)
    assert moved.all(), "every inner step's set moved"
    assert not torch.allclose(norm.step_mean[0], norm.step_mean[1])  # the steps' statistics differ
    with batch_norm_mode(maml.model, "per_step"):
        after = maml.predict(batch).logits
    assert not torch.allclose(before, after)
    assert "model.encoder.net.1.step_mean" in maml.state_dict()
    again, _ = setup(vectorize="loop", inner_steps=2, per_step_bn=True)
    again.load_state_dict(maml.state_dict())
    torch.testing.assert_close(again.bn_steps.norms[0].step_var, norm.step_var)


def test_per_step_statistics_refuse_vmap():
    with pytest.raises(ConfigError, match="per_step_bn"):
        setup(vectorize="vmap", per_step_bn=True)
    maml, _ = setup(vectorize="auto", per_step_bn=True)
    assert not maml.uses_vmap(torch.device("cuda"))


@pytest.mark.parametrize("adapt", ["all", "head"])
def test_support_mode_never_lets_the_queries_into_the_support_statistics(adapt):
    from metalearn_cli.encoders.norm import batch_norm_mode

    maml, batch = setup(vectorize="loop", inner_steps=1, adapt=adapt)
    with batch_norm_mode(maml.model, "support"):
        a = maml.predict(batch).logits
        b = maml.predict(_one_query_changed(batch)).logits
        # Each query alone gives the same logits as in its batch: the support statistics normalise it.
        single = type(batch)(batch.support_images, batch.support_labels, batch.query_images[:, 1:2],
                             batch.query_labels[:, 1:2], 3, 1, 1)
        c = maml.predict(single).logits
    torch.testing.assert_close(a[:, 1:], b[:, 1:])
    torch.testing.assert_close(a[:, 1:2], c)


@pytest.mark.parametrize("vectorize", ["loop", "vmap"])
def test_finn_s_summed_support_loss_steps_n_times_further_than_the_mean(vectorize):
    """Finn et al.'s code descends the support losses summed and divided by the shot (N x the mean): its inner_lr
    0.4 on 5-way tasks is 2.0 on the mean (review 41). Two shots, so a plain sum (N x K x the mean) would differ."""
    summed, batch = setup(shot=2, inner_lr=0.1, inner_loss="sum_per_shot", vectorize=vectorize)
    grads = [meta_gradients(m, batch) for m in (summed, setup(shot=2, inner_lr=0.3, vectorize=vectorize)[0],
                                                setup(shot=2, inner_lr=0.6, vectorize=vectorize)[0])]  # 3-way: N x 0.1, N x K x 0.1
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-10) for n in grads[0])
    assert not all(torch.allclose(grads[0][n], grads[2][n], atol=1e-6) for n in grads[0])


def test_adapt_norm_false_keeps_batch_norm_scale_and_shift_out_of_the_inner_loop_but_meta_learned():
    """The adapted network equals one inner step written out by hand over every parameter but the norm layers'."""
    from metalearn_cli.strategies.maml import norm_parameters

    maml, batch = setup(adapt_norm=False, inner_lr=0.5)
    model, norm = maml.model, norm_parameters(maml.model)
    assert norm and all(".weight" in n or ".bias" in n for n in norm) and not norm & set(maml.adapt_names)
    params = dict(model.named_parameters())
    sx, sy, qx = batch.support_images[:1], batch.support_labels[:1], batch.query_images[:1]
    loss = F.cross_entropy(functional_call(model, params, (sx, sy, None, 3)).logits[0], sy[0])
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
    fast = {n: w if n in norm else w - 0.5 * grads[n] for n, w in params.items()}
    by_hand = functional_call(model, fast, (sx, sy, qx, 3)).logits[0]
    adapted = maml._task_logits(params, sx[0], sy[0], qx[0], 3, 1, create_graph=False)[0]
    assert torch.allclose(adapted, by_hand, atol=1e-10)
    every = functional_call(model, {n: w - 0.5 * grads[n] for n, w in params.items()}, (sx, sy, qx, 3)).logits[0]
    assert not torch.allclose(adapted, every, atol=1e-6)  # the norm layers' step matters: the test can fail
    grads = meta_gradients(maml, batch)  # still meta-learned: the query loss reaches them through the forward pass
    assert all(grads[f"model.{n}"].abs().sum() > 0 for n in norm)


def test_per_step_bn_params_give_each_inner_step_its_own_scale_and_shift_meta_learned_only():
    """MAML++ BNWB: two inner steps written out by hand with a one-pair network whose batch-norm pair is
    replaced by step j's at step j (the query pass after the last step uses the last step's), equal the
    strategy's; both steps' pairs get meta-gradients, the layer's own pair (frozen) none."""
    maml, batch = setup(vectorize="loop", inner_steps=2, adapt_norm=False, per_step_bn_params=True, inner_lr=0.5)
    plain, _ = setup(vectorize="loop", inner_steps=2, adapt_norm=False, inner_lr=0.5)
    norms = maml.bn_steps.norms
    assert norms[0].step_weight.shape == (2, 4) and not norms[0].weight.requires_grad
    assert not any("step_" in n for n in maml.adapt_names)
    with torch.no_grad():  # the steps' pairs differ, so using the wrong one shows
        for m in norms:
            m.step_weight.uniform_(0.5, 1.5)
            m.step_bias.normal_(0, 0.3)
    names = [n for n, m in maml.model.named_modules() if hasattr(m, "step_weight")]
    params = {n: p for n, p in maml.model.named_parameters() if "step_" not in n}

    def at(step: int, weights: dict) -> dict:
        pairs = {f"{n}.{k}": getattr(dict(maml.model.named_modules())[n], f"step_{k}")[step] for n in names
                 for k in ("weight", "bias")}
        return {**weights, **pairs}

    sx, sy, qx = batch.support_images[:1], batch.support_labels[:1], batch.query_images[:1]
    fast = dict(params)
    for step in range(2):
        loss = F.cross_entropy(functional_call(plain.model, at(step, fast), (sx, sy, None, 3)).logits[0], sy[0])
        free = [n for n in fast if n in plain.adapt_names]
        grads = dict(zip(free, torch.autograd.grad(loss, [fast[n] for n in free])))
        fast = {n: w - 0.5 * grads[n] if n in grads else w for n, w in fast.items()}
    by_hand = functional_call(plain.model, at(1, fast), (sx, sy, qx, 3)).logits[0]
    adapted = maml._task_logits(dict(maml.model.named_parameters()), sx[0], sy[0], qx[0], 3, 2, create_graph=False)[0]
    assert torch.allclose(adapted, by_hand, atol=1e-10)
    wrong = functional_call(plain.model, at(0, fast), (sx, sy, qx, 3)).logits[0]
    assert not torch.allclose(adapted, wrong, atol=1e-6)  # the last step's pair, not the first's: the test can fail
    grads = meta_gradients(maml, batch)
    for n in names:
        assert (grads[f"model.{n}.step_weight"].abs().sum(-1) > 0).all()  # both steps' rows learn
        assert f"model.{n}.weight" not in grads


@pytest.mark.parametrize(("options", "said"), [
    ({"adapt_norm": True}, "needs strategy.adapt_norm=false"),
    ({"adapt_norm": False, "inner_steps": 0}, "needs strategy.inner_steps >= 1"),
    ({"adapt_norm": False, "adapt": "head"}, "only the first would be used"),
])
def test_per_step_bn_params_refuse_what_maml_plus_plus_never_did(options, said):
    with pytest.raises(ConfigError, match=said):
        setup(per_step_bn_params=True, **options)


def test_per_step_bn_params_start_from_a_one_pair_network():
    """trainer.init_from and pre-training stages: every step's pair starts as the source's own pair."""
    from metalearn_cli.encoders.norm import per_step_copies

    maml, _ = setup(inner_steps=3, adapt_norm=False, per_step_bn_params=True)
    plain, _ = setup(inner_steps=3)
    theirs = {k: v + torch.rand_like(v) for k, v in plain.state_dict().items() if v.is_floating_point()}
    copies = per_step_copies(theirs, maml.state_dict())
    assert copies and all(".step_" in k for k in copies)
    key = next(k for k in copies if k.endswith("step_bias"))
    assert copies[key].shape[0] == 3 and all(torch.equal(row, theirs[key.replace("step_bias", "bias")]) for row in copies[key])
    assert not per_step_copies(maml.state_dict(), maml.state_dict())  # a BNWB source keeps its own pairs
    other, _ = setup(inner_steps=2, adapt_norm=False, per_step_bn_params=True)
    assert not any(".step_" in k for k in per_step_copies(other.state_dict(), maml.state_dict()))  # not its frozen pair
    back = per_step_copies(maml.state_dict(), plain.state_dict())  # a one-pair network takes the last step's pair
    assert back and torch.equal(back[key.replace("step_bias", "bias")], maml.state_dict()[key][-1])


def test_cli_trains_maml_plus_plus_batch_norm_from_a_pretraining_stage_and_refuses_adapted_pairs(tmp_path):
    """The installed command: MAML++'s per-step pairs after a supervised stage, saved and learned per step, the
    layer's own pair frozen at the stage's values; with the pairs in the inner loop, one line and no run."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    exe = shutil.which("metalearn") or str(Path(sys.executable).parent / "metalearn")
    common = [*FAST, "strategy=maml", "decoder=linear", "strategy.inner_steps=2", "strategy.per_step_bn_params=true"]
    bad = subprocess.run([exe, "train", *common, f"hydra.run.dir={tmp_path / 'bad'}"], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode != 0 and "needs strategy.adapt_norm=false" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad" / "checkpoints").exists()
    run = tmp_path / "run"
    proc = subprocess.run([exe, "train", *common, "strategy.adapt_norm=false", "pretrain=supervised", "pretrain.iterations=4",
                           "pretrain.batch_size=16", "pretrain.val_every=2", "pretrain.val_episodes=4", f"hydra.run.dir={run}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    final = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    stage = load_checkpoint(run / "pretrain" / "checkpoints" / "best.pt")["model"]  # the stage hands on its best
    key = "model.encoder.net.1"
    assert final[f"{key}.step_weight"].shape[0] == 2 and not torch.equal(*final[f"{key}.step_weight"])
    torch.testing.assert_close(final[f"{key}.weight"], stage[f"{key}.weight"])  # frozen where the stage left it
    assert "accuracy" in json.loads((run / "results.json").read_text())


def test_per_step_bn_params_run_under_vmap_as_in_the_loop():
    """BNWB alone keeps vmap (CUDA's default): only BNRS's in-place statistics need the loop."""
    grads = {}
    for mode in ("loop", "vmap"):
        maml, batch = setup(vectorize=mode, inner_steps=2, adapt_norm=False, per_step_bn_params=True)
        assert maml.uses_vmap(torch.device("cuda")) == (mode == "vmap")
        with torch.no_grad():
            for m in maml.bn_steps.norms:
                m.step_weight.copy_(torch.linspace(0.5, 1.5, m.step_weight.numel()).view_as(m.step_weight))
        grads[mode] = meta_gradients(maml, batch)
    assert grads["loop"].keys() == grads["vmap"].keys() and any("step_weight" in n for n in grads["loop"])
    for name, g in grads["loop"].items():
        torch.testing.assert_close(grads["vmap"][name], g, rtol=1e-5, atol=1e-8, msg=name)


@pytest.mark.parametrize("vectorize", ["loop", "vmap"])
@pytest.mark.parametrize("bnwb", [False, True])
def test_support_mode_normalises_every_pass_by_the_support_set_and_writes_no_statistics(vectorize, bnwb):
    """Under eval.bn_mode=support the inner steps' support passes are normalised by the support set's statistics
    too (they once went unnormalised), so scaling every image changes no prediction; nothing stored is written,
    and vmap runs it (BNWB's split batch norm once wrote the running buffers, which vmap refused)."""
    from metalearn_cli.encoders.norm import batch_norm_mode

    options = {"adapt_norm": False, "per_step_bn_params": True} if bnwb else {}
    maml, batch = setup(vectorize=vectorize, inner_steps=2, inner_lr=0.5, **options)
    stored = {k: v.clone() for k, v in maml.state_dict().items()}
    scaled = type(batch)(batch.support_images * 3, batch.support_labels, batch.query_images * 3, batch.query_labels, 3, 1, 2)
    with batch_norm_mode(maml.model, "support"):
        a, b = maml.predict(batch).logits, maml.predict(scaled).logits
    torch.testing.assert_close(a, b, rtol=0, atol=5e-3)  # batch norm's eps aside; unnormalised, 0.6-0.9 apart
    assert all(torch.equal(v, stored[k]) for k, v in maml.state_dict().items())
    assert all(m.step is None for m in maml.bn_steps.norms)  # the inner loop's step does not outlive it


def test_the_multi_step_loss_stops_scoring_every_step_once_annealed(monkeypatch):
    """After msl_anneal the weights are the last step's alone, as MAML++'s code: the earlier query passes go."""
    maml, batch = setup(vectorize="loop", inner_steps=3, multi_step_loss=True, msl_anneal=2)
    asked = []
    original = maml._batch_logits
    monkeypatch.setattr(maml, "_batch_logits", lambda *a, **k: asked.append(k.get("every_step")) or original(*a, **k))
    for _ in range(3):
        meta_gradients(maml, batch)  # a meta-step, counted
    assert asked == [True, True, False]


def test_the_query_pass_of_a_linear_head_embeds_the_queries_alone():
    """MAML's linear head never reads the support set, so scoring the queries embeds them alone: one encoder pass
    per inner step and one for the queries (MAML++'s code likewise), not a support pass beside each query pass."""
    maml, batch = setup(vectorize="loop", inner_steps=2, eval_inner_steps=2)
    sizes = []
    hook = maml.model.encoder.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[0]))
    with torch.no_grad():
        maml.eval()
        maml.predict(batch)
    hook.remove()
    per_task = [1 * 3] * 2 + [2 * 3]  # 3-way 1-shot support, twice; then 2 queries per class
    assert sizes == per_task * batch.tasks
