"""`metalearn eval checkpoint=A ensemble=[B,...]`: several trained meta-networks scored as one, on the
same fixed tasks, by the mean of their class probabilities."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import compose_config
from metalearn_cli import evaluation, training
from metalearn_cli.assemble import load_strategy
from metalearn_cli.checkpoint import read_meta_knowledge
from metalearn_cli.data import DATASETS
from metalearn_cli.ensemble import Ensemble
from metalearn_cli.errors import ConfigError

CPU = torch.device("cpu")


@pytest.fixture
def two_runs(compose_train, tmp_path):
    """Two tiny runs of one recipe, different seeds (so different weights); the second in a folder
    whose name has a space and a non-ASCII letter."""
    runs = [tmp_path / "a", tmp_path / "b ü"]
    for seed, run in enumerate(runs):
        run.mkdir()
        training.train(compose_train(f"seed={seed}"), run)
    return runs


def _loaded(run):
    strategy, cfg = load_strategy(read_meta_knowledge(run), CPU)
    return strategy, cfg


def test_the_ensemble_predicts_the_mean_of_its_members_probabilities(two_runs):
    (a, cfg), (b, _) = (_loaded(r) for r in two_runs)
    data = DATASETS.build(cfg.dataset)
    batch = next(evaluation.fixed_tasks(data, "test", (5, 1, 3), 0, CPU, False).fixed(4, 4))
    ensemble = Ensemble([a, b])
    with ensemble.statistics("running"):
        mixed = ensemble.predict(batch).logits
        alone = [s.predict(batch).logits.float().softmax(-1) for s in (a, b)]
    assert torch.allclose(mixed.exp(), (alone[0] + alone[1]) / 2, atol=1e-6)
    assert not torch.allclose(alone[0], alone[1])  # the members differ, so the mean is not either one


def test_an_ensemble_of_one_scores_exactly_as_its_member(two_runs):
    strategy, cfg = _loaded(two_runs[0])
    data = DATASETS.build(cfg.dataset)

    def score(scored):
        sampler = evaluation.fixed_tasks(data, "test", (5, 1, 3), 0, CPU, False)
        return evaluation.evaluate_tasks(scored, sampler, 8, 4, "running", views=1)

    assert torch.equal(score(strategy), score(Ensemble([strategy])))


def _eval(tmp_path, name, *overrides):
    return subprocess.run([sys.executable, "-m", "metalearn_cli", "eval", "device=cpu", "eval.episodes=8",
                           *overrides, f"hydra.run.dir='{tmp_path / name}'"], capture_output=True, text=True, timeout=300)


def test_the_eval_command_scores_an_ensemble_on_the_first_member_s_tasks(two_runs, tmp_path):
    """Through the console path: a member through a symlink and a folder name with a space and a
    non-ASCII letter, quoted as Hydra lists need; results.json names every member by its real path."""
    first, second = two_runs
    link = tmp_path / "link"
    link.symlink_to(second, target_is_directory=True)
    proc = _eval(tmp_path, "ens", f"checkpoint={first}", f"ensemble=['{link}']")
    assert proc.returncode == 0, proc.stderr
    alone = _eval(tmp_path, "alone", f"checkpoint={first}")
    assert alone.returncode == 0, alone.stderr
    ens, own = (json.loads((tmp_path / n / "results.json").read_text()) for n in ("ens", "alone"))
    assert ens["ensemble"] == [str((first / "checkpoints" / "best.pt").resolve()),
                               str((second / "checkpoints" / "best.pt").resolve())]
    assert "ensemble" not in own and (ens["seed"], ens["episodes"]) == (own["seed"], 8)
    labels = [np.load(tmp_path / n / evaluation.OUTCOMES)["predicted"].shape for n in ("ens", "alone")]
    assert labels[0] == labels[1]
    from metalearn_cli.compare import run_label

    assert run_label(tmp_path / "ens", tmp_path) == f"ens (eval of {first.name} with 1 more as an ensemble)"
    assert run_label(tmp_path / "alone", tmp_path) == f"alone (eval of {first.name})"


@pytest.mark.parametrize("extra, expected", [
    (["eval.finetune_steps=2"], "eval.finetune_steps=2 cannot be combined with ensemble="),
    (["eval.bn_mode=per_step"], "eval.bn_mode=per_step is not possible"),
    (["ensemble=[nowhere.pt]"], "ensemble member nowhere.pt: checkpoint nowhere.pt does not exist"),
    (["ensemble=[]", "episode=5way1shot", "episode.way=500"], "500-way episodes need 500 classes"),  # the tasks' check
])
def test_refusals_are_one_line(two_runs, tmp_path, extra, expected):
    members = [] if any(e.startswith("ensemble=") for e in extra) else [f"ensemble=['{two_runs[1]}']"]
    proc = _eval(tmp_path, "bad", f"checkpoint={two_runs[0]}", *members, *extra)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and expected in last, proc.stderr
    assert "evaluation on" not in proc.stdout + proc.stderr  # a refused eval says only why, not that it began
    assert not (tmp_path / "bad" / "results.json").exists()


@pytest.mark.parametrize("change", ["dataset.test_classes=10", "dataset.noise=0.3", "dataset.seed=7 dataset.image_size=32"])
def test_a_member_tested_on_other_tasks_is_refused_naming_the_key(two_runs, compose_train, tmp_path, change):
    """Other test classes, or other images (also at another image size, where pixels cannot be compared):
    refused from the saved configs, before any image is read."""
    other = tmp_path / "other"
    other.mkdir()
    training.train(compose_train(*change.split()), other)
    proc = _eval(tmp_path, "bad", f"checkpoint={two_runs[0]}", f"ensemble=['{other}']")
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "trained on other data" in last and change.split()[0] in last and "its test images would differ" in last
    assert not (tmp_path / "bad" / "results.json").exists()


def test_members_that_differ_in_training_only_settings_or_image_size_score_together(two_runs, compose_train, tmp_path):
    """A member trained with other training-only data settings reads the same test images; one at another
    image size reads the same tasks at its own size (drawn in lockstep); both are accepted."""
    members = {"augmented": "dataset.meta_augment=affine", "larger": "dataset.image_size=32"}
    for name, change in members.items():
        (tmp_path / name).mkdir()
        training.train(compose_train(change, "seed=3"), tmp_path / name)
    for name in members:
        proc = _eval(tmp_path, f"with_{name}", f"checkpoint={two_runs[0]}", f"ensemble=['{tmp_path / name}']")
        assert proc.returncode == 0, proc.stderr
        result = json.loads((tmp_path / f"with_{name}" / "results.json").read_text())
        assert result["ensemble"][1] == str((tmp_path / name / "checkpoints" / "best.pt").resolve())
    copies = compose_config("eval", [f"checkpoint={two_runs[0]}", f"ensemble=['{tmp_path / 'larger'}']", "device=cpu",
                                     "eval.support_copies=2"])
    with pytest.raises(ConfigError, match="members read them at different sizes"):  # not an AttributeError mid-test
        evaluation.evaluate(copies, tmp_path / "copies")
    strategies = [_loaded(r)[0] for r in (two_runs[0], tmp_path / "larger")]
    datas = [DATASETS.build(_loaded(r)[1].dataset) for r in (two_runs[0], tmp_path / "larger")]
    ensemble = Ensemble(strategies)
    tasks = evaluation.member_tasks(datas, "test", (5, 1, 3), 0, CPU, False)
    with ensemble.statistics("running"):
        accs = evaluation.evaluate_tasks(ensemble, tasks, 8, 4, "running")
        alone = [evaluation.fixed_tasks(d, "test", (5, 1, 3), 0, CPU, False) for d in datas]
        for batches in zip(*(a.fixed(8, 4) for a in alone)):
            mixed = torch.stack([s.predict(b).logits.float().softmax(-1) for s, b in zip(strategies, batches)]).mean(0)
            expected = (mixed.argmax(-1) == batches[0].query_labels).float().mean(-1)
            assert torch.equal(accs[:4], expected)
            accs = accs[4:]


@pytest.mark.parametrize("lake", [False, True])
def test_lockstep_samplers_draw_the_same_tasks_at_each_image_size(lake):
    """A copy of the split at twice the size (each pixel a 2 x 2 block): every batch, read back at the
    first size, is the first sampler's batch, task for task (random tasks and Lake's runs)."""
    from metalearn_cli.ensemble import LockstepTasks
    from metalearn_cli.episodes import ClassImages, EpisodeSampler
    from metalearn_cli.lake_runs import LakeRuns

    g = torch.Generator().manual_seed(0)
    small = torch.randint(0, 256, (24, 6, 1, 8, 8), generator=g, dtype=torch.uint8)
    names = [f"alphabet{i % 2}/character{i}" for i in range(24)]
    splits = [ClassImages(small, names), ClassImages(small.repeat_interleave(2, -1).repeat_interleave(2, -2), names)]
    if lake:
        samplers = [LakeRuns(s, 5, 7) for s in splits]
    else:
        samplers = [EpisodeSampler(s, 5, 1, 2, 7) for s in splits]
    count = 0
    for batch in LockstepTasks(samplers, [0, 1, 1]).fixed(9, 4):
        first, second = batch.of(0), batch.of(2)
        assert batch.of(1) is second and torch.equal(first.query_labels, second.query_labels)
        assert torch.equal(second.support_images[..., ::2, ::2], first.support_images)
        assert torch.equal(second.query_images[..., ::2, ::2], first.query_images)
        assert [p.tasks for p in batch.split_tasks()] == [1] * batch.tasks
        count += batch.tasks
    assert count == 9


def test_predict_with_an_ensemble_gives_the_mean_of_the_members_probabilities(two_runs, tmp_path):
    """`metalearn predict ... ensemble=B` (the console path): each row's probabilities are the mean of what
    each member alone predicts for that image; predictions.json names the members."""
    import csv

    from conftest import write_image_task
    from metalearn_cli.cli import main

    names = write_image_task(tmp_path / "task", classes=3, support=(1, 2), query=3)
    task = [f"support={tmp_path / 'task' / 'support'}", f"query={tmp_path / 'task' / 'query'}", "device=cpu"]
    for name, run in (("pa", two_runs[0]), ("pb", two_runs[1])):
        assert main(["predict", f"checkpoint='{run}'", *task, f"hydra.run.dir={tmp_path / name}"]) == 0
    proc = subprocess.run([sys.executable, "-m", "metalearn_cli", "predict", f"checkpoint={two_runs[0]}",
                           f"ensemble='{two_runs[1]}'", *task, f"hydra.run.dir='{tmp_path / 'ens'}'"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr

    def probs(name):
        with open(tmp_path / name / "predictions.csv", newline="") as f:
            return torch.tensor([[float(r[f"p_{n}"]) for n in names] for r in csv.DictReader(f)])

    assert torch.allclose(probs("ens"), (probs("pa") + probs("pb")) / 2, atol=2e-6)
    summary = json.loads((tmp_path / "ens" / "predictions.json").read_text())
    assert summary["ensemble"] == [str((r / "checkpoints" / "best.pt").resolve()) for r in two_runs]
    assert summary["ensemble_bn_modes"] == ["running", "running"]


def test_predict_with_members_of_two_image_sizes_reads_the_files_at_each_size(two_runs, compose_train, tmp_path, capfd,
                                                                               monkeypatch):
    """A 32 px member beside the others' size: each reads the same files at its own size, each file once per size
    (the first member's reading is not repeated); the mean holds. The folders are listed once, so a skipped
    non-image entry is named once, not once per image size."""
    import csv
    from collections import Counter

    from conftest import write_image_task
    from metalearn_cli import knowledge
    from metalearn_cli.cli import main
    from metalearn_cli.data import images

    reads: Counter = Counter()  # (file, image size) -> how many times it was decoded
    original = images.read_image

    def counted(source, fmt):
        reads[(str(source), fmt.size)] += 1
        return original(source, fmt)

    for module in (images, knowledge):  # the support folder's reading (read_class_folders) and read_images()
        monkeypatch.setattr(module, "read_image", counted)

    (tmp_path / "larger").mkdir()
    training.train(compose_train("dataset.image_size=32", "seed=3"), tmp_path / "larger")
    names = write_image_task(tmp_path / "task", classes=3, support=(1, 2), query=3)
    (tmp_path / "task" / "support" / names[0] / "notes.txt").write_text("not an image")
    task = [f"support={tmp_path / 'task' / 'support'}", f"query={tmp_path / 'task' / 'query'}", "device=cpu"]
    for name, args in (("pa", [f"checkpoint={two_runs[0]}"]), ("pl", [f"checkpoint={tmp_path / 'larger'}"]),
                       ("ens", [f"checkpoint={two_runs[0]}", f"ensemble={tmp_path / 'larger'}"])):
        capfd.readouterr()
        reads.clear()
        assert main(["predict", *args, *task, f"hydra.run.dir={tmp_path / name}"]) == 0
    assert "".join(capfd.readouterr()).count("notes.txt") == 1
    files = [str(p) for p in (tmp_path / "task").rglob("*.png")]
    assert sorted(reads) == sorted((f, size) for f in files for size in (compose_train().dataset.image_size, 32))
    assert set(reads.values()) == {1}, [k for k, n in reads.items() if n > 1]  # each file once in each format

    def probs(name):
        with open(tmp_path / name / "predictions.csv", newline="") as f:
            return torch.tensor([[float(r[f"p_{n}"]) for n in names] for r in csv.DictReader(f)])

    assert not torch.allclose(probs("pa"), probs("pl"), atol=1e-5)  # tiny runs: near-uniform, yet apart
    assert torch.allclose(probs("ens"), (probs("pa") + probs("pl")) / 2, atol=2e-6)
    formats = json.loads((tmp_path / "ens" / "predictions.json").read_text())["ensemble_image_formats"]
    assert [f["size"] for f in formats] == [compose_train().dataset.image_size, 32]


def test_the_ensemble_key_s_spellings():
    """A list, one path (a folder named ``3`` too) or nothing; an empty path is a one-line error, not the current folder."""
    from omegaconf import OmegaConf

    from metalearn_cli.ensemble import ensemble_paths
    from metalearn_cli.errors import ConfigError

    assert ensemble_paths(OmegaConf.create({"e": ["b", "c ü"]}).e) == ["b", "c ü"]
    assert ensemble_paths(3) == ["3"] and ensemble_paths("b") == ["b"]
    assert ensemble_paths(None) == [] and ensemble_paths([]) == []
    for empty in ("", ["b", " "]):
        with pytest.raises(ConfigError, match="empty path"):
            ensemble_paths(empty)


def test_a_run_listed_twice_is_refused(two_runs, tmp_path):
    """The checkpoint again (through a symlink): it would count twice in the mean."""
    link = tmp_path / "again"
    link.symlink_to(two_runs[0], target_is_directory=True)
    proc = _eval(tmp_path, "twice", f"checkpoint={two_runs[0]}", f"ensemble=['{two_runs[1]}','{link}']")
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "is listed twice" in last, proc.stderr
    assert not (tmp_path / "twice" / "results.json").exists()


def test_each_member_scores_in_its_own_protocol(two_runs, compose_train, tmp_path):
    """With eval.bn_mode=auto a ProtoNet member keeps its running statistics and a MAML member its
    batch statistics, whichever is first; a named mode one member cannot honour names that member."""
    maml = tmp_path / "maml"
    maml.mkdir()
    training.train(compose_train("strategy=maml", "seed=2"), maml)
    for order in ([two_runs[0], maml], [maml, two_runs[0]]):
        cfg = compose_config("eval", [f"checkpoint={order[0]}", f"ensemble=['{order[1]}']", "device=cpu",
                                      "eval.episodes=4", "seed=0"])
        evaluation.evaluate(cfg, tmp_path / order[0].name)
    first, second = (json.loads((tmp_path / n / "results.json").read_text()) for n in (two_runs[0].name, "maml"))
    assert first["ensemble_bn_modes"] == ["running", "transductive"] and first["bn_mode"] == "running"
    assert second["ensemble_bn_modes"] == ["transductive", "running"]
    assert first["ensemble_inner_steps_at_test"][0] is None and first["ensemble_inner_steps_at_test"][1] >= 1  # MAML's
    assert second["ensemble_inner_steps_at_test"] == first["ensemble_inner_steps_at_test"][::-1]
    assert first["accuracy"] == pytest.approx(second["accuracy"], abs=1e-6)  # the order of members does not matter
    proc = _eval(tmp_path, "bad", f"checkpoint={two_runs[0]}", f"ensemble=['{maml}']", "eval.bn_mode=running")
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and f"ensemble member {(maml / 'checkpoints').resolve()}" in last, proc.stderr
    assert "eval.bn_mode=running is not possible" in last


def test_predict_with_an_ensemble_warns_about_the_images_once(two_runs, tmp_path):
    """Blank query images are one warning each, not one per member (the console path)."""
    from PIL import Image

    from conftest import write_image_task

    write_image_task(tmp_path / "task", classes=3, support=(1, 2), query=3)
    for path in (tmp_path / "task" / "query").rglob("*.png"):
        Image.new("L", Image.open(path).size, 255).save(path)
    task = [f"support={tmp_path / 'task' / 'support'}", f"query={tmp_path / 'task' / 'query'}", "device=cpu"]

    def warnings(name, *extra):
        proc = subprocess.run([sys.executable, "-m", "metalearn_cli", "predict", f"checkpoint={two_runs[0]}", *extra,
                               *task, f"hydra.run.dir={tmp_path / name}"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return [line.split(" - ", 1)[1] for line in (proc.stdout + proc.stderr).splitlines() if "[WARNING]" in line]

    alone = warnings("alone")
    assert any("flat value" in w for w in alone) and len(alone) == len(set(alone))
    assert warnings("ens", f"ensemble='{two_runs[1]}'") == alone


def test_a_member_with_the_same_weights_as_another_is_refused(two_runs, tmp_path):
    """A copy of a run's best.pt (or an export of it) under another path is the same network, not a second member."""
    import shutil

    copy = tmp_path / "copy of best.pt"
    shutil.copy(two_runs[0] / "checkpoints" / "best.pt", copy)
    proc = _eval(tmp_path, "twin", f"checkpoint={two_runs[0]}", f"ensemble=['{copy}']")
    assert proc.returncode == 2 and "holds the same weights as" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "twin" / "results.json").exists()
    from conftest import write_image_task  # predict refuses it alike
    from metalearn_cli.cli import main

    write_image_task(tmp_path / "task", classes=3, support=(1, 2), query=3)
    assert main(["predict", f"checkpoint={two_runs[0]}", f"ensemble=['{copy}']", f"support={tmp_path / 'task' / 'support'}",
                 f"query={tmp_path / 'task' / 'query'}", "device=cpu", f"hydra.run.dir={tmp_path / 'predicted'}"]) == 2
    assert not (tmp_path / "predicted" / "predictions.csv").exists()


def test_each_member_is_tested_with_its_own_views_whatever_the_order(compose_train, tmp_path):
    """A member trained with eval.tta_shift=2 keeps its shifted copies beside one tested without: listing
    the two either way round gives the same predictions, and results.json records each member's views."""
    runs = [tmp_path / "plain", tmp_path / "shifted"]
    for seed, (run, extra) in enumerate(zip(runs, ([], ["eval.tta_shift=2"]))):
        run.mkdir()
        training.train(compose_train(f"seed={seed}", *extra), run)
    for name, (a, b) in (("ab", runs), ("ba", runs[::-1])):
        proc = _eval(tmp_path, name, f"checkpoint={a}", f"ensemble=['{b}']", "seed=0")
        assert proc.returncode == 0, proc.stderr
    ab, ba = (json.loads((tmp_path / n / "results.json").read_text()) for n in ("ab", "ba"))
    assert ab["accuracy"] == ba["accuracy"]
    assert [v["tta_shift"] for v in ab["ensemble_tta"]] == [0, 2] and [v["tta_shift"] for v in ba["ensemble_tta"]] == [2, 0]
    assert ab["tta_shift"] == 0 and ba["tta_shift"] == 2  # the first member's, as bn_mode
    outcomes = [np.load(tmp_path / n / evaluation.OUTCOMES)["predicted"] for n in ("ab", "ba")]
    assert np.array_equal(*outcomes)


def test_folder_members_with_the_same_recorded_test_classes_read_the_same_test_images():
    """Two folder runs whose recorded splits differ only in training classes (one trained after a class
    was added, by another split file) score the same test tasks; other test classes are refused."""
    from omegaconf import OmegaConf

    from metalearn_cli.ensemble import check_same_test_data
    from metalearn_cli.errors import ConfigError

    def folder(train: list[str], test: list[str], split_file: str) -> object:
        return OmegaConf.create({"name": "folder", "root": "/d", "split_file": split_file, "ratios": [0.64, 0.16, 0.2],
                                 "classes": {"train": train, "val": ["v"], "test": test}})

    first = folder(["a", "b"], ["t1", "t2"], "/s12.txt")
    check_same_test_data(first, folder(["a", "b", "added"], ["t1", "t2"], "/s13.txt"), "B", "A")
    with pytest.raises(ConfigError, match="dataset.classes=.*'t3'.*its test images would differ"):
        check_same_test_data(first, folder(["a", "b"], ["t1", "t3"], "/s12.txt"), "B", "A")
