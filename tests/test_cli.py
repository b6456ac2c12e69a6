"""The installed command: usage, help, a real smoke run, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from metalearn_cli.cli import main

EXE = shutil.which("metalearn") or str(Path(sys.executable).parent / "metalearn")
SMOKE = ["debug=smoke", "trainer.iterations=4", "trainer.val_every=2", "trainer.val_episodes=4", "eval.episodes=8",
         "device=cpu", "encoder.width=16"]


def run_cli(*args: str, cwd: Path, home: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update({"HOME": str(home)} if home else {})
    return subprocess.run([EXE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_bare_command_prints_usage_with_examples(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "metalearn train" in out and "metalearn eval checkpoint=" in out


def test_unknown_command_is_one_line(capsys):
    assert main(["fly"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown command 'fly'" in err


def test_installed_cli_trains_then_evaluates(tmp_path):
    train = run_cli("train", *SMOKE, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert (tmp_path / "run" / ".hydra" / "config.yaml").is_file()
    ev = run_cli("eval", "checkpoint=~/run", "eval.episodes=8", "eval.batch_tasks=20",  # ~ as a shell would
                 f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path, home=tmp_path)
    assert ev.returncode == 0, ev.stderr
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["accuracy"] == results["accuracy"]


def test_default_run_dir_is_named_by_task_and_choices(tmp_path):
    proc = run_cli("train", *SMOKE, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (run,) = (tmp_path / "outputs" / "train").iterdir()
    assert run.name == "synthetic-conv4_fast-prototype-mgd-5way1shot"


def test_help_names_the_subcommand_and_lists_groups(tmp_path):
    proc = run_cli("train", "--help", cwd=tmp_path)
    assert proc.returncode == 0
    assert proc.stdout.startswith("metalearn train:")
    for group in ("dataset", "encoder", "decoder", "strategy", "optimizer", "episode"):
        assert f"{group}:" in proc.stdout
    job = run_cli("train", "--cfg", "job", cwd=tmp_path)
    assert job.returncode == 0 and "train_way:" in job.stdout
    bad = run_cli("train", "--cfg", "job", "trainer.meta_batch=0", cwd=tmp_path)  # printed, and said to be refused
    assert bad.returncode == 2 and "meta_batch: 0" in bad.stdout and bad.stderr.count("\n") == 1
    assert "a run of this config would be refused: trainer.meta_batch=0 counts tasks per meta-update" in bad.stderr
    assert list(tmp_path.iterdir()) == []  # printing writes no run dir
    assert run_cli("eval", "--help", cwd=tmp_path).stdout.startswith("metalearn eval:")
    assert run_cli("predict", "--help", cwd=tmp_path).stdout.startswith("metalearn predict:")
    assert run_cli("export", "--help", cwd=tmp_path).stdout.startswith("metalearn export:")


@pytest.mark.parametrize(
    "args,needle",
    [
        (["train", "encoder.width=abc"], "could not be converted to Integer"),
        (["train", "encoder.depth=3"], "Key 'depth' not in 'Conv4Params'"),
        (["train", "encoder=resnet99"], "choose one of: conv4"),
        (["train", "debug=smoke", "episode.way=60"], "60-way episodes need 60 classes"),
        (["train", "debug=smoke", "episode=5way5shot", "episode.query=20"], "need 25 images per class"),
        (["train", "dataset.root=/nonexistent/omniglot"], "Omniglot not found in /nonexistent/omniglot"),
        (["eval"], "needs checkpoint=..."),
        (["eval", "checkpoint=/nonexistent.pt"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, args, needle):
    code = main([*args, f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err and err.strip().count("\n") == 0 and "Traceback" not in err, err


def test_corrupt_and_foreign_checkpoints_through_the_installed_cli(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 broken")
    foreign = tmp_path / "foreign.pt"
    import torch

    torch.save({"weights": torch.zeros(1)}, foreign)
    for path, needle in ((corrupt, "not a readable metalearn checkpoint"), (foreign, "neither a metalearn checkpoint nor an exported")):
        proc = run_cli("eval", f"checkpoint={path}", f"hydra.run.dir={tmp_path / 'e'}", cwd=tmp_path)
        assert proc.returncode == 2 and needle in proc.stderr
        assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert corrupt.read_bytes() == b"PK\x03\x04 broken"  # nothing is deleted


def test_multirun_records_a_failing_job_and_goes_on(tmp_path):
    proc = run_cli("train", "-m", *SMOKE, "episode.way=5,60", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr  # one job failed: the sweep says so by its exit code too
    jobs = sorted((tmp_path / "sweep").iterdir())
    jobs = [j for j in jobs if j.is_dir() and not j.name.startswith(".")]
    assert len(jobs) == 2
    assert (jobs[0] / "results.json").is_file()
    assert "60-way episodes need 60 classes" in (jobs[1] / "error.txt").read_text()


def test_resume_path_continues_in_the_same_run_dir(tmp_path):
    run = tmp_path / "run"
    first = run_cli("train", *SMOKE, "optimizer.schedule.kind=constant", f"hydra.run.dir={run}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = run_cli("train", *SMOKE, "optimizer.schedule.kind=constant", "trainer.iterations=6", f"resume={run}",
                    cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    import torch

    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == 6
    assert not (tmp_path / "outputs").exists()  # no second run dir


def test_sigint_saves_last_checkpoint_and_says_how_to_resume(tmp_path):
    import signal
    import time

    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.Popen([EXE, "train", *SMOKE, "trainer.iterations=100000", "trainer.log_every=1",
                             "trainer.checkpoint_every=100000", "trainer.val_every=100000", f"hydra.run.dir={run}"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").stat().st_size):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "SIGINT at meta-iteration" in err and f"resume={run}" in err
    stopped = [ln for ln in err.splitlines() if "stopped: SIGINT" in ln]
    assert len(stopped) == 1, err  # printed once; the run's log keeps the same line
    assert stopped[0].split("stopped: ", 1)[1] in (run / "train.log").read_text()
    import torch

    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] >= 1


def test_shell_completion_knows_subcommands_and_their_groups(monkeypatch, capsys):
    monkeypatch.setenv("COMP_LINE", "metalearn tr")
    assert main(["-sc", "query=bash"]) == 0
    assert capsys.readouterr().out.split() == ["train"]
    monkeypatch.setenv("COMP_LINE", "metalearn train encoder=")
    assert main(["-sc", "query=bash"]) == 0
    assert "encoder=conv4" in capsys.readouterr().out.split()
    assert main(["train", "-sc", "install=bash"]) == 0
    assert "complete -p metalearn " in capsys.readouterr().out


def test_version_and_a_mistyped_command(capsys):
    from metalearn_cli import __version__

    assert main(["--version"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"metalearn {__version__} (torch ") and "native bf16 on this CPU: " in line
    assert main(["evl"]) == 2 and "did you mean 'eval'?" in capsys.readouterr().err


@pytest.mark.parametrize("override,hint", [("trainer.iterationz=3", "did you mean 'iterations'?"),
                                           ("encoder=resnt12", "did you mean resnet12?"),
                                           ("strategy=MAML", "did you mean maml?"),
                                           ("optimizer.schedule.kindd=cosine", "did you mean 'kind'?"),
                                           # a key typed under the wrong section: where it lives (trial F's trainer.lr)
                                           ("trainer.lr=0.1", "did you mean 'optimizer.lr'? (lr is a key of optimizer)"),
                                           ("trainer.warmup=5", "did you mean 'optimizer.schedule.warmup'?"),
                                           ("iterations=5", "did you mean 'trainer.iterations' or 'pretrain.iterations'?")])
def test_a_mistyped_key_or_option_gets_a_suggestion(capsys, override, hint):
    assert main(["train", override]) == 2
    err = capsys.readouterr().err
    assert hint in err and ".:" not in err and err.strip().count("\n") == 0


def test_a_key_of_eval_s_own_is_suggested_by_eval_s_schema(capsys):
    """``eval.split=val`` under eval: its validation split is the top-level ``split``, not train's keys (trial G)."""
    assert main(["eval", "checkpoint=RUN", "eval.split=val"]) == 2
    assert "did you mean 'split'? (split is a top-level key)" in capsys.readouterr().err


def test_a_preset_beside_a_component_it_was_not_written_for_says_so(capsys):
    """Hydra's own words (ConfigKeyError raised while composing config: Key 'inner_lr' not in 'MGDParams') name
    neither the cause nor a way out."""
    assert main(["train", "experiment=maml_omniglot_5w1s", "strategy=mgd"]) == 2
    err = capsys.readouterr().err
    assert "experiment=maml_omniglot_5w1s sets strategy.inner_lr, which strategy=mgd does not have" in err
    assert "drop strategy=mgd" in err and "ConfigKeyError" not in err and err.strip().count("\n") == 0


@pytest.mark.parametrize("command,listed,hidden", [
    ("train", ["dataset:", "strategy:", "experiment:", "pretrain: episodic, none, rfs, supervised", "logger: csv, mlflow, tensorboard"], ["schema/", "debug/encoder"]),
    ("eval", ["episode:"], ["schema/", "dataset:", "experiment:", "sweep:", "strategy:", "pretrain:"]),
    ("predict", [], ["schema/", "dataset:", "episode:"]),
])
def test_each_help_lists_only_the_groups_its_command_accepts(capsys, command, listed, hidden):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    groups = out.split("== Composed config")[0]
    assert all(g in groups for g in listed) and not any(h in groups for h in hidden), groups


def test_debug_smoke_with_a_chosen_data_set_is_refused_in_one_line(capsys, tmp_path):
    assert main(["train", "debug=smoke", "dataset=mini_imagenet", f"hydra.run.dir={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err
    assert "debug=smoke runs on generated data" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "r").exists()


def test_a_file_system_error_inside_a_job_says_what_it_is_without_claiming_a_write(tmp_path, capsys, monkeypatch):
    from metalearn_cli import training

    def unreadable(self):
        raise PermissionError(13, "Permission denied", str(tmp_path / "data"))

    monkeypatch.setattr(training.Training, "_build", unreadable)
    assert main(["train", "debug=smoke", f"hydra.run.dir={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err
    assert "cannot access" in err and "Permission denied" in err and "cannot write" not in err
    assert "Error executing job" not in err and err.strip().count("\n") == 0


def test_the_usage_and_version_answer_without_loading_torch():
    code = ("import sys; from metalearn_cli.cli import main; main([]); main(['--version']); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage: metalearn" in proc.stdout


@pytest.mark.parametrize("command", ["train", "eval", "predict", "export"])
def test_every_help_answers_with_torch_blocked(command):
    """--help composes from the torch-free params tables: importing torch would fail here."""
    code = ("import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"
            f"from metalearn_cli.cli import main; sys.exit(main([{command!r}, 'encoder=resnet12' if {command!r} == 'train' else 'checkpoint=x.pt', '--help']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"metalearn {command}:") and "== Composed config" in proc.stdout
    if command == "train":  # the config as composed with the overrides given
        assert "name: resnet12" in proc.stdout and "channels:" in proc.stdout


def test_help_with_a_bad_override_is_one_line(capsys):
    assert main(["train", "encoder=resnet99", "--help"]) == 2
    assert main(["predict", "seed=1", "--help"]) == 2  # predict has no seed
    err = capsys.readouterr().err
    assert "resnet99" in err and "'seed' not in 'PredictConfig'" in err and err.strip().count("\n") == 1


def test_a_redirected_log_has_no_progress_bar_frames(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "metalearn_cli", "train", "dataset=synthetic", "encoder=conv4", "encoder.width=8",
                           "trainer.iterations=20", "trainer.val_every=10", "trainer.log_every=5", "trainer.train_way=null",
                           "trainer.train_query=null", "eval.episodes=20", "trainer.progress=true",
                           f"hydra.run.dir={tmp_path / 'r'}"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr + proc.stdout
    out = proc.stdout + proc.stderr
    assert re.search(r"step 10: val accuracy \d+\.\d\d% ± \d+\.\d\d%", out), out  # every accuracy printed is a percentage
    assert re.search(r"20/20: loss \d\.\d+, accuracy \d+\.\d%", out) and "test accuracy" in out, out


def test_a_run_starts_by_saying_where_it_computes_and_in_what_precision_and_why(tmp_path):
    """On a CPU without AVX512 (emulated: ATEN_CPU_CAPABILITY=avx2) the start-up line says fp32 and why."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    proc = subprocess.run([sys.executable, "-m", "metalearn_cli", "train", "debug=smoke", "trainer.iterations=15",
                           "trainer.log_every=5", f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True,
                          timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = (tmp_path / "run" / "train.log").read_text()
    assert "meta-training on cpu (AVX2 kernels), fp32 (auto: no native bf16 on this CPU (AVX2 kernels)" in log
    assert re.search(r"\d+ CPU threads?; run dir", log) and "for the remaining 5 steps" in log


def test_debug_smoke_shortens_a_presets_pre_training_stage_too(tmp_path):
    """best_omniglot_lake20w1s pre-trains for 30,000 meta-iterations; under debug=smoke its stage takes 20."""
    proc = subprocess.run([sys.executable, "-m", "metalearn_cli", "train", "experiment=best_omniglot_lake20w1s",
                           "debug=smoke", "trainer.progress=false", "hydra.run.dir=run"], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 20
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("args,needle", [
    (["train", "--iterations", "5"], "write it as trainer.iterations=5 or pretrain.iterations=5"),
    (["train", "--lr=0.1"], "write it as optimizer.lr=0.1"),
    (["eval", "--episodes", "3"], "write it as eval.episodes=3"),
    (["sample-task", "out=my_task"], "this command takes flags: write --out my_task"),
    (["report", "runs", "out=figures"], "this command takes flags: write --out figures"),
])
def test_the_other_grammar_gets_a_write_it_as_line(tmp_path, monkeypatch, capsys, args, needle):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and err.strip().count("\n") == 0, err
    assert list(tmp_path.iterdir()) == []


def test_import_metalearn_is_the_package():
    proc = subprocess.run([sys.executable, "-c", "import metalearn, metalearn_cli; assert metalearn is metalearn_cli; "
                           "print(metalearn.load.__module__)"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "metalearn_cli", proc.stderr


@pytest.mark.parametrize("value", ["/tmp/runs/a-1", "/tmp/résultats été/run 2", "it's \"here\"", "x${y}", "c:\\dir\\", "a,b"])
def test_printed_overrides_paste_back_into_a_shell_and_hydra_as_the_same_path(value):
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from metalearn_cli.console import shell_override

    words = shlex.split(shell_override("resume", value))  # what the shell hands metalearn
    assert len(words) == 1
    parsed = OverridesParser.create().parse_override(words[0])
    assert not parsed.is_sweep_override()
    assert OmegaConf.create({"v": parsed.value()}).v == value  # as the config reads it, escapes resolved


def test_hydra_flags_with_an_optional_or_missing_value_are_not_fed_the_clis_own_override(tmp_path):
    script = Path(sys.executable).with_name("metalearn")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "metalearn_cli"]
    info = subprocess.run([*command, "train", "--info"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert info.returncode == 0 and "Hydra" in info.stdout and "invalid choice" not in info.stderr, info.stderr
    for args, needle in ((["train", "-sc"], "-sc needs what to do"), (["train", "--experimental-rerun", "nowhere"], "does not exist")):
        proc = subprocess.run([*command, *args], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_ctrl_c_outside_the_loop_still_says_how_to_resume(tmp_path, capsys, monkeypatch):
    """A second Ctrl-C can land where the loop no longer watches (while the first is handled): the run's
    saved checkpoint still gets its resume line, not a bare "interrupted"."""
    from metalearn_cli.training import Training

    run = tmp_path / "run"
    assert main(["train", *SMOKE, f"hydra.run.dir={run}"]) == 0
    capsys.readouterr()

    def ctrl_c(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Training, "run", ctrl_c)
    assert main(["train", f"resume={run}", "trainer.iterations=8"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("metalearn train: stopped: SIGINT: stopped at once") and f"resume={run}" in err[-1], err
    assert "continue with" in (run / "train.log").read_text().splitlines()[-1]
    fresh = tmp_path / "fresh"
    assert main(["train", *SMOKE, f"hydra.run.dir={fresh}"]) == 130  # nothing saved yet: nothing to continue
    assert capsys.readouterr().err.strip().splitlines()[-1] == "metalearn train: interrupted before its end"
    assert main(["train", "-m", *SMOKE, "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}"]) == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]  # a sweep's line says how to finish it
    assert last.startswith("metalearn train: interrupted before its end; to finish the sweep (each job continued or kept): metalearn train -m"), last


def test_a_ctrl_c_before_a_command_handles_it_is_one_line(monkeypatch, capsys):
    """While torch or Hydra is still being imported, a Ctrl-C is one line, not an import traceback."""
    import metalearn_cli.cli as cli

    def importing(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_dispatch", importing)
    assert cli.main(["export", "checkpoint=x", "out=y.pt"]) == 130
    assert capsys.readouterr().err == "metalearn export: interrupted\n"


def test_a_leading_tilde_is_the_home_folder_plain_quoted_or_in_a_list(monkeypatch):
    from metalearn_cli.command_line import expand_home

    monkeypatch.setenv("HOME", "/home/ann")
    assert expand_home(["checkpoint=~/r/best.pt", 'support="~/my task"', "out=~", "-cd", "~/x"]) == [
        "checkpoint='/home/ann/r/best.pt'", "support='/home/ann/my task'", "out='/home/ann'", "-cd", "~/x"]
    assert expand_home(["ensemble=[~/a.pt,b.pt]", "x=a~/b", "~seed", "tag=~a b"]) == [
        "ensemble=['/home/ann/a.pt',b.pt]", "x=a~/b", "~seed", "tag=~a b"]


def test_a_character_hydra_refuses_unquoted_is_named_with_the_quoted_override(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "checkpoint=runs/a#1"]) == 2
    err = capsys.readouterr().err
    assert """'#' needs the value in quotes inside the shell's: 'checkpoint="runs/a#1"'""" in err, err


@pytest.mark.parametrize("override,needle", [
    ("episode.way=1", "test episodes of 1 way cannot be scored: a task needs 2 classes or more"),
    ("episode.query=0", "test episodes need shot >= 1 and query >= 1"),
    ("optimizer.lr=-0.1", "needs lr > 0"),
    ("device=tpu", "device=tpu is not a device"),
    ("decoder=linear", "decoder=linear ignores the support set and strategy=mgd never adapts it"),
    ("dataset=folder", "dataset=folder needs dataset.root=DIR"),
    ("dataset=folder dataset.root=", "dataset.root is empty (an unset shell variable?)"),  # not the current folder
    ("dataset=omniglot dataset.root=''", "or leave it out for the embedded 28 px copy"),
    ("dataset=folder dataset.root=x dataset.channels=2", "dataset.channels=2 must be 1 (grey) or 3 (RGB)"),
    ("pretrain=episodic pretrain.batch_size=64", "pretrain.batch_size is read by pretrain=supervised only"),
    ("optimizer.lr=1e38", "overflows single precision"),
    ("pretrain=supervised trainer.freeze_encoder=true", "leaves nothing to meta-train in decoder=prototype"),
])
def test_cfg_job_says_a_run_would_be_refused_whatever_check_refuses_it(capsys, tmp_path, monkeypatch, override, needle):
    """What train refuses before reading data, --cfg refuses too: a config checked by printing it is one a
    cluster would run (the checks of the components themselves and of the data set's keys included)."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", *override.split(), "--cfg", "job"]) == 2
    err = capsys.readouterr().err
    assert "a run of this config would be refused: " in err and needle in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_ctrl_c_that_escapes_the_training_loop_marks_a_running_run_and_stage_interrupted(tmp_path):
    """A second Ctrl-C while the first is handled escapes the loop: the run (and its stage) must not be left
    'running' in status.json, where report and compare would take it for a live run; the step is kept."""
    import json

    from metalearn_cli.cli.job_endings import JobFailed as _JobFailed, after_ctrl_c as _after_ctrl_c
    from metalearn_cli.rundir import STAGE, write_status

    class Guard:
        writer = True

        def interrupted(self):
            pass

        def log_end(self, message):
            self.ended = message

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    (run / STAGE).mkdir()
    write_status(run, "running", step=50)
    write_status(run / STAGE, "completed")
    with pytest.raises(_JobFailed, match="stopped at once"):
        _after_ctrl_c("train", run, Guard())
    status = json.loads((run / "status.json").read_text())
    assert (status["status"], status["step"]) == ("interrupted", 50)
    assert json.loads((run / STAGE / "status.json").read_text())["status"] == "completed"


def test_a_flag_between_overrides_runs_as_if_typed_before_them(tmp_path):
    """Hydra's parser takes the overrides as one run of words; ``train debug=smoke --cfg job seed=3`` means what it
    says, so it runs, as does a sweep's ``-m`` typed after the first overrides."""
    from metalearn_cli.command_line import flags_first

    assert flags_first(["debug=smoke", "-m", "seed=0,1"]) == ["-m", "debug=smoke", "seed=0,1"]
    from hydra._internal.utils import get_args_parser

    for args in (["a=1", "--cfg", "job", "b=2", "-cd", "my dir", "--info", "c=3"], ["seed=1", "--info"], ["-i", "seed=1"], ["--info", "-m", "seed=1"]):
        parsed = get_args_parser().parse_args(flags_first(args))  # as Hydra's own parser reads the reordered line
        assert parsed.overrides == [a for a in args if "=" in a] and parsed.info == "all", parsed
    script = Path(sys.executable).with_name("metalearn")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "metalearn_cli"]
    shown = subprocess.run([*command, "train", "debug=smoke", "--cfg", "job", "seed=3"], capture_output=True, text=True,
                           timeout=120, cwd=tmp_path)
    assert shown.returncode == 0 and "\nseed: 3\n" in shown.stdout, shown.stderr


def test_a_ctrl_c_while_the_cli_still_imports_is_one_line(monkeypatch, capsys):
    """The console script's first half second is Hydra's and OmegaConf's imports: a Ctrl-C there is a line too."""
    import types

    from metalearn_cli import entry

    importing = types.ModuleType("metalearn_cli.cli")

    def interrupted(name):
        raise KeyboardInterrupt

    importing.__getattr__ = interrupted  # the module as a Ctrl-C finds it half imported
    monkeypatch.setitem(sys.modules, "metalearn_cli.cli", importing)
    assert entry.main() == 130
    assert capsys.readouterr().err == "metalearn: interrupted\n"
