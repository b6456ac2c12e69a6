"""Which classes a fixed test confuses: every wrong answer counted under its pair, on Lake's runs and random tasks."""

import torch

from metalearn_cli.confusions import collapsed, confused_pairs
from metalearn_cli.episodes import ClassImages, EpisodeSampler
from metalearn_cli.lake_runs import LakeRuns


def test_confused_pairs_count_each_mistake_under_its_pair_of_characters():

    names = [f"A{a}/character{c:02d}" for a, n in ((0, 7), (1, 6)) for c in range(n)]
    images = torch.arange(len(names), dtype=torch.uint8).view(-1, 1, 1, 1, 1).expand(-1, 3, 1, 1, 1).contiguous()
    runs = LakeRuns(ClassImages(images, names), 5, seed=2)
    chars = torch.cat([(b.support_images[:, :, 0, 0, 0] * 255).round().long() for b in runs.fixed(60, 8)])  # [60, 5]
    predicted = torch.arange(5).repeat(60, 1)
    expected: dict[tuple[int, int], int] = {}
    for r in range(60):
        row = chars[r].tolist()
        if 0 in row and 1 in row:  # character 0's query answered as character 1 wherever both are in the run
            predicted[r, row.index(0)] = row.index(1)
            expected[(0, 1)] = expected.get((0, 1), 0) + 1
        if r % 7 == 0:  # and a few scattered mistakes: the first query taken for the second
            pair = tuple(sorted((row[0], row[1])))
            if predicted[r, 0] == 0:
                predicted[r, 0] = 1
                expected[pair] = expected.get(pair, 0) + 1
    pairs = confused_pairs(runs.task_classes(60), predicted, torch.arange(5), names, top=100)
    assert {tuple(names.index(c) for c in p["classes"]): p["errors"] for p in pairs} == expected
    top = pairs[0]
    assert top["classes"] == ["A0/character00", "A0/character01"] and top["errors"] == max(expected.values())
    both = sum(1 for r in range(60) if 0 in chars[r].tolist() and 1 in chars[r].tolist())
    assert top["queries"] == 2 * both and [p["errors"] for p in pairs] == sorted((p["errors"] for p in pairs), reverse=True)


def test_a_collapsed_or_chance_test_is_said_and_counted(caplog):
    labels = torch.arange(5).repeat_interleave(3)  # 5 ways, 3 queries each
    learned = labels.repeat(10, 1)
    assert collapsed(learned, labels, 1.0, 0.0, 5) == {"one_class_tasks": 0} and not caplog.records
    stuck = learned.clone()
    stuck[:4] = 2  # four tasks: every query answered as class 2
    assert collapsed(stuck, labels, 0.68, 0.2, 5) == {"one_class_tasks": 4}
    assert "in 4 of 10 test tasks every query got one class" in caplog.text and "not measurably above" not in caplog.text
    caplog.clear()
    assert collapsed(learned, labels, 0.25, 0.06, 5) == {"one_class_tasks": 0}
    assert "test accuracy 25.00% ± 6.00% over 10 tasks is not measurably above chance (20.00% for 5 ways)" in caplog.text
    caplog.clear()
    collapsed(stuck, labels, 0.2000000179, 9.7e-9, 5)  # exactly chance, as float32 sums it
    assert "not measurably above chance" in caplog.text
    caplog.clear()
    assert collapsed(torch.zeros(3, 4, dtype=torch.long), torch.zeros(4, dtype=torch.long), 1.0, 0.0, 1) == {"one_class_tasks": 0}


def test_two_queries_answered_alike_by_a_good_network_are_not_called_a_collapse(caplog):
    torch.manual_seed(0)
    labels = torch.tensor([0, 1])  # 2-way, 1 query each: one error makes a task one-class
    right = torch.rand(50, 2) < 0.78
    predicted = torch.where(right, labels, 1 - labels)
    result = collapsed(predicted, labels, right.float().mean().item(), 0.06, 2)
    assert result["one_class_tasks"] > 5 and "collapsed" not in caplog.text


def test_random_tasks_replay_their_classes_and_count_queries_per_class():
    """5 queries per class: a pair's queries are 10 for each task that held both; the classes replayed
    are the ones the sampler's fixed tasks hold (read off the images, whose pixel is the class)."""
    names = [f"c{i}" for i in range(12)]
    images = torch.arange(12, dtype=torch.uint8).view(-1, 1, 1, 1, 1).expand(-1, 8, 1, 1, 1).contiguous()
    sampler = EpisodeSampler(ClassImages(images, names), 4, 1, 5, seed=7)
    shown = torch.cat([(b.support_images[:, :, 0, 0, 0] * 255).round().long() for b in sampler.fixed(30, 7)])
    classes = sampler.task_classes(30)
    assert shown.tolist() == classes
    labels = torch.arange(4).repeat_interleave(5)
    predicted = labels.repeat(30, 1)
    predicted[:, 0] = 1  # the first query of label 0 answered as label 1, in every task
    pairs = confused_pairs(classes, predicted, labels, names, top=100)
    for p in pairs:
        i, j = (names.index(c) for c in p["classes"])
        together = sum(1 for c in classes if i in c and j in c)
        assert p["queries"] == 10 * together and p["errors"] == sum(1 for c in classes if sorted((c[0], c[1])) == [i, j])
    assert sum(p["errors"] for p in pairs) == 30


def test_the_confused_pairs_script_draws_the_pairs_of_lake_runs_and_of_random_tasks(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    from conftest import compose_config
    from metalearn_cli import evaluation, training

    run = tmp_path / "run"
    training.train(compose_config("train", ["dataset.split=background", "encoder=conv4", "encoder.width=8", "trainer.iterations=2",
                                            "trainer.val_every=2", "trainer.val_episodes=2", "trainer.train_way=20",
                                            "eval.episodes=2", "trainer.progress=false", "device=cpu"]), run)
    evaluation.evaluate(compose_config("eval", [f"checkpoint={run}", "episode=lake20way1shot", "eval.episodes=8", "device=cpu"]),
                        tmp_path / "lake")
    script = Path(__file__).resolve().parents[1] / "scripts" / "confused_pairs.py"
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "lake"), "--out", str(tmp_path / "p.png"), "--pairs", "3"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    top = json.loads((tmp_path / "lake" / "results.json").read_text())["confused_pairs"][0]
    assert f"{top['classes'][0]}  <->  {top['classes'][1]}" in proc.stdout.splitlines()[3]  # the first pair drawn
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    random = subprocess.run([sys.executable, str(script), str(run), "--out", str(tmp_path / "r.png")],  # the run's own test
                            capture_output=True, text=True, timeout=300)
    assert random.returncode == 0 and "pairs erring on 40%" in random.stdout, random.stderr
    bad = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "is no run dir (a sweep? it holds" in bad.stderr and "Traceback" not in bad.stderr


def test_the_confused_pairs_script_reads_a_moved_folder_data_set_and_says_what_it_needs(tmp_path):
    """scripts/confused_pairs.py on a dataset=folder run: without --dataset-root one line naming it; with it
    (the data moved since), the picture, as .png when --out has no suffix."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from conftest import FAST, compose_config
    from metalearn_cli.training import train

    rng = np.random.default_rng(0)
    for c in range(12):
        (tmp_path / "data" / f"class{c:02d}").mkdir(parents=True)
        for j in range(6):
            Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(tmp_path / "data" / f"class{c:02d}" / f"{j}.png")
    args = [a for a in FAST if not a.startswith("dataset.")]
    train(compose_config("train", [*args, "dataset=folder", f"dataset.root={tmp_path / 'data'}", "dataset.image_size=16",
                                   "episode.way=2", "episode.query=2"]), tmp_path / "run")
    shutil.move(tmp_path / "data", tmp_path / "moved")
    script = [sys.executable, str(Path(__file__).resolve().parents[1] / "scripts" / "confused_pairs.py"), str(tmp_path / "run")]
    refused = subprocess.run([*script, "--out", str(tmp_path / "pairs")], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert f"read from {tmp_path / 'data'}" in refused.stderr and "that folder is gone from this machine; add --dataset-root DIR" in refused.stderr
    done = subprocess.run([*script, "--out", str(tmp_path / "pairs"), "--dataset-root", str(tmp_path / "moved")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "pairs.png").read_bytes()[:4] == b"\x89PNG"
    drawn = (tmp_path / "pairs.png").read_bytes()
    for out, needle in ((tmp_path / "pairs", f"--out {tmp_path / 'pairs.png'} exists and would be replaced; choose another --out"),
                        (tmp_path / "run" / "inside.png", f"is inside the run {tmp_path / 'run'}, which would be replaced")):
        again = subprocess.run([*script, "--out", str(out), "--dataset-root", str(tmp_path / "moved")],
                               capture_output=True, text=True, timeout=120)
        assert again.returncode == 2 and needle in again.stderr and len(again.stderr.splitlines()) == 1, again.stderr
    assert (tmp_path / "pairs.png").read_bytes() == drawn and not (tmp_path / "run" / "inside.png").exists()
    (tmp_path / "adir").mkdir()  # an existing folder holds the picture under its default name, as report --out does
    into = subprocess.run([*script, "--out", str(tmp_path / "adir"), "--dataset-root", str(tmp_path / "moved")],
                          capture_output=True, text=True, timeout=120)
    assert into.returncode == 0 and f"wrote {tmp_path / 'adir' / 'confused-pairs.png'}" in into.stdout, into.stderr
    assert (tmp_path / "adir" / "confused-pairs.png").read_bytes()[:4] == b"\x89PNG" and not (tmp_path / "adir.png").exists()


def test_the_confused_pairs_scripts_argument_mistakes_are_one_line_before_any_work(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = [sys.executable, str(Path(__file__).resolve().parents[1] / "scripts" / "confused_pairs.py")]
    (tmp_path / "sweep" / "0_job").mkdir(parents=True)
    (tmp_path / "sweep" / "0_job" / "results.json").write_text("{}")
    (tmp_path / "stopped").mkdir()
    (tmp_path / "stopped" / "status.json").write_text('{"status": "interrupted"}')
    for args, needle in (([str(tmp_path / "nope")], "does not exist"), ([str(tmp_path / "sweep")], "pass one of them"),
                         ([str(tmp_path / "stopped")], "has no test results (status: interrupted)"),
                         ([str(tmp_path / "sweep" / "0_job"), "--pairs", "0"], "draw at least 1 pair"),
                         ([str(tmp_path / "sweep" / "0_job"), "--out", str(tmp_path / "no" / "x.png")], "does not exist; make it"),
                         ([str(tmp_path / "sweep" / "0_job"), "--out", "x.txt"], ".txt is no picture format"),
                         ([str(tmp_path / "sweep" / "0_job"), "--out", ""], "--out is empty"),
                         ([str(tmp_path / "sweep" / "0_job"), "--out", f"{tmp_path / 'new'}/"], "the folder")):
        done = subprocess.run([*script, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and needle in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not list(tmp_path.glob("*.png"))  # the trailing slash named a folder, not new.png


def test_the_confused_pairs_script_writes_no_picture_over_a_file_or_into_a_run(tmp_path):
    """--out refuses, in one line and before any work, what report --out, compare --out and export refuse: a
    file it would replace, and a place inside a run dir (a file or a folder of it, however spelled)."""
    import subprocess
    import sys
    from pathlib import Path

    script = [sys.executable, str(Path(__file__).resolve().parents[1] / "scripts" / "confused_pairs.py")]
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "results.json").write_text("{}")
    (tmp_path / "taken.png").write_bytes(b"mine")
    (tmp_path / "adir").mkdir()
    (tmp_path / "adir" / "confused-pairs.png").write_bytes(b"mine")
    for out, needle in ((tmp_path / "taken", f"--out {tmp_path / 'taken.png'} exists and would be replaced; choose another --out"),
                        (tmp_path / "adir", f"--out {tmp_path / 'adir' / 'confused-pairs.png'} exists and would be replaced"),
                        (run / "inside.png", f"--out {run / 'inside.png'} is inside the run {run}"),
                        (run / "checkpoints", f"is inside the run {run}"),  # a folder of the run: its default name there
                        (run, f"--out {run / 'confused-pairs.png'} is inside the run {run}"),
                        (tmp_path / "adir" / ".." / "run" / "x.png", f"is inside the run {run}")):
        done = subprocess.run([*script, str(run), "--out", str(out)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and needle in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr
        assert "choose" in done.stderr and "Traceback" not in done.stderr
    assert (tmp_path / "taken.png").read_bytes() == b"mine" == (tmp_path / "adir" / "confused-pairs.png").read_bytes()
    assert sorted(p.name for p in run.rglob("*")) == ["checkpoints", "results.json"]
