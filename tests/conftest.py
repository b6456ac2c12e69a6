"""Shared fixtures: Hydra's compose API over the shipped configs, and tiny fast runs."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Callable

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from metalearn_cli.cli import register_configs


def _share_the_cores() -> None:
    """pytest-xdist (``-n auto`` in addopts) runs one worker per core: each takes its share of the
    threads, in-process and in the CLI subprocesses its tests start, so workers do not oversubscribe."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


_share_the_cores()

# Small, fast settings on generated data: seconds per run on 2 CPU cores.
FAST = [
    "dataset=synthetic",
    "dataset.train_classes=20",
    "dataset.val_classes=8",
    "dataset.test_classes=8",
    "dataset.images_per_class=8",
    "encoder=conv4",  # one width in every block (the default's encoder=conv4_fast widens the late ones)
    "encoder.width=16",
    "episode.query=3",
    "trainer.iterations=6",
    "trainer.meta_batch=2",
    "trainer.train_way=null",
    "trainer.train_query=null",
    "trainer.val_every=3",
    "trainer.val_episodes=6",
    "trainer.checkpoint_every=3",
    "trainer.log_every=2",
    "trainer.progress=false",
    "eval.episodes=10",
    "eval.batch_tasks=4",
    "device=cpu",
]


def compose_config(name: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose ``configs/<name>.yaml`` exactly as the CLI does, without running Hydra's app."""
    register_configs()
    with initialize_config_module(config_module="metalearn_cli.configs", version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides or []))


@pytest.fixture
def compose_train() -> Callable[..., DictConfig]:
    def make(*overrides: str, fast: bool = True) -> DictConfig:
        return compose_config("train", (FAST if fast else []) + list(overrides))

    return make


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    path = tmp_path / "run"
    path.mkdir()
    return path


def write_image_task(root: Path, classes: int = 3, support: tuple[int, ...] = (2,), query: int = 3,
                     labelled: bool = True, split: str = "test") -> list[str]:
    """An image task on disk from the synthetic data set's ``split`` classes (the FAST run's):
    ``root/support/<class>/`` with ``support[c % len(support)]`` images each (stored larger and in
    RGB, to exercise conversion) and ``root/query/`` (class sub-folders when ``labelled``)."""
    from PIL import Image

    from metalearn_cli.data import DATASETS

    data = DATASETS.build({"name": "synthetic", "train_classes": 20, "val_classes": 8, "test_classes": 8,
                           "images_per_class": 8})
    split_images = data.split(split)
    names = split_images.class_names[:classes]
    for c, name in enumerate(names):
        k = support[c % len(support)]
        for j in range(k + query):
            img = Image.fromarray(split_images.images[c, j, 0].numpy())
            if j < k:
                folder = root / "support" / name
                img = img.resize((56, 56), Image.Resampling.NEAREST).convert("RGB")
            else:
                folder = root / "query" / name if labelled else root / "query"
            folder.mkdir(parents=True, exist_ok=True)
            img.save(folder / (f"{j}.png" if labelled or j < k else f"{name}_{j}.png"))
    return names


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained ProtoNet run dir (FAST settings), shared by a test module."""
    from metalearn_cli.training import train

    run = tmp_path_factory.mktemp("trained") / "run"
    train(compose_config("train", FAST + ["trainer.iterations=10"]), run)
    return run


def nan_on_call(monkeypatch, bad_call: int) -> None:
    """Make the meta-loss NaN on one call of cross-entropy in the MGD strategy."""
    from metalearn_cli.strategies import mgd

    real = mgd.F.cross_entropy
    calls = {"n": 0}

    def cross_entropy(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == bad_call else loss

    monkeypatch.setattr(mgd.F, "cross_entropy", cross_entropy)


def stop_after(run, step: int, signal: str = "SIGINT") -> dict:
    """The stop requests a :class:`~metalearn_cli.loop.TrainingRun` obeys, with ``signal`` arriving
    just after its ``step``-th step, as a Ctrl-C or SIGTERM then would."""
    stop: dict = {"signal": None}
    original = run.iteration

    def step_then_stop():
        original()
        if run.step == step:
            stop["signal"] = signal

    run.iteration = step_then_stop
    return stop


def write_tree(files: dict[str, bytes], where: Path, as_zip: bool) -> Path:
    """``files`` (name -> bytes) as the zip ``where`` or under the folder ``where``, as archives ship and extract."""
    if as_zip:
        where.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(where, "w") as zf:
            for name, data in sorted(files.items()):
                zf.writestr(name, data)
        return where
    for name, data in files.items():
        (where / name).parent.mkdir(parents=True, exist_ok=True)
        (where / name).write_bytes(data)
    return where
