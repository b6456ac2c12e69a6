"""The CUDA path: what only a GPU can check (skipped where there is none; CI has none).

Run on a GPU machine with ``pytest tests/test_cuda.py``. Each test is a promise of the fast GPU
path: the vectorised inner loop is exact there too, every strategy trains end to end with its data
resident on the device, a meta-training step never waits for the host, a non-finite step is
skipped on the device, bf16 stays close to fp32, and a GPU checkpoint is evaluated on a CPU.
"""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from conftest import FAST, compose_config, nan_on_call
from metalearn_cli import training
from metalearn_cli.cli import main
from metalearn_cli.data import DATASETS
from metalearn_cli.episodes import EpisodeSampler
from metalearn_cli.objectives import train_step
from metalearn_cli.model import build_meta_model
from metalearn_cli.optim import OPTIMIZERS, ClipParams
from metalearn_cli.strategies import STRATEGIES

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

GPU = [*[o for o in FAST if o != "device=cpu"], "device=cuda"]


def maml_on(device: str, vectorize: str, first_order: bool, dtype=torch.float64):
    torch.manual_seed(0)
    data = DATASETS.build({"name": "synthetic", "train_classes": 10, "images_per_class": 6, "image_size": 16})
    cfg = OmegaConf.create({"encoder": {"name": "conv4", "width": 8}, "decoder": {"name": "linear"},
                            "episode": {"way": 3, "shot": 2, "query": 2}})
    model = build_meta_model(cfg, data.image_shape).to(dtype)
    maml = STRATEGIES.build({"name": "maml", "inner_steps": 2, "vectorize": vectorize,
                             "first_order": first_order, "learn_inner_lr": True}, model=model).to(device)
    batch = EpisodeSampler(data.train.to(device), 3, 2, 2, seed=0, device=torch.device(device)).sample(4)
    batch = type(batch)(batch.support_images.to(dtype), batch.support_labels, batch.query_images.to(dtype),
                        batch.query_labels, 3, 2, 2)
    return maml, batch


def meta_gradients(maml, batch) -> dict[str, torch.Tensor]:
    train_step(maml, batch, torch.optim.SGD(maml.parameters(), lr=0.0), ClipParams(norm=None))
    return {n: p.grad.detach().cpu() for n, p in maml.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("first_order", [False, True])
def test_vmap_equals_the_loop_on_cuda(first_order):
    loop = meta_gradients(*maml_on("cuda", "loop", first_order))
    vmap = meta_gradients(*maml_on("cuda", "vmap", first_order))
    assert vmap.keys() == loop.keys()
    for name, g in loop.items():
        torch.testing.assert_close(vmap[name], g, rtol=1e-5, atol=1e-8, msg=lambda m: f"{name}: {m}")


GRADIENTS_DIFFER = (
    "open: on an H100 (torch 2.11, 2026-11-26) the first conv layer's float64 meta-gradient differed from the "
    "CPU's by up to 12% relative (max abs 4e-4) in the loop, while CUDA's vmap equalled its loop; cause not found "
    "(not max-pool ties: perturbing the images by 1e-7 moves the CPU gradient by 3e-7). On an H200 (torch 2.11, "
    "2026-12-04) first order agreed and second order still differed. See docs/future.md")


@pytest.mark.parametrize("first_order", [
    pytest.param(False, marks=pytest.mark.xfail(strict=True, reason=GRADIENTS_DIFFER)),
    pytest.param(True, marks=pytest.mark.xfail(strict=False, reason=GRADIENTS_DIFFER)),
])
def test_cuda_and_cpu_give_the_same_meta_gradients(first_order):
    cpu = meta_gradients(*maml_on("cpu", "loop", first_order))
    gpu = meta_gradients(*maml_on("cuda", "loop", first_order))
    for name, g in cpu.items():
        torch.testing.assert_close(gpu[name], g, rtol=1e-5, atol=1e-8, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("overrides", [
    ["strategy=mgd", "decoder=prototype", "trainer.precision=bf16"],
    ["strategy=mgd", "decoder=latent"],
    ["strategy=mgd", "decoder=film"],
    ["strategy=maml", "decoder=linear"],
    ["strategy=anil", "decoder=linear"],
    ["strategy=metasgd", "decoder=linear", "strategy.vectorize=loop"],
    ["strategy=fomaml", "decoder=linear", "trainer.compile=true"],
], ids=lambda o: "-".join(x.split("=")[1] for x in o[:2]))
def test_every_strategy_trains_on_cuda_and_its_checkpoint_evaluates_on_a_cpu(tmp_path, overrides):
    run = tmp_path / "run"
    training.train(compose_config("train", [*GPU, *overrides]), run)
    results = json.loads((run / "results.json").read_text())
    assert results["device"].startswith("cuda") and 0 <= results["accuracy"] <= 1
    assert main(["eval", f"checkpoint={run}", "device=cpu", "eval.episodes=10", f"hydra.run.dir={tmp_path / 'ev'}"]) == 0
    on_cpu = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert on_cpu["device"] == "cpu" and abs(on_cpu["accuracy"] - results["accuracy"]) <= 0.2


@pytest.mark.parametrize("strategy", ["mgd", "maml"])
def test_a_meta_training_step_never_waits_for_the_host(strategy):
    """The data are resident, the optimizer is fused and the non-finite check stays on the device:
    CUDA's sync debug mode turns any synchronising call inside the step into an error."""
    torch.manual_seed(0)
    data = DATASETS.build({"name": "synthetic", "train_classes": 10, "images_per_class": 6})
    cfg = OmegaConf.create({"encoder": {"name": "conv4", "width": 8},
                            "decoder": {"name": "prototype" if strategy == "mgd" else "linear"},
                            "episode": {"way": 3, "shot": 1, "query": 2}})
    model = build_meta_model(cfg, data.image_shape)
    s = STRATEGIES.build({"name": strategy, **({"vectorize": "vmap"} if strategy == "maml" else {})}, model=model)
    s.to("cuda")
    optimizer = OPTIMIZERS.build({"name": "adam"}, parameters=list(s.parameters()))
    assert optimizer.defaults.get("fused")
    sampler = EpisodeSampler(data.train.to("cuda"), 3, 1, 2, seed=0, device=torch.device("cuda"))
    train_step(s, sampler.sample(2), optimizer, ClipParams())  # warm-up: lazy initialisation may sync once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            out, result = train_step(s, sampler.sample(2), optimizer, ClipParams())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert result.skipped.item() == 0 and result.nonfinite is None and torch.isfinite(out.loss).item()


def test_a_non_finite_step_is_skipped_on_the_device_and_counted(tmp_path, monkeypatch):
    nan_on_call(monkeypatch, bad_call=3)
    run = tmp_path / "run"
    training.train(compose_config("train", [*GPU, "trainer.nan_policy=skip"]), run)
    train = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in train if r["split"] == "train"]
    assert [r["skipped"] for r in train] == [0, 1, 0] and all(r["loss"] == r["loss"] and r["loss"] > 0 for r in train)
    model = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["model"]
    assert all(torch.isfinite(v).all() for v in model.values() if v.is_floating_point())


def test_a_non_finite_step_under_stop_fails_at_the_next_record_with_one_line(tmp_path, monkeypatch, capsys):
    nan_on_call(monkeypatch, bad_call=3)
    run = tmp_path / "run"
    assert main(["train", *GPU, f"hydra.run.dir={run}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "non-finite loss or gradient in 1 of meta-iterations 3-4" in err and err.count("\n") == 0
    assert json.loads((run / "status.json").read_text())["status"] == "failed"


def test_bf16_training_stays_close_to_fp32(tmp_path):
    losses = {}
    for precision in ("fp32", "bf16"):
        run = tmp_path / precision
        training.train(compose_config("train", [*GPU, f"trainer.precision={precision}", "trainer.iterations=20",
                                              "trainer.log_every=10", "trainer.deterministic=true"]), run)
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        losses[precision] = [r["loss"] for r in records if r["split"] == "train"]
    torch.use_deterministic_algorithms(False)
    # the first window starts from the same weights; later ones follow trajectories that rounding has parted
    # (H200, 2026-12-04: 1.1% apart after 10 steps, bf16 7% lower after 20), so bf16 must only not learn slower
    assert losses["bf16"][0] == pytest.approx(losses["fp32"][0], rel=0.03)
    assert losses["bf16"][-1] < losses["bf16"][0] and losses["bf16"][-1] <= 1.05 * losses["fp32"][-1]
