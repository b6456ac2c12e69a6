"""No spelling of a path gets around a run-dir guard: every refused command, under every spelling
of the run dir it names (plain, quoted, relative with ``..``, through a symlink, with spaces and
non-ASCII characters), is one line, exit code 2, the run dir byte for byte as it was, and nothing
new anywhere (no stray folder named with a quote, no ``.lock`` elsewhere)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_image_task
from metalearn_cli.cli import main
from metalearn_cli.command_line import claim_fresh, hydra_quote
from test_nothing_lost import SMOKE, tree_hash


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A finished training run, an earlier eval, and a task folder, made through the CLI."""
    root = tmp_path_factory.mktemp("guards")
    train, evaluation = root / "runs" / "train", root / "runs" / "eval"
    assert main(["train", *SMOKE, f"hydra.run.dir={train}"]) == 0
    assert main(["eval", f"checkpoint={train}", "eval.episodes=2", f"hydra.run.dir={evaluation}"]) == 0
    write_image_task(root / "task")
    project = root / "project"  # a user's folder, not a run: no run is mixed into it
    (project / "data").mkdir(parents=True)
    (project / "notes.txt").write_text("a user's notes")
    return {"train": train, "eval": evaluation, "project": project, "root": root}


def spell(path: Path, how: str, cwd: Path) -> str:
    """``path`` as a user might type it on a Hydra command line (the value after ``key=``)."""
    if how == "plain":
        return str(path)
    if how == "quoted":
        return f'"{path}"'
    if how == "relative":
        os.makedirs(cwd / "sub", exist_ok=True)
        return os.path.join("sub", "..", os.path.relpath(path, cwd))
    link = cwd / ("link" if how == "symlink" else "my rün link")
    if not link.exists():
        link.symlink_to(path, target_is_directory=True)
    return str(link) if how == "symlink" else f"'{link}'"


SPELLINGS = ["plain", "quoted", "relative", "symlink", "spaces-non-ascii"]
CASES = {  # command line (RUN: the spelled training run, EVAL: the spelled eval dir) -> what the line says
    "train over a finished run": (["train", *SMOKE, "hydra.run.dir=RUN"], "already holds a run"),
    "train another seed over it": (["train", *SMOKE, "seed=5", "hydra.run.dir=RUN"], "already holds a run"),
    "eval into the training run": (["eval", "checkpoint=CKPT", "episode=5way5shot", "hydra.run.dir=RUN"], "is a training run"),
    "predict into the training run": (["predict", "checkpoint=CKPT", "support=TASK/support", "query=TASK/query",
                                       "hydra.run.dir=RUN"], "is a training run"),
    "export over results.json": (["export", "checkpoint=CKPT", "out=RUN/results.json", "hydra.run.dir=FRESH"],
                                 "which would be replaced"),
    "export into the training run": (["export", "checkpoint=CKPT", "out=FRESH/k.pt", "hydra.run.dir=RUN"], "is a training run"),
    "eval into an earlier eval": (["eval", "checkpoint=CKPT", "hydra.run.dir=EVAL"], "is an earlier run"),
    "resume into another dir": (["train", "resume=RUN", "hydra.run.dir=FRESH"], "drop hydra.run.dir"),
    "train into a user's folder": (["train", *SMOKE, "hydra.run.dir=PROJ"], "holds files that are not a metalearn run's (data, notes.txt)"),
    "eval into a user's folder": (["eval", "checkpoint=CKPT", "hydra.run.dir=PROJ"], "holds files that are not a metalearn run's"),
}
GUARDED = ("train", "eval", "project")


@pytest.mark.parametrize("how", SPELLINGS)
@pytest.mark.parametrize("case", list(CASES))
def test_no_spelling_gets_around_a_guard(runs, tmp_path, monkeypatch, capsys, case, how):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = {name: tree_hash(runs[name]) for name in GUARDED}
    args, needle = CASES[case]
    fresh = tmp_path / "fresh"
    filled = []
    for a in args:
        key, _, value = a.partition("=")
        if value.startswith(("RUN", "EVAL", "PROJ")):
            target = runs[{"R": "train", "E": "eval", "P": "project"}[value[0]]]
            rest = value.split("/", 1)[1] if "/" in value else ""
            spelled = spell(target, how, cwd)
            if rest:  # a file inside the run: keep the spelling's quotes around the whole value
                spelled = spelled[:-1] + "/" + rest + spelled[-1] if spelled[0] in "\"'" else os.path.join(spelled, rest)
            a = f"{key}={spelled}"
        a = a.replace("CKPT", str(runs["train"])).replace("TASK", str(runs["root"] / "task")).replace("FRESH", str(fresh))
        filled.append(a)
    code = main(filled)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.strip().count("\n") == 0 and "Traceback" not in err and needle in err, err
    assert {name: tree_hash(runs[name]) for name in GUARDED} == before, "a run (or a user's folder) changed"
    assert {p.name for p in cwd.iterdir()} <= {"link", "my rün link", "sub"}, "something was written in the cwd"
    assert not fresh.exists() or not any(fresh.rglob("*.json")), "the refused command wrote elsewhere"


def test_a_finished_run_without_last_pt_is_not_retrained(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["train"], run)
    (run / "checkpoints" / "last.pt").unlink()
    before = tree_hash(run)
    for extra in ([], ["seed=5"]):
        assert main(["train", *SMOKE, *extra, f"hydra.run.dir={run}"]) == 2
        err = capsys.readouterr().err
        assert "already holds a run" in err and "no last.pt to resume from" in err, err
        assert tree_hash(run) == before


def test_a_run_refused_before_it_wrote_anything_can_be_run_again(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *SMOKE, "optimizer.lr=0", f"hydra.run.dir={run}"]) == 2  # refused: the line says why
    assert "needs lr > 0" in capsys.readouterr().err and not run.exists()  # and nothing is left to list as a run
    run.mkdir()
    (run / "error.txt").write_text("an earlier refusal's record\n")  # as versions before 2026-12-05 left
    assert main(["train", *SMOKE, f"hydra.run.dir={run}"]) == 0
    assert not (run / "error.txt").exists()  # the run the dir holds now, without a stale error beside it


def test_the_quoted_guard_through_the_console_script(runs, tmp_path):
    """The same guard, through the command a user types, with the quotes a shell passes on."""
    before = tree_hash(runs["train"])
    script = Path(sys.executable).with_name("metalearn")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "metalearn_cli"]
    proc = subprocess.run([*command, "eval", f"checkpoint={runs['train']}", "episode=5way5shot",
                           f'hydra.run.dir="{runs["train"]}"'], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "is a training run" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert tree_hash(runs["train"]) == before and list(tmp_path.iterdir()) == []


def test_default_run_dirs_never_collide(tmp_path, monkeypatch):
    """Two runs started in the same second get two dirs; the names are claimed atomically."""
    base = tmp_path / "outputs" / "2026-12-01_12-00-00"
    assert [claim_fresh(base), claim_fresh(base), claim_fresh(base)] == [base, base.with_name(base.name + "_1"),
                                                                          base.with_name(base.name + "_2")]
    monkeypatch.chdir(tmp_path)
    procs = [subprocess.Popen([sys.executable, "-m", "metalearn_cli", "train", *SMOKE, f"seed={seed}"], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    assert all(p.wait(timeout=300) == 0 for p in procs), [p.stderr.read() for p in procs]
    runs = [p.parent for p in (tmp_path / "outputs" / "train").rglob("results.json")]
    assert len(runs) == 2
    seeds = sorted(json.loads(json.dumps(__import__("yaml").safe_load((r / ".hydra" / "config.yaml").read_text())))["seed"]
                   for r in runs)
    assert seeds == [1, 2]  # each run's .hydra/ holds its own config


@pytest.mark.parametrize("text", ["/tmp/plain", "/tmp/my rün", "it's", "a\\", "a\\'b", "x${y}", 'double"quote'])
def test_hydra_quote_parses_back_to_the_same_text(text):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    parsed = OverridesParser.create().parse_override(f"hydra.run.dir={hydra_quote(text)}").value()
    assert OmegaConf.create({"dir": parsed}).dir == text  # as the composed config resolves it


# ----------------------------------------------------------------------------- ways past the command-line check
def test_jobs_check_their_own_run_dir_under_sweeps_and_other_hydra_flags(runs, tmp_path, capsys, monkeypatch):
    """A sweep job, ``-cd`` / ``--config-name``, or a sub-dir naming a finished run: the job itself
    refuses before anything is written (Hydra writes no .hydra/ and no log file into a run dir)."""
    monkeypatch.chdir(tmp_path)
    train = runs["train"]
    before = tree_hash(train)
    cases = [
        ["train", "-m", *SMOKE, f"hydra.sweep.dir={train.parent}", f"hydra.sweep.subdir={train.name}"],
        ["train", *SMOKE, "hydra.mode=MULTIRUN", f"hydra.sweep.dir={train.parent}", f"hydra.sweep.subdir={train.name}"],
        ["eval", "-m", f"checkpoint={train}", f"hydra.sweep.dir={train.parent}", f"hydra.sweep.subdir={train.name}"],
        ["train", *SMOKE, f"hydra.run.dir={train}", "--config-name", "train"],
        ["eval", f"checkpoint={train}", f"hydra.run.dir={train}", "-cd", str(tmp_path)],
        ["train", *SMOKE, "seed=5", f"hydra.run.dir={tmp_path / 'new'}", f"hydra.output_subdir={train / '.hydra'}"],
    ]
    for args in cases:
        main(args)
        capsys.readouterr()
        assert tree_hash(train) == before, args
    assert (tmp_path / "new" / ".hydra" / "config.yaml").is_file()  # that run's record went into its own dir
    assert not (tmp_path / "outputs").exists()  # no default dir claimed for a sweep


def test_a_sub_dir_that_collides_inside_one_sweep_leaves_the_first_job_as_it_was(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    assert main(["train", "-m", *SMOKE, "encoder.width=8,16", f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=same"]) == 1
    status = json.loads((sweep / "same" / "status.json").read_text())["status"]
    assert status == "completed"
    assert "encoder.width=8" in (sweep / "same" / ".hydra" / "overrides.yaml").read_text()  # the record matches the weights
    assert "already holds a run" in capsys.readouterr().out


def test_a_refused_command_without_a_run_dir_leaves_no_folder_behind(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *SMOKE, "resume=true"]) == 2
    assert "resume=true continues the run in hydra.run.dir, and none is named" in capsys.readouterr().err
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # the claimed default dir is gone


@pytest.mark.parametrize("args, needle", [
    (["eval", "checkpoint=nowhere.pt"], "does not exist"),
    (["predict", "checkpoint=nowhere.pt", "support=s", "query=q"], "does not exist"),
    (["export", "checkpoint=nowhere.pt", "out=x.pt"], "does not exist"),
])
def test_a_failed_tool_command_leaves_no_default_folder_to_list_as_a_run(tmp_path, monkeypatch, capsys, args, needle):
    """eval, predict and export accept their default dir early; when they fail, it held nothing but the error."""
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    assert needle in capsys.readouterr().err
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_a_sweep_into_a_used_sweep_dir_is_refused_before_its_record_is_replaced(tmp_path, capsys):
    """Hydra writes multirun.yaml before any job checks its dir: the sweep is refused before that."""
    sweep = tmp_path / "sweep é"
    args = ["train", "-m", *SMOKE, "seed=0,1", f'hydra.sweep.dir="{sweep}"']
    assert main(args) == 0
    first = tree_hash(sweep)
    capsys.readouterr()
    for again in (args, ["train", "-m", *SMOKE, "seed=5", f'hydra.sweep.dir="{sweep}"']):
        assert main(again) == 2
        err = capsys.readouterr().err
        assert "already holds a sweep's runs (0_" in err and "choose a new hydra.sweep.dir" in err, err
        assert tree_hash(sweep) == first  # multirun.yaml included
    typo = tmp_path / "typo"
    assert main(["train", "-m", *SMOKE, "trainer.iteratons=1,2", f"hydra.sweep.dir={typo}"]) == 2  # no job ran
    capsys.readouterr()
    assert main(["train", "-m", *SMOKE, "trainer.iterations=1,2", f"hydra.sweep.dir={typo}"]) == 0  # corrected: runs there


def test_a_sweep_job_refused_by_its_own_guard_names_the_sweep_dir(tmp_path, capsys):
    """Two jobs sent into one sub-dir: the second finds the first's run there and is refused alone."""
    sweep = tmp_path / "sweep"
    first = main(["train", "-m", *SMOKE, "seed=0,1", f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=same"])
    out, err = capsys.readouterr()
    assert first == 1 and "1 of 2 sweep jobs failed" in err, err  # some ran: exit 1, all failed: 2
    assert "already holds a run" in out + err and "a new hydra.sweep.dir" in out + err
    assert json.loads((sweep / "same" / "results.json").read_text())["seed"] == 0  # the first job's run, kept


def test_ctrl_c_in_eval_marks_a_named_dir_interrupted_and_removes_a_default_one(runs, tmp_path, monkeypatch, capsys):
    from metalearn_cli import evaluation

    def stopped(cfg, run_dir):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation, "evaluate", stopped)
    monkeypatch.chdir(tmp_path)
    named = tmp_path / "named"
    assert main(["eval", f"checkpoint={runs['train']}", f"hydra.run.dir={named}"]) == 130
    assert json.loads((named / "status.json").read_text())["status"] == "interrupted"
    assert main(["eval", f"checkpoint={runs['train']}"]) == 130
    assert not (tmp_path / "outputs").exists()  # the default dir and the folders made for it
    assert "interrupted" in capsys.readouterr().err


def test_ctrl_c_before_training_began_removes_the_default_dir_it_claimed(tmp_path, monkeypatch, capsys):
    """Stopped while it read its data, a train has written nothing: no empty dir is left under outputs/."""
    from metalearn_cli import training

    def stopped(self, cfg, run_dir):
        raise KeyboardInterrupt

    monkeypatch.setattr(training.Training, "__init__", stopped)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "debug=smoke"]) == 130
    assert not (tmp_path / "outputs").exists()
    assert "interrupted" in capsys.readouterr().err


def test_sigterm_in_eval_stops_it_as_ctrl_c_does(runs, tmp_path, monkeypatch, capsys):
    import os
    import signal

    from metalearn_cli import evaluation

    def terminated(cfg, run_dir):
        os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's stop, mid-evaluation
        raise AssertionError("SIGTERM did not stop the evaluation")

    monkeypatch.setattr(evaluation, "evaluate", terminated)
    before = signal.getsignal(signal.SIGTERM)
    named = tmp_path / "named"
    assert main(["eval", f"checkpoint={runs['train']}", f"hydra.run.dir={named}"]) == 143  # 128 + SIGTERM
    assert json.loads((named / "status.json").read_text())["status"] == "interrupted"
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "metalearn eval: stopped by SIGTERM before its end; to finish it, run the same metalearn eval again"
    assert signal.getsignal(signal.SIGTERM) is before  # the process's own handler, back
    monkeypatch.undo()
    assert main(["eval", f"checkpoint={runs['train']}", f"hydra.run.dir={named}"]) == 0  # as it says: the same dir, again
    assert json.loads((named / "status.json").read_text())["status"] == "completed"
    assert main(["eval", f"checkpoint={runs['train']}", f"hydra.run.dir={named}"]) == 2  # a finished eval is kept


def test_a_folder_that_cannot_be_written_is_one_line_for_every_command(runs, tmp_path):
    """/proc takes no new folders, even from root (whom chmod does not stop): the default run dir,
    report's and sample-task's --out."""
    script = Path(sys.executable).with_name("metalearn")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "metalearn_cli"]
    for args, cwd, needle in ((["train", *SMOKE], "/proc", "cannot create the default run dir"),
                              (["report", str(runs["train"]), "--out", "/proc/metalearn/rep"], tmp_path, "--out"),
                              (["sample-task", "--out", "/proc/metalearn/t"], tmp_path, "--out is writable"),
                              (["train", "-m", *SMOKE, "seed=0,1", "hydra.sweep.dir=/proc/metalearn/sw"], tmp_path,
                               "cannot create the sweep dir /proc/metalearn/sw (No such file")):
        proc = subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_a_stop_that_comes_just_after_the_work_was_written_is_no_failure(runs, tmp_path, monkeypatch, capsys):
    """Ctrl-C a moment after export wrote its file and record: exit 0 and the dir kept as finished, not
    "interrupted" beside a finished export (whose dir a rerun would then refuse)."""
    from metalearn_cli import export

    real = export.export_command

    def late_ctrl_c(cfg, run_dir):
        real(cfg, run_dir)
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "export_command", late_ctrl_c)
    out, named = tmp_path / "model.pt", tmp_path / "named"
    assert main(["export", f"checkpoint={runs['train']}", f"out={out}", f"hydra.run.dir={named}"]) == 0
    assert out.is_file() and json.loads((named / "export.json").read_text())["out"] == str(out.resolve())
    assert "finished before the interrupt came" in (named / "export.log").read_text()
    assert "interrupted" not in capsys.readouterr().err


def test_a_run_dir_that_stops_taking_writes_mid_resume_is_one_line_naming_it(tmp_path, monkeypatch, capfd):
    """A run dir made read-only (chmod, chattr +i) after its run: a resume fails at its first write, and the
    line names that file and the folder's permissions, not a second failure to record the first."""
    import metalearn_cli.files as files

    run = tmp_path / "run"
    assert main(["train", *SMOKE, "trainer.iterations=4", f"hydra.run.dir={run}"]) == 0
    replace = os.replace

    def refused(src, dst):
        if Path(dst).parent == run:  # the run dir's own files; the .hydra record is elsewhere
            raise PermissionError(1, "Operation not permitted")
        return replace(src, dst)

    monkeypatch.setattr(files.os, "replace", refused)
    capfd.readouterr()
    assert main(["train", *SMOKE, "trainer.iterations=6", f"resume={run}"]) == 2
    err = capfd.readouterr().err
    assert "Error executing job" not in err and "error.txt" not in err, err
    last = err.strip().splitlines()[-1]
    assert "could not write" in last and f"{run} is not writable: make it writable" in last, last
    assert (run / "checkpoints" / "last.pt").is_file() and json.loads((run / "results.json").read_text())
