"""Nothing lost, for real: a table of bad inputs against a finished run (each one line, exit code 2,
no traceback, the run dir byte-identical before and after), the run-dir lock, no non-finite
checkpoint, signals in every phase, internal errors kept off the console."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml
import torch
from PIL import Image

from conftest import FAST, write_image_task
from metalearn_cli.checkpoint import save_checkpoint
from metalearn_cli.cli import main

SMOKE = [*FAST, "trainer.iterations=2", "trainer.val_every=2", "trainer.checkpoint_every=2", "eval.episodes=2"]


def tree_hash(root: Path) -> str:
    """Every file under ``root``: path and bytes."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def change_a_weight_byte(good: Path, bad: Path) -> None:
    """A copy of ``good`` with one byte of a tensor's data changed: still a whole zip archive that torch.load reads."""
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as archive:
        entry = next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size >= 64)
    name_length, extra_length = struct.unpack("<HH", data[entry.header_offset + 26 : entry.header_offset + 30])
    data[entry.header_offset + 30 + name_length + extra_length + 8] ^= 0x40
    bad.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished training run, made through the CLI as a user would."""
    root = tmp_path_factory.mktemp("nothing_lost")
    path = root / "run"
    assert main(["train", *SMOKE, f"hydra.run.dir={path}"]) == 0
    write_image_task(root / "task")
    state = torch.load(path / "checkpoints" / "best.pt", weights_only=True)
    for name, change in [("version_abc", {"version": "abc"}), ("step_abc", {"step": "abc"}),
                         ("nan", {"model": {k: v * float("nan") if v.is_floating_point() else v
                                            for k, v in state["model"].items()}})]:
        torch.save({**state, **change}, root / f"{name}.pt")
    good = path / "checkpoints" / "best.pt"
    (root / "truncated.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    change_a_weight_byte(good, root / "changed.pt")
    torch.save({**state, "version": 99}, root / "future.pt")

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {root / 'pwned'}",))

    torch.save({"format": "metalearn-checkpoint", "payload": Evil()}, root / "evil.pt")
    for field, value in [("encoder", {"name": "os.system", "width": 8}), ("encoder", {"_target_": "os.system", "name": "conv4"}),
                         ("dataset", {"name": "builtins.eval"})]:
        save_checkpoint(root / f"{field}_{len(value)}_{value['name']}.pt",
                        {**{k: v for k, v in state.items() if k not in ("format", "version")},
                         "config": {**state["config"], field: value}})
    (root / "notes.txt").write_text("a user's file, not an export")
    (root / "looping" / "a").mkdir(parents=True)
    (root / "looping" / "loop").symlink_to(root / "looping" / "loop")  # a link that points at itself
    rooted = {**state["config"], "dataset": {**state["config"]["dataset"]}}
    save_checkpoint(root / "rooted.pt", {**{k: v for k, v in state.items() if k not in ("format", "version")},
                                         "config": {**rooted, "dataset": {"name": "omniglot", "split": "vinyals",
                                                                          "root": str(root / "elsewhere"), "download": True}}})
    return path


R = "{run}"  # the finished run dir
T = "{tmp}"  # a fresh folder of this case
CASES = [
    # a training config that is wrong: refused before anything is written
    (["train", *SMOKE, "encoder=resnet99"], "Could not find 'encoder/resnet99'"),
    (["train", *SMOKE, "experiment=no_such_table"], "Could not find 'experiment/no_such_table'"),
    (["train", *SMOKE, "encoder.depth=3"], "Key 'depth' not in 'Conv4Params'"),
    (["train", *SMOKE, "trainer.epochs=3"], "Key 'epochs' not in 'TrainerConfig'"),
    (["train", *SMOKE, "encoder.width=abc"], "could not be converted to Integer"),
    (["train", *SMOKE, "episode.way=0"], "a task needs 2 classes or more"),
    (["train", *SMOKE, "trainer.train_way=1"], "train episodes of 1 way cannot be scored"),
    (["train", *SMOKE, "trainer.train_query=0"], "trainer.train_query=0 counts queries per class of a training task: give >= 1, or null for episode.query"),
    (["train", *SMOKE, "trainer.iterations=1e3"], "write it as an integer: trainer.iterations=1000"),
    (["train", *SMOKE, "episode.shot=0"], "shot >= 1"),
    (["train", *SMOKE, "episode.query=0"], "query >= 1"),
    (["train", *SMOKE, "episode.way=30"], "30-way episodes need 30 classes"),
    (["train", *SMOKE, "episode.query=10"], "need 11 images per class"),
    (["train", *SMOKE, "trainer.iterations=0"], "trains nothing"),
    (["train", *SMOKE, "trainer.meta_batch=-1"], "trainer.meta_batch=-1 counts tasks per meta-update: give >= 1"),
    (["train", *SMOKE, "trainer.val_every=0"], "trainer.val_every=0 counts steps between validations: give >= 1"),
    (["train", *SMOKE, "trainer.iterations=-5", "trainer.log_every=-1"], "trainer.log_every=-1 counts steps between log lines: give >= 1; trainer.iterations=-5"),
    (["train", *SMOKE, "pretrain=supervised", "pretrain.iterations=-3"], "pretrain.iterations=-3 counts steps (0: none): give >= 0"),
    (["train", *SMOKE, "eval.episodes=0"], "must be >= 1"),
    (["train", *SMOKE, "eval.batch_tasks=0"], "must be >= 1"),
    (["train", *SMOKE, "threads=0"], "threads must be >= 1"),
    (["train", *SMOKE, "device=quantum"], "device=quantum"),
    (["train", *SMOKE, "device=cuda:7"], "device=cuda:7"),
    (["train", *SMOKE, "device=cpu:1"], "device=cpu:1: the CPU is one device; use device=cpu"),
    (["train", *SMOKE, "optimizer.lr=0"], "lr > 0"),
    (["train", *SMOKE, "optimizer.lr=-0.1"], "lr > 0"),
    (["train", *SMOKE, "optimizer.lr=nan"], "optimizer.lr=nan is not a finite number"),
    (["train", *SMOKE, "optimizer.lr=inf"], "optimizer.lr=inf is not a finite number"),
    (["train", *SMOKE, "optimizer.lr=1e38"], "optimizer.lr=1e+38 overflows single precision"),
    (["train", *SMOKE, "trainer.ema=1"], "is the weight average's decay per step: give 0 < ema < 1"),
    (["train", *SMOKE, "optimizer.betas=[1.5,0.9]"], "betas in [0, 1)"),
    (["train", *SMOKE, "optimizer.weight_decay=-1"], "weight_decay >= 0"),
    (["train", *SMOKE, "optimizer=sgd", "optimizer.momentum=-0.5"], "momentum >= 0"),
    (["train", *SMOKE, "optimizer.clip.norm=0"], "must be a finite number > 0"),
    (["train", *SMOKE, "optimizer.clip.value=-1"], "must be a finite number > 0"),
    (["train", *SMOKE, "optimizer.clip.norm=nan"], "optimizer.clip.norm=nan is not a finite number"),
    (["train", *SMOKE, "optimizer.schedule.min_lr_ratio=2"], "0 <= min_lr_ratio <= 1"),
    (["train", *SMOKE, "optimizer.schedule.gamma=0"], "gamma > 0"),
    (["train", *SMOKE, "optimizer.schedule.kind=linear"], "linear"),
    (["train", *SMOKE, "strategy=maml", "strategy.inner_lr=0"], "inner_lr must be > 0"),
    (["train", *SMOKE, "strategy=maml", "strategy.inner_steps=-1"], "must be >= 0"),
    (["train", *SMOKE, "strategy=anil", "decoder=prototype"], "nothing to adapt"),
    (["train", *SMOKE, "strategy=maml", "decoder=linear", "eval.bn_mode=running"], "eval.bn_mode=running is not possible"),
    (["train", *SMOKE, "strategy=maml", "decoder=linear", "trainer.compile=true"], "cannot be used with second-order"),
    (["train", *[o for o in SMOKE if not o.startswith("encoder.")], "encoder=rnn", "decoder=film"], "decoder=film needs an encoder that accepts FiLM"),
    (["train", *SMOKE, "decoder=latent", "decoder.latent_dim=0"], "latent_dim >= 1"),
    (["train", *SMOKE, "encoder.width=0"], "width >= 1"),
    (["train", *SMOKE, "encoder.widths=[8,8,8,8]"], "encoder.width=16 and encoder.widths=[8, 8, 8, 8] are both set"),
    (["train", *SMOKE, "dataset.channels=2"], "1 or 3 channels"),
    (["train", *SMOKE, "+foo=bar"], "Key 'foo' not in 'TrainConfig'; no such key: remove it"),
    (["train", *SMOKE, "+encoder._target_=os.system"], "_target_"),
    (["train", *SMOKE, "trainer.meta_batch=1000000"], "trainer.memory_check=false"),
    (["train", *SMOKE, "encoder.width=100000"], "trainer.memory_check=false"),
    (["train", *SMOKE, "dataset.image_size=100000"], "image_size=100000"),
    (["train", "dataset=omniglot", f"dataset.root={T}/nowhere"], "Omniglot not found"),
    (["train", "dataset=mini_imagenet", f"dataset.root={T}/nowhere"], "mini"),
    (["train", "dataset=folder", "dataset.root={root}/nan.pt"], "is a file, not a folder"),
    (["train", *SMOKE, "hydra.run.dir="], "is not a folder"),
    (["train", *SMOKE, "hydra.run.dir=[a,b]"], "is not a folder"),
    (["train", *SMOKE, "hydra.run.dir=???"], "is not a folder"),
    (["train", *SMOKE, "resume={root}/nan.pt"], "is not a run dir or a checkpoint inside one"),
    (["eval", f"checkpoint={R}", f"hydra.run.dir={R}/checkpoints"], "is inside the run"),
    (["train", *SMOKE, f"hydra.run.dir={R}/tensorboard"], "is inside the run"),
    # commands aimed at the finished run: refused, and the run is left byte for byte as it was
    (["train", *SMOKE, f"hydra.run.dir={R}"], "it is completed and tested (resume=true trainer.iterations=N trains it further)"),
    (["train", *SMOKE, "seed=5", f"hydra.run.dir={R}"], "already holds a run ("),
    (["train", *SMOKE, "seed=5", f"resume={R}"], "was trained with seed=0; a resume continues the run"),
    (["train", *SMOKE, "encoder.width=8", f"resume={R}"], "was trained with encoder.width=16"),
    (["train", "trainer.iterations=1", f"resume={R}"], "is completed (2 meta-iterations, tested)"),
    (["train", f"resume={R}"], "is completed (2 meta-iterations, tested)"),
    (["train", "optimizer.lr=nan", f"resume={R}"], "was trained with optimizer.lr=0.001"),
    (["train", "+foo=bar", f"resume={R}"], "a resume continues the run with its own settings"),
    (["train", *SMOKE, "resume=true", f"hydra.run.dir={T}/fresh"], "resume=true but"),
    (["eval", f"checkpoint={R}", f"hydra.run.dir={R}"], "is a training run"),
    (["predict", f"checkpoint={R}", "support={root}/task/support", "query={root}/task/query",
      f"hydra.run.dir={R}"], "is a training run"),
    (["export", f"checkpoint={R}", f"out={R}/checkpoints/best.pt", f"hydra.run.dir={T}/x"], "which would be replaced"),
    (["export", f"checkpoint={R}", f"out={R}/checkpoints/last.pt", f"hydra.run.dir={T}/x"], "which would be replaced"),
    (["export", f"checkpoint={R}", f"out={T}/k.pt", f"hydra.run.dir={R}"], "is a training run"),
    # files that are damaged, foreign or crafted
    (["train", *SMOKE, "logger=mlflow", "logger.experiment=''", f"hydra.run.dir={T}/x"], "logger.experiment is empty"),
    (["eval", "checkpoint={root}/version_abc.pt"], "unreadable format version"),
    (["eval", "checkpoint={root}/step_abc.pt"], "malformed step"),
    (["eval", "checkpoint={root}/nan.pt"], "non-finite values"),
    (["eval", "checkpoint={root}/rooted.pt"], "eval reads a data folder only where the command names it"),
    (["eval", "checkpoint={root}/rooted.pt", "dataset_root={root}/nowhere"], "/nowhere does not exist; pass the folder"),
    (["eval", f"checkpoint={R}", "dataset_root={tmp}"], "is not read from a folder"),
    (["eval", "checkpoint={tmp}/missing.pt"], "does not exist"),
    (["eval", "checkpoint=/dev/null"], "/dev/null is not a file"),
    (["export", f"checkpoint={R}", "out={tmp}/newdir/"], "names a folder; name the file to write"),
    (["eval", f"checkpoint={R}", "split=train"], "not an evaluation split"),
    (["eval", f"checkpoint={R}", "eval.episodes=0"], "must be >= 1"),
    (["eval"], "metalearn eval needs checkpoint="),
    (["predict", f"checkpoint={R}", "support={tmp}/nowhere", "query={tmp}/nowhere"], "support"),
    (["report", "{tmp}/missing"], "does not exist"),
    (["eval", "checkpoint={root}/truncated.pt"], "not a readable metalearn checkpoint"),
    (["eval", "checkpoint={root}/future.pt"], "newer than this metalearn"),
    (["eval", "checkpoint={root}/changed.pt"], "fails its CRC-32 check"),  # torch.load would read it as a wrong weight
    (["eval", f"checkpoint={R}", "episode.way=3"], "name one first, e.g. episode=5way1shot episode.way=3"),
    (["eval", f"checkpoint={R}", "episode=null"], "leave it out to test on the checkpoint's own"),
    (["train", *SMOKE, "encoder=null"], "encoder is a config group and takes one of its options (conv4, conv4_fast"),
    (["eval", "checkpoint={root}/evil.pt"], "not a readable metalearn checkpoint"),  # one line: torch's warning silenced
    (["eval", "checkpoint={root}/encoder_2_os.system.pt"], "unknown encoder 'os.system'"),
    (["eval", "checkpoint={root}/encoder_2_conv4.pt"], "_target_"),
    (["eval", "checkpoint={root}/dataset_1_builtins.eval.pt"], "unknown dataset 'builtins.eval'"),
    (["train", *SMOKE, "hydra/sweeper=grid_search_9000"], 'pip install -e ".[sweep]"'),
    # issue 23's cases
    (["train", *SMOKE, "seed=99999999999999999999"], "is out of range"),
    (["train", *SMOKE, "seed=-1"], "seed=-1 is out of range"),
    (["eval", f"checkpoint={R}", "seed=-3"], "seed=-3 is out of range"),
    (["train", *SMOKE, "trainer.init_from={root}/nan.pt"], "holds non-finite values"),
    (["train", *SMOKE, "pretrain=supervised", "pretrain.batch_size=100000000"], "lower pretrain.batch_size"),
    (["train", *SMOKE, "pretrain=episodic", "pretrain.batch_size=64"], "pretrain.batch_size is read by pretrain=supervised only"),
    (["train", *SMOKE, "pretrain=episodic", "pretrain.optimizer.lr=0.1"], "pretrain.optimizer.lr is read by pretrain=supervised"),
    (["train", *SMOKE, "pretrain=supervised", "pretrain.train_way=20"], "pretrain.train_way is read by pretrain=episodic only"),
    (["train", *SMOKE, "pretrain=supervised", "pretrain.max_iterations=-1"], "pretrain.max_iterations=-1 caps the stage's steps"),
    (["train", *SMOKE, "pretrain=none", "pretrain.iterations=5"], "pretrain=none chose none: name its kind too"),
    (["train", *SMOKE, "eval.support_copies=-1"], "eval.support_copies=-1: give how many augmented copies"),
    (["train", *SMOKE, "pretrain=supervised", "pretrain.iterations=0"], "pretrain.iterations=0 runs none"),
    (["train", *SMOKE, "strategy=maml", "decoder=linear", "strategy.eval_inner_steps=0"], "never adapted to a task"),
    (["train", "debug=smoke", "episode=lake20way1shot"], "no alphabets"),
    (["train", *SMOKE, "dataset.val_classes=20", "dataset.test_classes=20", "episode=lake20way1shot",
      "trainer.train_way=5"], "need classes named Alphabet/character"),
    (["train", *SMOKE, "episode=lake20way1shot"], "need classes named Alphabet/character"),  # before the way it asks for
    (["train", *SMOKE, "eval.lake_runs={root}/all_runs.zip"], "add episode=lake20way1shot"),
    (["eval", f"checkpoint={R}", "split=val", "eval.lake_runs={root}/all_runs.zip"], "drop split=val or eval.lake_runs"),
    (["train", *SMOKE, "hydra.run.dir={tmp}/rün"], "'ü' needs the value in quotes"),
    (["train", *SMOKE, "hydra.run.dir={tmp}/a", "b"], "is not key=value"),
    (["train", "dataset=folder", "dataset.root={root}/looping"], "leads nowhere"),
    (["predict", f"checkpoint={R}", "support={root}/task/support", "query={root}/task/query", "show=-5"], "show=-5"),
    (["predict", f"checkpoint={R}", "support={root}/task/support", "query={root}/task/query",
      "hydra.run.dir={root}/task/query/out"], "lies inside query="),
    (["predict", f"checkpoint={R}", "support={root}/task/support", "query={root}/nan.pt"], "is a file; pass the folder"),
    (["train", f"resume={R}", "hydra.run.dir={tmp}/other"], "drop hydra.run.dir"),
    (["train", f"resume={R}/checkpoints/last.pt", "hydra.run.dir={tmp}/other"], "drop hydra.run.dir"),
    (["train", f"resume={R}/checkpoints/best.pt"], "is completed and tested; resuming it from best.pt"),
    (["export", f"checkpoint={R}", f"out={R}/results.json"], "which would be replaced"),
    (["sample-task", "--out", "{root}/nan.pt"], "is a file"),
    (["sample-task", "--way", "abc"], "invalid int value"),
    (["sample-task", "--out", f"{R}/task"], "is inside the run"),
    (["report"], "the following arguments are required"),
    (["report", f"{R}", "--out", f"{R}/report"], "is inside the run"),
    (["export", f"checkpoint={R}", f"out={R}/new.pt"], "is inside the run"),
    (["export", f"checkpoint={R}", "out={root}/notes.txt"], "not an earlier export"),
    (["train", "~encoder"], "deletes encoder from the config"),
    (["train", "resume="], "resume= is empty (an unset shell variable?)"),
    (["eval", "checkpoint="], "checkpoint= is empty (an unset shell variable?)"),
    (["export", f"checkpoint={R}", "out={root}"], "is a folder; name the file to write"),
    (["train", *SMOKE, "hydra.run.dir={root}/notes.txt"], "is a file; name a folder for hydra.run.dir"),
    (["report", "{root}/notes.txt"], "is a file; pass run dirs or sweep dirs"),
    (["eval", f"checkpoint={R}", f"ensemble={R},{R}"], "gives several values, which Hydra reads as a sweep: add -m"),
    (["eval", f"checkpoint={R}", f"ensemble=[{R}"], "a list needs both brackets"),
    (["train", "-m", *SMOKE, "resume=''"], "resume= is empty"),
    (["train", "-m", *SMOKE, "seed=0,1"], "names the folder of one run, and a sweep (-m) writes each job into"),
    (["train", f"resume={R}", "encoder=conv4_fast", "trainer.iterations=9"], "so drop encoder=conv4_fast from the command"),
    (["eval", f"checkpoint={R}", "~eval.episodes=10"], "deletes eval.episodes"),
]


@pytest.mark.parametrize("args,needle", CASES, ids=[f"{i}-{c[0][0]}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_line_and_leaves_the_finished_run_as_it_was(run, tmp_path, capsys, args, needle):
    before = tree_hash(run)
    filled = [a.replace(R, str(run)).replace(T, str(tmp_path / "case")).replace("{root}", str(run.parent)) for a in args]
    (tmp_path / "case").mkdir()
    if args[0] not in ("report", "sample-task") and not any(a.startswith("hydra.run.dir=") for a in filled) \
            and not any(a.startswith("resume=") for a in filled):
        filled.append(f"hydra.run.dir={tmp_path / 'case' / 'out'}")
    code = main(filled)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert needle in err, err
    assert tree_hash(run) == before, "the finished run changed"
    assert not (run.parent / "pwned").exists()  # a crafted pickle is refused, never executed
    assert (run.parent / "notes.txt").read_text() == "a user's file, not an export"


def test_a_config_error_leaves_no_folder_it_made_and_a_users_empty_folder_as_it_was(tmp_path):
    made, empty = tmp_path / "new" / "deeper" / "run", tmp_path / "empty"
    empty.mkdir()
    for folder in (made, empty):
        proc = subprocess.run([sys.executable, "-m", "metalearn_cli", "train", "encoder=nope", f"hydra.run.dir={folder}"],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert proc.returncode == 2 and "Could not find 'encoder/nope'" in proc.stderr, proc.stderr
    assert not (tmp_path / "new").exists() and list(empty.iterdir()) == []


def test_the_table_covers_at_least_ninety_cases():
    assert len(CASES) >= 90


def test_incomplete_dataset_root_is_one_line_and_nothing_is_deleted(tmp_path, capsys):
    from data.test_omniglot import make_omniglot

    root = make_omniglot(tmp_path / "omni", skip="images_background/Alpha/character02/0002_03.png")
    assert main(["train", "dataset=omniglot", f"dataset.root={root}", f"hydra.run.dir={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err
    assert "Alpha/character02 has 3 images but others have 4" in err and err.strip().count("\n") == 0
    assert (root / "images_background.zip").is_file()


def test_eval_accepts_a_run_dir(tmp_path, run):
    assert main(["eval", f"checkpoint={run}", "eval.episodes=2", f"hydra.run.dir={tmp_path / 'e'}"]) == 0
    assert json.loads((tmp_path / "e" / "results.json").read_text())["episodes"] == 2


def test_an_output_dir_that_cannot_be_written(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    assert main(["train", *SMOKE, f"hydra.run.dir={blocker / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert "cannot create the run dir" in err and "hydra.run.dir" in err and err.strip().count("\n") == 0
    assert blocker.read_text() == "a file where a folder should be"


def test_the_memory_estimate_runs_on_images_too_small_for_one_value_per_channel():
    """``encoder=transformer dataset.image_size=4``: the estimate forwards two images, not one."""
    import torch as _torch

    from conftest import compose_config
    from metalearn_cli.cost import check_memory

    cfg = compose_config("train", [*FAST, "encoder=transformer", "dataset.image_size=4"])
    check_memory(cfg, (1, 4, 4), _torch.device("cpu"))  # raises nothing: trains as it did


# ----------------------------------------------------------------------------- no non-finite checkpoint
def test_a_non_finite_state_is_never_saved_and_the_kept_checkpoint_is_named(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *SMOKE, "trainer.iterations=20", "optimizer=sgd", "optimizer.lr=1e6",
                 "trainer.checkpoint_every=1", "trainer.val_every=100", f"hydra.run.dir={run}"]) == 2
    err = capsys.readouterr().err
    assert "non-finite" in err and err.strip().count("\n") == 0
    for name in ("last.pt", "best.pt"):
        if (run / "checkpoints" / name).exists():
            state = torch.load(run / "checkpoints" / name, weights_only=True)
            assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point()), name
            if name == "last.pt":
                assert f"(meta-iteration {state['step']}) is kept" in err
    assert json.loads((run / "status.json").read_text())["status"] == "failed"


def test_a_run_that_diverges_before_any_checkpoint_says_so(tmp_path, capsys):
    assert main(["train", *SMOKE, "trainer.iterations=20", "optimizer=sgd", "optimizer.lr=1e30",
                 "trainer.checkpoint_every=10", f"hydra.run.dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert "is kept" not in err and "no checkpoint was written yet" not in err  # step 0 was validated: best.pt exists
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    assert f"no last.pt to resume from was written yet; {best} holds the weights validated at meta-iteration 0" in err
    assert best.is_file() and not best.with_name("last.pt").exists()


def test_a_resume_of_such_a_run_is_advised_pasteably_and_names_what_it_really_keeps(tmp_path, capsys):
    """Resuming it (a dir with a space) advises its best.pt quoted for the shell; a resume from best.pt that
    diverges again names best.pt, not a last.pt that was never written."""
    run = tmp_path / "a run"
    assert main(["train", *SMOKE, "trainer.iterations=20", "optimizer=sgd", "optimizer.lr=1e30",
                 "trainer.checkpoint_every=10", f"hydra.run.dir={run}"]) == 2
    capsys.readouterr()
    assert main(["train", *SMOKE, "trainer.iterations=20", f"resume={run}"]) == 2
    best = run / "checkpoints" / "best.pt"
    assert f"its best.pt is there: 'resume=\"{best}\"'" in capsys.readouterr().err
    assert main(["train", *SMOKE, "trainer.iterations=20", "optimizer=sgd", "optimizer.lr=1e30",
                 "trainer.checkpoint_every=10", f"resume={best}"]) == 2
    err = capsys.readouterr().err
    assert "non-finite" in err and "last.pt" in err and " is kept" not in err and not best.with_name("last.pt").exists()
    assert f"{best} holds the weights validated at meta-iteration 0" in err


def test_the_advice_to_skip_is_accepted_on_resume(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *SMOKE, "trainer.iterations=4", f"hydra.run.dir={run}"]) == 0
    assert main(["train", *SMOKE, "trainer.iterations=6", "trainer.nan_policy=skip", f"resume={run}"]) == 0


# ----------------------------------------------------------------------------- one writer per run dir
def test_a_second_process_on_the_same_run_dir_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)"), str(run / ".lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = tree_hash(run)
        assert main(["train", *SMOKE, f"hydra.run.dir={run}"]) == 2
        assert "being written by another metalearn process" in capsys.readouterr().err
        assert tree_hash(run) == before
    finally:
        holder.kill()
        holder.wait()
    assert main(["train", *SMOKE, f"hydra.run.dir={run}"]) == 0  # the OS released the dead holder's lock


# ----------------------------------------------------------------------------- a resume keeps the run's record
def test_an_accepted_resume_keeps_the_original_hydra_files_and_records_its_own(tmp_path):
    run = tmp_path / "run"
    assert main(["train", *SMOKE, "trainer.iterations=4", "seed=3", f"hydra.run.dir={run}"]) == 0
    original = {p.name: p.read_bytes() for p in (run / ".hydra").glob("*.yaml")}
    assert main(["train", *SMOKE, "trainer.iterations=6", "seed=3", f"resume={run}"]) == 0
    assert {p.name: p.read_bytes() for p in (run / ".hydra").glob("*.yaml")} == original
    (record,) = (run / ".hydra").glob("resume-*")
    assert "trainer.iterations=6" in (record / "overrides.yaml").read_text()
    # the config it continued with, not the defaults of a command line that names only resume= and iterations
    resumed, first = (yaml.safe_load(p.read_text()) for p in (record / "config.yaml", run / ".hydra" / "config.yaml"))
    assert resumed["trainer"]["iterations"] == 6 and resumed["dataset"] == first["dataset"]
    assert main(["train", "trainer.iterations=8", f"resume={run}"]) == 0  # no SMOKE on the command line at all
    records = sorted((run / ".hydra").glob("resume-*"))
    assert len(records) == 2 and (record / "config.yaml").read_bytes() == (records[0] / "config.yaml").read_bytes()
    latest = yaml.safe_load((records[1] / "config.yaml").read_text())
    assert latest["dataset"]["name"] == "synthetic" and latest["trainer"]["iterations"] == 8


# ----------------------------------------------------------------------------- signals in every phase
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_a_signal_during_the_final_test_marks_the_run_interrupted(tmp_path, monkeypatch, capsys, sig, code):
    from metalearn_cli import training

    real = training.score_checkpoint

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), sig)
        time.sleep(0.5)  # the handler runs here
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "score_checkpoint", signalled)
    run = tmp_path / "run"
    assert main(["train", *SMOKE, f"hydra.run.dir={run}"]) == code
    err = capsys.readouterr().err
    assert "during the final test" in err and f"resume={run}" in err and "Traceback" not in err
    assert json.loads((run / "status.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(training, "score_checkpoint", real)
    assert main(["train", *SMOKE, f"resume={run}"]) == 0  # resuming runs the test it missed
    assert json.loads((run / "results.json").read_text())["episodes"] == 2


# ----------------------------------------------------------------------------- bugs stay off the console
def test_an_internal_error_is_one_line_with_the_traceback_in_the_run_dir(tmp_path, monkeypatch, capsys):
    from metalearn_cli import loop

    def broken(self, *args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(loop.TrainingRun, "iteration", broken)
    run = tmp_path / "run"
    assert main(["train", *SMOKE, f"hydra.run.dir={run}"]) == 1
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "Traceback" not in err and "internal error" in err and "a bug" in err
    assert "Traceback" in (run / "error.txt").read_text()
    assert json.loads((run / "status.json").read_text())["status"] == "failed"


def test_a_sweep_goes_on_past_a_job_with_a_bad_value(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    assert main(["train", "-m", *SMOKE, "optimizer.lr=nan,0.001", f"hydra.sweep.dir={sweep}"]) == 1  # some failed
    statuses = sorted(json.loads(p.read_text())["status"] for p in sweep.rglob("status.json"))
    assert statuses == ["completed", "failed"]


# ----------------------------------------------------------------------------- damaged inputs elsewhere
def test_an_image_over_the_decompression_bomb_limit_is_one_line(tmp_path, monkeypatch):
    from metalearn_cli.data.images import ImageFormat, read_image
    from metalearn_cli.errors import DataError

    path = tmp_path / "big.png"
    Image.new("L", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 4096 pixels: over twice the limit
    with pytest.raises(DataError, match="decompression-bomb limit"):
        read_image(path, ImageFormat(channels=1, size=28))


def test_report_reads_damaged_run_dirs_and_refuses_an_out_that_is_a_file(tmp_path, run, capsys):
    import shutil

    damaged = tmp_path / "runs" / "damaged"
    shutil.copytree(run, damaged)
    with open(damaged / "metrics.jsonl", "a") as f:
        f.write('not json\n[1, 2]\n{"split": "train"}\n{"step": "x", "split": "val"}\n{"step": 9, "spl')
    (damaged / ".hydra" / "config.yaml").write_text("encoder: [unclosed\n")
    for name, results in (("negative", {"accuracy": 1e999, "ci95": -1}), ("text", {"accuracy": "high", "ci95": "x"})):
        shutil.copytree(run, tmp_path / "runs" / name)
        (tmp_path / "runs" / name / "results.json").write_text(json.dumps(results).replace("Infinity", "1e999"))
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "report.csv").is_file()
    (tmp_path / "afile").write_text("x")
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "afile")]) == 2
    err = capsys.readouterr().err
    assert "is a file" in err and err.strip().count("\n") == 0
