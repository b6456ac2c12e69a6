"""resume.py, the one owner of resume: the ``resume=`` parser, which checkpoint it names, the config
diff and which keys a resume may change."""

from __future__ import annotations

import shutil

import pytest
from omegaconf import OmegaConf

from conftest import FAST, compose_config
from metalearn_cli.checkpoint import load_checkpoint
from metalearn_cli.errors import CheckpointError, ConfigError
from metalearn_cli.resume import (
    check_same_run, config_diff, resume_checkpoint, resume_value, resumed_config, run_dir_of,
)


@pytest.mark.parametrize("value,parsed", [
    (None, None), (False, None), ("false", None), ("None", None), (" null ", None), ("", None),
    (True, "true"), ("TRUE", "true"), (" true", "true"), ("runs/a b", "runs/a b"),
])
def test_resume_value_is_true_a_path_or_nothing(value, parsed):
    assert resume_value(value) == parsed


def test_run_dir_of_a_run_a_checkpoint_and_a_loose_file(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    assert run_dir_of(run) == run
    assert run_dir_of(run / "checkpoints" / "last.pt") == run
    assert run_dir_of(tmp_path / "elsewhere" / "model.pt") == tmp_path / "elsewhere"


def test_resume_names_the_last_checkpoint_of_this_run_or_of_a_named_run(trained_run, tmp_path):
    last = trained_run / "checkpoints" / "last.pt"
    assert resume_checkpoint(None, trained_run) is None
    assert resume_checkpoint("false", trained_run) is None
    assert resume_checkpoint("true", trained_run) == last
    assert resume_checkpoint(str(trained_run), trained_run) == last
    assert resume_checkpoint(str(last), trained_run) == last
    with pytest.raises(CheckpointError, match="resume=true but .*last.pt does not exist"):
        resume_checkpoint("true", tmp_path / "new")


def test_a_resume_never_writes_into_another_run_dir(trained_run, tmp_path):
    with pytest.raises(ConfigError, match="continues the run in .*hydra.run.dir is .*trainer.init_from="):
        resume_checkpoint(str(trained_run), tmp_path / "other")


def test_the_config_diff_names_exactly_the_keys_that_differ():
    saved = OmegaConf.to_container(compose_config("train", FAST), resolve=True, enum_to_str=True)
    same = {**saved, "resume": "true"}
    assert config_diff(saved, same) == []  # resume itself is never a difference
    changed = OmegaConf.to_container(compose_config("train", [*FAST, "encoder.width=12", "trainer.val_every=5"]),
                                     resolve=True, enum_to_str=True)
    assert config_diff(saved, changed) == ["encoder.width", "trainer.val_every"]
    assert config_diff(saved, {**saved, "extra": {"key": 1}}) == ["extra.key"]  # a key only one side has differs too


def test_only_bookkeeping_may_change_on_a_resume(trained_run):
    saved = load_checkpoint(trained_run / "checkpoints" / "last.pt")["config"]
    bookkeeping = OmegaConf.to_container(
        compose_config("train", [*FAST, "trainer.iterations=10", "trainer.val_every=5", "eval.episodes=7"]),
        resolve=True, enum_to_str=True)
    check_same_run(saved, bookkeeping, trained_run)
    learned = {**bookkeeping, "optimizer": {**bookkeeping["optimizer"], "lr": 0.5}}
    with pytest.raises(CheckpointError, match=r"another config \(optimizer.lr=0.001\); resume with the same settings, or start a new run"):
        check_same_run(saved, learned, trained_run)


def test_a_resumed_config_is_the_saved_one_changed_only_where_typed(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    cfg = compose_config("train", ["trainer.iterations=20", "eval.episodes=3", "resume=true"])  # defaults, not FAST
    resumed = resumed_config(cfg, run, typed=["trainer.iterations"])
    saved = load_checkpoint(run / "checkpoints" / "last.pt")["config"]
    assert resumed.trainer.iterations == 20  # typed: taken
    assert resumed.eval.episodes == saved["eval"]["episodes"] != 3  # not typed: the run's own
    assert resumed.encoder.width == saved["encoder"]["width"] != cfg.encoder.width  # the command line's defaults never leak in
    assert resume_value(resumed.resume) == "true"
    with pytest.raises(CheckpointError, match=r"trained with encoder.width=16; a resume continues the run with its own "
                                              r"settings, so drop encoder.width from the command"):
        resumed_config(compose_config("train", ["encoder.width=12", "resume=true"]), run, typed=["encoder.width"])
    with pytest.raises(CheckpointError, match=r"so drop encoder=conv4_fast from the command"):  # what was typed, not its keys
        resumed_config(compose_config("train", ["encoder=conv4_fast", "encoder.width=null", "resume=true"]), run,
                       typed={"encoder": "encoder=conv4_fast", "encoder.width": "encoder.width=null"})
    plain = compose_config("train", FAST)
    assert resumed_config(plain, run, typed=["*"]) is plain  # no resume: as composed


def test_a_run_without_last_pt_names_its_best_pt_to_resume_from(trained_run, tmp_path, capsys):
    from metalearn_cli.cli import main

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "checkpoints" / "last.pt").unlink()
    (run / "results.json").unlink()  # stopped before its end: no test yet
    assert main(["train", "trainer.iterations=20", f"resume={run}"]) == 2
    err = capsys.readouterr().err
    assert "has no last.pt to resume from" in err and f"resume={run / 'checkpoints' / 'best.pt'}" in err, err


def test_eval_of_a_run_resumed_with_other_test_settings_repeats_its_results(tmp_path, capfd):
    """The README's promise: metalearn eval checkpoint=RUN reproduces results.json, after a resume that changed eval.* too."""
    import json

    from metalearn_cli.cli import main

    run = tmp_path / "run"
    small = [*FAST, "trainer.val_every=2", "trainer.checkpoint_every=2"]
    assert main(["train", *small, "trainer.iterations=4", "eval.episodes=4", f"hydra.run.dir={run}"]) == 0
    capfd.readouterr()
    assert main(["train", "trainer.iterations=5", "eval.episodes=7", f"resume={run}"]) == 0  # best.pt may be from before
    assert "the test's settings differ from the run's start (eval.episodes=7, was 4)" in "".join(capfd.readouterr())
    assert main(["eval", f"checkpoint={run}", f"hydra.run.dir={tmp_path / 'again'}"]) == 0
    trained, again = (json.loads((d / "results.json").read_text()) for d in (run, tmp_path / "again"))
    assert trained["episodes"] == again["episodes"] == 7 and trained["accuracy"] == again["accuracy"]


def test_a_report_describes_a_resumed_run_by_the_config_it_last_ran_with(tmp_path, capfd):
    """Raised to 5 iterations by a resume, the run is a 5-iteration run to report; a resume record of
    before 2026-12-05 (the command line's defaults, another encoder) is passed over."""
    from omegaconf import OmegaConf

    from conftest import compose_config
    from metalearn_cli.cli import main
    from metalearn_cli.run_settings import setting_config

    run = tmp_path / "run"
    small = [*FAST, "trainer.val_every=2", "trainer.checkpoint_every=2"]
    assert main(["train", *small, "trainer.iterations=4", f"hydra.run.dir={run}"]) == 0
    assert setting_config(run)["trainer.iterations"] == 4
    capfd.readouterr()
    assert main(["train", "trainer.iterations=5", f"resume={run}"]) == 0
    assert "trainer.iterations=5 where the run began with 4: from meta-iteration 4 the learning rate follows a schedule " \
           "over 5 steps" in "".join(capfd.readouterr())
    assert setting_config(run)["trainer.iterations"] == 5
    from metalearn_cli.run_settings import record_of

    typed = record_of(run)["overrides"]  # report's overrides column: the command line as it last ran
    assert "trainer.iterations=5" in typed and "trainer.iterations=4" not in typed and not any("resume=" in o for o in typed)
    old = run / ".hydra" / "resume-2026-12-04_10-00-00"  # sorted before today's record: a later valid one wins
    old.mkdir()
    (old / "config.yaml").write_text(OmegaConf.to_yaml(compose_config("train", ["resume=x"])))
    later = run / ".hydra" / "resume-2099-01-01_00-00-00"  # a record as the old code wrote it, the latest
    later.mkdir()
    (later / "config.yaml").write_text(OmegaConf.to_yaml(compose_config("train", ["resume=x", "trainer.iterations=9"])))
    config = setting_config(run)
    assert config["trainer.iterations"] == 5 and config["encoder.name"] == "conv4"


def test_a_resume_from_an_earlier_checkpoint_than_last_pt_is_refused(trained_run, tmp_path):
    """Training on from best.pt's step would overwrite last.pt: the steps after best.pt would be lost."""
    from metalearn_cli.checkpoint import save_checkpoint

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "results.json").unlink()  # stopped before its test (a completed run's resume is the loop's to refuse)
    best, last = run / "checkpoints" / "best.pt", run / "checkpoints" / "last.pt"
    state = load_checkpoint(best)
    save_checkpoint(best, {**{k: v for k, v in state.items() if k not in ("format", "version")}, "step": 4})
    before = last.read_bytes()
    with pytest.raises(CheckpointError, match=r"would train on from step 4 and overwrite .*last.pt \(step 10\): the run's "
                                              r"last 6 steps would be lost"):
        resume_checkpoint(str(best), run)
    assert last.read_bytes() == before and resume_checkpoint(str(last), run) == last
    last.write_bytes(before[: len(before) // 2])  # a truncated last.pt: best.pt is what is left, and its message says so
    with pytest.raises(CheckpointError, match=r"use the run's checkpoints/best.pt \(to train on: resume="):
        load_checkpoint(last)
    assert resume_checkpoint(str(best), run) == best  # said in a warning, not refused


def test_resuming_a_run_stopped_before_its_first_save_says_there_is_nothing_to_continue(tmp_path, capsys):
    from metalearn_cli.cli import main

    run = tmp_path / "stopped"
    (run / ".hydra").mkdir(parents=True)
    (run / "status.json").write_text('{"status": "interrupted"}')  # what two early Ctrl-Cs leave
    assert main(["train", f"resume={run}"]) == 2
    err = capsys.readouterr().err
    assert "stopped before it saved a checkpoint, so there is nothing to continue" in err and "last.pt" not in err


def test_a_resume_from_best_pt_beside_a_damaged_last_pt_is_warned_once_without_telling_to_do_what_was_done(
        trained_run, tmp_path, capfd):
    from metalearn_cli.cli import main

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "results.json").unlink()  # stopped before its test
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:200])  # cut by a full disk
    assert main(["train", *FAST, "trainer.iterations=10", f"resume={run / 'checkpoints' / 'best.pt'}"]) == 0
    said = [line for line in "".join(capfd.readouterr()).splitlines() if "as asked" in line]
    assert len(said) == 1 and "resuming from best.pt" in said[0] and "use the run's" not in said[0], said


def test_an_export_where_a_resume_needs_last_pt_is_named_as_an_export(trained_run, tmp_path, capsys):
    from metalearn_cli.cli import main

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "results.json").unlink()
    assert main(["export", f"checkpoint={run}", f"out={tmp_path / 'mk.pt'}", f"hydra.run.dir={tmp_path / 'ex'}"]) == 0
    shutil.copyfile(tmp_path / "mk.pt", run / "checkpoints" / "last.pt")  # put in its place by hand
    capsys.readouterr()
    assert main(["train", *FAST, "trainer.iterations=10", f"resume={run}"]) == 2
    err = capsys.readouterr().err
    assert "is a metalearn export (meta-knowledge alone" in err and "trainer.init_from=FILE" in err, err


def test_resume_of_an_eval_or_export_dir_says_what_it_is_not_that_it_stopped(trained_run, tmp_path, capsys):
    """Their dirs hold results and no last.pt: "stopped before it saved ... delete this one" would invite a user
    to throw those away."""
    from metalearn_cli.cli import main

    assert main(["eval", f"checkpoint={trained_run}", "eval.episodes=2", f"hydra.run.dir={tmp_path / 'ev'}"]) == 0
    assert main(["export", f"checkpoint={trained_run}", f"out={tmp_path / 'mk.pt'}", f"hydra.run.dir={tmp_path / 'ex'}"]) == 0
    for folder, command in (("ev", "eval"), ("ex", "export")):
        before = sorted(p.name for p in (tmp_path / folder).iterdir())
        capsys.readouterr()
        assert main(["train", f"resume={tmp_path / folder}"]) == 2
        err = capsys.readouterr().err
        assert f"is the dir of a metalearn {command}, not of a training run" in err and "delete" not in err, err
        assert sorted(p.name for p in (tmp_path / folder).iterdir()) == before


def test_a_run_trained_by_torchrun_is_continued_by_torchrun_and_warned_otherwise(tmp_path, caplog):
    """The stop line repeats the process count; a resume with another count goes on, with a warning."""
    from metalearn_cli.resume import continue_command, warn_changed_course

    assert continue_command(tmp_path / "my run", 1) == f"metalearn train 'resume=\"{tmp_path / 'my run'}\"'"
    assert continue_command(tmp_path / "r", 2) == f"torchrun --nproc-per-node=2 -m metalearn_cli train resume={tmp_path / 'r'}"
    state = {"config": {"trainer": {"iterations": 10}}, "processes": 2}
    with caplog.at_level("WARNING"):
        warn_changed_course(state, 10, "trainer.iterations", "meta-iteration 4", 2)
        assert not caplog.records  # as it was: nothing to say
        warn_changed_course(state, 10, "trainer.iterations", "meta-iteration 4", 1)
    assert "trained by 2 processes and continues in 1" in caplog.text and "torchrun --nproc-per-node=2" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):  # one process resumed under torchrun: the advice is no torchrun at all
        warn_changed_course({**state, "processes": 1}, 10, "trainer.iterations", "meta-iteration 4", 2)
    assert "trained by 1 process and continues in 2" in caplog.text and "in one process, without torchrun" in caplog.text
    assert "--nproc-per-node=1" not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):  # stopped before its first step (in pre-training): it goes on as a new run would
        warn_changed_course({**state, "step": 0}, 5, "trainer.iterations", "meta-iteration 0", 1)
    assert not caplog.records


@pytest.mark.parametrize("value,needle", [("nosuchdir", "resume=nosuchdir does not exist; pass the run dir to continue"),
                                          ("yes", "resume=yes is not a choice: resume takes true, false or a run dir")])
def test_a_resume_of_nothing_says_what_resume_takes(tmp_path, monkeypatch, capsys, value, needle):
    from metalearn_cli.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", f"resume={value}"]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "best.pt" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_resume_repeating_a_folder_runs_overrides_is_not_refused_for_what_the_run_recorded(tmp_path, monkeypatch, caplog):
    """A sweep's ``resume=true`` repeats the sweep's command line: ``dataset=folder`` (whose split the run filled in
    itself, dataset.classes) and a relative ``dataset.root`` (saved absolute) are no change to refuse or warn of."""
    import numpy as np
    from PIL import Image

    from metalearn_cli.training import train

    rng = np.random.default_rng(0)
    for c in range(12):
        (tmp_path / "my data" / f"class{c:02d}").mkdir(parents=True)
        for j in range(6):
            Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(tmp_path / "my data" / f"class{c:02d}" / f"{j}.png")
    monkeypatch.chdir(tmp_path)
    typed = [*[a for a in FAST if not a.startswith("dataset.")], "dataset=folder", "dataset.root=my data",
             "dataset.image_size=16", "episode.way=2", "episode.query=2"]
    train(compose_config("train", typed), tmp_path / "run")
    caplog.clear()
    resumed = resumed_config(compose_config("train", [*typed, "trainer.iterations=8", "resume=true"]), tmp_path / "run",
                             typed={o.split("=", 1)[0]: o for o in [*typed, "trainer.iterations=8"]})
    assert resumed.trainer.iterations == 8 and list(resumed.dataset.classes.train)  # the recorded split kept
    assert not [r for r in caplog.records if "continues on the data set" in r.getMessage()]
    with pytest.raises(CheckpointError, match="trained with dataset.image_size=16; "):  # a real change is still refused
        resumed_config(compose_config("train", [*typed, "dataset.image_size=20", "resume=true"]), tmp_path / "run",
                       typed={"dataset": "dataset=folder", "dataset.image_size": "dataset.image_size=20"})


@pytest.mark.parametrize("ended", ["failed", "interrupted", "running"])
def test_a_sweep_job_that_ended_before_its_first_save_begins_again_with_its_attempt_kept(tmp_path, ended):
    """``-m ... resume=true`` (the printed "finish the sweep" line) reruns a job that failed, or was stopped (a joblib
    worker killed as its sweep ended), before any last.pt: its files go to failed-<time>/ or stopped-<time>/ (nothing
    lost), its .hydra record stays, and the job starts in its own dir (it was refused: "no last.pt to resume from")."""
    from metalearn_cli.resume import begun_again, resumed_sweep_job
    from metalearn_cli.rundir import held, record_failure, write_status

    job = tmp_path / "1_job"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (job / "checkpoints").mkdir()
    (job / "checkpoints" / "best.pt").write_bytes(b"step 0")
    (job / "metrics.jsonl").write_text('{"step": 0, "split": "val", "accuracy": 0.5}\n')
    write_status(job, "running", step=0, iterations=20)
    if ended == "failed":
        record_failure(job, "non-finite loss at meta-iteration 2")
    elif ended == "interrupted":
        write_status(job, "interrupted", step=0, iterations=20)  # else "running": killed outright (SIGKILL, memory)
    cfg = compose_config("train", [*FAST, "resume=true"])
    assert resumed_sweep_job(cfg, job) is None and cfg.resume is None  # a new run, in the job's dir
    before = sorted(p.name for p in job.iterdir())
    with pytest.raises(KeyboardInterrupt):  # stopped (or refused) before it began: the attempt is put back
        with begun_again(job, sweep_resumed=True):
            assert held(job) == [] and (job / ".hydra" / "config.yaml").is_file()
            raise KeyboardInterrupt
    assert sorted(p.name for p in job.iterdir()) == before
    with begun_again(job, sweep_resumed=True):  # it began: the attempt stays aside, nothing lost
        pass
    (kept,) = job.glob("failed-*" if ended == "failed" else "stopped-*")
    assert sorted(p.name for p in kept.iterdir()) == ["checkpoints", *(["error.txt"] if ended == "failed" else []),
                                                      "metrics.jsonl", "status.json"]
