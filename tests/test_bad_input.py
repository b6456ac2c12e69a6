"""The bad-input matrix: every mistake is one line on stderr, exit code 2, no traceback, nothing deleted."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import FAST
from metalearn_cli.checkpoint import save_checkpoint
from metalearn_cli.cli import main

SMOKE = [*FAST, "trainer.iterations=2", "trainer.val_every=2", "trainer.checkpoint_every=2", "eval.episodes=2"]


def one_line_error(capsys, args: list[str]) -> str:
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.strip().count("\n") == 0 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "override,needle",
    [
        ("encoder=resnet99", "Could not find 'encoder/resnet99'"),
        ("experiment=no_such_table", "Could not find 'experiment/no_such_table'"),
        ("hydra/sweeper=grid_search_9000", 'pip install -e ".[sweep]"'),
        ("encoder.depth=3", "Key 'depth' not in 'Conv4Params'"),
        ("trainer.epochs=3", "Key 'epochs' not in 'TrainerConfig'"),
        ("encoder.width=abc", "could not be converted to Integer"),
        ("episode.way=0", "way >= 2"),
        ("episode.way=-3", "way >= 2"),
        ("episode.shot=0", "shot >= 1"),
        ("episode.query=0", "query >= 1"),
        ("trainer.iterations=0", "trains nothing"),
        ("trainer.meta_batch=-1", "must be >= 1"),
        ("optimizer.lr=0", "lr > 0"),
        ("optimizer.lr=-0.1", "lr > 0"),
        ("optimizer.clip.norm=0", "must be a finite number > 0"),
        ("optimizer.clip.norm=nan", "optimizer.clip.norm=nan is not a finite number"),
        ("episode.way=30", "30-way episodes need 30 classes"),
        ("episode.query=10", "need 11 images per class"),
        ("device=quantum", "device=quantum"),
        ("eval.episodes=0", "must be >= 1"),
    ],
)
def test_bad_train_values(tmp_path, capsys, override, needle):
    assert needle in one_line_error(capsys, ["train", *SMOKE, override, f"hydra.run.dir={tmp_path / 'run'}"])
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_and_incomplete_dataset_roots(tmp_path, capsys):
    err = one_line_error(capsys, ["train", "dataset=omniglot", f"dataset.root={tmp_path / 'nowhere'}",
                                  f"hydra.run.dir={tmp_path / 'r1'}"])
    assert "Omniglot not found" in err and "dataset.download=true" in err
    from data.test_omniglot import make_omniglot

    root = make_omniglot(tmp_path / "omni", skip="images_background/Alpha/character02/0002_03.png")
    err = one_line_error(capsys, ["train", "dataset=omniglot", f"dataset.root={root}", f"hydra.run.dir={tmp_path / 'r2'}"])
    assert "Alpha/character02 has 3 images but others have 4" in err
    assert (root / "images_background.zip").is_file()  # nothing deleted


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", *SMOKE, f"hydra.run.dir={run}"]) == 0
    return run


def test_bad_checkpoints(tmp_path, capsys, trained):
    good = trained / "checkpoints" / "best.pt"
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    future = tmp_path / "future.pt"
    state = torch.load(good, weights_only=True)
    torch.save({**state, "version": 99}, future)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": "metalearn-checkpoint", "payload": Evil()}, evil)
    for path, needle in [(truncated, "not a readable metalearn checkpoint"), (future, "newer than this metalearn"),
                         (evil, "not a readable metalearn checkpoint"), (tmp_path / "none.pt", "does not exist")]:
        assert needle in one_line_error(capsys, ["eval", f"checkpoint={path}", f"hydra.run.dir={tmp_path / 'e'}"])
    assert not marker.exists()  # the pickle was refused, never executed
    assert good.is_file()


def test_eval_accepts_a_run_dir(tmp_path, trained):
    assert main(["eval", f"checkpoint={trained}", "eval.episodes=2", f"hydra.run.dir={tmp_path / 'e'}"]) == 0
    assert json.loads((tmp_path / "e" / "results.json").read_text())["episodes"] == 2


def test_resume_problems(tmp_path, capsys, trained):
    err = one_line_error(capsys, ["train", *SMOKE, "resume=true", f"hydra.run.dir={tmp_path / 'fresh'}"])
    assert "resume=true but" in err and "does not exist" in err
    err = one_line_error(capsys, ["train", *SMOKE, "encoder.width=8", "trainer.iterations=4", f"resume={trained}"])
    assert "a resume continues the run with its own settings" in err and "encoder.width" in err
    err = one_line_error(capsys, ["train", *SMOKE, f"hydra.run.dir={trained}"])
    assert "pass resume=true to continue it" in err


def test_an_output_dir_that_cannot_be_written(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    err = one_line_error(capsys, ["train", *SMOKE, f"hydra.run.dir={blocker / 'run'}"])
    assert "cannot create the run dir" in err and "hydra.run.dir" in err
    assert blocker.read_text() == "a file where a folder should be"


def test_configs_inside_checkpoints_are_data_not_code(tmp_path, capsys, trained):
    state = torch.load(trained / "checkpoints" / "best.pt", weights_only=True)
    for field, value, needle in [("encoder", {"name": "os.system", "width": 8}, "unknown encoder 'os.system'"),
                                 ("encoder", {"_target_": "os.system", "name": "conv4"}, "_target_"),
                                 ("dataset", {"name": "builtins.eval"}, "unknown dataset 'builtins.eval'")]:
        bad = tmp_path / f"{field}.pt"
        save_checkpoint(bad, {**{k: v for k, v in state.items() if k not in ("format", "version")},
                              "config": {**state["config"], field: value}})
        assert needle in one_line_error(capsys, ["eval", f"checkpoint={bad}", f"hydra.run.dir={tmp_path / 'e'}"])
