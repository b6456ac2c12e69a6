"""metalearn compare: paired differences on the same fixed test tasks, McNemar, and refusals."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import pytest

from conftest import FAST
from metalearn_cli.cli import main
from metalearn_cli.paired_stats import outcomes, predictions
from metalearn_cli.errors import MetalearnError


def test_compare_two_runs_on_the_same_tasks_through_the_cli(tmp_path, capsys):
    for name, width in (("a", 16), ("b", 8)):
        assert main(["train", *FAST, f"encoder.width={width}", f"hydra.run.dir={tmp_path / name}"]) == 0
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "cmp")]) == 0
    assert b"\r" not in (tmp_path / "cmp" / "compare.csv").read_bytes()  # Unix line ends, as every file we write
    with open(tmp_path / "cmp" / "compare.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    acc = {n: 100 * json.loads((tmp_path / n / "results.json").read_text())["accuracy"] for n in ("a", "b")}
    assert float(row["difference"]) == pytest.approx(acc["b"] - acc["a"], abs=1e-3)
    queries = outcomes(tmp_path / "a").size
    assert (int(row["only_run_right"]) - int(row["only_reference_right"])) == pytest.approx(
        (acc["b"] - acc["a"]) / 100 * queries, abs=0.5)
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    # the predictions kept beside the outcomes: right exactly where they equal the labels' outcomes say
    pa, pb = predictions(tmp_path / "a"), predictions(tmp_path / "b")
    assert pa.shape == outcomes(tmp_path / "a").shape and pa.min() >= 0 and pa.max() < 5
    assert int(row["predictions_differ"]) == int((pa != pb).sum()) > 0 and int(row["predictions"]) == pa.size
    assert int(row["predictions_differ"]) >= int(row["only_run_right"]) + int(row["only_reference_right"])
    assert f"{row['predictions_differ']} of {pa.size} predictions differ" in capsys.readouterr().out
    # another task shape is not the same tasks; a run without outcomes says how to get them
    assert main(["train", *FAST, "episode.shot=2", f"hydra.run.dir={tmp_path / 'c'}"]) == 0
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    hint = "(metalearn eval checkpoint=RUN episode=5way1shot episode.way=5 episode.shot=1 episode.query=3)"
    assert "was not scored on the tasks of" in err and hint in err, err
    from metalearn_cli.cli.placement import compose  # the hint's keys compose as an eval command line
    assert compose("eval", ["checkpoint=RUN", *hint[len("(metalearn eval checkpoint=RUN "):-1].split()]).episode.shot == 1
    (tmp_path / "b" / "test_outcomes.npz").unlink()
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "holds no test_outcomes.npz" in err and "metalearn eval checkpoint=" in err and err.count("\n") == 1
    from metalearn_cli.paired_stats import read_outcomes

    (tmp_path / "b c").mkdir()
    with pytest.raises(MetalearnError, match=f"""metalearn eval 'checkpoint="{tmp_path / 'b c'}"' hydra.run.dir=NEW_DIR"""):
        read_outcomes(tmp_path / "b c")  # the printed command pastes whole


def test_compare_pairs_seeds_of_two_settings_through_the_cli(tmp_path, capsys, monkeypatch):
    for width in (8, 16):
        for seed in (0, 1):
            assert main(["train", *FAST, f"encoder.width={width}", f"seed={seed}",
                         f"hydra.run.dir={tmp_path / f'w{width}_s{seed}'}"]) == 0
    runs = [str(tmp_path / n) for n in ("w8_s0", "w8_s1", "w16_s1", "w16_s0")]
    assert main(["compare", *runs, "--out", str(tmp_path / "cmp")]) == 0
    with open(tmp_path / "cmp" / "compare.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["seeds"] == "2" and "encoder.width=16" in row["run"] and "encoder.width=8" in row["reference"]
    acc = {n: 100 * json.loads((tmp_path / n / "results.json").read_text())["accuracy"] for n in ("w8_s0", "w8_s1", "w16_s0", "w16_s1")}
    expected = ((acc["w16_s0"] - acc["w8_s0"]) + (acc["w16_s1"] - acc["w8_s1"])) / 2
    assert float(row["difference"]) == pytest.approx(expected, abs=1e-3)
    per_seed = [acc["w16_s0"] - acc["w8_s0"], acc["w16_s1"] - acc["w8_s1"]]  # Student's t over the two seeds
    assert float(row["ci95_high"]) == pytest.approx(expected + 12.71 * abs(per_seed[0] - per_seed[1]) / 2, abs=2e-3)
    said = capsys.readouterr()
    assert "x 2 seeds" in said.out and "over seeds (Student's t); for these networks, seeds pooled: better on" in said.out
    assert f"better on {row['run_better_tasks']} vs {row['reference_better_tasks']} task-seed pairs (sign test p" in said.out
    holds_zero = float(row["ci95_low"]) <= 0 <= float(row["ci95_high"])  # said where it explains an interval holding 0
    assert said.err.count("an interval over 2 seeds has 1 degree of freedom") == int(holds_zero)
    # eval dirs of those runs (one checkpoint path each) pool by the recipe that trained them
    evals = [str(tmp_path / f"eval_{n}") for n in ("w8_s0", "w8_s1", "w16_s1", "w16_s0")]
    for run, evaluation in zip(runs, evals):
        assert main(["eval", f"checkpoint={run}", "eval.episodes=20", "eval.tta_shift=1", f"hydra.run.dir={evaluation}"]) == 0
    capsys.readouterr()
    assert main(["compare", *evals, "--out", str(tmp_path / "cmp_eval")]) == 0
    with open(tmp_path / "cmp_eval" / "compare.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["seeds"] == "2" and "encoder.width=16" in row["run"] and "encoder.width=8" in row["reference"]
    assert "x 2 seeds" in capsys.readouterr().out
    assert main(["compare", runs[0], runs[1]]) == 2  # seeds of one setting: not tested on the same tasks
    err = capsys.readouterr().err
    assert "seeds of one setting" in err and "(metalearn eval checkpoint=RUN seed=0) and compare the eval dirs" in err
    rescored = [str(tmp_path / f"rescored_{n}") for n in ("w8_s0", "w8_s1")]  # the advice, followed
    for run, evaluation in zip(runs[:2], rescored):
        assert main(["eval", f"checkpoint={run}", "seed=0", "eval.episodes=20", f"hydra.run.dir={evaluation}"]) == 0
    capsys.readouterr()
    assert main(["compare", *rescored, "--out", str(tmp_path / "cmp_rescored")]) == 0
    line = capsys.readouterr().out.splitlines()[0]  # named by their dirs alone: no "(common settings)"
    assert line.startswith("rescored_w8_s1 (eval of w8_s1) vs rescored_w8_s0 (eval of w8_s0): "), line
    assert main(["compare", runs[0], str(tmp_path / "w16_s1")]) == 2  # no seed in common
    err = capsys.readouterr().err
    assert "shares no seed" in err and "metalearn eval checkpoint=RUN seed=" in err
    assert "(w16_s1)" in err and "(w8_s0)" in err  # the settings' labels, and where their runs are
    assert main(["compare", evals[0], evals[2], "--out", str(tmp_path / "cmp_two_evals")]) == 2
    assert "eval_w16_s1 (eval of w16_s1)" in capsys.readouterr().err  # an eval dir, by the run it scored
    for name, evaluation in (("e8", evals[0]), ("e16", evals[2])):
        shutil.copytree(evaluation, tmp_path / "elsewhere" / name)
    monkeypatch.chdir(tmp_path)  # the runs they scored are outside their folder: named from here, not from /
    assert main(["compare", str(tmp_path / "elsewhere" / "e8"), str(tmp_path / "elsewhere" / "e16")]) == 2
    assert "e16 (eval of w16_s1)" in capsys.readouterr().err
    # --setting: the user says which runs are one setting (here across configs), through the console command
    cross = [sys.executable, "-m", "metalearn_cli", "compare", "--setting", runs[0], runs[2], "--setting", runs[3], runs[1],
             "--out", str(tmp_path / "cross")]
    done = subprocess.run(cross, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "cross" / "compare.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    expected = ((acc["w16_s0"] - acc["w8_s0"]) + (acc["w8_s1"] - acc["w16_s1"])) / 2
    assert row["seeds"] == "2" and float(row["difference"]) == pytest.approx(expected, abs=1e-3)
    assert row["reference"].startswith("w8_s0") and "x 2 seeds" in done.stdout
    assert "differ in encoder.width; they are pooled as one setting as asked" in done.stderr  # a slip is seen (trial G)
    assert main(["compare", "--setting", runs[0], runs[1], "--setting", runs[2], runs[3]]) == 0  # as the configs group them
    said = capsys.readouterr()
    assert "x 2 seeds" in said.out and "pooled as one setting" not in said.err
    assert main(["compare", "--setting", runs[0], runs[1], "--setting", runs[3], "--out", str(tmp_path / "one")]) == 0
    out, err = capsys.readouterr()
    assert "note: seed 1 is in only one of" in err and "compared on seed 0" in err and "x 2 seeds" not in out
    with open(tmp_path / "one" / "compare.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["reference"].endswith("(seed 0 of 0, 1)") and row["seeds"] == "1"  # the table says whose numbers they are
    for argv, message in ((["--setting", runs[0], runs[3], "--setting", runs[1]], "two runs of seed 0"),
                          (["--setting", runs[0], "--setting", runs[0]], "is given twice"),
                          (["--setting", runs[0], runs[1]], "--setting twice or more"),
                          ([runs[0], "--setting", runs[2]], "not both")):
        assert main(["compare", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_a_run_without_test_results_is_named_with_its_status_not_called_other_tasks(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from metalearn_cli.rundir import write_status

    done, stopped = tmp_path / "done", tmp_path / "stopped"
    for path in (done, stopped):
        path.mkdir()
    (done / "results.json").write_text('{"accuracy": 0.9, "dataset": "omniglot", "split": "test", "way": 5}')
    write_status(stopped, "interrupted", step=3)
    exe = Path(sys.executable).with_name("metalearn")
    proc = subprocess.run([str(exe), "compare", str(done), str(stopped)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "has no test results (status: interrupted); resume it" in proc.stderr, proc.stderr
    from metalearn_cli.rundir import exclusive

    write_status(stopped, "running", step=3)
    with exclusive(stopped):  # a live run holds its lock: it is waited for, not resumed
        proc = subprocess.run([str(exe), "compare", str(done), str(stopped)], capture_output=True, text=True, timeout=120)
    assert "(status: running); it is still running" in proc.stderr and "resume" not in proc.stderr, proc.stderr
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "results.json").write_text('{"accuracy": 0.9, "data')  # cut short: named as damaged, not as untested
    proc = subprocess.run([str(exe), "compare", str(done), str(damaged)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "results.json is damaged (not readable JSON)" in proc.stderr, proc.stderr
    proc = subprocess.run([str(exe), "report", str(done), str(damaged), "--out", str(tmp_path / "rep")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Note: damaged (read as empty" in proc.stdout, proc.stderr


def test_a_run_given_twice_is_refused_and_other_runs_never_replace_a_default_comparison(tmp_path, capsys):
    import os
    from pathlib import Path

    runs = tmp_path / "runs"
    for name, width in (("a", 16), ("b", 8), ("c", 12)):
        assert main(["train", *FAST, f"encoder.width={width}", f"hydra.run.dir={runs / name}"]) == 0
    os.symlink(runs / "a", tmp_path / "link to a")
    exe = Path(sys.executable).with_name("metalearn")
    for twice in ([runs / "a", runs / "a"], [runs / "a", tmp_path / "link to a"], [runs / "a", runs]):
        proc = subprocess.run([str(exe), "compare", *map(str, twice)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "is given twice" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert f"(as {runs / 'a'} and within {runs})" in proc.stderr  # the folder that holds it again is named
    assert not (runs / "compare").exists()
    capsys.readouterr()
    assert main(["compare", str(runs / "a"), str(runs / "b")]) == 0
    first = (runs / "compare" / "compare.csv").read_text()
    assert main(["compare", str(runs / "a"), str(runs / "c")]) == 0  # other runs: a folder of their own
    assert (runs / "compare" / "compare.csv").read_text() == first
    assert ",encoder.width=12 (c)," in (runs / "compare-2" / "compare.csv").read_text()  # the setting, and where it is
    assert f"{runs / 'compare-2'}" in capsys.readouterr().out
    assert main(["compare", str(runs / "a"), str(runs / "b")]) == 0  # the same runs again: their own folder, refreshed
    assert not (runs / "compare-3").exists()
    mine = tmp_path / "mine"  # a user's own compare.png in the --out folder named: refused, kept
    mine.mkdir()
    (mine / "compare.png").write_text("precious")
    capsys.readouterr()
    assert main(["compare", str(runs / "a"), str(runs / "b"), "--out", str(mine)]) == 2
    assert "holds compare.png, not written by this command over these runs" in capsys.readouterr().err
    assert (mine / "compare.png").read_text() == "precious"
    assert main(["compare", str(runs / "a"), str(runs / "b"), "--out", str(mine / "compare.png")]) == 2  # a file
    assert "is a file; pass a folder" in capsys.readouterr().err and (mine / "compare.png").read_text() == "precious"


def test_compare_says_when_tasks_are_few_or_the_batch_norm_modes_differ_and_names_dirs_it_cannot_use(tmp_path, capsys):
    from metalearn_cli.rundir import record_failure

    assert main(["train", *FAST, "eval.episodes=8", f"hydra.run.dir={tmp_path / 'a'}"]) == 0
    assert main(["eval", f"checkpoint={tmp_path / 'a'}", "eval.bn_mode=transductive", "eval.tta_shift=1", "device=cpu",
                 "eval.soft_kmeans_steps=1", f"hydra.run.dir={tmp_path / 'tr'}"]) == 0
    own = json.loads((tmp_path / "a" / "results.json").read_text())
    del own["soft_kmeans_steps"]  # as results.json was written before the key existed
    (tmp_path / "a" / "results.json").write_text(json.dumps(own))
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "tr"), "--out", str(tmp_path / "cmp")]) == 0
    err = capsys.readouterr().err
    assert ("were tested differently (eval.bn_mode=transductive vs running, eval.tta_shift=1 vs 0, "
            "eval.soft_kmeans_steps=1 vs 0)") in err
    assert "8 tasks are too few" in err and "read other images" not in err
    results = json.loads((tmp_path / "tr" / "results.json").read_text())
    (tmp_path / "tr" / "results.json").write_text(json.dumps({**results, "split_digest": "other"}))  # e.g. framed drawings
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "tr"), "--out", str(tmp_path / "cmp2")]) == 0
    assert "read other images of the same classes (a data-set setting such as dataset.normalise" in capsys.readouterr().err
    failed = tmp_path / "failed"
    record_failure(failed, "boom")
    (failed / "results.json").write_text('{"accuracy": 0.5}')  # a partial record does not make it comparable
    assert main(["compare", str(tmp_path / "a"), str(failed)]) == 2
    assert "failed" in capsys.readouterr().err.splitlines()[-1]
    predicted = tmp_path / "predicted"
    predicted.mkdir()
    (predicted / "predictions.json").write_text('{"accuracy": 0.5, "checkpoint": "x"}')
    (predicted / "status.json").write_text('{"status": "completed"}')
    assert main(["compare", str(tmp_path / "a"), str(predicted)]) == 2
    assert "is a predict dir: it scored no fixed test tasks" in capsys.readouterr().err


def test_a_sweep_dir_with_an_unfinished_job_is_compared_over_its_finished_ones_with_a_note(tmp_path, capsys):
    from metalearn_cli.rundir import write_status

    sweep = tmp_path / "sweep"
    for width in (8, 16):
        assert main(["train", *FAST, f"encoder.width={width}", f"hydra.run.dir={sweep / f'{width}'}"]) == 0
    (sweep / "stopped").mkdir()
    write_status(sweep / "stopped", "interrupted", step=3)  # a job Ctrl-C ended: no test results yet
    (sweep / "broken").mkdir()  # a job that failed (an Optuna trial of a way too large): not to be resumed
    write_status(sweep / "broken", "failed")
    capsys.readouterr()
    assert main(["compare", str(sweep), "--out", str(tmp_path / "cmp")]) == 0
    out, err = capsys.readouterr()
    assert "left out 2 runs without test results: broken failed (each error.txt says why); stopped stopped before " \
           "its test: finish each" in err and "resume=RUN" in err  # not a sweep: no multirun.yaml
    assert len(list(csv.DictReader((tmp_path / "cmp" / "compare.csv").open()))) == 1
    assert main(["compare", str(sweep / "8"), str(sweep / "stopped")]) == 2  # named alone, it is refused as before
    assert "has no test results (status: interrupted)" in capsys.readouterr().err
    (tmp_path / "evalstop" / ".hydra").mkdir(parents=True)  # an eval Ctrl-C stopped: run again, not resumed
    (tmp_path / "evalstop" / ".hydra" / "config.yaml").write_text("checkpoint: somewhere\n")
    write_status(tmp_path / "evalstop", "interrupted")
    assert main(["compare", str(sweep / "8"), str(tmp_path / "evalstop")]) == 2
    assert "an eval stopped before its end: run the same metalearn eval again" in capsys.readouterr().err


def test_a_damaged_outcomes_file_is_one_line_however_it_was_damaged(tmp_path, trained_run, capsys):
    import numpy as np

    shutil.copytree(trained_run, tmp_path / "a")
    whole = (trained_run / "test_outcomes.npz").read_bytes()
    with np.load(trained_run / "test_outcomes.npz") as f:
        arrays = {k: f[k] for k in f.files}
    tasks, queries = (int(s) for s in arrays["shape"])

    def saved(**changed):  # a valid npz whose arrays disagree with each other or with results.json
        import io

        buffer = io.BytesIO()
        np.savez(buffer, **{**arrays, **changed})
        return buffer.getvalue()

    flipped = bytearray(whole)
    flipped[len(whole) // 2] ^= 0xFF
    damages = {"cut": whole[:len(whole) // 3], "empty": b"", "flipped byte": bytes(flipped),
               "cut to 5 tasks": saved(**{k: v[:5] for k, v in arrays.items()}),  # as the trial made it: shape left whole
               "fewer predictions": saved(predicted=arrays["predicted"][: tasks // 2]),
               "fewer tasks than results.json": saved(packed=np.packbits(np.ones((tasks - 1, queries), bool)),
                                                      shape=np.array([tasks - 1, queries]), predicted=arrays["predicted"][1:]),
               "other queries than results.json": saved(packed=np.packbits(np.ones((tasks, 2), bool)),
                                                        shape=np.array([tasks, 2]), predicted=arrays["predicted"][:, :2])}
    for name, data in damages.items():
        shutil.rmtree(tmp_path / "b", ignore_errors=True)
        shutil.copytree(trained_run, tmp_path / "b")
        (tmp_path / "b" / "test_outcomes.npz").write_bytes(data)
        assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "cmp")]) == 2, name
        err = capsys.readouterr().err
        assert f"{tmp_path / 'b' / 'test_outcomes.npz'} is damaged (" in err, (name, err)
        assert f"score the run again with metalearn eval checkpoint={tmp_path / 'b'}" in err and err.count("\n") == 1, err
        assert not (tmp_path / "cmp").exists()
    (tmp_path / "b" / "test_outcomes.npz").write_bytes(whole)  # whole again: compared
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "cmp")]) == 0
