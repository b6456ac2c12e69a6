"""Two gloo processes on CPU train exactly like one process on the same meta-batch: in-process ranks,
and the command a user runs (``torchrun --nproc-per-node=2 -m metalearn_cli train ...``)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from conftest import FAST, compose_config
from metalearn_cli import training
from metalearn_cli.checkpoint import load_checkpoint
from metalearn_cli.distributed import World
from metalearn_cli.episodes import ClassImages, EpisodeSampler

OVERRIDES = [*FAST, "strategy=fomaml", "decoder=linear", "encoder.width=8", "trainer.meta_batch=4",
             "trainer.iterations=3", "trainer.val_every=3", "trainer.checkpoint_every=3"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def zero_by_construction(state: dict[str, torch.Tensor]) -> set[str]:
    """Biases that feed a batch norm directly (``<seq>.<i>.bias`` before ``<seq>.<i+1>.running_mean``):
    the norm subtracts them again, so their true gradient is zero and what an optimizer does with
    rounding noise (Adam scales it to a full step) says nothing about distributed training."""
    zero = set()
    for key in state:
        match = re.fullmatch(r"(.*\.)(\d+)\.bias", key)
        if match and f"{match.group(1)}{int(match.group(2)) + 1}.running_mean" in state:
            zero.add(key)
    return zero


def assert_same_training(one: Path, two: Path) -> None:
    """Every defined parameter and every training-loss record agree between the two runs."""
    a = load_checkpoint(one / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(two / "checkpoints" / "last.pt")["model"]
    skipped = zero_by_construction(a)
    assert skipped, "the Conv-4 biases before its batch norms were not recognised"
    for key, value in a.items():
        if key not in skipped:
            torch.testing.assert_close(b[key], value, rtol=1e-4, atol=1e-5, msg=key)
    records = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (one, two)]
    assert len(records[0]) == len(records[1])  # rank 0 alone wrote the metrics
    for r1, r2 in zip(*records):
        if r1["split"] == "train":
            assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-4), r1


def test_zero_by_construction_names_the_conv_biases_only():
    state = {"model.encoder.net.0.weight": 0, "model.encoder.net.0.bias": 0, "model.encoder.net.1.running_mean": 0,
             "model.decoder.head.bias": 0, "model.encoder.net.4.bias": 0}
    assert zero_by_construction(state) == {"model.encoder.net.0.bias"}


def rank_main(rank: int, world: int, port: int, run_dir: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    training.train(compose_config("train", OVERRIDES), Path(run_dir))
    assert not torch.distributed.is_initialized()  # train leaves the group itself, after rank 0's test


WINDOWED = [*OVERRIDES, "trainer.iterations=8", "trainer.log_every=4", "trainer.val_every=100", "trainer.checkpoint_every=100"]


def stopping_rank_main(rank: int, world: int, port: int, run_dir: str, stop_at: int, overrides: list[str]) -> None:
    """A rank of a two-process run that every rank agrees to stop after step ``stop_at`` (as after a Ctrl-C), or
    one that trains (``stop_at`` 0) with ``overrides``."""
    from metalearn_cli import loop
    from metalearn_cli.errors import Interrupted

    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    calls = iter(range(1, 10**6))
    agreed = loop.agreed_stop
    loop.agreed_stop = lambda signal_name: "SIGINT" if next(calls) == stop_at else agreed(signal_name)
    try:
        training.train(compose_config("train", overrides), Path(run_dir))
    except Interrupted:
        assert stop_at


def test_a_torchrun_resume_logs_what_the_run_would_have_logged(tmp_path):
    """Stopped between two records, a two-process run saves each rank's share of the partial metric window (rank 0
    writes the checkpoint for both): the first record after the resume is the uninterrupted run's, bit for bit."""
    mp.spawn(stopping_rank_main, args=(2, free_port(), str(tmp_path / "whole"), 0, WINDOWED), nprocs=2, join=True)
    mp.spawn(stopping_rank_main, args=(2, free_port(), str(tmp_path / "cut"), 5, WINDOWED), nprocs=2, join=True)
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["step"] == 5
    mp.spawn(stopping_rank_main, args=(2, free_port(), str(tmp_path / "cut"), 0, [*WINDOWED, f"resume={tmp_path / 'cut'}"]),
             nprocs=2, join=True)
    records = [[json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
               for run in ("whole", "cut")]
    train = [[{k: v for k, v in r.items() if k != "tasks_per_s"} for r in run if r["split"] == "train"] for run in records]
    assert [r["step"] for r in train[1]] == [4, 8] and train[1] == train[0]


def test_two_gloo_ranks_equal_one_process(tmp_path):
    torch.set_num_threads(1)
    training.train(compose_config("train", OVERRIDES), tmp_path / "single")
    mp.spawn(rank_main, args=(2, free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)
    assert_same_training(tmp_path / "single", tmp_path / "ddp")


def files_of(run: Path) -> list[str]:
    """The run dir's files, with the event file's host- and time-stamped name reduced to its folder."""
    return sorted(str(p.relative_to(run).parent) if p.parent.name == "tensorboard" else str(p.relative_to(run))
                  for p in run.rglob("*") if p.is_file())


def test_torchrun_as_users_run_it(tmp_path):
    """The real command in a subprocess: it starts, rank 0 alone takes the lock and writes one set of
    files, the others leave nothing anywhere, and training equals one process's."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path), "PYTHONFAULTHANDLER": "1"}  # a rank's abort shows where
    args = ["-m", "metalearn_cli", "train", *OVERRIDES, "threads=1"]
    one = subprocess.run([sys.executable, *args, f"hydra.run.dir={tmp_path / 'single'}"], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([*launcher(), "--standalone", "--nproc-per-node=2", *args, f"hydra.run.dir={tmp_path / 'ddp'}"],
                         cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-12000:]  # torchrun's report alone fills 2,000
    assert files_of(tmp_path / "ddp") == files_of(tmp_path / "single")
    assert list(cwd.iterdir()) == []  # no stray run dir from another rank
    assert not list(tmp_path.glob("metalearn-rank-*"))  # the other rank's scratch dir is gone
    assert_same_training(tmp_path / "single", tmp_path / "ddp")
    results = [json.loads((tmp_path / run / "results.json").read_text()) for run in ("single", "ddp")]
    assert results[1]["accuracy"] == pytest.approx(results[0]["accuracy"], abs=0.02)
    assert [r["processes"] for r in results] == [1, 2] and [r["cpu_threads"] for r in results] == [1, 1]


def launcher() -> list[str]:
    torchrun = Path(sys.executable).with_name("torchrun")
    return [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]


def test_torchrun_prints_a_refused_config_once(tmp_path):
    """Every rank refuses the same config; the user reads the line once, not once per process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    done = subprocess.run([*launcher(), "--standalone", "--nproc-per-node=2", "-m", "metalearn_cli", "train", *OVERRIDES,
                           "trainer.meta_batch=3", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert (done.stdout + done.stderr).count("trainer.meta_batch=3 does not split over 2 processes") == 1, done.stderr[-3000:]


def test_ranks_draw_disjoint_shares_of_the_same_meta_batch():
    images = torch.arange(12 * 4, dtype=torch.uint8).reshape(12, 4, 1, 1, 1)
    split = ClassImages(images, [str(i) for i in range(12)])
    whole = EpisodeSampler(split, 3, 1, 1, seed=5).sample(4)
    parts = [EpisodeSampler(split, 3, 1, 1, seed=5).sample(4, part=(r, 2)) for r in range(2)]
    assert torch.equal(torch.cat([p.support_images for p in parts]), whole.support_images)
    assert torch.equal(torch.cat([p.query_images for p in parts]), whole.query_images)


def test_a_meta_batch_that_does_not_split_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "world", lambda: World(rank=0, size=3))
    with pytest.raises(training.ConfigError, match="does not split over 3 processes; use a multiple of 3"):
        training.train(compose_config("train", [*FAST, "trainer.meta_batch=4"]), tmp_path)
    monkeypatch.setattr(training, "world", lambda: World(rank=0, size=1))  # a run of meta-batch 4, then resumed on 3
    training.train(compose_config("train", [*FAST, "trainer.meta_batch=4"]), tmp_path / "run")
    monkeypatch.setattr(training, "world", lambda: World(rank=0, size=3))
    with pytest.raises(training.ConfigError, match=r"resume with a process count that divides it \(torchrun --nproc-per-node=2 or 4, or one process: metalearn train without torchrun\)"):
        training.train(compose_config("train", [*FAST, "trainer.meta_batch=4", f"resume={tmp_path / 'run'}"]), tmp_path / "run")


def long_torchrun(tmp_path: Path) -> tuple[subprocess.Popen, Path, float]:
    """A two-process run long enough to be stopped, once it has saved ``last.pt``; returns its deadline too."""
    import time

    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([*launcher(), "--standalone", "--nproc-per-node=2", "-m", "metalearn_cli", "train", *OVERRIDES,
                             "trainer.iterations=100000", "trainer.checkpoint_every=50", "trainer.val_every=100000",
                             f"hydra.run.dir={run}"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "last.pt").is_file() and time.monotonic() < deadline:
        time.sleep(0.5)
    return proc, run, deadline


def ranks_output(proc: subprocess.Popen) -> str:
    """What torchrun and its ranks wrote to stderr, once all have exited (or after 120 s, then said)."""
    try:
        return proc.communicate(timeout=120)[1]
    except subprocess.TimeoutExpired:
        return "(ranks still running after 120 s)"


def wait_until_stopped(run: Path, deadline: float) -> None:
    import time

    from metalearn_cli.rundir import is_locked

    while time.monotonic() < deadline and (is_locked(run) or json.loads((run / "status.json").read_text())["status"] == "running"):
        time.sleep(0.5)


def test_ranks_stop_and_save_when_torchrun_is_killed(tmp_path):
    """SIGKILL to torchrun cannot reach its workers; each asks Linux for SIGTERM when its launcher dies, so
    they save and stop (the run is resumable, its lock free) instead of training on as orphans."""
    from metalearn_cli.rundir import is_locked

    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    proc, run, deadline = long_torchrun(tmp_path)
    proc.kill()
    err = ranks_output(proc)  # the ranks hold the pipe: it ends when both have exited
    wait_until_stopped(run, deadline)
    assert json.loads((run / "status.json").read_text())["status"] == "interrupted", err[-3000:]
    assert not is_locked(run), err[-3000:]  # no orphan holds the run


def rank_pid(launcher_pid: int, rank: int) -> int:
    """The pid of the worker of ``rank`` under a torchrun (read from /proc: its children's RANK)."""
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == launcher_pid and \
                    f"RANK={rank}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                return int(entry.name)
        except (OSError, ValueError, IndexError):
            continue
    raise AssertionError(f"no rank {rank} under {launcher_pid}")


def signal_rank_1(tmp_path: Path, signum: int) -> tuple[Path, dict, str]:
    """Send ``signum`` to rank 1 of a running two-process run; its run dir, final status and stderr."""
    if not sys.platform.startswith("linux"):
        pytest.skip("reads the ranks from /proc")
    proc, run, deadline = long_torchrun(tmp_path)
    os.kill(rank_pid(proc.pid, 1), signum)
    err = ranks_output(proc)
    wait_until_stopped(run, deadline)
    return run, json.loads((run / "status.json").read_text()), err


def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    """Signals reach ranks apart (here only rank 1 gets one): the ranks vote before each save, so the run
    saves once and ends interrupted, with the torchrun command that continues it, not "failed" in a
    collective the stopped rank left."""
    import signal

    run, status, err = signal_rank_1(tmp_path, signal.SIGTERM)
    assert status["status"] == "interrupted", err[-3000:]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == status["step"]
    assert "SIGTERM at meta-iteration" in err and "torchrun --nproc-per-node=2" in err, err[-3000:]


def test_a_rank_killed_outright_leaves_a_resumable_run_and_one_line(tmp_path):
    """kill -9 (or the OOM killer) to one rank: the other meets a closed connection in its next all-reduce;
    it stops as after a signal, keeping last.pt and naming the command that continues, not an internal error."""
    import signal

    run, status, err = signal_rank_1(tmp_path, signal.SIGKILL)
    assert status["status"] == "interrupted", err[-3000:]
    assert not (run / "error.txt").exists()
    assert "metalearn train: stopped: another process of this run stopped during meta-iteration" in err, err[-3000:]
    assert "internal error" not in err and f"train resume={run}" in err


def test_torchrun_signalled_twice_saves_as_after_one_ctrl_c(tmp_path):
    """A Ctrl-C that reaches torchrun twice (through a wrapper in its group, such as ``timeout``): torchrun passes it
    on as SIGINT and, 1 ms later, SIGTERM. The ranks take that as one request: they save at the step they stop at,
    rather than stopping at once with only an older checkpoint (or none, in a run's first 500 steps)."""
    import signal
    import time

    if not sys.platform.startswith("linux"):
        pytest.skip("reads the ranks from /proc")
    proc, run, deadline = long_torchrun(tmp_path)
    rank_pid(proc.pid, 1)  # both workers are up
    os.kill(proc.pid, signal.SIGINT)
    time.sleep(0.001)
    os.kill(proc.pid, signal.SIGINT)
    err = ranks_output(proc)
    wait_until_stopped(run, deadline)
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "interrupted" and "stopped at once" not in err, err[-3000:]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == status["step"], err[-3000:]
    assert "SIGINT at meta-iteration" in err and f"train resume={run}" in err, err[-3000:]
