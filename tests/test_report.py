"""`metalearn report` over a sweep dir: table, CSV and pictures from real runs."""

import csv
import shutil

import pytest
from omegaconf import OmegaConf

from conftest import FAST, compose_config
from metalearn_cli import training
from metalearn_cli.cli import main
from metalearn_cli.report import strategy_label, swept


def test_report_over_two_runs(tmp_path, capsys):
    for seed in (0, 1):
        cfg = compose_config("train", [*FAST, f"seed={seed}"])
        run = tmp_path / "sweep" / f"{seed}_job"
        training.train(cfg, run)
        (run / ".hydra").mkdir()  # what Hydra writes in a real sweep
        (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
        (run / ".hydra" / "overrides.yaml").write_text(f"- seed={seed}\n- trainer.iterations=6\n")
    (tmp_path / "sweep" / "2_failed").mkdir()
    (tmp_path / "sweep" / "2_failed" / "status.json").write_text('{"status": "failed", "error": "x"}')
    assert main(["report", str(tmp_path / "sweep")]) == 0
    out = capsys.readouterr().out
    assert out.count("| completed |") == 2 and "| failed |" in out
    report = tmp_path / "sweep" / "report"  # beside the runs, never inside one
    assert b"\r" not in (report / "report.csv").read_bytes()
    rows = list(csv.DictReader((report / "report.csv").open()))
    assert [r["run"] for r in rows] == ["0_job", "1_job", "2_failed"]
    assert [r["trainer.iterations"] for r in rows] == ["6", "6", ""]  # given to some runs only: a column of its own
    assert next(csv.reader((report / "report.csv").open())).count("seed") == 1  # seed keeps its one column
    assert 1 < float(rows[0]["test_accuracy"]) <= 100  # percent, as everywhere in the report
    for name in ("curves.png", "accuracy.png"):
        assert (report / name).read_bytes()[:4] == b"\x89PNG"
    # The two runs differ only in their seed: one row of mean and std over training seeds.
    (group,) = list(csv.DictReader((report / "seeds.csv").open()))
    accs = [float(r["test_accuracy"]) for r in rows[:2]]
    assert group["seeds"] == "0,1" and float(group["mean_accuracy"]) == round(sum(accs) / 2, 2)
    assert float(group["std_accuracy"]) == round(abs(accs[0] - accs[1]) / 2**0.5, 2)
    assert "Across training seeds" in out
    # a second run of seed 0 (another process count, a rerun) is no spread over seeds: it stands alone
    shutil.copytree(tmp_path / "sweep" / "0_job", tmp_path / "sweep" / "3_again")
    assert main(["report", str(tmp_path / "sweep"), "--out", str(tmp_path / "again")]) == 0
    (again,) = list(csv.DictReader((tmp_path / "again" / "seeds.csv").open()))
    assert (again["seeds"], again["runs"], again["mean_accuracy"]) == ("0,1", "2", group["mean_accuracy"])


def test_report_without_runs_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no run dirs" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_report_labels_each_maml_variant_by_its_own_name(tmp_path):
    for strategy in ("fomaml", "anil", "metasgd"):
        cfg = compose_config("train", [*FAST, f"strategy={strategy}", "decoder=linear", "encoder.width=8",
                                       "trainer.iterations=2", "trainer.val_every=2", "eval.episodes=2"])
        run = tmp_path / "sweep" / strategy
        training.train(cfg, run)
        (run / ".hydra").mkdir()
        (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    assert main(["report", str(tmp_path / "sweep"), "--out", str(tmp_path / "report")]) == 0
    rows = list(csv.DictReader((tmp_path / "report" / "report.csv").open()))
    assert {r["run"]: r["strategy"] for r in rows} == {"anil": "anil", "fomaml": "fomaml", "metasgd": "metasgd"}


def test_swept_values_are_columns_of_their_own_and_constant_ones_are_not():
    """An Optuna study's parameters (``optimizer.lr``, one appended with ``+``) read as columns; ``debug=smoke``,
    given to every run alike, and ``seed`` (a column already) do not."""
    rows = [{"overrides": "debug=smoke optimizer.lr=0.01 +trainer.clip=1 seed=0"},
            {"overrides": "debug=smoke optimizer.lr=0.003 seed=1"}]
    assert swept(rows) == {"optimizer.lr": ["0.01", "0.003"], "trainer.clip": ["1", ""]}
    typed = [{"overrides": "", "_overrides": ["encoder.widths=[32, 96, 128]", "seed=0"]},  # a value with spaces, whole
             {"overrides": "", "_overrides": ["encoder.widths=[32, 64, 128]", "seed=1"]}]
    assert swept(typed) == {"encoder.widths": ["[32, 96, 128]", "[32, 64, 128]"]}


@pytest.mark.parametrize("saved,label", [
    ({"name": "maml", "adapt": "head"}, "anil"), ({"name": "maml", "learn_inner_lr": True}, "metasgd"),
    ({"name": "maml", "first_order": True}, "fomaml"), ({"name": "maml", "adapt": "all"}, "maml"),
    ({"name": "mgd"}, "mgd"),
])
def test_runs_saved_before_the_variants_had_names_are_labelled_by_their_flags(saved, label):
    assert strategy_label({"strategy": saved}) == label


def test_two_run_dirs_get_short_labels_and_the_report_lands_beside_them(tmp_path):
    for name, seed in (("a", 0), ("b", 1)):
        training.train(compose_config("train", [*FAST, f"seed={seed}"]), tmp_path / "runs" / name)
    assert main(["report", str(tmp_path / "runs" / "a"), str(tmp_path / "runs" / "b")]) == 0
    rows = list(csv.DictReader((tmp_path / "runs" / "report" / "report.csv").open()))
    assert [r["run"] for r in rows] == ["a", "b"]
    assert not (tmp_path / "runs" / "a" / "report.md").exists()
    assert main(["report", str(tmp_path / "runs" / "a")]) == 0  # one run: the report goes beside it
    assert (tmp_path / "runs" / "report" / "report.md").is_file() and not (tmp_path / "runs" / "a" / "report").exists()


def test_a_runs_pretraining_stage_is_part_of_the_run_not_a_row_of_its_own(tmp_path):
    from metalearn_cli.run_records import find_runs

    run = tmp_path / "sweep" / "0_rfs"
    (run / "pretrain").mkdir(parents=True)
    for d in (run, run / "pretrain"):
        (d / "status.json").write_text('{"status": "completed"}')
        (d / "results.json").write_text('{"accuracy": 0.9}')
    other = tmp_path / "sweep" / "1_protonet"
    other.mkdir()
    (other / "status.json").write_text('{"status": "completed"}')
    assert find_runs([tmp_path / "sweep"]) == [run, other]


def test_a_published_figure_that_is_not_the_methods_own_says_whose_it_is(tmp_path):
    """Lake's 95.5 is the humans' accuracy: the report says so in its own column, and the figure stays a
    number (the plot and the CSV read it)."""
    from metalearn_cli.report import describe, markdown

    run = tmp_path / "run"
    training.train(compose_config("train", [*FAST, "reference.accuracy=95.5", "reference.of=humans"]), run)
    row = describe(run, tmp_path)
    assert row["published"] == 95.5 and row["published_of"] == "humans"
    table = markdown([row])
    assert "published_of" in table.splitlines()[0] and "| 95.50 | humans |" in table


def test_two_recipes_of_one_component_beside_another_are_told_apart(tmp_path):
    """FEAT twice (two temperatures) beside a ProtoNet: the swapped decoder is named by its group,
    and the parameter that differs between the two FEAT runs is shown for them alone."""
    from metalearn_cli.report import describe
    from metalearn_cli.run_settings import config_labels

    runs = [tmp_path / n for n in ("proto", "feat1", "feat64")]
    for run, extra in zip(runs, (["decoder=prototype"], ["decoder=feat", "decoder.temperature=1"], ["decoder=feat"])):
        (run / ".hydra").mkdir(parents=True)
        cfg = compose_config("train", [*FAST, *extra])
        (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
        (run / "status.json").write_text('{"status": "completed"}')
    labels = config_labels(runs, [describe(r, tmp_path) for r in runs])
    assert labels == ["decoder=prototype", "decoder=feat decoder.temperature=1.0", "decoder=feat decoder.temperature=64.0"]


def test_a_run_is_labelled_by_the_config_file_it_picked_not_the_components_registry_name(tmp_path):
    """encoder=conv4_fast builds the conv4 class; the report says conv4_fast, as the command did."""
    small = [*FAST, "trainer.iterations=2", "trainer.val_every=2", "eval.episodes=2"]
    assert main(["train", *small, "encoder=conv4_fast", "encoder.width=null", "encoder.widths=[8,8,8,8]", f"hydra.run.dir={tmp_path / 'runs' / 'fast'}"]) == 0
    assert main(["train", *small, "encoder=conv4", "encoder.width=8", f"hydra.run.dir={tmp_path / 'runs' / 'plain'}"]) == 0
    assert main(["report", str(tmp_path / "runs")]) == 0
    rows = list(csv.DictReader((tmp_path / "runs" / "report" / "report.csv").open()))
    assert {r["run"]: r["encoder"] for r in rows} == {"fast": "conv4_fast", "plain": "conv4"}
    assert {r["dataset"] for r in rows} == {"synthetic"}
    from metalearn_cli.report import describe
    from metalearn_cli.run_settings import config_labels

    runs = [tmp_path / "runs" / "fast", tmp_path / "runs" / "plain"]  # the legend: by the file, not its parameters
    assert config_labels(runs, [describe(r, tmp_path / "runs") for r in runs]) == ["encoder=conv4_fast", "encoder=conv4"]
    refused = tmp_path / "runs" / "refused"  # a refused eval's dir: a status, no config; the others keep their labels
    refused.mkdir()
    (refused / "status.json").write_text('{"status": "failed"}')
    runs.append(refused)
    assert config_labels(runs, [describe(r, tmp_path / "runs") for r in runs]) == \
        ["encoder=conv4_fast", "encoder=conv4", "refused (no config recorded)"]


def test_a_report_of_other_runs_never_replaces_the_default_report(tmp_path, capsys):
    runs = tmp_path / "runs"
    for name, seed in (("a", 0), ("b", 1)):
        training.train(compose_config("train", [*FAST, f"seed={seed}"]), runs / name)
    assert main(["report", str(runs)]) == 0
    both = (runs / "report" / "report.csv").read_text()
    assert main(["report", str(runs / "a")]) == 0
    assert (runs / "report" / "report.csv").read_text() == both
    assert [r["run"] for r in csv.DictReader((runs / "report-2" / "report.csv").open())] == ["a"]
    assert main(["report", str(runs)]) == 0 and not (runs / "report-3").exists()  # the same runs: refreshed in place
    (tmp_path / "export").mkdir()  # named beside the runs, it was left out without a word
    assert main(["report", str(runs / "a"), str(tmp_path / "export")]) == 2
    assert f"{tmp_path / 'export'} holds no run dir" in capsys.readouterr().err
    training.train(compose_config("train", [*FAST, "seed=2"]), runs / "c")  # a sweep's last job, finished since
    assert main(["report", str(runs)]) == 0 and not (runs / "report-3").exists()  # the report of a part: superseded
    assert [r["run"] for r in csv.DictReader((runs / "report" / "report.csv").open())] == ["a", "b", "c"]


def test_an_explicit_out_holding_another_report_is_refused_and_the_same_runs_refresh_it(tmp_path, capsys):
    runs = tmp_path / "runs"
    for name, seed in (("a", 0), ("b", 1)):
        training.train(compose_config("train", [*FAST, f"seed={seed}"]), runs / name)
    out = tmp_path / "rep"
    assert main(["report", str(runs / "a"), str(runs / "b"), "--out", str(out)]) == 0
    both = (out / "report.csv").read_text()
    capsys.readouterr()
    assert main(["report", str(runs / "a"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds accuracy.png, curves.png, inputs.txt, report.csv, ..., made from other runs (inputs.txt names them)" in err
    assert (out / "report.csv").read_text() == both
    assert main(["report", str(runs / "a"), str(runs / "b"), "--out", str(out)]) == 0  # the same runs: refreshed
    mine = tmp_path / "mine"  # a user's own files of the names a report writes, in a folder of theirs
    mine.mkdir()
    (mine / "accuracy.png").write_text("precious")
    assert main(["report", str(runs / "a"), "--out", str(mine)]) == 2
    assert "holds accuracy.png, not written by this command over these runs" in capsys.readouterr().err
    assert (mine / "accuracy.png").read_text() == "precious" and sorted(p.name for p in mine.iterdir()) == ["accuracy.png"]
    shared = tmp_path / "shared"  # a compare over the same runs wrote beside a user's report.md: its inputs.txt does
    shared.mkdir()  # not make the user's file a report's own
    (shared / "report.md").write_text("my notes")
    from metalearn_cli.derived import record_inputs, record_written

    record_inputs(shared, [runs / "a", runs / "b"])  # as compare --out shared leaves it
    record_written(shared, [shared / "compare.csv", shared / "inputs.txt"])
    assert main(["report", str(runs / "a"), str(runs / "b"), "--out", str(shared)]) == 2
    assert "holds report.md, not written by this command over these runs" in capsys.readouterr().err
    assert (shared / "report.md").read_text() == "my notes"
    for name in ("report.md", "inputs.txt"):  # another report's folder, part deleted: still not replaced
        (out / name).unlink()
        assert main(["report", str(runs / "a"), "--out", str(out)]) == 2
    assert (out / "report.csv").read_text() == both


def test_seeds_are_pooled_only_when_their_configs_match_not_just_their_command_lines(tmp_path, capsys):
    """The same command line under another version's defaults (the default run changed on 2026-12-05) is another setting."""
    import yaml

    runs = tmp_path / "runs"
    for seed in (0, 1):
        assert main(["train", *FAST, f"seed={seed}", f"hydra.run.dir={runs / str(seed)}"]) == 0
    assert main(["report", str(runs)]) == 0
    assert "Across training seeds" in capsys.readouterr().out
    repeat = tmp_path / "repeat"  # seed 0 again, apart only in bookkeeping
    assert main(["train", *FAST, "seed=0", "logger=csv", f"hydra.run.dir={repeat / '0csv'}"]) == 0
    assert main(["report", str(runs), str(repeat), "--out", str(tmp_path / "both")]) == 0
    seeds = list(csv.DictReader((tmp_path / "both" / "seeds.csv").open()))
    assert [(r["seeds"], r["runs"]) for r in seeds] == [("0,1", "2")]  # one run per seed; the other stands alone
    capsys.readouterr()
    record = runs / "1" / ".hydra" / "config.yaml"  # as an older version's defaults would have composed it
    config = yaml.safe_load(record.read_text())
    config["trainer"]["train_query"] = 5
    record.write_text(yaml.safe_dump(config))
    assert main(["report", str(runs)]) == 0
    assert "Across training seeds" not in capsys.readouterr().out
    assert not (runs / "report" / "seeds.csv").exists()  # the refreshed report keeps no stale table
    other = tmp_path / "typed"  # the same config, one command line naming a default the other leaves out
    assert main(["train", *FAST, "seed=0", f"hydra.run.dir={other / '0'}"]) == 0
    assert main(["train", *FAST, "seed=1", "strategy=mgd", f"hydra.run.dir={other / '1'}"]) == 0
    capsys.readouterr()
    assert main(["report", str(other)]) == 0
    assert "Across training seeds" in capsys.readouterr().out and (other / "report" / "seeds.csv").is_file()


def test_eval_and_predict_dirs_are_described_by_the_run_that_trained_them(tmp_path, monkeypatch):
    """An eval dir's config holds only its checkpoint and eval.*; its row names the trained run's data
    set and components, its own task shape, and says which command made it. A predict dir's row
    shows its accuracy on labelled queries (predictions.json), not an empty completed run."""
    from conftest import write_image_task

    small = [*FAST, "trainer.iterations=2", "trainer.val_every=2", "eval.episodes=2", "device=cpu"]
    runs = tmp_path / "runs"
    assert main(["train", *small, "encoder=conv4_fast", "encoder.width=null", "encoder.widths=[8,8,8,8]",
                 f"hydra.run.dir={runs / 'trained'}"]) == 0
    assert main(["eval", f"checkpoint={runs / 'trained'}", "episode=5way1shot", "episode.way=3", "episode.query=2", "eval.episodes=2", "device=cpu",
                 "eval.tta_shift=1", "split=val", f"hydra.run.dir={runs / 'evaluated'}"]) == 0
    write_image_task(tmp_path / "task", classes=3, support=(1, 1, 1), query=2)
    assert main(["predict", f"checkpoint={runs / 'trained'}", f"support={tmp_path / 'task' / 'support'}",
                 f"query={tmp_path / 'task' / 'query'}", "device=cpu", "show=0", f"hydra.run.dir={runs / 'predicted'}"]) == 0
    assert main(["export", f"checkpoint={runs / 'trained'}", f"out={tmp_path / 'mk.pt'}", f"hydra.run.dir={tmp_path / 'exp'}"]) == 0
    assert main(["eval", f"checkpoint={tmp_path / 'mk.pt'}", "device=cpu", f"hydra.run.dir={runs / 'from_export'}"]) == 0
    (tmp_path / "task" / "query" / "stranger").mkdir()  # refused: a predict dir with no predictions.json
    monkeypatch.chdir(tmp_path)  # its checkpoint given relative to where it ran
    assert main(["predict", "checkpoint=runs/trained", "support=task/support", "query=task/query", "device=cpu",
                 "hydra.run.dir=runs/refused"]) == 2
    monkeypatch.chdir(tmp_path / "task")  # report runs elsewhere: the refused dir's hydra.runtime.cwd places runs/trained
    assert main(["report", str(runs)]) == 0
    rows = {r["run"]: r for r in csv.DictReader((runs / "report" / "report.csv").open())}
    assert {k: r["command"] for k, r in rows.items()} == {"trained": "train", "evaluated": "eval", "predicted": "predict",
                                                            "from_export": "eval", "refused": "predict"}
    for name in ("evaluated", "predicted", "from_export", "refused"):  # an export names the run it came from
        assert (rows[name]["dataset"], rows[name]["encoder"], rows[name]["strategy"]) == ("synthetic", "conv4_fast", "mgd")
    assert rows["evaluated"]["episode"] == "3w1s (val)" and rows["trained"]["episode"] != "3w1s"
    assert rows["predicted"]["episode"] == "3w1s" and 0 <= float(rows["predicted"]["test_accuracy"]) <= 100
    assert rows["evaluated"]["seed"] == rows["trained"]["seed"] == "0"  # the seed the eval drew its tasks with
    # The figures' labels say what each test changed, not every key of the trained run under checkpoint.*.
    from metalearn_cli.report import describe
    from metalearn_cli.run_settings import config_labels

    from metalearn_cli.run_settings import exported_by

    dirs = [runs / n for n in ("evaluated", "predicted", "trained")]
    shutil.move(runs / "trained", tmp_path / "moved")  # the export alone still says what was trained
    assert exported_by(tmp_path / "mk.pt")["config"]["encoder"]["widths"] == [8, 8, 8, 8]
    gone = describe(runs / "evaluated", runs)  # its training run gone: what its own results.json kept
    assert (gone["dataset"], gone["encoder"], gone["decoder"], gone["strategy"]) == ("synthetic", "conv4", "prototype", "mgd")
    shutil.move(tmp_path / "moved", runs / "trained")
    labels = config_labels(dirs, [describe(d, runs) for d in dirs])
    assert "eval.tta_shift=1" in labels[0] and "split=val" in labels[0] and "command=eval" in labels[0]
    assert "command=predict" in labels[1] and all("checkpoint" not in label and len(label) < 120 for label in labels), labels


def test_a_pretraining_stage_named_alone_is_a_row_with_its_runs_settings(tmp_path, monkeypatch):
    """``report RUN/pretrain``: the stage has no .hydra/ of its own; its row reads the run's settings, says it is
    nearest-centroid on the pre-trained encoder, and is not pooled with its run; a run that does not meta-train
    has no tasks/s."""
    run = tmp_path / "run"
    assert main(["train", "experiment=rfs_omniglot_5w1s", "debug=smoke", "encoder.width=8", "encoder.widths=null",
                 "pretrain.iterations=2", "pretrain.val_every=1", "pretrain.val_episodes=2", "trainer.val_episodes=2",
                 "eval.episodes=2", "device=cpu", f"hydra.run.dir={run}"]) == 0
    import json

    assert json.loads((run / "pretrain" / "results.json").read_text())["wall_seconds"] > 0
    assert main(["report", str(run / "pretrain"), str(run), "--out", str(tmp_path / "rep")]) == 0
    rows = {r["run"]: r for r in csv.DictReader((tmp_path / "rep" / "report.csv").open())}
    stage, whole = rows["pretrain"], rows["run"]
    assert (stage["dataset"], stage["encoder"], stage["decoder"], stage["strategy"]) == ("synthetic", "conv4", "prototype",
                                                                                         "pretrain=rfs")
    assert (whole["decoder"], whole["tasks_per_s"], whole["pretrain"]) == ("logistic", "", "rfs")  # the option, not its kind
    assert not (tmp_path / "rep" / "seeds.csv").exists()  # two settings, not one setting's two seeds
    tested = tmp_path / "tested stage"  # an eval of the stage's checkpoint is the stage's nearest-centroid, not the run's mgd
    assert main(["eval", f"checkpoint={run / 'pretrain/checkpoints/best.pt'}", "eval.episodes=2", "device=cpu",
                 f"hydra.run.dir={tested}"]) == 0
    from metalearn_cli.report import describe
    from metalearn_cli.run_settings import config_labels

    row = describe(tested, tmp_path)
    assert (row["strategy"], row["decoder"]) == ("pretrain=rfs", "prototype")
    plain = tmp_path / "plain"  # no stage: labelled by the option, beside rfs, not by pretrain.kind or optimizer keys
    assert main(["train", "debug=smoke", "encoder.width=8", "encoder.widths=null", "trainer.iterations=2",
                 "trainer.val_episodes=2", "eval.episodes=2", "device=cpu", f"hydra.run.dir={plain}"]) == 0
    labels = config_labels([run, plain], [describe(r, tmp_path) for r in (run, plain)])
    assert "pretrain=rfs" in labels[0].split() and "pretrain=none" in labels[1].split(), labels
    assert not any("pretrain.kind" in label or "optimizer" in label for label in labels), labels
    shutil.copytree(run, tmp_path / "copy")
    monkeypatch.chdir(tmp_path)  # two runs' stages, given relative: rows told apart by their runs
    assert main(["report", "run/pretrain", "copy/pretrain", "--out", "rep2"]) == 0
    assert [r["run"] for r in csv.DictReader((tmp_path / "rep2" / "report.csv").open())] == ["copy/pretrain", "run/pretrain"]


def test_evals_of_a_recipes_seeds_are_labelled_by_the_recipe_not_one_seeds_checkpoint(tmp_path):
    """The seeds table's label of evaluations is what trained them and what the eval changed: the
    ``checkpoint=`` of the first seed would name one run as the setting of all of them."""
    runs = tmp_path / "runs"
    for seed in (0, 1):
        assert main(["train", *FAST, f"seed={seed}", "trainer.iterations=2", "trainer.val_every=2", "eval.episodes=2",
                     f"hydra.run.dir={runs / f'trained{seed}'}"]) == 0
        assert main(["eval", f"checkpoint={runs / f'trained{seed}'}", "eval.episodes=2", "eval.tta_shift=1",
                     f"hydra.run.dir={tmp_path / 'evals' / f'eval{seed}'}"]) == 0
    assert main(["report", str(tmp_path / "evals"), "--out", str(tmp_path / "rep")]) == 0
    (group,) = list(csv.DictReader((tmp_path / "rep" / "seeds.csv").open()))
    assert group["seeds"] == "0,1" and "checkpoint=" not in group["setting"] and "trained0" not in group["setting"]
    assert group["setting"].startswith("dataset=synthetic ")  # what trained them, then what the eval changed
    assert group["setting"].split(" [")[0].endswith(" eval eval.episodes=2 eval.tta_shift=1")


def test_a_metrics_file_cut_short_or_garbled_is_named_in_the_damaged_note(tmp_path, trained_run, capsys):
    for name in ("cut", "garbled", "whole"):
        shutil.copytree(trained_run, tmp_path / "runs" / name)
    metrics = (trained_run / "metrics.jsonl").read_bytes()
    (tmp_path / "runs" / "cut" / "metrics.jsonl").write_bytes(metrics[: len(metrics) // 2 + 7])  # mid-line
    (tmp_path / "runs" / "garbled" / "metrics.jsonl").write_bytes(metrics + b"\xd6\xce\xedzh\xdc\xe8\x1b\n")
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 0
    (note,) = [line for line in capsys.readouterr().out.splitlines() if "cannot be read" in line]
    assert f"{tmp_path / 'runs' / 'cut' / 'metrics.jsonl'}, {tmp_path / 'runs' / 'garbled' / 'metrics.jsonl'} cannot" in note
    assert "whole" not in note.split("curves")[0] and "read as empty" not in note  # the rest of the file is drawn


def test_a_run_named_in_characters_the_figures_font_lacks_gets_one_note_not_warnings(tmp_path):
    named = tmp_path / "runs" / "my run 日本"
    assert main(["train", *FAST, "trainer.iterations=2", "trainer.val_every=2", "eval.episodes=2", f'hydra.run.dir="{named}"']) == 0
    shutil.copytree(named, tmp_path / "runs" / "a run")
    # one setting and seed twice: the second by name stands alone, labelled by it ("... (my run 日本)")
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "metalearn_cli", "report", str(tmp_path / "runs"), "--out",
                           str(tmp_path / "report")], capture_output=True, text=True, timeout=300)  # warnings as users see them
    err = proc.stderr
    assert proc.returncode == 0 and "Glyph" not in err and "UserWarning" not in err, err
    notes = [line for line in err.splitlines() if "as empty boxes" in line]
    assert len(notes) <= 1 and all("日 本" in n for n in notes)  # none where a font has them
