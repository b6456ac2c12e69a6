"""scripts/reproduce.py end to end on generated data: sweeps, the table, the report plots."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["debug=smoke", "trainer.iterations=2", "trainer.val_every=1", "trainer.val_episodes=2", "eval.episodes=4",
        "encoder.width=8", "trainer.train_query=1", "episode.query=2"]


def test_reproduce_runs_the_presets_and_tabulates_them_beside_the_published_figures(tmp_path):
    out = tmp_path / "repro"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "reproduce.py"), "--table", "omniglot", "--methods",
                           "protonet,anil", "--device", "cpu", "--out", str(out), *TINY],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert b"\r" not in (out / "omniglot_quick.csv").read_bytes()
    with open(out / "omniglot_quick.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["preset"] for r in rows] == [f"{m}_omniglot_{s}" for m in ("protonet", "anil")
                                           for s in ("5w1s", "5w5s", "20w1s", "20w5s")] + ["protonet_omniglot_lake20w1s"]
    by = {r["preset"]: r for r in rows}
    assert by["protonet_omniglot_20w1s"]["published"] == "96.0" and by["anil_omniglot_5w1s"]["published"] == ""
    assert float(by["anil_omniglot_20w5s"]["difference"]) == round(float(by["anil_omniglot_20w5s"]["ours"]) - 98.0, 2)
    assert by["anil_omniglot_20w1s"]["inner_steps_at_test"] == "5" and all(r["status"] == "completed" for r in rows)
    table = (out / "omniglot_quick.md").read_text()
    assert "| protonet | 20-way 1-shot |" in table and "budget=quick" in table and "every run with debug=smoke" in table
    assert by["protonet_omniglot_lake20w1s"]["published_of"] == "humans"  # Lake's 95.5 is not a ProtoNet figure
    assert "| 95.5 (humans) |" in table
    for png in ("curves.png", "accuracy.png"):
        assert (out / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "seed 0: ± CI95 is over that run's test tasks, not over seeds" in table
    assert re.search(r"\| \d+\.\d\d -> \d+\.\d\d \(\d+\) \| (bf16|fp32) \|", table)  # the row before training, the precision
    script = [sys.executable, str(ROOT / "scripts" / "reproduce.py"), "--table", "omniglot", "--tabulate-only", "--out", str(out)]
    paper = subprocess.run([*script, "--budget", "paper"], capture_output=True, text=True, timeout=120)
    assert paper.returncode == 2 and "was measured with --budget quick" in paper.stderr and not (out / "omniglot_paper.md").exists()
    other = subprocess.run([*script[:2], "--table", "mini_imagenet", *script[4:]], capture_output=True, text=True, timeout=120)
    assert other.returncode == 2 and "holds a reproduction of the omniglot table; pass --table omniglot" in other.stderr
    assert not list(out.glob("mini_imagenet_*"))
    again = subprocess.run(script, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "every run with debug=smoke" in (out / "omniglot_quick.md").read_text()  # the overrides it was measured with


def test_dry_run_prints_one_multirun_per_override_set(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "reproduce.py"), "--table", "mini_imagenet", "--dry-run",
                           "--methods", "maml", "--budget", "paper", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("$ ")]
    assert "-m experiment=maml_mini_5w1s_conv4,maml_mini_5w1s_resnet12,maml_mini_5w5s_conv4,maml_mini_5w5s_resnet12" in line


def test_dry_run_commands_paste_into_a_shell_as_they_are(tmp_path):
    import shlex

    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "reproduce.py"), "--table", "omniglot", "--dry-run",
                           "--methods", "protonet", "--budget", "quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("$ ")]
    words = shlex.split(line[2:])  # what a shell would pass on
    assert words[:3] == ["metalearn", "train", "-m"]
    assert "hydra.sweep.subdir=${hydra.job.num}_${hydra:runtime.choices.experiment}" in words


def test_cells_choose_what_runs_and_the_help_example_is_a_real_key(tmp_path):
    import re

    from conftest import compose_config

    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "reproduce.py"), "--table", "omniglot", "--dry-run",
                           "--methods", "protonet,maml", "--cells", "5w1s,lake20w1s", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    runs = sorted(re.search(r"experiment=(\S+)", ln).group(1) for ln in proc.stdout.splitlines() if ln.startswith("$ "))
    assert runs == ["maml_omniglot_5w1s", "protonet_omniglot_5w1s,protonet_omniglot_lake20w1s"]
    helped = subprocess.run([sys.executable, str(ROOT / "scripts" / "reproduce.py"), "--help"], capture_output=True,
                            text=True, timeout=60).stdout
    example = re.search(r"\(e\.g\. (\S+=\S+)\)", helped).group(1)
    compose_config("train", [example])  # pasted as shown, it composes


def _dry_run(tmp_path, *args):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "reproduce.py"), "--table", "omniglot", "--dry-run",
                           "--out", str(tmp_path), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_dry_run_estimates_every_cell_and_the_total_is_their_sum(tmp_path):
    import re

    out = _dry_run(tmp_path, "--methods", "protonet,maml,rfs")
    cells = dict(re.findall(r"^#   (\w+) +about +([\d.]+) min of training \(", out, re.M))
    shapes = ("5w1s", "5w5s", "20w1s", "20w5s")
    assert sorted(cells) == sorted([f"{m}_omniglot_{s}" for m in ("protonet", "maml", "rfs") for s in shapes]
                                   + ["protonet_omniglot_lake20w1s"])
    assert all(float(m) > 0 for m in cells.values())
    total = float(re.search(r"^# estimated training time: about ([\d.]+) min", out, re.M).group(1))
    assert total == round(sum(float(m) for m in cells.values()), 1)
    assert "2-core CPU with native bf16" in out and "1.6x" in out
    # A cell trained longer is estimated longer: the estimate reads the composed config's counts.
    longer = _dry_run(tmp_path, "--methods", "protonet", "--cells", "5w1s", "trainer.iterations=1000")
    doubled = float(re.search(r"protonet_omniglot_5w1s +about +([\d.]+) min", longer).group(1))
    assert doubled == round(2 * 500 / 10.75 / 60, 1) > float(cells["protonet_omniglot_5w1s"])


def test_dry_run_gives_no_estimate_where_no_measured_figure_fits(tmp_path):
    import re

    out = _dry_run(tmp_path, "--methods", "maml", "--budget", "paper")
    # The paper's 20-way MAML adapts in 5 steps on 15 queries; the figures were measured with 1 step on 5.
    for cell in ("maml_omniglot_20w1s", "maml_omniglot_20w5s"):
        assert re.search(rf"^#   {cell} +no estimate: .*strategy\.inner_steps", out, re.M), out
    cells = dict(re.findall(r"^#   (\w+) +about +([\d.]+) min of training \(", out, re.M))
    assert sorted(cells) == ["maml_omniglot_5w1s", "maml_omniglot_5w5s"]
    assert "the sum of the 2 cells with an estimate; 2 cells have none" in out
    assert "no estimate: the measured figures are a CPU's" in _dry_run(tmp_path, "--methods", "maml", "--device", "cuda")


def test_a_lake_row_says_its_runs_are_drawn_and_whose_figure_stands_beside_it(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "scripts" / "reproduce.py")
    reproduce = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reproduce)
    results = {"accuracy": 0.8, "ci95": 0.01, "way": 20, "shot": 1, "protocol": "lake", "episodes": 1000,
               "published_accuracy": 95.5, "published_of": "humans"}
    record = {"overrides": ["experiment=protonet_omniglot_lake20w1s"], "status": "completed", "results": results}
    monkeypatch.setattr("metalearn_cli.run_records.find_runs", lambda roots: [tmp_path / "runs" / "r"])
    monkeypatch.setattr("metalearn_cli.run_records.read_run", lambda run: record)
    table = reproduce.markdown(reproduce.collect(tmp_path), "t")
    assert "1000 drawn runs, not their 20 fixed ones" in table and "| 95.5 (humans) | -15.50 |" in table


def test_out_is_the_users_path_and_a_used_out_is_refused_not_retabulated(tmp_path):
    script = [sys.executable, str(ROOT / "scripts" / "reproduce.py"), "--table", "omniglot", "--methods", "protonet"]
    proc = subprocess.run([*script, "--dry-run", "--out", "rel"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0 and f"hydra.sweep.dir={tmp_path / 'rel'}/runs/" in proc.stdout, proc.stdout
    (tmp_path / "used" / "runs").mkdir(parents=True)
    proc = subprocess.run([*script, "--out", "used", *TINY], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2 and "already holds runs" in proc.stderr.splitlines()[-1], proc.stderr
    proc = subprocess.run([*script, "--tabulate-only", "--out", "nowhere"], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "holds none" in proc.stderr, proc.stderr
    proc = subprocess.run([*script, "--tabulate-only"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2 and "give its --out" in proc.stderr, proc.stderr
    proc = subprocess.run([*script, "--dry-run"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0 and f"hydra.sweep.dir={tmp_path / 'outputs' / 'reproduce'}" in proc.stdout  # where it runs


def test_a_smoke_reproduction_keeps_smokes_own_budget():
    """--budget quick's trainer.iterations=500 and eval.episodes=1000 would replace debug=smoke's seconds-long budget."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "reproduce.py"
    out = subprocess.run([sys.executable, str(script), "--table", "omniglot", "--methods", "protonet", "--dry-run",
                          "debug=smoke"], capture_output=True, text=True, timeout=300).stdout
    commands = [line for line in out.splitlines() if line.startswith("$ metalearn train")]
    assert commands and all("debug=smoke" in c and "trainer.iterations=" not in c and "eval.episodes=" not in c
                            for c in commands), out


def _script_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "scripts" / "reproduce.py")
    reproduce = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reproduce)
    return reproduce


def test_a_stopped_reproduction_says_so_and_the_same_command_again_continues_it(tmp_path):
    """Ctrl-C (the whole process group) in the sweep's second job: the sweep saves it and stops, the script says how to
    continue and exits 130; the same command again finishes the sweep with resume=true (the completed job kept as it was,
    the stopped one resumed) and tabulates; another reproduction in that --out is refused, saying what differs."""
    import json
    import os
    import shlex
    import signal
    import time

    out = tmp_path / "repro"
    overrides = [o for o in TINY if not o.startswith(("trainer.iterations=", "trainer.val_every="))] + [
        "trainer.iterations=30", "trainer.val_every=1000", "trainer.log_every=1", "trainer.checkpoint_every=1000"]
    cmd = [sys.executable, str(ROOT / "scripts" / "reproduce.py"), "--table", "omniglot", "--methods", "protonet", "--cells",
           "5w1s,5w5s", "--device", "cpu", "--out", str(out), *overrides]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not [p for p in out.glob("runs/protonet-0/1_*/metrics.jsonl") if p.stat().st_size]:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    _, err = proc.communicate(timeout=240)
    last = err.splitlines()[-1]
    assert proc.returncode == 130 and last.startswith("reproduce: stopped during the protonet sweep;"), err
    assert shlex.split(last.split("run the same command again: ", 1)[1]) == ["python", *cmd[1:]] and "Traceback" not in err
    jobs = sorted((out / "runs" / "protonet-0").glob("*_protonet_*"))
    assert [json.loads((j / "status.json").read_text())["status"] for j in jobs] == ["completed", "interrupted"], err
    rows = {r["preset"]: r for r in _script_module().collect(out)}  # the stopped run's row: what it tests, how long it ran
    assert rows["protonet_omniglot_5w5s"]["task"] == "5-way 5-shot" and rows["protonet_omniglot_5w5s"]["wall_s"] > 0
    kept = (jobs[0] / "results.json").read_bytes()

    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    (line,) = [ln for ln in again.stdout.splitlines() if ln.startswith("$ ")]
    assert line.endswith(" resume=true") and "holds this reproduction's runs" in again.stdout
    assert (jobs[0] / "results.json").read_bytes() == kept  # completed before: kept as it was
    with open(out / "omniglot_quick.csv", newline="") as f:
        assert [(r["preset"], r["status"]) for r in csv.DictReader(f)] == [
            ("protonet_omniglot_5w1s", "completed"), ("protonet_omniglot_5w5s", "completed")]

    other = subprocess.run([*cmd, "--seed", "1"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert other.returncode == 2 and "holds a reproduction of --seed 0, and this command asks for --seed 1" in other.stderr
    assert f"to continue that one: python {cmd[1]} --table omniglot" in other.stderr.splitlines()[-1], other.stderr


def test_a_sigterm_to_the_script_alone_stops_its_sweep_which_saves(tmp_path):
    """``kill PID`` of the script (a container's stop): passed on to the sweep in its own process group, whose job saves
    and stops (a SIGTERM delivered twice is one request: tests/test_signals.py)."""
    import json
    import os
    import signal
    import time

    out = tmp_path / "repro"
    overrides = [o for o in TINY if not o.startswith(("trainer.iterations=", "trainer.val_every="))] + [
        "trainer.iterations=400", "trainer.val_every=1000", "trainer.log_every=1", "trainer.checkpoint_every=1000"]
    cmd = [sys.executable, str(ROOT / "scripts" / "reproduce.py"), "--table", "omniglot", "--methods", "protonet",
           "--cells", "5w1s", "--device", "cpu", "--out", str(out), *overrides]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not [p for p in out.glob("runs/protonet-0/0_*/metrics.jsonl") if p.stat().st_size]:
        time.sleep(0.1)
    (sweep,) = map(int, Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split())
    assert os.getpgid(sweep) == sweep != os.getpgid(proc.pid)  # its own group: a terminal's Ctrl-C reaches it once
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 143 and err.splitlines()[-1].startswith("reproduce: stopped during the protonet sweep;"), err
    (job,) = (out / "runs" / "protonet-0").glob("0_*")
    assert json.loads((job / "status.json").read_text())["status"] == "interrupted", err
    assert "SIGTERM at meta-iteration" in (job / "train.log").read_text() and "Traceback" not in err


@pytest.mark.parametrize("code", [0, 130, "SIGTERM"])
def test_a_ctrl_c_launches_no_further_sweep(tmp_path, monkeypatch, capsys, code):
    """Ctrl-C reaches this script while a sweep runs (the sweep then ends 0, having finished, or 130, stopped), or only
    the sweep gets it (130), or a SIGTERM stopped the sweep's job (the sweep ends 0, an orderly stop): the next method's
    sweep is not launched, and the script exits 130 (143 for the SIGTERM) saying how to continue."""
    import os
    import signal
    import types

    reproduce = _script_module()
    launched = []

    class Sweep:
        pid = -1

        def __init__(self, cmd, cwd=None, start_new_session=False):
            assert start_new_session  # its own group: this script passes a stop request on to it
            launched.append(cmd)
            self.sweep_dir = Path(next(a for a in cmd if a.startswith("hydra.sweep.dir=")).split("=", 1)[1])

        def wait(self):
            if code == 0:
                os.kill(os.getpid(), signal.SIGINT)
            if code == "SIGTERM":  # what a job stopped by SIGTERM leaves; its sweep exits 0
                (self.sweep_dir / "0_job").mkdir(parents=True)
                (self.sweep_dir / "0_job" / "status.json").write_text('{"status": "interrupted"}')
                return 0
            return code

        def poll(self):
            return 0

    monkeypatch.setattr(reproduce, "subprocess", types.SimpleNamespace(Popen=Sweep))
    before = signal.getsignal(signal.SIGINT)
    assert reproduce.main(["--table", "omniglot", "--methods", "protonet,anil", "--cells", "5w1s", "--out",
                           str(tmp_path / "repro"), "debug=smoke"]) == (143 if code == "SIGTERM" else 130)
    assert len(launched) == 1 and "experiment=protonet_omniglot_5w1s" in launched[0]
    assert signal.getsignal(signal.SIGINT) is before  # Ctrl-C is the caller's again
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("reproduce: stopped during the protonet sweep;") and "run the same command again" in last


def test_a_ctrl_backslash_quits_the_sweep_in_its_own_group_too(tmp_path, monkeypatch, capsys):
    """A terminal's Ctrl-\\ (SIGQUIT) reaches the script's group only: passed on as it is, so the sweep quits with the
    script rather than running on unseen, holding its dirs' locks; the same command again continues it."""
    import os
    import signal
    import types

    reproduce = _script_module()
    sent = []

    class Sweep:
        pid = 4242

        def __init__(self, cmd, cwd=None, start_new_session=False):
            assert start_new_session

        def wait(self):
            os.kill(os.getpid(), signal.SIGQUIT)
            return -signal.SIGQUIT

        def poll(self):
            return None  # still running when the signal comes

    monkeypatch.setattr(reproduce, "subprocess", types.SimpleNamespace(Popen=Sweep))
    monkeypatch.setattr(reproduce.os, "killpg", lambda pid, signum: sent.append((pid, signum)))
    before = signal.getsignal(signal.SIGQUIT)
    assert reproduce.main(["--table", "omniglot", "--methods", "protonet", "--cells", "5w1s", "--out",
                           str(tmp_path / "repro"), "debug=smoke"]) == 128 + signal.SIGQUIT
    assert sent == [(4242, signal.SIGQUIT)] and signal.getsignal(signal.SIGQUIT) is before
    assert "run the same command again" in capsys.readouterr().err.splitlines()[-1]


def test_a_dry_run_fails_when_metalearn_would_refuse_its_commands(tmp_path):
    script = [sys.executable, str(ROOT / "scripts" / "reproduce.py"), "--table", "omniglot", "--dry-run", "--methods",
              "protonet", "--cells", "5w1s", "--out", str(tmp_path)]
    seed = subprocess.run([*script, "--seed", "-1"], capture_output=True, text=True, timeout=60)
    assert seed.returncode == 2 and "--seed -1 is out of range" in seed.stderr.splitlines()[-1], seed.stderr
    bogus = subprocess.run([*script, "bogus=1"], capture_output=True, text=True, timeout=120)
    assert bogus.returncode == 2 and "Traceback" not in bogus.stderr and not bogus.stdout, (bogus.stdout, bogus.stderr)
    assert bogus.stderr.splitlines()[-1].startswith(
        "reproduce: metalearn train would refuse the protonet_omniglot_5w1s run: Could not override 'bogus'"), bogus.stderr


def test_a_sweep_refused_before_any_job_launches_no_further_sweep(tmp_path, monkeypatch, capsys):
    """A begun sweep refused when continued (another copy of the reproduction still runs it, or its overrides
    changed) is not a sweep of failed jobs: the script says so and stops, rather than launch the next method's."""
    import types

    reproduce = _script_module()
    launched = []

    class Refused:
        def __init__(self, cmd, cwd=None, start_new_session=False):
            launched.append(cmd)

        def wait(self):
            return 2  # as metalearn exits when it refuses a sweep before Hydra runs a job

    monkeypatch.setattr(reproduce, "subprocess", types.SimpleNamespace(Popen=Refused))
    assert reproduce.main(["--table", "omniglot", "--methods", "protonet,anil", "--cells", "5w1s", "--out",
                           str(tmp_path / "repro"), "debug=smoke"]) == 2
    assert len(launched) == 1
    err = capsys.readouterr().err
    assert "the protonet sweep was refused before any job ran" in err and "failed jobs" not in err, err
    assert not (tmp_path / "repro" / ".lock").exists()  # the reproduction's own lock went with it
