"""Two gloo processes on CPU train exactly like one process on the same meta-batch."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from conftest import FAST, compose_config
from metalearn_cli import evaluation, loop
from metalearn_cli.checkpoint import load_checkpoint
from metalearn_cli.distributed import World
from metalearn_cli.episodes import ClassImages, EpisodeSampler

OVERRIDES = [*FAST, "strategy=fomaml", "decoder=linear", "encoder.width=8", "trainer.meta_batch=4",
             "trainer.iterations=3", "trainer.val_every=3", "trainer.checkpoint_every=3"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_main(rank: int, world: int, port: int, run_dir: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    try:
        loop.train(compose_config("train", OVERRIDES), Path(run_dir))
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_ranks_equal_one_process(tmp_path):
    torch.set_num_threads(1)
    loop.train(compose_config("train", OVERRIDES), tmp_path / "single")
    mp.spawn(rank_main, args=(2, free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)
    one = load_checkpoint(tmp_path / "single" / "checkpoints" / "last.pt")["model"]
    two = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")["model"]
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, rtol=1e-5, atol=1e-6, msg=key)
    lines = lambda run: (tmp_path / run / "metrics.jsonl").read_text().splitlines()  # noqa: E731
    assert len(lines("ddp")) == len(lines("single"))  # only rank 0 wrote the run dir


def test_ranks_draw_disjoint_shares_of_the_same_meta_batch():
    images = torch.arange(12 * 4, dtype=torch.uint8).reshape(12, 4, 1, 1, 1)
    split = ClassImages(images, [str(i) for i in range(12)])
    whole = EpisodeSampler(split, 3, 1, 1, seed=5).sample(4)
    parts = [EpisodeSampler(split, 3, 1, 1, seed=5).sample(4, part=(r, 2)) for r in range(2)]
    assert torch.equal(torch.cat([p.support_images for p in parts]), whole.support_images)
    assert torch.equal(torch.cat([p.query_images for p in parts]), whole.query_images)


def test_a_meta_batch_that_does_not_split_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "world", lambda: World(rank=0, size=3))
    with pytest.raises(loop.ConfigError, match="does not split over 3 processes"):
        loop.train(compose_config("train", [*FAST, "trainer.meta_batch=4"]), tmp_path)
