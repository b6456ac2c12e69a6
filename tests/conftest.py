"""Shared fixtures: Hydra's compose API over the shipped configs, and tiny fast runs."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from metalearn_cli.schema import register_configs

# Small, fast settings on generated data: seconds per run on 2 CPU cores.
FAST = [
    "dataset=synthetic",
    "dataset.train_classes=20",
    "dataset.val_classes=8",
    "dataset.test_classes=8",
    "dataset.images_per_class=8",
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
