"""trainer.ema: the average of the weights that validation scores and best.pt keeps (metalearn_cli.weight_average)."""

from __future__ import annotations

import json

import torch

from metalearn_cli import training
from metalearn_cli.checkpoint import load_checkpoint
from metalearn_cli.weight_average import WeightAverage


def test_the_average_follows_the_weights_by_its_decay_and_is_applied_only_inside_its_block():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(net, decay=0.5)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net[0].weight.add_(1.0)
    net(torch.randn(4, 3))  # batch norm's statistics and counter move too
    average.update()  # the first update's decay is min(0.5, 2 / 11)
    expected = start["0.weight"] + (1 - 2 / 11) * (net[0].weight.detach() - start["0.weight"])
    torch.testing.assert_close(average.shadow["0.weight"], expected)
    assert int(average.shadow["1.num_batches_tracked"]) == 1
    trained = net[0].weight.detach().clone()
    with average.applied():
        torch.testing.assert_close(net[0].weight.detach(), expected)
    torch.testing.assert_close(net[0].weight.detach(), trained)
    average.restart()
    assert average.updates == 0 and torch.equal(average.shadow["0.weight"], trained)


def test_best_pt_holds_the_average_and_last_pt_the_trained_weights(compose_train, run_dir):
    training.train(compose_train("trainer.ema=0.9", "trainer.val_every=6"), run_dir)
    best, last = (load_checkpoint(run_dir / "checkpoints" / name) for name in ("best.pt", "last.pt"))
    for key, value in best["model"].items():
        torch.testing.assert_close(value, best["weight_average"]["shadow"][key], msg=key)
    assert last["weight_average"]["updates"] == 6
    assert any(not torch.equal(value, last["weight_average"]["shadow"][key]) for key, value in last["model"].items())
    assert json.loads((run_dir / "results.json").read_text())["val_accuracy"] == best["best_val"]


def test_a_resumed_run_continues_the_average_as_an_uninterrupted_one(compose_train, tmp_path):
    settings = ("optimizer.schedule.kind=constant", "trainer.ema=0.8")  # 3 + 3 steps equal 6 steps
    training.train(compose_train(*settings), tmp_path / "full")
    training.train(compose_train(*settings, "trainer.iterations=3"), tmp_path / "part")
    training.train(compose_train(*settings, "resume=true"), tmp_path / "part")
    full, part = (load_checkpoint(tmp_path / run / "checkpoints" / "last.pt")["weight_average"] for run in ("full", "part"))
    assert part["updates"] == full["updates"] == 6
    for key, value in full["shadow"].items():
        torch.testing.assert_close(part["shadow"][key], value, msg=key)
