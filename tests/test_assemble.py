"""Host settings a run takes from its config (metalearn_cli.assemble)."""

import logging
import os

import pytest
import torch
from omegaconf import OmegaConf

from metalearn_cli.assemble import setup_device


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_more_threads_than_cores_warns_and_no_more_stays_quiet(monkeypatch, caplog, keep_threads):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    with caplog.at_level(logging.WARNING, logger="metalearn_cli.assemble"):
        assert setup_device(OmegaConf.create({"threads": 2, "device": "cpu"})) == torch.device("cpu")
        assert not caplog.records and torch.get_num_threads() == 2
        setup_device(OmegaConf.create({"threads": 3, "device": "cpu"}))
    assert "threads=3 is more than the 2 CPU cores" in caplog.text and torch.get_num_threads() == 3
