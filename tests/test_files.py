"""The ground floor of file writing: a file is whole or untouched, and no temp file is left."""

from __future__ import annotations

import pytest

from metalearn_cli.errors import WriteError
from metalearn_cli.files import atomic_write, remove_stale_temporaries, write_json


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "results.json"
    write_json(path, {"accuracy": 0.5})
    before = path.read_bytes()

    def half_then_fail(f):
        f.write(b'{"accur')
        raise OSError(28, "No space left on device")

    with pytest.raises(WriteError, match="the previous one is kept; free disk space"):
        atomic_write(path, half_then_fail, "results", "free disk space")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_a_folder_that_refuses_writes_is_said_to_be_unwritable_not_full(tmp_path, monkeypatch):
    import os

    def refused(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "replace", refused)
    with pytest.raises(WriteError, match=f"{tmp_path} is not writable: make it writable, or choose another hydra.run.dir$"):
        write_json(tmp_path / "status.json", {"status": "running"})
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_of_a_killed_writer_are_removed_and_nothing_else(tmp_path):
    (tmp_path / ".last.pt.abc.tmp").write_bytes(b"partial")
    (tmp_path / "last.pt").write_bytes(b"whole")
    remove_stale_temporaries(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
