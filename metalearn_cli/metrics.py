"""Run metrics: ``metrics.jsonl`` (one JSON object per logged step) and TensorBoard events."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter


class MetricsLog:
    """Appends ``{"step", "split", ...}`` records; on resume drops records past the resumed step."""

    def __init__(self, run_dir: Path, resume_step: int | None = None) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step)

    def _truncate_after(self, step: int) -> None:
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if int(record.get("step", 0)) <= step:
                kept.append(line)
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def log(self, step: int, split: str, values: dict[str, Any]) -> None:
        record = {"step": step, "split": split, **values}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._tb.add_scalar(f"{split}/{key}", value, step)

    def close(self) -> None:
        self._file.close()
        self._tb.close()
