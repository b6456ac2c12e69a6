"""`metalearn predict` / `metalearn export` through the CLI, and the README's Python example."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metalearn_cli.cli import main
from conftest import write_image_task

README = Path(__file__).resolve().parents[1] / "README.md"


def read_csv(path: Path) -> list[dict[str, str]]:
    assert b"\r" not in path.read_bytes()  # Unix line ends, not the csv module's CRLF
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_labelled_queries_give_predictions_with_probabilities_and_accuracy(trained_run, tmp_path, capsys):
    names = write_image_task(tmp_path / "task", classes=3, support=(1, 2, 3), query=4)
    out = tmp_path / "pred"
    assert main(["predict", f"checkpoint={trained_run / 'checkpoints' / 'best.pt'}", f"support={tmp_path / 'task' / 'support'}",
                 f"query={tmp_path / 'task' / 'query'}", f"hydra.run.dir={out}", "device=cpu", "show=5"]) == 0
    rows = read_csv(out / "predictions.csv")
    assert list(rows[0]) == ["file", "predicted", "true", *(f"p_{n}" for n in names)]
    assert len(rows) == 12 and {r["true"] for r in rows} == set(names)
    for r in rows:
        probs = [float(r[f"p_{n}"]) for n in names]
        assert abs(sum(probs) - 1) < 1e-4 and r["predicted"] == names[probs.index(max(probs))]
    summary = json.loads((out / "predictions.json").read_text())
    assert summary["accuracy"] == pytest.approx(sum(r["true"] == r["predicted"] for r in rows) / 12)
    assert summary["support_per_class"] == dict(zip(names, (1, 2, 3)))
    screen = capsys.readouterr().out
    assert screen.splitlines()[0].split() == ["file", "predicted", "p", "true"] and "7 more in predictions.csv" in screen


def test_unlabelled_queries_keep_their_paths_as_given_and_export_predicts_the_same(trained_run, tmp_path):
    write_image_task(tmp_path / "task", classes=2, support=(2,), query=2, labelled=False)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["export", f"checkpoint={trained_run}", "out=mk.pt", f"hydra.run.dir={tmp_path / 'exp'}"]) == 0
        for ckpt, out in ((str(trained_run), "a"), ("mk.pt", "b")):
            assert main(["predict", f"checkpoint={ckpt}", "support=task/support", "query=task/query",
                         f"hydra.run.dir={out}", "device=cpu"]) == 0
    finally:
        os.chdir(cwd)
    a, b = read_csv(tmp_path / "a" / "predictions.csv"), read_csv(tmp_path / "b" / "predictions.csv")
    assert a == b and "true" not in a[0]
    assert sorted(r["file"] for r in a) == sorted(f"task/query/{p.name}" for p in (tmp_path / "task" / "query").iterdir())
    assert json.loads((tmp_path / "exp" / "export.json").read_text())["parameters"] > 0


@pytest.mark.parametrize("damage, message", [
    (lambda t: (t / "support" / "extra").mkdir(), "class folder .*extra holds no images"),
    (lambda t: [shutil.rmtree(d) for d in sorted((t / "support").iterdir())[1:]], "has one class"),
    (lambda t: next((t / "query").rglob("*.png")).write_bytes(b"\x89PNG broken"), "cannot decode image"),
    (lambda t: (t / "query" / "stranger").mkdir(), "query class folder 'stranger' is not a support class"),
    (lambda t: [p.unlink() for p in (t / "query").rglob("*.png")], "hold no images"),
])
def test_bad_task_folders_are_one_line(trained_run, tmp_path, capsys, damage, message):
    write_image_task(tmp_path / "task", classes=3)
    damage(tmp_path / "task")
    code = main(["predict", f"checkpoint={trained_run}", f"support={tmp_path / 'task' / 'support'}",
                 f"query={tmp_path / 'task' / 'query'}", f"hydra.run.dir={tmp_path / 'p'}", "device=cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and re.search(message, err), err


def test_a_checkpoint_that_does_not_fit_its_config_is_one_line(trained_run, tmp_path, capsys):
    state = torch.load(trained_run / "checkpoints" / "best.pt", weights_only=True)
    key = next(iter(state["model"]))
    state["model"][key] = torch.zeros(3)
    torch.save(state, tmp_path / "bent.pt")
    write_image_task(tmp_path / "task", classes=2)
    code = main(["predict", f"checkpoint={tmp_path / 'bent.pt'}", f"support={tmp_path / 'task' / 'support'}",
                 f"query={tmp_path / 'task' / 'query'}", f"hydra.run.dir={tmp_path / 'p'}", "device=cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "does not match its own config's meta-network" in err


def test_the_readme_python_example_runs(trained_run, tmp_path, monkeypatch, capsys):
    """The README's API example, run as written against files it names."""
    block = re.search(r"<!-- example: python-api -->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert block, "README.md lost its python-api example"
    monkeypatch.chdir(tmp_path)
    assert main(["export", f"checkpoint={trained_run}", "out=meta_knowledge.pt", f"hydra.run.dir={tmp_path / 'e'}"]) == 0
    names = write_image_task(tmp_path / "task", classes=2, support=(1,), query=1)
    for i, name in enumerate(names):  # the file names the example uses
        (tmp_path / "task" / "support" / name).rename(tmp_path / "task" / "support" / ("cat", "dog")[i])
    (tmp_path / "task" / "query" / names[0] / "1.png").rename(tmp_path / "task" / "query" / "unknown.png")
    exec(compile(block.group(1), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert re.search(r"tensor\(\[\[0\.\d+, 0\.\d+\]\]\)", out), out


def test_blank_images_are_named_and_uniform_probabilities_are_flagged(trained_run, tmp_path, capfd):
    """A task whose images carry nothing (e.g. what dropping a transparency used to leave) says so,
    instead of scoring at chance in silence."""
    from PIL import Image

    for folder in ("support/a", "support/b", "query/a", "query/b"):
        (tmp_path / "task" / folder).mkdir(parents=True)
        Image.new("L", (28, 28), 0).save(tmp_path / "task" / folder / "0.png")
    assert main(["predict", f"checkpoint={trained_run}", f"support={tmp_path / 'task' / 'support'}",
                 f"query={tmp_path / 'task' / 'query'}", f"hydra.run.dir={tmp_path / 'pred'}", "device=cpu"]) == 0
    shown = "".join(capfd.readouterr())  # Hydra's logging prints to the console, as a user sees it
    assert "2 of 2 support images are nearly one flat value" in shown
    assert "2 of 2 query images are nearly one flat value" in shown
    assert "every query got near-uniform probabilities" in shown and "may not tell these classes apart" in shown
    assert "are one picture in two classes" in shown and "2 of 2 queries are support images, pixel for pixel" in shown


def test_a_support_picture_in_two_classes_and_a_query_that_is_a_support_picture_are_said(trained_run, tmp_path, capfd):
    from PIL import Image

    write_image_task(tmp_path / "task", classes=3)
    first, second = sorted((tmp_path / "task" / "support").iterdir())[:2]
    picture = next(first.glob("*.png"))
    shutil.copy(picture, tmp_path / "task" / "query" / first.name / "copy.png")
    os.symlink(picture, second / "linked.png")  # a link in another class
    Image.open(picture).convert("L").save(second / "resaved.bmp")  # the same pixels in another format
    assert main(["predict", f"checkpoint={trained_run}", f"support={tmp_path / 'task' / 'support'}",
                 f"query={tmp_path / 'task' / 'query'}", f"hydra.run.dir={tmp_path / 'pred'}", "device=cpu"]) == 0
    shown = "".join(capfd.readouterr())
    assert re.search(r"1 of \d+ queries are support images, pixel for pixel .*copy\.png is", shown), shown
    assert shown.count("are one picture in two classes") == 2 and "linked.png" in shown and "resaved.bmp" in shown


def test_an_export_is_written_again_from_the_same_weights_but_never_replaces_another_runs(trained_run, tmp_path, capsys):
    from conftest import FAST, compose_config
    from metalearn_cli.training import train

    other = tmp_path / "other"
    train(compose_config("train", FAST + ["trainer.iterations=4", "seed=1"]), other)
    out = tmp_path / "mk.pt"
    assert main(["export", f"checkpoint={trained_run}", f"out={out}", f"hydra.run.dir={tmp_path / 'e1'}"]) == 0
    size = out.stat().st_size  # the line says it in a unit that shows it: a small network is not "0.0 MB"
    said = (tmp_path / "e1" / "export.log").read_text()
    assert (f"{size / 1e3:.1f} kB" if size < 100_000 else f"{size / 1e6:.1f} MB") in said and " 0.0 MB" not in said
    assert main(["export", f"checkpoint={trained_run}", f"out={out}", f"hydra.run.dir={tmp_path / 'e2'}"]) == 0
    before = out.read_bytes()
    capsys.readouterr()
    assert main(["export", f"checkpoint={other}", f"out={out}", f"hydra.run.dir={tmp_path / 'e3'}"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "holds an export of" in last and str(trained_run.resolve()) in last and "choose another out=PATH" in last
    assert out.read_bytes() == before
    copy = tmp_path / "copy.pt"  # the same weights reached by another path: written again, as documented
    shutil.copy(trained_run / "checkpoints" / "best.pt", copy)
    assert main(["export", f"checkpoint={copy}", f"out={out}", f"hydra.run.dir={tmp_path / 'e4'}"]) == 0
    assert main(["export", f"checkpoint={copy}", f"out={tmp_path / 'newdir'}/", f"hydra.run.dir={tmp_path / 'e5'}"]) == 2
    assert "names a folder; name the file to write" in capsys.readouterr().err and not (tmp_path / "newdir").exists()


def test_the_export_help_s_sweep_example_writes_one_export_per_run(trained_run, tmp_path, capsys):
    """export accepts -m as the other Hydra commands do, and its --help says so: its example, run as written (in a
    subprocess, as a shell would), writes each run's export into that job's dir."""
    assert main(["export", "--help"]) == 0
    text = capsys.readouterr().out
    assert "-m/--multirun" in text.splitlines()[-1]
    example = next(line for line in text.splitlines() if "metalearn export -m" in line)
    copy = tmp_path / "copy.pt"  # another checkpoint file of the run: a second job
    shutil.copy(trained_run / "checkpoints" / "best.pt", copy)
    typed = example.split("#")[0].replace("<run A>", str(trained_run)).replace("<run B>", str(copy))
    proc = subprocess.run([sys.executable, "-m", "metalearn_cli", *shlex.split(typed)[1:],
                           f"hydra.sweep.dir={tmp_path / 'sweep'}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for job, source in enumerate((trained_run / "checkpoints" / "best.pt", copy)):
        record = json.loads((tmp_path / "sweep" / str(job) / "export.json").read_text())
        assert record["from"] == str(source.resolve())
        assert record["out"] == str((tmp_path / "sweep" / str(job) / "meta_knowledge.pt").resolve())


def test_an_export_through_a_link_writes_where_it_leads_and_keeps_the_link(trained_run, tmp_path):
    (tmp_path / "exports").mkdir()
    link, dangling = tmp_path / "mk.pt", tmp_path / "later.pt"
    link.symlink_to(tmp_path / "exports" / "mk.pt")  # an earlier export's place, not there yet
    dangling.symlink_to("exports/later.pt")  # relative, as ln -s writes it
    for n, out in enumerate((link, link, dangling)):  # the second: an earlier export of the same weights
        assert main(["export", f"checkpoint={trained_run}", f"out={out}", f"hydra.run.dir={tmp_path / f'e{n}'}"]) == 0
    assert link.is_symlink() and dangling.is_symlink()
    assert (tmp_path / "exports" / "mk.pt").is_file() and (tmp_path / "exports" / "later.pt").is_file()


def test_a_run_dir_inside_the_task_folders_is_refused_before_it_becomes_a_class(trained_run, tmp_path, capsys):
    write_image_task(tmp_path / "task", classes=2, support=(1,), query=1)
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "task").rglob("*"))
    for inside in ("support/zz", "query"):
        assert main(["predict", f"checkpoint={trained_run}", f"support={tmp_path / 'task' / 'support'}",
                     f"query={tmp_path / 'task' / 'query'}", f"hydra.run.dir={tmp_path / 'task' / inside}"]) == 2
        assert "lies inside" in capsys.readouterr().err.strip().splitlines()[-1]
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "task").rglob("*")) == before


def test_predict_records_its_test_protocol_and_says_when_queries_answer_together(tmp_path, capfd):
    from conftest import FAST, compose_config
    from metalearn_cli.training import train

    run = tmp_path / "maml"
    train(compose_config("train", FAST + ["strategy=fomaml", "decoder=linear", "trainer.iterations=2",
                                          "eval.tta_shift=1"]), run)
    write_image_task(tmp_path / "task", classes=2, support=(1,), query=2)
    assert main(["predict", f"checkpoint={run}", f"support={tmp_path / 'task' / 'support'}",
                 f"query={tmp_path / 'task' / 'query'}", "device=cpu", "show=0", f"hydra.run.dir={tmp_path / 'p'}"]) == 0
    summary = json.loads((tmp_path / "p" / "predictions.json").read_text())
    assert summary["bn_mode"] == "transductive" and summary["tta_shift"] == 1 and summary["finetune_steps"] == 0
    assert "".join(capfd.readouterr()).count("each query's answer depends on the queries normalised with it") == 1
    write_image_task(tmp_path / "wide", classes=6, support=(1,), query=2)  # more classes than its 5-output head
    assert main(["predict", f"checkpoint={run}", f"support={tmp_path / 'wide' / 'support'}",
                 f"query={tmp_path / 'wide' / 'query'}", "device=cpu", f"hydra.run.dir={tmp_path / 'p6'}"]) == 2
    out, err = capfd.readouterr()
    assert "classifier head has 5 outputs" in err and "normalised with it" not in out + err  # the refusal comes alone


def test_a_query_class_folder_spelled_in_another_unicode_form_is_the_same_class(trained_run, tmp_path):
    """macOS writes café decomposed (NFD), Linux keeps what it is given: one name, one class."""
    import unicodedata

    names = write_image_task(tmp_path / "task", classes=2, support=(1,), query=1)
    (tmp_path / "task" / "support" / names[0]).rename(tmp_path / "task" / "support" / unicodedata.normalize("NFC", "café"))
    (tmp_path / "task" / "query" / names[0]).rename(tmp_path / "task" / "query" / unicodedata.normalize("NFD", "café"))
    assert main(["predict", f"checkpoint={trained_run}", f"support={tmp_path / 'task' / 'support'}",
                 f"query={tmp_path / 'task' / 'query'}", "device=cpu", "show=0", f"hydra.run.dir={tmp_path / 'p'}"]) == 0
    rows = read_csv(tmp_path / "p" / "predictions.csv")
    assert sorted(unicodedata.normalize("NFC", r["true"]) for r in rows) == sorted(["café", names[1]])


def test_a_query_entry_that_is_not_an_image_file_is_named_as_skipped(trained_run, tmp_path):
    """A query image saved without its extension (or a note beside the images) is skipped, as in the support
    folders, and the predict log says so: it would otherwise vanish from predictions.csv without a word."""
    write_image_task(tmp_path / "task", classes=2, support=(2,), query=2, labelled=False)
    first = sorted((tmp_path / "task" / "query").iterdir())[0]
    first.rename(first.with_suffix(""))
    assert main(["predict", f"checkpoint={trained_run}", f"support={tmp_path / 'task' / 'support'}",
                 f"query={tmp_path / 'task' / 'query'}", f"hydra.run.dir={tmp_path / 'out'}", "device=cpu"]) == 0
    assert f"skipped 1 entry that is not an image file ({first.stem})" in (tmp_path / "out" / "predict.log").read_text()
    assert len(read_csv(tmp_path / "out" / "predictions.csv")) == len(list((tmp_path / "task" / "query").iterdir())) - 1


def test_a_note_beside_labelled_query_folders_is_named_as_skipped(trained_run, tmp_path):
    """Query class sub-folders with a note beside them: named in the log, as the support's is (it was ignored silently)."""
    write_image_task(tmp_path / "task", classes=2, support=(2,), query=2)
    (tmp_path / "task" / "query" / "notes.txt").write_text("drawn by hand")
    assert main(["predict", f"checkpoint={trained_run}", f"support={tmp_path / 'task' / 'support'}",
                 f"query={tmp_path / 'task' / 'query'}", f"hydra.run.dir={tmp_path / 'out'}", "device=cpu"]) == 0
    assert "skipped 1 file beside the class folders (notes.txt)" in (tmp_path / "out" / "predict.log").read_text()


def test_inverted_support_files_get_advice_about_files_not_tensors(trained_run, tmp_path, capfd, monkeypatch):
    """predict reads the support folder itself into one tensor: its advice on inverted images is the files' (their
    polarity), not the Python API's on converting tensors, which the user never gave."""
    from PIL import Image

    from metalearn_cli import knowledge

    monkeypatch.setattr(knowledge, "opposite", lambda mean, reference: True)  # the test run's generated images have
    for folder in ("support/a", "support/b", "query/a"):  # no clear polarity: these are taken as inverted against them
        (tmp_path / "task" / folder).mkdir(parents=True)
        Image.effect_noise((28, 28), 40).save(tmp_path / "task" / folder / "0.png")
    capfd.readouterr()
    assert main(["predict", f"checkpoint={trained_run}", f"support={tmp_path / 'task' / 'support'}",
                 f"query={tmp_path / 'task' / 'query'}", f"hydra.run.dir={tmp_path / 'pred'}", "device=cpu"]) == 0
    shown = "".join(capfd.readouterr())
    assert "the support images look inverted" in shown and "give images of the training images' polarity" in shown, shown
    assert "tensors are used as given" not in shown
