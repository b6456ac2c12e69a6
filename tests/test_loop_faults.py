"""Faults injected into training runs: kill -9, signals, NaN, a full disk, repeated runs.

Each test is one promise of the runner: nothing is lost and a resumed run is the run it continues.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import FAST, compose_config, nan_on_call
from metalearn_cli import loop, training
from metalearn_cli.checkpoint import load_checkpoint, save_checkpoint
from metalearn_cli.cli import main
from metalearn_cli.errors import WriteError

EXE = str(Path(sys.executable).parent / "metalearn")
TIMING = {"tasks_per_s", "train_seconds", "wall_seconds", "eval_seconds", "eval_tasks_per_s", "train_tasks_per_s"}
# Tiny but long enough to be killed mid-run: ~400 meta-iterations of a few ms each.
LONG = [*FAST, "trainer.iterations=300", "trainer.checkpoint_every=7", "trainer.log_every=4", "trainer.val_every=50",
        "encoder.width=8", "dataset.images_per_class=6"]


def cli(*args: str, cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.Popen([EXE, "train", *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def records(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def results(run: Path) -> dict:
    return {k: v for k, v in json.loads((run / "results.json").read_text()).items() if k not in TIMING}


def wait_for_checkpoint(run: Path, proc: subprocess.Popen) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        status = run / "status.json"
        if (run / "checkpoints" / "last.pt").exists() and status.exists():
            return
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint appeared: {proc.communicate()[1][-2000:]}")


def test_kill_9_then_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    reference = tmp_path / "reference"
    proc = cli(*LONG, f"hydra.run.dir={reference}", cwd=tmp_path)
    assert proc.wait(timeout=300) == 0, proc.communicate()[1]

    run = tmp_path / "killed"
    proc = cli(*LONG, f"hydra.run.dir={run}", cwd=tmp_path)
    wait_for_checkpoint(run, proc)
    delay = random.uniform(0.0, 1.0)
    time.sleep(delay)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    killed_at = load_checkpoint(run / "checkpoints" / "last.pt")["step"]  # never half-written
    assert 0 < killed_at < 300, f"delay {delay:.2f}s"

    resumed = cli(*LONG, "resume=true", f"hydra.run.dir={run}", cwd=tmp_path)
    assert resumed.wait(timeout=300) == 0, resumed.communicate()[1]
    a, b = load_checkpoint(reference / "checkpoints" / "last.pt"), load_checkpoint(run / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 300
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), f"{key} differs after a kill at step {killed_at}"
    assert records(reference) == records(run)
    assert results(reference) == results(run)
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    assert not list((run / "checkpoints").glob("*.tmp"))


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_signals_checkpoint_at_the_next_step_and_mark_the_run(tmp_path, sig, code):
    run = tmp_path / "run"
    proc = cli(*LONG, "trainer.iterations=100000", "trainer.checkpoint_every=100000", f"hydra.run.dir={run}",
               cwd=tmp_path)
    deadline = time.time() + 120  # a logged record means the loop (and its signal handlers) runs
    while time.time() < deadline and not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").stat().st_size):
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert f"{signal.Signals(sig).name} at meta-iteration" in err and f"resume={run}" in err
    status = json.loads((run / "status.json").read_text())
    step = load_checkpoint(run / "checkpoints" / "last.pt")["step"]
    assert status["status"] == "interrupted" and status["step"] == step >= 1


def test_nan_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    nan_on_call(monkeypatch, bad_call=5)
    run = tmp_path / "run"
    assert main(["train", *FAST, "trainer.checkpoint_every=3", "trainer.val_every=100", f"hydra.run.dir={run}"]) == 2
    err = capsys.readouterr().err
    assert "non-finite loss at meta-iteration 5" in err and "trainer.nan_policy=skip" in err
    assert err.strip().count("\n") == 0
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["step"] == 3 and all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert json.loads((run / "status.json").read_text())["status"] == "failed"


def test_nan_skip_drops_the_meta_batch_and_counts_it(tmp_path, monkeypatch):
    nan_on_call(monkeypatch, bad_call=3)
    run = tmp_path / "run"
    training.train(compose_config("train", [*FAST, "trainer.nan_policy=skip"]), run)
    train = [r for r in records(run) if r["split"] == "train"]
    assert [r["skipped"] for r in train] == [0, 1, 0]
    assert all(r["loss"] == r["loss"] for r in train)  # the NaN never reaches the averages
    assert (run / "results.json").is_file()


def fused_optimizers_on_cpu(monkeypatch) -> None:
    """The CUDA path on CPU: fused optimizers that skip a flagged step on the device."""
    from metalearn_cli import optim

    monkeypatch.setattr(optim, "_fused", lambda parameters: True)


def test_a_fused_optimizer_skips_on_the_device_and_the_record_counts_it(tmp_path, monkeypatch):
    fused_optimizers_on_cpu(monkeypatch)
    nan_on_call(monkeypatch, bad_call=3)
    run = tmp_path / "run"
    training.train(compose_config("train", [*FAST, "trainer.nan_policy=skip", "trainer.val_every=100"]), run)
    train = [r for r in records(run) if r["split"] == "train"]
    assert [r["skipped"] for r in train] == [0, 1, 0] and all(r["loss"] == r["loss"] > 0 for r in train)
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_a_fused_optimizer_stops_at_the_next_record_with_one_line(tmp_path, monkeypatch, capsys):
    fused_optimizers_on_cpu(monkeypatch)
    nan_on_call(monkeypatch, bad_call=3)
    run = tmp_path / "run"
    assert main(["train", *FAST, "trainer.val_every=100", f"hydra.run.dir={run}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "non-finite loss or gradient in 1 of meta-iterations 3-4" in err and err.count("\n") == 0
    assert json.loads((run / "status.json").read_text())["status"] == "failed"


def test_same_seed_same_metrics_and_results(tmp_path):
    for name in ("a", "b"):
        training.train(compose_config("train", [*FAST, "trainer.deterministic=true"]), tmp_path / name)
    torch.use_deterministic_algorithms(False)
    assert records(tmp_path / "a") == records(tmp_path / "b")
    assert results(tmp_path / "a") == results(tmp_path / "b")
    training.train(compose_config("train", [*FAST, "seed=1"]), tmp_path / "c")
    assert records(tmp_path / "a") != records(tmp_path / "c")


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"config": {}, "model": {"w": torch.ones(1)}, "step": 1})
    import metalearn_cli.checkpoint as checkpoint

    def full_disk(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(WriteError, match=r"No space left on device\); the previous one is kept"):
        save_checkpoint(path, {"config": {}, "model": {"w": torch.zeros(1)}, "step": 2})
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_full_disk_mid_run_is_one_line(tmp_path, monkeypatch, capsys):
    import metalearn_cli.checkpoint as checkpoint

    real, calls = checkpoint.torch.save, {"n": 0}

    def fills_up(obj, f):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(28, "No space left on device")
        real(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", fills_up)
    run = tmp_path / "run"
    assert main(["train", *FAST, "trainer.val_every=100", "trainer.checkpoint_every=2", f"hydra.run.dir={run}"]) == 2
    err = capsys.readouterr().err
    # Writes: best.pt at step 0, last.pt at steps 2 and 4; the fourth (best.pt after the final
    # validation) hits the full disk; last.pt of step 4 survives.
    assert "could not write checkpoint" in err and "No space left on device" in err and err.strip().count("\n") == 0
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 4


def test_an_interrupted_write_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"config": {}, "model": {}, "step": 1})
    import metalearn_cli.checkpoint as checkpoint

    def interrupted(obj, f):
        f.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"config": {}, "model": {}, "step": 2})
    assert load_checkpoint(path)["step"] == 1 and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_second_ctrl_c_exits_at_once_without_corrupting_anything(tmp_path):
    run = tmp_path / "run"
    proc = cli(*LONG, "trainer.iterations=100000", "trainer.checkpoint_every=3", f"hydra.run.dir={run}", cwd=tmp_path)
    wait_for_checkpoint(run, proc)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] >= 3  # whatever was on disk is whole
    assert not list((run / "checkpoints").glob("*.tmp"))
    # The run says what it is, and how to go on: never "running" forever, the resume command printed.
    assert json.loads((run / "status.json").read_text())["status"] == "interrupted"
    assert f"metalearn train resume={run}" in err  # the orderly stop, or the at-once one: both say how to go on


# ----------------------------------------------------------------------------- resume as printed
def stop_at(monkeypatch, step: int) -> None:
    """Send SIGTERM to this process once meta-iteration ``step`` is done (in-process runs)."""
    real = loop.TrainingRun.iteration

    def iteration(self):
        real(self)
        if self.step == step:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(loop.TrainingRun, "iteration", iteration)


STARTED = ["debug=smoke", "dataset=synthetic", "trainer.iterations=40", "trainer.checkpoint_every=10", "encoder.width=8",
           "trainer.val_every=20", "eval.episodes=4", "device=cpu"]


def test_the_printed_resume_command_continues_the_run_bit_identically(tmp_path, monkeypatch, capsys):
    reference = tmp_path / "reference"
    assert main(["train", *STARTED, f"hydra.run.dir={reference}"]) == 0
    run = tmp_path / "run été 2"  # the printed command quotes it, so it pastes back whole
    stop_at(monkeypatch, 15)
    assert main(["train", *STARTED, f'hydra.run.dir="{run}"']) == 0  # SIGTERM: an orderly stop
    monkeypatch.undo()
    err = capsys.readouterr().err
    printed = shlex.split(err.split("continue with: ", 1)[1].splitlines()[0])
    assert printed[:2] == ["metalearn", "train"] and len(printed) == 3  # `metalearn train resume=RUN`, nothing else
    hydra_before = {p.name: p.read_bytes() for p in (run / ".hydra").glob("*.yaml")}
    assert main(printed[1:]) == 0, capsys.readouterr().err
    assert records(reference) == records(run)
    assert results(reference) == results(run)
    assert {p.name: p.read_bytes() for p in (run / ".hydra").glob("*.yaml")} == hydra_before  # the run's own record
    assert len(list((run / ".hydra").glob("resume-*"))) == 1


def test_a_failed_resume_leaves_the_run_as_it_was(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    stop_at(monkeypatch, 15)
    assert main(["train", *STARTED, f"hydra.run.dir={run}"]) == 0
    monkeypatch.undo()
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main(["train", "encoder.width=16", f"resume={run}"]) == 2
    assert "drop encoder.width" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert json.loads((run / "status.json").read_text())["status"] == "interrupted"


def test_a_completed_run_is_extended_only_with_more_iterations(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *STARTED, "trainer.iterations=10", f"hydra.run.dir={run}"]) == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main(["train", f"resume={run}"]) == 2
    assert "is completed" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert main(["train", "trainer.iterations=20", f"resume={run}"]) == 0
    assert json.loads((run / "results.json").read_text())["iterations"] == 20
    assert load_checkpoint(run / "checkpoints" / "last.pt")["config"]["trainer"]["iterations"] == 20


def second_ctrl_c_at(monkeypatch, step: int):
    """Meta-iteration ``step`` ends in the KeyboardInterrupt a second stop request raises; returns the real iteration."""
    real = loop.TrainingRun.iteration

    def iteration(self):
        real(self)
        if self.step == step:
            raise KeyboardInterrupt  # what the handler raises on a second request

    monkeypatch.setattr(loop.TrainingRun, "iteration", iteration)
    return real


def test_a_second_ctrl_c_inside_a_step_marks_the_run_and_prints_the_resume_command(tmp_path, monkeypatch, capsys):
    """The at-once stop (KeyboardInterrupt from the second request) is an interruption with a
    resume command, not a bare 'interrupted' and a status left at running."""
    second_ctrl_c_at(monkeypatch, 5)
    run = tmp_path / "run"
    assert main(["train", *STARTED, "trainer.checkpoint_every=2", f"hydra.run.dir={run}"]) == 130
    err = capsys.readouterr().err
    assert "SIGINT twice: stopped at once" in err and f"metalearn train resume={run}" in err and "(meta-iteration 4) is kept" in err
    status = json.loads((run / "status.json").read_text())
    assert (status["status"], status["step"]) == ("interrupted", 4)  # the step a resume continues from, not the 5 reached


def test_a_second_ctrl_c_before_the_first_last_pt_names_the_validated_start(tmp_path, monkeypatch, capsys):
    """Step 0 was validated, so best.pt exists: the message must not say that no checkpoint was written."""
    second_ctrl_c_at(monkeypatch, 1)
    run = tmp_path / "run"
    assert main(["train", *STARTED, "trainer.checkpoint_every=2", f"hydra.run.dir={run}"]) == 130
    err = capsys.readouterr().err
    best = run / "checkpoints" / "best.pt"
    assert best.is_file() and not (run / "checkpoints" / "last.pt").exists()
    assert f"no last.pt to resume from was written yet; {best} holds the weights validated at meta-iteration 0" in err
    assert "no checkpoint was written" not in err and "resume=" not in err  # best.pt holds the start: nothing to continue


def test_a_stop_at_once_before_the_first_last_pt_continues_from_the_validated_best_pt(tmp_path, monkeypatch, capsys):
    """Stopped at once after a validation but before any last.pt (a second Ctrl-C; under torchrun, a rank killed):
    the line gives the command that goes on from best.pt, and that command finishes the run (trial F)."""
    real = second_ctrl_c_at(monkeypatch, 7)
    run = tmp_path / "run"
    overrides = [*STARTED, "trainer.checkpoint_every=100", "trainer.val_every=5"]
    assert main(["train", *overrides, f"hydra.run.dir={run}"]) == 130
    err = capsys.readouterr().err
    best = run / "checkpoints" / "best.pt"
    assert f"continue from it with: metalearn train resume={best}" in err, err
    monkeypatch.setattr(loop.TrainingRun, "iteration", real)
    assert main(["train", f"resume={best}"]) == 0
    assert json.loads((run / "status.json").read_text())["status"] == "completed"

def test_the_throughput_window_restarts_with_its_timer():
    from metalearn_cli.metrics import MetricWindow

    window = MetricWindow()
    window.steps = 40  # steps taken before a kill, an hour ago
    resumed = MetricWindow.restore(window.state())
    resumed.started -= 1.0  # one second after the resume...
    resumed.steps += 10  # ...ten more steps
    assert resumed.flush(per_step=2)["tasks_per_s"] == pytest.approx(20, rel=0.05)
