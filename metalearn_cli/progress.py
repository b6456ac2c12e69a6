"""What a running stage shows: a tqdm bar on a terminal (no ``\\r`` frames in a redirected log) and a
log line about every tenth of the stage either way (above the bar, through ``logging_redirect_tqdm``), so
``train.log`` reads the same with or without a terminal; an estimate of the time left once warm-up is
past; a fixed test's bar, or off a terminal a line at most every half minute. Never silent (unless
``trainer.progress=false``), never a frame in a log file."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from tqdm import tqdm


class Progress:
    def __init__(self, desc: str, total: int, initial: int, enabled: bool, log: logging.Logger,
                 unit: str = "tasks") -> None:
        self.desc, self.total, self.enabled, self.log, self.unit = desc, total, enabled, log, unit
        self.windows, self.said = 0, False  # measured windows so far: the estimate waits for the second
        self.warm = initial + max(10, total // 50)  # ... and for a window ending past this step (log_every=1)
        self.bar = tqdm(total=total, initial=initial, unit="it", dynamic_ncols=True, desc=desc,
                        disable=not (enabled and sys.stderr.isatty()))

    def update(self, steps: int = 1) -> None:
        self.bar.update(steps)

    def estimate(self, step: int, per_step: int, per_s: float) -> None:
        """The time left, from the second measured window of this session that ends past warm-up: the first steps
        (kernel choices, allocations, the first validation's pause) made estimates several times too long."""
        self.windows += 1
        if self.enabled and not self.said and self.windows >= 2 and self.warm <= step < self.total and per_s > 0:
            self.said = True
            left = (self.total - step) * per_step / per_s
            self.log.info("%s: %.1f %s/s: about %s for the remaining %d steps, validation not included", self.desc,
                          per_s, self.unit, f"{left:.0f} s" if left < 90 else f"{left / 60:.0f} min", self.total - step)

    def show(self, first: int, step: int, values: dict[str, Any]) -> None:
        """A record of steps ``first..step``: on the bar, or as a log line when it crosses a tenth."""
        rate = values[f"{self.unit}_per_s"]
        shown = {"loss": f"{values['loss']:.3f}"} if "loss" in values else {}
        if "accuracy" in values:
            shown["accuracy"] = f"{100 * values['accuracy']:.1f}%"  # a percentage, as every accuracy the log prints
        self.bar.set_postfix(shown | {f"{self.unit}/s": f"{rate:.1f}"})
        tenth = max(self.total // 10, 1)
        if self.enabled and step // tenth > (first - 1) // tenth:  # on a terminal too: train.log is the same
            self.log.info("%s %d/%d: loss %.3f, accuracy %.1f%%, %.1f %s/s", self.desc, step, self.total,
                          values.get("loss", float("nan")), 100 * values.get("accuracy", float("nan")), rate, self.unit)

    def close(self) -> None:
        self.bar.close()


class TaskBar:
    """A fixed test's progress (a test of 1,000 Lake runs takes minutes): a tqdm bar on a terminal; off one, a
    log line at most every ``every`` seconds, so a short test adds nothing and a long one is never silent."""

    def __init__(self, desc: str, total: int, enabled: bool, log: logging.Logger, every: float = 30.0) -> None:
        self.desc, self.total, self.log, self.every = desc, total, log, every
        self.lines = enabled and not sys.stderr.isatty()
        self.bar = tqdm(total=total, disable=not enabled or self.lines, unit="task", dynamic_ncols=True, desc=desc,
                        leave=False)
        self.done, self.start = 0, time.perf_counter()
        self.last = self.start

    def update(self, tasks: int) -> None:
        self.bar.update(tasks)
        self.done += tasks
        now = time.perf_counter()
        if self.lines and now - self.last >= self.every and self.done < self.total:
            self.last = now
            rate = self.done / (now - self.start)
            left = (self.total - self.done) / rate
            self.log.info("%s: %d/%d tasks, %.1f tasks/s, about %s left", self.desc, self.done, self.total, rate,
                          f"{left:.0f} s" if left < 90 else f"{left / 60:.0f} min")

    def close(self) -> None:
        self.bar.close()
