"""The one training loop: :class:`TrainingRun` runs a :class:`Stage` (pre-training, meta-training)
in the stage's own run directory.

Owns, once for every stage: the optimizer and schedule built from the optimizer registry, snapshot
and restore (resume), the step (``objective.step`` -> the NaN policy), metric records, validation at
step 0 and every ``val_every`` with ``best.pt``, ``last.pt``, signals, and the final test of
``best.pt``. What differs between stages is the :class:`~metalearn_cli.objectives.Objective` and
the stage's settings; which stages a run has is :mod:`metalearn_cli.training`'s. Per-step work
stays on the device: metrics are accumulated as tensors and read back every ``log_every`` steps.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Optional

import torch

from metalearn_cli.assemble import first_non_finite, load_weights, startup_line
from metalearn_cli.checkpoint import capture_rng, load_checkpoint, load_states, restore_rng, save_checkpoint
from metalearn_cli.compat import refuse_changed_recipe
from metalearn_cli.console import shell_override
from metalearn_cli.distributed import World, agreed_stop, average_metrics, every_rank, lost_peer
from metalearn_cli.errors import ConfigError, Diverged, Interrupted, PeerLost
from metalearn_cli.evaluation import evaluate_tasks, summarize
from metalearn_cli.files import remove_stale_temporaries
from metalearn_cli.metrics import MetricsLog, MetricWindow, step_record
from metalearn_cli.optim import OPTIMIZERS, build_schedule
from metalearn_cli.progress import Progress
from metalearn_cli.resume import check_same_run, continue_command, warn_changed_course
from metalearn_cli.files import read_json
from metalearn_cli.rundir import STATUS, RunDir, write_results, write_status
from metalearn_cli.signals import second_request
from metalearn_cli.stage import Stage
from metalearn_cli.weight_average import WeightAverage

log = logging.getLogger(__name__)


class TrainingRun:
    """A stage, built by ``__init__`` (restored when ``resume`` is a checkpoint; nothing written yet)
    and executed by :meth:`run`."""

    def __init__(self, stage: Stage, device: torch.device, ranks: World, resume: Optional[Path] = None) -> None:
        self.stage, self.device, self.ranks, self.main = stage, device, ranks, ranks.main  # rank 0 alone writes
        self.objective, self.strategy, self.files = stage.objective, stage.objective.strategy, RunDir(stage.run_dir)
        self.clip = OPTIMIZERS.params_of(stage.optimizer).clip
        self.optimizer = OPTIMIZERS.build(stage.optimizer, parameters=self.objective.param_groups)
        self.schedule = build_schedule(OPTIMIZERS.params_of(stage.optimizer).schedule, self.optimizer, stage.iterations)
        self.nan_policy, self.progress_on = stage.trainer.nan_policy.value, stage.trainer.progress
        self.step, self.best_val, self.best_step, self.seconds_before = 0, -1.0, -1, 0.0
        self.saved_step: Optional[int] = None  # the step of the last.pt on disk
        self.warned = False  # warn_if_diverging's once
        self.window, self.resumed = MetricWindow(), resume is not None
        self.average = WeightAverage(self.strategy, stage.ema) if stage.ema else None  # trainer.ema
        self.session_start = self.step_at_start = 0.0  # set when run() starts; save_last() may come first (step 0)
        if resume is not None:
            self.restore(resume)

    def restore(self, path: Path) -> None:
        s = self.stage
        if self.files.results.is_file() and self.files.last.is_file() and Path(path).resolve() != self.files.last.resolve():
            raise ConfigError(f"{s.run_dir} is completed and tested; resuming it from {Path(path).name} would train over steps "
                              f"it already ran and replace its results: resume from its last.pt ({shell_override('resume', s.run_dir)} "
                              f"{s.iterations_key}=N) to train further, or test {Path(path).name} with metalearn eval")
        state = load_checkpoint(path)
        refuse_changed_recipe(state["config"], path)
        check_same_run(state["config"], s.config, path)
        load_weights(self.strategy, state["model"], path)
        load_states(path, state, {"optimizer": self.optimizer, "schedule": self.schedule}, s.name)
        self.objective.load_state(state, path)
        if self.average is not None and "weight_average" in state:
            self.average.load(state["weight_average"])
        restore_rng(state["rng"])
        self.step, self.best_val, self.best_step = int(state["step"]), float(state["best_val"]), int(state["best_step"])
        self.saved_step = self.step if Path(path).resolve() == self.files.last.resolve() else None  # best.pt: no last.pt yet
        if self.files.results.is_file() and s.iterations <= self.step:
            raise ConfigError(f"{s.run_dir} is completed ({self.step} {s.step_name}s, tested); to train it further pass "
                              f"{s.iterations_key}=N with N > {self.step} (a new learning-rate schedule over N: "
                              "not the same as a longer run from the start)")
        if s.iterations < self.step:
            raise ConfigError(f"{s.iterations_key}={s.iterations} is below the step of {path} ({self.step}); "
                              f"resume with {s.iterations_key} >= {self.step}")
        warn_changed_course(state, s.iterations, s.iterations_key, f"{s.step_name} {self.step}", self.ranks.size)
        self.seconds_before = float(state.get("train_seconds", 0.0))
        stopped = read_json(s.run_dir / STATUS).get("wall_seconds") or 0.0  # stopped after the save (the final test)
        s.clock.before = max(s.clock.before, float(state.get("wall_seconds", self.seconds_before)), float(stopped))
        windows = state.get("rank_windows")  # a torchrun's: each rank's own share of the partial window
        own = isinstance(windows, list) and len(windows) == self.ranks.size
        self.window = MetricWindow.restore(windows[self.ranks.rank] if own else state.get("window"))
        best = f"best val {100 * self.best_val:.2f}% at {self.best_step}" if self.best_step >= 0 else "not validated yet"
        if self.step > 0 or not s.earlier_stage:  # at step 0 after a first stage: that stage's resume is the news
            log.info("resuming %s from %s at %s %d (%s)", s.name, path, s.step_name, self.step, best)

    # ------------------------------------------------------------------ checkpoints
    def snapshot(self, windows: Optional[list[Any]] = None) -> dict[str, Any]:
        """What a checkpoint holds; ``windows``: every rank's partial metric window (torchrun), where all ranks save."""
        return {
            "config": self.stage.config, "model": self.strategy.state_dict(), "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(), "step": self.step, "best_val": self.best_val,
            "best_step": self.best_step, "rng": capture_rng(), "window": self.window.state(),
            "train_seconds": self.train_seconds(), "wall_seconds": self.stage.clock.seconds(), "pixel_mean": self.stage.pixel_mean,
            "processes": self.ranks.size, **self.objective.state(),
            **({"weight_average": self.average.state()} if self.average is not None else {}),
            **({"rank_windows": windows} if windows else {}),
        }

    def resume_command(self) -> str:
        return continue_command(self.stage.resume_hint, self.ranks.size)

    def continue_hint(self) -> str:
        """How a stopped stage goes on: from last.pt; before the first, meta-training from best.pt (its validated
        weights with the optimizer, RNG and sampler states of that step). Not with ``trainer.ema``, whose best.pt holds
        the average in place of the trained weights."""
        if self.saved_step is not None:
            return f"; continue with: {self.resume_command()}"
        if self.best_step > 0 and self.average is None and self.files.best.is_file() and \
                self.stage.resume_hint == self.stage.run_dir:
            # a run's own meta-training (not a stage inside it), past the weights it started from
            return f"; continue from it with: {continue_command(self.files.best, self.ranks.size)}"
        return ""

    def kept(self) -> str:
        """Which checkpoint a stopped stage leaves, in words."""
        if self.saved_step is None and self.best_step >= 0 and self.files.best.is_file():
            return (f"no last.pt to resume from was written yet; {self.files.best} holds the weights validated at "
                    f"{self.stage.step_name} {self.best_step}")
        if self.saved_step is None:
            return "no checkpoint was written yet"
        return f"the last good checkpoint {self.files.last} ({self.stage.step_name} {self.saved_step}) is kept"

    def fix(self) -> str:
        return f"lower {self.stage.optimizer_key}.lr, set {self.stage.optimizer_key}.clip.norm"

    def check_finite(self) -> None:
        """No non-finite weight or buffer (e.g. batch-norm statistics) is ever saved or trained on."""
        name = first_non_finite(self.strategy.state_dict())
        if name is not None:
            raise Diverged(f"non-finite values in {name} at {self.stage.step_name} {self.step}; nothing non-finite was saved: "
                           f"{self.kept()}; {self.fix()}")

    def train_seconds(self) -> float:
        return self.seconds_before + (time.perf_counter() - self.session_start if self.session_start else 0.0)

    def save_last(self, windows: Optional[list[Any]] = None) -> None:
        if self.main:
            self.check_finite()
            save_checkpoint(self.files.last, self.snapshot(windows))
            self.saved_step = self.step
            write_status(self.stage.run_dir, "running", step=self.step, iterations=self.stage.iterations,
                         processes=self.ranks.size)  # what continues it: resume.continue_command

    # ------------------------------------------------------------------ one step
    def iteration(self) -> None:
        values, result = self.objective.step(self.optimizer, self.clip)
        if result.nonfinite is not None:  # checked on the host: the weights never saw it
            if self.nan_policy == "stop":
                raise Diverged(f"non-finite {result.nonfinite} at {self.stage.step_name} {self.step + 1}; {self.kept()}; "
                               f"{self.fix()}, or pass trainer.nan_policy=skip")
            self.window.skipped += 1
        else:
            self.window.add(step_record(result.skipped, **values, grad_norm=result.grad_norm))
            if self.average is not None:
                self.average.update()
        self.schedule.step()
        self.step += 1
        self.window.steps += 1

    def record(self, metrics: Optional[MetricsLog], progress: Progress) -> None:
        """A metrics record: the window's means, and the non-finite steps flagged on the device."""
        first, s = self.step - self.window.steps + 1, self.stage
        average_metrics(self.window.sums)  # ranks > 1: the whole meta-batch's means
        values = self.window.flush(self.objective.per_step, self.objective.unit)  # the only host sync of a step
        if values["skipped"] and self.nan_policy == "stop":  # flagged on the device, never applied
            raise Diverged(f"non-finite loss or gradient in {values['skipped']} of {s.step_name}s {first}-{self.step} "
                           f"(skipped on the device, the weights never saw them); {self.kept()}; {self.fix()}, "
                           "or pass trainer.nan_policy=skip")
        self.check_finite()
        values["lr"] = self.optimizer.param_groups[0]["lr"]
        self.warn_if_diverging(values)
        if metrics is not None:
            metrics.log(self.step, self.objective.split, values)
            progress.estimate(self.step, self.objective.per_step, values[f"{self.objective.unit}_per_s"])
        progress.show(first, self.step, values)

    def warn_if_diverging(self, values: dict[str, Any]) -> None:
        """Steps that diverge without a non-finite value (MAML's inner loop at too large a ``strategy.inner_lr``):
        a loss over 10x a uniform guess's while accuracy stays near chance. Said once per stage; the run goes on."""
        chance, s = self.objective.chance_loss, self.stage
        loss, accuracy = values.get("loss", 0.0), values.get("accuracy", 1.0)
        if self.warned or not loss > 10 * chance or accuracy > 2 * math.exp(-chance):
            return
        self.warned = True
        inner = "lower strategy.inner_lr, or " if "inner_lr" in s.config.get("strategy", {}) else ""
        log.warning("%s %d: training loss %.4g is over 10x a uniform guess's (%.2f) and accuracy %.1f%% is near chance: "
                    "the steps are diverging; %s%s", s.name, self.step, loss, chance, 100 * accuracy, inner, self.fix())

    def validate_now(self, metrics: MetricsLog) -> None:
        """Scores the weights best.pt would hold: the average of the weights under ``trainer.ema``."""
        self.check_finite()
        s = self.stage
        with self.average.applied() if self.average is not None else contextlib.nullcontext():
            val = summarize(evaluate_tasks(self.strategy, s.val_sampler, s.val_episodes, s.evaluation.batch_tasks, s.val_bn_mode))
            metrics.log(self.step, "val", val)
            log.info("%s step %d: val accuracy %.2f%% ± %.2f%%", s.name, self.step, 100 * val["accuracy"], 100 * val["ci95"])
            if val["accuracy"] > self.best_val:
                self.best_val, self.best_step = val["accuracy"], self.step
                save_checkpoint(self.files.best, self.snapshot())

    def validate_start(self, metrics: MetricsLog) -> None:
        """Step 0 is a candidate too: when every step hurts, best.pt is the weights the stage started from
        (pre-trained or initialised). Its own RNG state, so training draws exactly what it drew without it."""
        paused = time.perf_counter()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            self.validate_now(metrics)
        if self.stage.iterations == 0:  # nothing to train: the initial weights are the result
            self.save_last()
        elif self.best_val >= 1.0:  # no later step can score higher: best.pt would keep the untrained weights
            log.warning("%s: validation scores 100%% before any training, so it cannot tell checkpoints apart and best.pt "
                        "stays the weights the stage started from; give validation more or harder tasks (trainer.val_episodes; "
                        "with dataset=folder, more classes in its split: dataset.ratios or dataset.split_file)", self.stage.name)
        self.window.started += time.perf_counter() - paused  # throughput counts training only

    # ------------------------------------------------------------------ the stage
    def run(self, stop: dict[str, Optional[str]]) -> float:
        """Train, validate, test ``best.pt`` (the caller holds the run's lock and ``stop``, the signal
        handler's view); returns the best validation accuracy."""
        s = self.stage
        self.session_start, self.step_at_start = time.perf_counter(), self.step
        if self.average is not None and self.average.updates == 0:  # from the weights the stage starts with
            self.average.restart()
        self.window.started = self.session_start  # throughput counts this session's training, not set-up
        if self.main:
            log.info(startup_line(s.name, self.device, s.trainer.precision, self.strategy, s.run_dir))
            remove_stale_temporaries(self.files.checkpoints)
            write_status(s.run_dir, "running", step=self.step, iterations=s.iterations, processes=self.ranks.size)
        metrics = MetricsLog(s.run_dir, self.step if self.resumed else None, s.logger, s.config) if self.main else None
        progress = Progress(s.name, s.iterations, self.step, self.progress_on and self.main, log,
                            self.objective.unit)
        try:
            try:
                if self.main and self.step == 0 and self.best_step < 0:
                    self.validate_start(metrics)
                self.strategy.train()
                while self.step < s.iterations:
                    self._iterate(stop, metrics, progress)
            finally:
                progress.close()
            train_seconds = self.train_seconds()
            which = "the final test" if s.name == "meta-training" else f"the {s.name} stage's test"  # not the run's
            stop["now"] = (f"during {which}; {self.files.last} holds the finished training; "
                           f"test it with: {self.resume_command()}")
            if self.main:
                self.finish(train_seconds, metrics)
        except (Interrupted, KeyboardInterrupt, RuntimeError) as exc:
            if isinstance(exc, RuntimeError) and not lost_peer(exc):
                raise
            if self.main:
                saved = self.step if self.saved_step is None else self.saved_step  # where a resume continues from
                write_status(s.run_dir, "interrupted", step=saved, iterations=s.iterations, processes=self.ranks.size,
                             wall_seconds=round(s.clock.seconds(), 2))  # a resume counts on from it (RunClock)
            if isinstance(exc, RuntimeError):  # e.g. kill -9 or out of memory in another rank: resumable as a stop
                raise PeerLost(f"another process of this run stopped during {s.step_name} {self.step + 1} (torchrun's "
                               f"report names it); {self.kept()}{self.continue_hint()}") from None
            if isinstance(exc, KeyboardInterrupt):  # a second Ctrl-C: stopped at once, between two saves
                name, both = second_request(stop)
                raise Interrupted(name, f"{both}: stopped at once; {self.kept()}{self.continue_hint()}") from None
            raise
        finally:
            stop["now"] = None  # "nothing left to save" held for this stage's final test only: the next stage saves again
            if metrics is not None:
                metrics.close()  # the logger learns how the stage ended
        return self.best_val

    def _iterate(self, stop: dict[str, Optional[str]], metrics: Optional[MetricsLog], progress: Progress) -> None:
        s = self.stage
        self.iteration()
        progress.update()
        last = self.step == s.iterations
        if self.step % s.log_every == 0 or last:
            self.record(metrics, progress)
        paused = time.perf_counter()
        if self.main and (self.step % s.val_every == 0 or last):
            self.validate_now(metrics)
        signal_name = agreed_stop(stop["signal"])  # every rank stops after the same step (a local copy: a
        # rank's own late signal is then a first request, not a second that stops at once mid-save)
        if self.step % s.checkpoint_every == 0 or last or signal_name:
            self.save_last(every_rank(self.window.state()))  # each rank's metrics since the last record, for a resume
        self.window.started += time.perf_counter() - paused  # throughput counts training only
        if signal_name:
            raise Interrupted(signal_name, f"{signal_name} at {s.step_name} {self.step}/{s.iterations}; saved "
                                           f"{self.files.last}; continue with: {self.resume_command()}")

    def finish(self, train_seconds: float, metrics: Optional[MetricsLog]) -> None:
        """Test what validation chose, read back from disk: ``metalearn eval`` on best.pt gives the same numbers."""
        s, o = self.stage, self.objective
        best = load_checkpoint(self.files.best)
        if best["config"].get("eval") != s.config.get("eval"):  # a resume changed eval.*: best.pt says how it was tested
            save_checkpoint(self.files.best, {**best, "config": {**best["config"], "eval": s.config.get("eval")}})
        self.strategy.load_state_dict(best["model"])
        result = s.test()
        result.update({
            "checkpoint": "checkpoints/best.pt", "best_step": self.best_step, "val_accuracy": self.best_val,
            "iterations": s.iterations, "train_seconds": round(train_seconds, 2), "wall_seconds": round(s.clock.seconds(), 2),
            f"train_{o.unit}_per_s": round(s.iterations * o.per_step / max(train_seconds, 1e-9), 2), **s.extras(),
        })
        write_results(s.run_dir, result)
        if metrics is not None:
            metrics.summary(self.best_step, "test", {k: result[k] for k in ("accuracy", "ci95")})  # of best.pt's step
        write_status(s.run_dir, "completed", step=self.step, iterations=s.iterations, accuracy=result["accuracy"],
                     processes=self.ranks.size, wall_seconds=result["wall_seconds"])  # as a stopped run's says them
        log.info("%s: test accuracy %.2f%% ± %.2f%% over %d tasks (best val %.2f%% at step %d); %s", s.name,
                 100 * result["accuracy"], 100 * result["ci95"], result["episodes"], 100 * self.best_val,
                 self.best_step, s.run_dir)
