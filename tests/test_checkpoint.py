import argparse
import pickle
import random
import struct

import numpy as np
import pytest
import torch

from metalearn_cli.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from metalearn_cli.errors import CheckpointError


def test_round_trip_with_weights_only_and_no_temp_files(tmp_path):
    path = tmp_path / "ckpt" / "last.pt"
    save_checkpoint(path, {"config": {"a": 1}, "model": {"w": torch.ones(2)}, "step": 3, "rng": capture_rng()})
    state = load_checkpoint(path)
    assert state["step"] == 3 and state["format"] == "metalearn-checkpoint" and state["version"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_rng_states_restore_exactly():
    state = capture_rng()
    draws = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2] == again[2]


def test_corrupt_truncated_foreign_and_future_files_are_refused(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"config": {}, "model": {}, "step": 1})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01 definitely not a checkpoint")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    future = tmp_path / "future.pt"
    torch.save({"format": "metalearn-checkpoint", "version": 99, "config": {}, "model": {}, "step": 0}, future)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"format": "metalearn-checkpoint", "obj": argparse.Namespace(a=1)}, unsafe)
    for path, match in [(truncated, "not a readable"), (garbage, "not a readable"), (foreign, "not a metalearn checkpoint"),
                        (future, "newer than this metalearn"), (unsafe, "pickled objects other than tensors, which are never"),
                        (tmp_path / "nope.pt", "does not exist"), (tmp_path, "holds no checkpoints")]:
        with pytest.raises(CheckpointError, match=match):
            load_checkpoint(path)


ONE, TWO = struct.pack("<f", 1.0), struct.pack("<f", 2.0)


@pytest.mark.parametrize("content, reason", [
    (lambda good: b"", "the file is empty"),
    (lambda good: good[: len(good) // 2], "it is truncated"),
    (lambda good: b"hello world\n" * 40, "not a PyTorch file"),
    (lambda good: bytes(range(256)) * 4, "not a PyTorch file"),
    (lambda good: good.replace(b"data.pkl", b"data.pkX"), "it is damaged inside"),
    (lambda good: good.replace(ONE * 2, TWO + ONE, 1), "fails its CRC-32 check"),  # a weight changed: 1.0 -> 2.0
    (lambda good: good[: len(good) - 30], "it is truncated"),  # no end of the zip's directory: was torch's OSError
    (lambda good: pickle.dumps({"model": {"w": [1.0]}, "step": 1}), "a plain Python pickle, not a torch.save file"),
    (lambda good: pickle.dumps({"model": {"w": [1.0]}}, protocol=2), "a plain Python pickle, not a torch.save file"),
])
def test_a_refused_file_says_what_is_wrong_in_words_not_torch_internals(tmp_path, content, reason):
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"config": {}, "model": {"w": torch.ones(64)}, "step": 1})
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content(good.read_bytes()))
    with pytest.raises(CheckpointError, match=reason) as err:
        load_checkpoint(bad)
    message = str(err.value)
    assert "\n" not in message and "KeyError" not in message and "central directory" not in message


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_torch_file_in_the_legacy_format_is_not_called_a_plain_pickle(tmp_path, protocol):
    """torch.save before 1.6 (or with _use_new_zipfile_serialization=False) pickles a magic number first;
    protocol 4 puts a frame header before it."""
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": argparse.Namespace(a=1)}, legacy, _use_new_zipfile_serialization=False, pickle_protocol=protocol)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(legacy)
    assert "plain Python pickle" not in str(err.value)


@pytest.mark.parametrize("name, hint", [("best.pt", "use the run's checkpoints/last.pt"),
                                        ("last.pt", "use the run's checkpoints/best.pt"), ("mine.pt", "use another")])
def test_a_damaged_checkpoint_points_to_the_other_one_not_to_itself(tmp_path, name, hint):
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"config": {}, "model": {"w": torch.ones(64)}, "step": 1})
    bad = tmp_path / name
    bad.write_bytes(good.read_bytes().replace(ONE * 2, TWO + ONE, 1))
    with pytest.raises(CheckpointError, match=hint):
        load_checkpoint(bad)
