"""What a running stage shows: a tqdm bar on a terminal (no ``\\r`` frames in a redirected log), a
log line about every tenth of the stage off one, and an estimate of the time left after the second
measured window. Never silent, never a frame in a log file."""

from __future__ import annotations

import logging
import sys
from typing import Any

from tqdm import tqdm


class Progress:
    def __init__(self, desc: str, total: int, initial: int, enabled: bool, log: logging.Logger,
                 unit: str = "tasks") -> None:
        self.desc, self.total, self.enabled, self.log, self.unit = desc, total, enabled, log, unit
        self.windows = 0  # measured windows so far: the estimate waits for the second
        self.bar = tqdm(total=total, initial=initial, unit="it", dynamic_ncols=True, desc=desc,
                        disable=not (enabled and sys.stderr.isatty()))

    def update(self, steps: int = 1) -> None:
        self.bar.update(steps)

    def estimate(self, step: int, per_step: int, per_s: float) -> None:
        """The time left, from the second measured window of this session: the first holds the warm-up (kernel
        choices, allocations, the first validation's pause) and made estimates several times too long."""
        self.windows += 1
        if self.windows == 2 and step < self.total and per_s > 0:
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
        if self.bar.disable and self.enabled and step // tenth > (first - 1) // tenth:
            self.log.info("%s %d/%d: loss %.3f, accuracy %.1f%%, %.1f %s/s", self.desc, step, self.total,
                          values.get("loss", float("nan")), 100 * values.get("accuracy", float("nan")), rate, self.unit)

    def close(self) -> None:
        self.bar.close()
