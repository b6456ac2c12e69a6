"""The logger group: every record of metrics.jsonl reaches the chosen logger, a resume continues it,
and the final test reaches it too."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metalearn_cli.cli import main

SMOKE = ["debug=smoke", "trainer.iterations=10", "trainer.val_every=5", "trainer.checkpoint_every=5",
         "trainer.log_every=5", "trainer.val_episodes=8", "eval.episodes=8", "encoder.width=16", "device=cpu"]


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def csv_rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_csv_holds_every_number_of_metrics_jsonl_and_the_final_test(tmp_path):
    run = tmp_path / "run"
    assert main(["train", *SMOKE, "logger=csv", f"hydra.run.dir={run}"]) == 0
    rows = {(int(r["step"]), r["split"], r["metric"]): float(r["value"]) for r in csv_rows(run)}
    expected = {(r["step"], r["split"], k): float(v) for r in records(run) for k, v in r.items()
                if k not in ("step", "split", "episodes") and isinstance(v, (int, float))}  # a count is no curve
    assert expected and {k: rows[k] for k in expected} == pytest.approx(expected)
    results = json.loads((run / "results.json").read_text())
    assert rows[(results["best_step"], "test", "accuracy")] == pytest.approx(results["accuracy"])  # best.pt's step
    assert not (run / "tensorboard").exists()  # the default logger is replaced, not added to


def test_tensorboard_holds_the_curves_the_test_at_best_pts_step_and_the_config(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    run = tmp_path / "run"
    assert main(["train", *SMOKE, "seed=3", f"hydra.run.dir={run}"]) == 0
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    scalars = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}
    expected = {f"{r['split']}/{k}": {} for r in records(run) for k in r if k not in ("step", "split", "episodes")}
    for r in records(run):
        for k, v in r.items():
            if f"{r['split']}/{k}" in expected:
                expected[f"{r['split']}/{k}"][r["step"]] = v
    results = json.loads((run / "results.json").read_text())
    assert set(scalars) == set(expected) | {"test/accuracy", "test/ci95"}
    assert all(scalars[tag] == pytest.approx(values) for tag, values in expected.items())
    assert scalars["test/accuracy"] == pytest.approx({results["best_step"]: results["accuracy"]})
    config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert config.startswith("```yaml") and "seed: 3" in config
    hparams = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["seed"].number_value == 3
    assert start.session_start_info.hparams["strategy.name"].string_value == "mgd"
    end = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/session_end_info"])
    assert end.session_end_info.status == api_pb2.STATUS_SUCCESS
    # a resume that raises the budget writes the config again, as it now runs
    assert main(["train", "resume=true", "trainer.iterations=15", f"hydra.run.dir={run}"]) == 0
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    texts = {t.step: t.tensor_proto.string_val[0].decode() for t in events.Tensors("config/text_summary")}
    assert sorted(texts) == [0, 11] and "iterations: 10" in texts[0] and "iterations: 15" in texts[11]


def test_an_interrupted_session_ends_its_hparams_unknown_not_successful(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    from metalearn_cli import training
    from metalearn_cli.errors import Interrupted
    from conftest import compose_config

    run = tmp_path / "run"
    meta = training.Training(compose_config("train", [*SMOKE]), run).meta
    with pytest.raises(Interrupted):
        meta.run({"signal": "SIGINT", "now": None, "again": None})  # asked to stop before its first step
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    end = plugin_data_pb2.HParamsPluginData.FromString(events.PluginTagToContent("hparams")["_hparams_/session_end_info"])
    assert end.session_end_info.status == api_pb2.STATUS_UNKNOWN


def test_a_resumed_csv_keeps_each_step_once(tmp_path):
    run = tmp_path / "run"
    assert main(["train", *SMOKE, "logger=csv", f"hydra.run.dir={run}"]) == 0
    assert main(["train", "resume=true", "trainer.iterations=20", f"hydra.run.dir={run}"]) == 0
    keys = [(r["step"], r["split"], r["metric"]) for r in csv_rows(run)]
    assert f"CSV metrics: {run / 'metrics.csv'}" in (run / "train.log").read_text()  # where the records go, said
    assert main(["train", "resume=true", "trainer.iterations=25", "logger=tensorboard", f"hydra.run.dir={run}"]) == 0
    assert "logged with logger=csv and continues with logger=tensorboard" in (run / "train.log").read_text()
    assert len(keys) == len(set(keys)) and ("20", "val", "accuracy") in keys and ("5", "train", "loss") in keys


def test_mlflow_through_the_console_script_gets_params_metrics_test_and_status(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    run = tmp_path / "my runs ü" / "a"
    exe = Path(sys.executable).with_name("metalearn")
    proc = subprocess.run([str(exe), "train", *SMOKE, "logger=mlflow", f"hydra.run.dir='{run}'"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((run / "mlflow.json").read_text())
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=saved["tracking_uri"])
    mlrun = client.get_run(saved["run_id"])
    assert mlrun.info.status == "FINISHED" and mlrun.data.params["encoder.name"] == "conv4"
    history = [(m.step, m.value) for m in client.get_metric_history(saved["run_id"], "val/accuracy")]
    expected = [(r["step"], r["accuracy"]) for r in records(run) if r["split"] == "val"]
    history.sort()
    assert [s for s, _ in history] == [s for s, _ in expected]
    assert [v for _, v in history] == pytest.approx([v for _, v in expected])
    results = json.loads((run / "results.json").read_text())
    assert mlrun.data.metrics["test/accuracy"] == pytest.approx(results["accuracy"])
    assert (run / "mlruns").is_dir()  # the local file store, inside the run


def test_a_resume_continues_the_same_mlflow_run(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    run = tmp_path / "run"
    assert main(["train", *SMOKE, "logger=mlflow", f"hydra.run.dir={run}"]) == 0
    first = json.loads((run / "mlflow.json").read_text())["run_id"]
    assert main(["train", "resume=true", "trainer.iterations=20", f"hydra.run.dir={run}"]) == 0
    saved = json.loads((run / "mlflow.json").read_text())
    assert saved["run_id"] == first
    client = MlflowClient(tracking_uri=saved["tracking_uri"])
    assert [m.step for m in client.get_metric_history(first, "val/accuracy")] == [0, 5, 10, 15, 20]
    assert client.get_run(first).info.status == "FINISHED"
    results = json.loads((run / "results.json").read_text())  # the resumed test reaches MLflow, at best.pt's step,
    tests = client.get_metric_history(first, "test/accuracy")  # even where that step is one MLflow already held
    assert (tests[-1].step, tests[-1].value) == (results["best_step"], pytest.approx(results["accuracy"]))


def test_a_moved_run_dir_continues_its_mlflow_run_and_a_killed_run_logs_no_step_twice(tmp_path):
    """The run dir's own store moves with it; points a killed process logged past its last checkpoint are
    already in MLflow (which cannot drop them), so the resume does not log those steps again."""
    pytest.importorskip("mlflow")
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    run, moved = tmp_path / "run", tmp_path / "moved run"
    assert main(["train", *SMOKE, "logger=mlflow", f"hydra.run.dir={run}"]) == 0
    first = json.loads((run / "mlflow.json").read_text())["run_id"]
    run.rename(moved)
    client = MlflowClient(tracking_uri=(moved / "mlruns").resolve().as_uri())
    client.log_batch(first, metrics=[Metric("val/accuracy", 0.125, 0, 15)])  # as a process killed after step 15 left it
    assert main(["train", "trainer.iterations=20", f"resume='{moved}'"]) == 0
    record = json.loads((moved / "mlflow.json").read_text())
    assert record["run_id"] == first and record["tracking_uri"] == (moved / "mlruns").resolve().as_uri()  # where it is now
    assert client.get_run(first).data.tags["metalearn.run_dir"] == str(moved)
    history = client.get_metric_history(first, "val/accuracy")
    assert [m.step for m in history] == [0, 5, 10, 15, 20] and history[3].value == 0.125
    assert len(client.search_runs([client.get_run(first).info.experiment_id])) == 1


def test_a_run_stopped_in_pretraining_resumes_without_saying_an_mlflow_run_was_lost(compose_train, tmp_path, monkeypatch,
                                                                                     caplog):
    """Meta-training had logged nothing when the stage stopped, so it never had an MLflow run to lose."""
    pytest.importorskip("mlflow")
    from metalearn_cli import training
    from metalearn_cli.errors import Interrupted
    from metalearn_cli.objectives import SupervisedObjective

    pre = ["pretrain=supervised", "pretrain.iterations=6", "pretrain.batch_size=16", "pretrain.val_every=3",
           "pretrain.val_episodes=4", "logger=mlflow"]
    run, original, calls = tmp_path / "run", SupervisedObjective.step, []

    def stopped(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise Interrupted("SIGTERM", "SIGTERM during pre-training")
        return original(self, *args)

    monkeypatch.setattr(SupervisedObjective, "step", stopped)
    with pytest.raises(Interrupted):
        training.train(compose_train(*pre), run)
    monkeypatch.setattr(SupervisedObjective, "step", original)
    assert not (run / "mlflow.json").exists() and (run / "pretrain/mlflow.json").is_file()
    with caplog.at_level("WARNING"):
        training.train(compose_train(*pre, "resume=true"), run)
    assert not [m for m in caplog.messages if "is gone" in m]
    assert (run / "mlflow.json").is_file()


def test_mlflow_missing_is_one_line_before_anything_is_written(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    run = tmp_path / "run"
    assert main(["train", *SMOKE, "logger=mlflow", f"hydra.run.dir={run}"]) == 2
    err = capsys.readouterr().err
    assert "logger=mlflow needs MLflow: pip install 'metalearn[mlflow]'" in err and err.strip().count("\n") == 0
    assert not (run / "checkpoints").exists()


def test_an_unknown_logger_lists_the_choices(capsys):
    assert main(["train", "logger=wandb"]) == 2
    err = capsys.readouterr().err
    assert "csv" in err and "mlflow" in err and "tensorboard" in err


def test_an_mlflow_server_that_does_not_answer_is_one_line_not_a_bug(tmp_path, capsys, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a refused port answers at once; no retries to wait for
    run = tmp_path / "run"
    assert main(["train", *SMOKE, "logger=mlflow", "logger.tracking_uri=http://127.0.0.1:1", f"hydra.run.dir={run}"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "logger.tracking_uri=http://127.0.0.1:1: MLflow could not start the run" in last and "this is a bug" not in last
    assert json.loads((run / "status.json").read_text())["status"] == "failed"
    assert not (run / "metrics.jsonl").exists()  # nothing was trained: the line's advice may use the same dir
    assert main(["train", *SMOKE, "logger=tensorboard", f"hydra.run.dir={run}"]) == 0


def test_a_relative_mlflow_store_is_saved_absolute_and_a_damaged_record_is_one_line(tmp_path, capsys, monkeypatch):
    """``logger.tracking_uri=file:store`` (or a plain folder) is the folder where the command ran: saved absolute,
    a resume from another folder logs to the same MLflow run; a damaged ``mlflow.json`` is one line, an empty
    experiment name is refused before anything is written."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    assert main(["train", *SMOKE, "logger=mlflow", "logger.tracking_uri=file:my_store", f"hydra.run.dir={run}"]) == 0
    saved = json.loads((run / "mlflow.json").read_text())
    assert saved["tracking_uri"] == (tmp_path / "my_store").as_uri()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["train", f"resume={run}", "trainer.iterations=15"]) == 0
    assert json.loads((run / "mlflow.json").read_text())["run_id"] == saved["run_id"]
    assert not (tmp_path / "elsewhere" / "my_store").exists()
    history = MlflowClient(tracking_uri=saved["tracking_uri"]).get_metric_history(saved["run_id"], "val/accuracy")
    assert [m.step for m in history] == [0, 5, 10, 15]
    (run / "mlflow.json").write_text('{"run_id": "abc')
    capsys.readouterr()
    assert main(["train", f"resume={run}", "trainer.iterations=20"]) == 2
    err = capsys.readouterr().err
    assert "mlflow.json is damaged: it names no MLflow run to continue" in err and err.strip().count("\n") == 0
    assert json.loads((run / "status.json").read_text())["status"] == "completed", (run / "status.json").read_text()
    assert main(["train", *SMOKE, "logger=mlflow", "logger.experiment=''", f"hydra.run.dir={tmp_path / 'r2'}"]) == 2
    assert "logger.experiment is empty" in capsys.readouterr().err and not (tmp_path / "r2" / "checkpoints").exists()


def test_the_printed_tensorboard_command_pastes_whole_for_a_path_with_spaces(tmp_path):
    import shlex

    from metalearn_cli.loggers import TensorBoardSink
    from metalearn_cli.params.loggers import TensorBoardParams

    run = tmp_path / "first run é"
    sink = TensorBoardSink(TensorBoardParams(), run, None, {})
    sink.close()
    command = sink.where.split("(view: ", 1)[1].rstrip(")")
    assert shlex.split(command) == ["tensorboard", "--logdir", str(run / "tensorboard")]


def test_parallel_jobs_set_up_a_new_sqlite_mlflow_store_one_at_a_time(tmp_path):
    """A joblib sweep's jobs start together: each would create the new store's tables (``table experiments already
    exists``) or its experiment, and all but one fail. Three processes start their MLflow runs at the same moment."""
    import time

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    start = time.time() + 4  # every process imported MLflow by then
    code = ("import sys, time; from pathlib import Path; from metalearn_cli.loggers import MLflowSink; "
            "from metalearn_cli.params.loggers import MLflowParams; run = Path(sys.argv[1]); run.mkdir(); "
            f"time.sleep(max(0, {start} - time.time())); "
            f"MLflowSink(MLflowParams(tracking_uri={store!r}), run, None, {{'seed': 0}}).close()")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"run{i}")], stderr=subprocess.PIPE, text=True)
             for i in range(3)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 3, "\n".join(e[-1500:] for e in errors)
    assert len({json.loads((tmp_path / f"run{i}" / "mlflow.json").read_text())["run_id"] for i in range(3)}) == 3
