"""Run metrics: ``metrics.jsonl`` (one JSON object per logged step), mirrored to the chosen logger
(:mod:`metalearn_cli.loggers`: TensorBoard, CSV, MLflow), and the device-side window of training
metrics between two records."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Optional

import torch

from metalearn_cli.files import atomic_write
from metalearn_cli.loggers import build_sink

log = logging.getLogger(__name__)


class MetricsLog:
    """Appends ``{"step", "split", ...}`` records; on resume drops records past the resumed step."""

    def __init__(self, run_dir: Path, resume_step: int | None = None, logger: Any = None, config: Any = None) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        self._sink = build_sink(logger or {"name": "tensorboard"}, run_dir, resume_step, config or {})  # first: a
        try:  # logger that cannot start leaves no metrics.jsonl behind
            self._file = open(self.path, "a", encoding="utf-8")
        except BaseException:
            self._sink.close()
            raise

    def _truncate_after(self, step: int) -> None:
        """Drops the records past ``step`` (the resumed run logs them again) and the lines that cannot be read,
        saying how many of those there were: the records they held are lost."""
        from metalearn_cli.run_records import read_metrics

        lines, unreadable = read_metrics(self.path)
        if unreadable:
            log.warning("%s: dropped %d unreadable line%s (cut by a kill, or garbled); the records they held are "
                        "lost, the rest is kept and the run goes on from step %d", self.path, unreadable,
                        "s" if unreadable > 1 else "", step)
        text = "".join(line + "\n" for line, record in lines if record["step"] <= step).encode("utf-8")
        atomic_write(self.path, lambda f: f.write(text), "metrics", "free disk space")

    def log(self, step: int, split: str, values: dict[str, Any]) -> None:
        record = {"step": step, "split": split, **values}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self.summary(step, split, values)

    def summary(self, step: int, split: str, values: dict[str, Any]) -> None:
        """To the logger only (the final test: ``results.json`` is its record, not ``metrics.jsonl``)."""
        numbers = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and k != "episodes"}  # how many tasks a validation scored is no curve (metrics.jsonl keeps it)
        if numbers:
            self._sink.log(step, split, numbers)

    def close(self) -> None:
        self._file.close()
        self._sink.close()


class MetricWindow:
    """Train metrics summed on the device between two log records (saved in checkpoints, so a
    resumed run logs exactly what an uninterrupted one would)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.steps = 0
        self.skipped = 0
        self.started = time.perf_counter()
        self.untimed = 0  # steps of the window taken before a resume, outside this timer

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v.detach().clone()
            self.counts[k] = self.counts.get(k, 0) + 1

    def flush(self, per_step: int, unit: str = "tasks") -> dict[str, Any]:
        """The means since the last record (the only host sync of the training loop)."""
        # Steps the optimizer skipped on the device (fused optimizers: no per-step sync) read 0 in
        # every sum; the means leave them out.
        flagged = int(self.sums.pop("skipped").item()) if "skipped" in self.sums else 0
        values: dict[str, Any] = {k: v.item() / max(self.counts[k] - flagged, 1) for k, v in self.sums.items()}
        values["skipped"] = self.skipped + flagged
        values[f"{unit}_per_s"] = (self.steps - self.untimed) * per_step / max(time.perf_counter() - self.started, 1e-9)
        self.__init__()  # type: ignore[misc]
        return values

    def state(self) -> dict[str, Any]:
        return {"sums": {k: v.cpu() for k, v in self.sums.items()}, "counts": dict(self.counts),
                "steps": self.steps, "skipped": self.skipped}

    @classmethod
    def restore(cls, state: Optional[dict[str, Any]]) -> "MetricWindow":
        window = cls()
        if state:
            window.sums, window.counts = dict(state["sums"]), dict(state["counts"])
            window.steps, window.skipped = int(state["steps"]), int(state["skipped"])
            window.untimed = window.steps  # the timer restarts with the resume: tasks/s counts the steps after it
        return window


def step_record(skipped: torch.Tensor, **values: torch.Tensor) -> dict[str, torch.Tensor]:
    """One meta-step's metrics for the window: a skipped step's values read 0 (the window's means
    leave skipped steps out), plus the ``skipped`` flag itself."""
    bad = skipped.bool()
    return {**{k: torch.where(bad, torch.zeros_like(v), v.detach()) for k, v in values.items()}, "skipped": skipped}
