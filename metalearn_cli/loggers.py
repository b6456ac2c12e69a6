"""Where a run's metric records go besides ``metrics.jsonl``: the ``logger`` group (TensorBoard by
default, CSV, MLflow), each a sink with ``log``, ``summary`` (the final test) and ``close``.

``metrics.jsonl`` stays the run's own record (``report`` and ``compare`` read it); a sink mirrors it.
On resume each sink drops what came after the resumed step, as ``metrics.jsonl`` does, where its
format allows: TensorBoard purges, the CSV is rewritten; MLflow (append-only) continues its run and skips the steps
it already holds.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import logging
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional, Protocol

from metalearn_cli.errors import ConfigError
from metalearn_cli.files import atomic_write, write_json
from metalearn_cli.params.loggers import CSVParams, MLflowParams, TensorBoardParams
from metalearn_cli.registry import Registry
from metalearn_cli.rundir import METRICS
from metalearn_cli.schema import flatten

log = logging.getLogger(__name__)


class Sink(Protocol):
    where: str  # one line naming where the records go, logged when the sink starts

    def log(self, step: int, split: str, values: dict[str, float]) -> None: ...
    def close(self) -> None: ...


LOGGERS: Registry[Sink] = Registry("logger")


@LOGGERS.register("tensorboard", params=TensorBoardParams)
class TensorBoardSink:
    def __init__(self, params: TensorBoardParams, run_dir: Path, resume_step: Optional[int], config: Any) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # The resumed step's own records were written before its checkpoint: keep them, drop what follows.
        self._writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=None if resume_step is None else resume_step + 1)
        self.where = (f"TensorBoard logs: {run_dir / 'tensorboard'} (view: tensorboard --logdir "
                      f"{shlex.quote(str(run_dir / 'tensorboard'))})")  # pasted whole, a path with spaces too
        self._end: Any = None
        if config:
            self._settings(_plain(config), resume_step)

    def _settings(self, config: dict[str, Any], resume_step: Optional[int]) -> None:
        """The run's config, as TEXT (the whole YAML, again at each resume: ``trainer.iterations`` may have grown)
        and as HPARAMS (each key, beside the validation and test accuracy, once), so runs compare by their
        settings in TensorBoard itself; the session's end status is written by :meth:`close`."""
        import yaml
        from torch.utils.tensorboard.summary import hparams

        step = 0 if resume_step is None else resume_step + 1
        self._writer.add_text("config", "```yaml\n" + yaml.safe_dump(config, sort_keys=False) + "```", step)
        values = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(config).items()
                  if k != "resume"}
        experiment, start, self._end = hparams(values, {"val/accuracy": 0.0, "test/accuracy": 0.0})  # metrics by tag
        if resume_step is None:
            for summary in (experiment, start):
                self._writer.file_writer.add_summary(summary)

    def _end_status(self) -> Any:
        """HPARAMS' session end, with how this session ended (torch's helper always says success)."""
        from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

        failed = sys.exc_info()[0]  # close() runs in the loop's finally: the exception ending the run, if any
        status = (api_pb2.STATUS_SUCCESS if failed is None else api_pb2.STATUS_UNKNOWN  # stopped, to be resumed
                  if failed.__name__ in ("Interrupted", "PeerLost", "KeyboardInterrupt") else api_pb2.STATUS_FAILURE)
        value = self._end.value[0]
        data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
        data.session_end_info.status = status
        value.metadata.plugin_data.content = data.SerializeToString()
        return self._end

    def log(self, step: int, split: str, values: dict[str, float]) -> None:
        for key, value in values.items():
            self._writer.add_scalar(f"{split}/{key}", value, step)

    def close(self) -> None:
        if self._end is not None:
            self._writer.file_writer.add_summary(self._end_status())
        self._writer.close()


CSV_FIELDS = ("step", "split", "metric", "value")


@LOGGERS.register("csv", params=CSVParams)
class CSVSink:
    """``metrics.csv`` in long form: one row per step, split and metric (every split has its own metrics)."""

    def __init__(self, params: CSVParams, run_dir: Path, resume_step: Optional[int], config: Any) -> None:
        path = run_dir / "metrics.csv"
        self.where = f"CSV metrics: {path}"
        if resume_step is not None and path.is_file():
            with open(path, newline="", encoding="utf-8") as f:
                kept = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= resume_step]
            out = io.StringIO()
            writer = csv.DictWriter(out, CSV_FIELDS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(kept)
            data = out.getvalue().encode("utf-8")
            atomic_write(path, lambda f: f.write(data), "metrics.csv", "free disk space")
        fresh = not path.is_file()
        self._file = open(path, "a", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file, lineterminator="\n")
        if fresh:
            self._csv.writerow(CSV_FIELDS)

    def log(self, step: int, split: str, values: dict[str, float]) -> None:
        self._csv.writerows([step, split, key, repr(float(value))] for key, value in values.items())
        self._file.flush()

    def close(self) -> None:
        self._file.close()


@LOGGERS.register("mlflow", params=MLflowParams)
class MLflowSink:
    """One MLflow run per run dir (``<run>/mlflow.json`` keeps its id, so a resume continues it): the
    config as parameters, the records as metrics ``<split>/<name>``, the final test, the end status."""

    RECORD = "mlflow.json"

    def __init__(self, params: MLflowParams, run_dir: Path, resume_step: Optional[int], config: Any) -> None:
        uri = absolute_uri(params.tracking_uri) if params.tracking_uri else (run_dir / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):  # MLflow 3 keeps its local file store behind this switch
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        else:  # a server that does not answer: a minute, not MLflow's default of minutes of retries
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        from mlflow.exceptions import MlflowException

        try:
            with _one_at_a_time(uri):
                self._start(params, run_dir, resume_step, config, uri)
            self.where = f"MLflow run {self._run_id} in {uri} (experiment {params.experiment})"
        except MlflowException as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            first = first if len(first) <= 300 else first[:300].rsplit(" ", 1)[0] + " ..."
            fix = "fix the URI" if uri.startswith(("file:", "sqlite:")) else "start the server or fix the URI"
            raise ConfigError(f"logger.tracking_uri={uri}: MLflow could not start the run ({first}); {fix}, or use "
                              "logger=tensorboard (metrics.jsonl is written either way)") from None

    def _start(self, params: MLflowParams, run_dir: Path, resume_step: Optional[int], config: Any, uri: str) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self._client, record = MlflowClient(tracking_uri=uri), run_dir / self.RECORD
        self._logged_to = -1  # a resume after a kill: the steps MLflow already holds are not logged twice
        saved = self._record(record, run_dir / METRICS) if resume_step is not None else {}
        own = params.tracking_uri is None  # the run dir's own store, wherever the run dir has moved since
        if saved.get("tracking_uri") == uri or (own and saved.get("own_store", str(saved.get("tracking_uri")).endswith("/mlruns"))):
            self._run_id = saved["run_id"]
            self._client.update_run(self._run_id, status="RUNNING")
            self._logged_to = self._last_logged_step()
            if saved.get("tracking_uri") != uri:  # the run dir moved: its record names the store where it is now
                write_json(record, {**saved, "tracking_uri": uri})
                self._client.set_tag(self._run_id, "metalearn.run_dir", str(run_dir))
            return
        experiment = self._client.get_experiment_by_name(params.experiment)
        experiment_id = experiment.experiment_id if experiment else self._client.create_experiment(params.experiment)
        self._run_id = self._client.create_run(experiment_id, run_name=run_dir.name,
                                               tags={"metalearn.run_dir": str(run_dir)}).info.run_id
        values = flatten(_plain(config))
        settings = [Param(k, str(v)[:6000]) for k, v in values.items() if k != "resume"]
        for i in range(0, len(settings), 100):  # MLflow takes at most 100 parameters per call
            self._client.log_batch(self._run_id, params=settings[i:i + 100])
        write_json(record, {"tracking_uri": uri, "own_store": params.tracking_uri is None, "run_id": self._run_id,
                            "experiment": params.experiment})

    @staticmethod
    def _record(record: Path, metrics: Path) -> dict[str, Any]:
        """A resumed run's ``mlflow.json``: the MLflow run it continues (none: a new MLflow run, said only
        where the stage had logged before: one resumed before its first record never had an MLflow run)."""
        if not record.is_file():
            if not (metrics.is_file() and metrics.stat().st_size > 0):
                return {}
            log.warning("%s is gone: this resume logs to a new MLflow run (the earlier one stays in its store)", record)
            return {}
        return mlflow_record(record)

    def _last_logged_step(self) -> int:
        """The last step of any metric the run holds (MLflow cannot drop points: after a kill, those past the
        resumed checkpoint are already there, and a resumed CPU run logs the same values again)."""
        keys = self._client.get_run(self._run_id).data.metrics
        return max((m.step for key in keys for m in self._client.get_metric_history(self._run_id, key)), default=-1)

    def log(self, step: int, split: str, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        if step <= self._logged_to and split != "test":  # the test comes once, at best.pt's step (maybe resumed past)
            return
        stamp = _millis()
        self._client.log_batch(self._run_id, metrics=[Metric(f"{split}/{k}", float(v), stamp, step) for k, v in values.items()])

    def close(self) -> None:
        failed = sys.exc_info()[0]  # close() runs in the loop's finally: the exception ending the run, if any
        status = "FINISHED" if failed is None else "KILLED" if failed.__name__ in ("Interrupted", "PeerLost", "KeyboardInterrupt") else "FAILED"
        self._client.set_terminated(self._run_id, status=status)


@contextlib.contextmanager
def _one_at_a_time(uri: str) -> Iterator[None]:
    """A store on this machine (SQLite, a folder) set up by one run at a time: the jobs of a parallel sweep (joblib)
    starting together would each create a new SQLite store's tables, or the experiment, and all but one fail. The
    lock file is in the temp dir, keyed by the store, never beside the user's files; a server orders this itself."""
    if not uri.startswith(("sqlite:", "file:")):
        yield
        return
    key = hashlib.sha1(uri.encode()).hexdigest()[:16]
    try:
        fd = os.open(Path(tempfile.gettempdir()) / f"metalearn-mlflow-{key}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:  # no writable temp dir: as before, unordered
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # seconds at most: the other run's set-up
        yield
    finally:
        os.close(fd)


def _plain(config: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(config, resolve=True, enum_to_str=True) if OmegaConf.is_config(config) else dict(config)


def _millis() -> int:
    import time

    return int(time.time() * 1000)


def mlflow_record(record: Path) -> dict[str, Any]:
    """``mlflow.json`` read back: the MLflow run a resume continues; damaged, one line (checked before a resume
    writes anything, :func:`check_resumable`)."""
    try:
        saved = json.loads(record.read_text(encoding="utf-8"))
        if isinstance(saved, dict) and isinstance(saved.get("run_id"), str):
            return saved
    except (OSError, ValueError):
        pass
    raise ConfigError(f"{record} is damaged: it names no MLflow run to continue; restore it, or delete it to log this "
                      "run's rest to a new MLflow run")


def check_resumable(logger_cfg: Any, run_dir: Path) -> None:
    """A resume's logger records (the run's and its pre-training stage's ``mlflow.json``) are readable."""
    if str(logger_cfg.get("name")) == "mlflow":
        for record in (run_dir / MLflowSink.RECORD, run_dir / "pretrain" / MLflowSink.RECORD):
            if record.is_file():
                mlflow_record(record)


def absolute_uri(uri: str) -> str:
    """``logger.tracking_uri`` as saved with the run: a folder (``file:DIR``, a plain path, ``sqlite:///FILE``)
    made absolute, so a resume from another folder logs to the same store; a server's URI as given."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).expanduser().absolute())
    if "://" in uri and not uri.startswith("file:"):
        return uri
    path = uri[len("file:"):] if uri.startswith("file:") else uri
    if path.startswith("//"):  # file://HOST/PATH or file:///PATH: already absolute
        return uri
    return Path(path).expanduser().absolute().as_uri()


def build_sink(logger_cfg: Any, run_dir: Path, resume_step: Optional[int], config: Any) -> Sink:
    """The sink the ``logger`` group names (validated earlier with the rest of the config)."""
    params = LOGGERS.params_of(logger_cfg)
    sink = LOGGERS.get(params.name).factory(params, run_dir=run_dir, resume_step=resume_step, config=config)
    log.info("%s", sink.where)
    return sink
