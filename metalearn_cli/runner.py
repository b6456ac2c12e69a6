"""Training and evaluation runs: ``train(cfg, run_dir)`` and ``evaluate(cfg, run_dir)``.

Hydra-free: both take a composed config and a run directory, so tests call them directly. The
training loop is shared by every strategy; per-step work stays on the device (metrics are
accumulated as tensors and read back only every ``trainer.log_every`` meta-iterations).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from metalearn_cli.checkpoint import (
    capture_rng, load_checkpoint, remove_stale_temporaries, restore_rng, save_checkpoint,
)
from metalearn_cli.data import DATASETS, FewShotData
from metalearn_cli.distributed import world
from metalearn_cli.episodes import ClassImages, EpisodeSampler, check_fits, split_seed
from metalearn_cli.errors import CheckpointError, ConfigError, MetalearnError
from metalearn_cli.host import keep_freed_memory, native_bf16
from metalearn_cli.metrics import MetricsLog
from metalearn_cli.model import batch_norm_mode, build_meta_model
from metalearn_cli.optimizers import OPTIMIZERS, build_schedule
from metalearn_cli.schema import EvalConfig, TrainConfig
from metalearn_cli.strategies import STRATEGIES, NonFiniteError, Strategy, query_accuracy

log = logging.getLogger(__name__)


class Interrupted(MetalearnError):
    """Training stopped by SIGINT/SIGTERM after saving ``last.pt``."""

    def __init__(self, signal_name: str, message: str) -> None:
        super().__init__(message)
        self.signal_name = signal_name


class Diverged(MetalearnError):
    """A NaN/Inf meta-loss or meta-gradient under ``trainer.nan_policy=stop``."""


class _Window:
    """Train metrics summed on the device between two log records (saved in checkpoints, so a
    resumed run logs exactly what an uninterrupted one would)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.steps = 0
        self.skipped = 0
        self.started = time.perf_counter()

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v.detach().clone()
            self.counts[k] = self.counts.get(k, 0) + 1

    def flush(self, meta_batch: int) -> dict[str, Any]:
        # Steps the optimizer skipped on the device (fused optimizers: no per-step sync) read 0 in
        # every sum; the means leave them out.
        flagged = int(self.sums.pop("skipped").item()) if "skipped" in self.sums else 0
        values: dict[str, Any] = {k: v.item() / max(self.counts[k] - flagged, 1) for k, v in self.sums.items()}
        values["skipped"] = self.skipped + flagged
        values["tasks_per_s"] = self.steps * meta_batch / max(time.perf_counter() - self.started, 1e-9)
        self.__init__()  # type: ignore[misc]
        return values

    def state(self) -> dict[str, Any]:
        return {"sums": {k: v.cpu() for k, v in self.sums.items()}, "counts": dict(self.counts),
                "steps": self.steps, "skipped": self.skipped}

    @classmethod
    def restore(cls, state: Optional[dict[str, Any]]) -> "_Window":
        window = cls()
        if state:
            window.sums, window.counts = dict(state["sums"]), dict(state["counts"])
            window.steps, window.skipped = int(state["steps"]), int(state["skipped"])
        return window


def write_status(run_dir: Path, status: str, **extra: Any) -> None:
    """``status.json``: running | completed | interrupted | failed, for people and sweep tools."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(run_dir) / "status.json", {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra})


# ----------------------------------------------------------------------------- set-up
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device={name} is not a device; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available here; use device=auto or device=cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={name} is not supported; use auto, cpu, cuda or cuda:N")
    return device


def setup_device(cfg: Any) -> torch.device:
    """Host settings (allocator, threads) and the device a run uses."""
    keep_freed_memory()
    if cfg.threads is not None:
        if cfg.threads < 1:
            raise ConfigError("threads must be >= 1 or null")
        torch.set_num_threads(cfg.threads)
    return resolve_device(cfg.device)


def use_deterministic_kernels() -> None:
    """Deterministic algorithms everywhere (CUDA's cuBLAS needs its workspace pinned before use)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def select_kernels(device: torch.device, deterministic: bool) -> None:
    """Deterministic kernels where asked; otherwise cuDNN autotuning on CUDA. Episodes keep their
    shapes, so autotuning pays once: Conv-4 MAML on an H100 went from 878 to 1026 tasks/s (second
    order) and 1147 to 1392 (first order)."""
    if deterministic:
        use_deterministic_kernels()
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def validate_train_config(cfg: Any) -> DictConfig:
    """Check a plain or composed config against :class:`TrainConfig` (used for checkpoints' configs)."""
    try:
        return OmegaConf.merge(OmegaConf.structured(TrainConfig), cfg)
    except Exception as exc:
        raise ConfigError(f"invalid run config: {str(exc).splitlines()[0]}") from exc


@dataclass
class Shapes:
    """Episode shapes: training tasks may have more ways / other queries than evaluation tasks."""

    way: int
    shot: int
    query: int
    train_way: int
    train_query: int

    @classmethod
    def of(cls, cfg: Any) -> "Shapes":
        e, t = cfg.episode, cfg.trainer
        return cls(e.way, e.shot, e.query, t.train_way or e.way, t.train_query or e.query)


def resident(split: ClassImages, device: torch.device) -> ClassImages:
    """Move a split's images to the device when they fit in half its free memory, else keep them on the host."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if split.images.numel() * split.images.element_size() > free // 2:
            log.warning("%d classes of images do not fit on %s; sampling from host memory", split.n_classes, device)
            return split
    return split.to(device)


def build_strategy(cfg: Any, image_shape: tuple[int, int, int], device: torch.device) -> Strategy:
    """Meta-network + strategy for ``cfg`` and images of ``image_shape``, on ``device``, with the configured kernels."""
    model = build_meta_model(cfg, image_shape)
    strategy = STRATEGIES.build(cfg.strategy, model=model)
    strategy.check_compatible()
    strategy.to(device)
    model.use_channels_last(resolve_channels_last(cfg.trainer.channels_last, device))
    model.use_precision(resolve_precision(cfg.trainer.precision, device, strategy))
    if cfg.trainer.compile:
        if not strategy.low_precision_ok:
            raise ConfigError("trainer.compile=true cannot be used with second-order gradients (torch.compile has no "
                              "double backward); use strategy=fomaml or strategy.first_order=true, or drop compile")
        model.encoder.compile()  # in place: parameter names (and checkpoints) stay the same
    return strategy


def initialise_from(strategy: Strategy, source: str) -> None:
    """Copy the tensors of another run's meta-knowledge whose names and shapes match (e.g. a
    ProtoNet-trained encoder under a latent decoder); everything else keeps its fresh initialisation."""
    from metalearn_cli.knowledge import read_meta_knowledge

    theirs = read_meta_knowledge(source)["model"]
    ours = strategy.state_dict()
    matched = {k: v for k, v in theirs.items()
               if k in ours and isinstance(v, torch.Tensor) and v.is_floating_point() and v.shape == ours[k].shape}
    if not matched:
        raise ConfigError(f"trainer.init_from={source} shares no parameter (same name and shape) with this meta-network; "
                          "pass a checkpoint of a run with the same encoder")
    strategy.load_state_dict({**ours, **{k: v.to(ours[k].device, ours[k].dtype) for k, v in matched.items()}})
    log.info("initialised %d of %d tensors from %s", len(matched), len(ours), source)


def _name(value: Any) -> str:
    return value.value if hasattr(value, "value") else str(value)


def resolve_channels_last(channels_last: Optional[bool], device: torch.device) -> bool:
    """``null`` -> NHWC on CPUs (oneDNN: ~2x faster convolutions), NCHW on CUDA (Conv-4 MAML under
    vmap on an H100: 1133 vs 878 tasks/s second order, 1597 vs 1147 first order)."""
    return device.type == "cpu" if channels_last is None else bool(channels_last)


def resolve_precision(precision: Any, device: torch.device, strategy: Strategy) -> str:
    """``auto`` -> ``bf16`` where the device computes it natively and the strategy allows it, else ``fp32``."""
    name = _name(precision)
    if name == "auto":
        return "bf16" if native_bf16(device) and strategy.low_precision_ok else "fp32"
    return name


def resolve_bn_mode(bn_mode: Any, strategy: Strategy) -> str:
    """``auto`` -> the strategy's own protocol; a mode the strategy cannot honour is a config error."""
    name = _name(bn_mode)
    if name == "auto":
        return strategy.bn_modes[0]
    if name not in strategy.bn_modes:
        raise ConfigError(f"eval.bn_mode={name} is not possible with this strategy; use {' or '.join(strategy.bn_modes)} (or auto)")
    return name


# ----------------------------------------------------------------------------- evaluation
def evaluate_tasks(
    strategy: Strategy, sampler: EpisodeSampler, episodes: int, batch_tasks: int, bn_mode: str,
    stats: Optional[list[dict[str, float]]] = None,
) -> torch.Tensor:
    """Per-task query accuracy ``[episodes]`` on the sampler's fixed tasks.

    With ``stats`` (a list), one row per task is appended: the norms the decoder reports for what
    it generated (prototypes, latent codes, weights, FiLM modulations) on that task.
    """
    if episodes < 1 or batch_tasks < 1:
        raise ConfigError("eval.episodes, eval.batch_tasks and trainer.val_episodes must be >= 1")
    accs = []
    decoder = strategy.model.decoder
    decoder.collect_stats = stats is not None
    try:
        with batch_norm_mode(strategy.model, bn_mode):
            for batch in sampler.fixed(episodes, batch_tasks):
                # Transductive statistics must come from one task at a time, never a mix of tasks;
                # the task statistics are read after each task too.
                one_by_one = (bn_mode == "transductive" and not strategy.isolates_tasks) or stats is not None
                for part in batch.split_tasks() if one_by_one else [batch]:
                    decoder.stats = None
                    logits = strategy.predict(part)
                    accs.append(query_accuracy(logits.detach(), part.query_labels))
                    if stats is not None:
                        if decoder.stats is None:
                            raise ConfigError("eval.save_task_stats cannot read the decoder inside vmap; "
                                              "pass strategy.vectorize=loop")
                        stats.append({"episode": len(stats), "accuracy": accs[-1].item(),
                                      **{k: v[-1].item() for k, v in decoder.stats.items()}})
    finally:
        decoder.collect_stats, decoder.stats = False, None
    return torch.cat(accs).cpu()


def write_task_stats(path: Path, rows: list[dict[str, float]]) -> None:
    """``task_stats.csv``: one row per test task."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["episode", "accuracy"])
        writer.writeheader()
        writer.writerows(rows)


def summarize(accs: torch.Tensor) -> dict[str, float]:
    """Mean accuracy and its 95% confidence half-width, 1.96 * std / sqrt(n)."""
    n = accs.numel()
    std = accs.std(unbiased=True).item() if n > 1 else 0.0
    return {"accuracy": accs.mean().item(), "ci95": 1.96 * std / math.sqrt(n), "episodes": n}


def test_checkpoint(
    strategy: Strategy, data: FewShotData, split: str, shapes: tuple[int, int, int], eval_cfg: EvalConfig | Any,
    seed: int, device: torch.device, run_dir: Optional[Path] = None,
) -> dict[str, Any]:
    """Accuracy on fixed tasks of ``split``: the one code path behind train's and eval's results.json.
    With ``eval.save_task_stats``, also writes ``run_dir/task_stats.csv``."""
    way, shot, query = shapes
    classes = data.split(split)
    check_fits(classes, split, data.name, way, shot, query)
    sampler = EpisodeSampler(resident(classes, device), way, shot, query, split_seed(seed, split), device)
    bn_mode = resolve_bn_mode(eval_cfg.bn_mode, strategy)
    start = time.perf_counter()
    stats: Optional[list[dict[str, float]]] = [] if eval_cfg.save_task_stats and run_dir is not None else None
    accs = evaluate_tasks(strategy, sampler, eval_cfg.episodes, eval_cfg.batch_tasks, bn_mode, stats)
    seconds = time.perf_counter() - start
    if stats is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        write_task_stats(Path(run_dir) / "task_stats.csv", stats)
    return {
        **summarize(accs),
        "split": split, "way": way, "shot": shot, "query": query, "bn_mode": bn_mode, "seed": seed,
        "inner_steps_at_test": strategy.test_inner_steps(),
        "eval_seconds": round(seconds, 3), "eval_tasks_per_s": round(accs.numel() / seconds, 2),
    }


def write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


# ----------------------------------------------------------------------------- training
@contextlib.contextmanager
def _stop_requests() -> Iterator[dict[str, Optional[str]]]:
    """SIGINT/SIGTERM set a flag checked between meta-iterations, so a checkpoint can be saved."""
    flag: dict[str, Optional[str]] = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag["signal"] is not None:  # a second request: stop now
            raise KeyboardInterrupt
        flag["signal"] = signal.Signals(signum).name

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _resume_path(resume: Optional[str], run_dir: Path) -> Optional[Path]:
    if resume is None or str(resume).lower() in ("false", "none", "null", ""):
        return None
    if str(resume).lower() == "true":
        path = run_dir / "checkpoints" / "last.pt"
        if not path.is_file():
            raise CheckpointError(f"resume=true but {path} does not exist; pass resume=<run dir or checkpoint> or drop resume")
        return path
    path = Path(resume)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt" if (path / "checkpoints").is_dir() else path / "last.pt"
    return path


def train(cfg: Any, run_dir: Path) -> float:
    """Meta-train, validate, test ``best.pt``; writes the run dir; returns the best validation accuracy."""
    wall_start = time.perf_counter()
    run_dir = Path(run_dir)
    device = setup_device(cfg)
    ranks = world()
    if ranks.size > 1 and device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    main = ranks.main  # only rank 0 validates, tests and writes the run dir
    shapes = Shapes.of(cfg)
    t = cfg.trainer
    select_kernels(device, t.deterministic)
    if min(t.iterations, t.meta_batch, t.val_every, t.val_episodes, t.checkpoint_every, t.log_every) < 1:
        raise ConfigError("trainer.iterations, meta_batch, val_every, val_episodes, checkpoint_every and log_every must be >= 1")
    if cfg.eval.episodes < 1 or cfg.eval.batch_tasks < 1:
        raise ConfigError("eval.episodes and eval.batch_tasks must be >= 1")
    if t.meta_batch % ranks.size:
        raise ConfigError(f"trainer.meta_batch={t.meta_batch} does not split over {ranks.size} processes; use a multiple of {ranks.size}")
    resume = _resume_path(cfg.resume, run_dir)
    ckpt_dir = run_dir / "checkpoints"
    if resume is None and (ckpt_dir / "last.pt").exists():
        raise ConfigError(f"{run_dir} already holds checkpoints; pass resume=true to continue it, or use a new run dir")

    seed_everything(cfg.seed)
    data = DATASETS.build(cfg.dataset)
    check_fits(data.train, "train", data.name, shapes.train_way, shapes.shot, shapes.train_query)
    check_fits(data.val, "val", data.name, shapes.way, shapes.shot, shapes.query)
    check_fits(data.test, "test", data.name, shapes.way, shapes.shot, shapes.query)
    strategy = build_strategy(cfg, data.image_shape, device)
    if t.init_from and resume is None:
        initialise_from(strategy, t.init_from)
    optimizer = OPTIMIZERS.build(cfg.optimizer, parameters=list(strategy.parameters()))
    schedule = build_schedule(OPTIMIZERS.params_of(cfg.optimizer).schedule, optimizer, t.iterations)
    train_sampler = EpisodeSampler(resident(data.train, device), shapes.train_way, shapes.shot, shapes.train_query,
                                   split_seed(cfg.seed, "train"), device)
    val_sampler = EpisodeSampler(resident(data.val, device), shapes.way, shapes.shot, shapes.query,
                                 split_seed(cfg.seed, "val"), device)
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    config["resume"] = None  # a saved config describes the run, not how it was started

    step, best_val, best_step, train_seconds = 0, -1.0, -1, 0.0
    if resume is not None:
        state = load_checkpoint(resume)
        _check_same_run(state["config"], config, resume)
        try:
            strategy.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"{resume} does not match this run's meta-network: {str(exc).splitlines()[0][:160]}") from exc
        train_sampler.set_state(state["sampler"])
        restore_rng(state["rng"])
        step, best_val, best_step = int(state["step"]), float(state["best_val"]), int(state["best_step"])
        train_seconds = float(state.get("train_seconds", 0.0))
        log.info("resuming %s at meta-iteration %d (best val %.4f at %d)", resume, step, best_val, best_step)

    session_start, seconds_before = time.perf_counter(), train_seconds
    window = _Window.restore(state.get("window") if resume is not None else None)

    def snapshot() -> dict[str, Any]:
        return {
            "config": config, "model": strategy.state_dict(), "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(), "step": step, "best_val": best_val, "best_step": best_step,
            "sampler": train_sampler.get_state(), "rng": capture_rng(), "window": window.state(),
            "train_seconds": seconds_before + time.perf_counter() - session_start,
        }

    def save_last() -> None:
        if main:
            save_checkpoint(ckpt_dir / "last.pt", snapshot())
            write_status(run_dir, "running", step=step, iterations=t.iterations)

    val_bn_mode = resolve_bn_mode(cfg.eval.bn_mode, strategy)  # fail before anything is written
    if main:
        remove_stale_temporaries(ckpt_dir)
        write_status(run_dir, "running", step=step, iterations=t.iterations)
    metrics = MetricsLog(run_dir, resume_step=step if resume is not None else None) if main else None
    nan_policy = _name(t.nan_policy)
    bar = tqdm(total=t.iterations, initial=step, disable=not (t.progress and main), unit="it", dynamic_ncols=True, desc="meta-train")
    try:
        with _stop_requests() as stop:
            strategy.train()
            while step < t.iterations:
                batch = train_sampler.sample(t.meta_batch, part=(ranks.rank, ranks.size))
                try:
                    window.add(strategy.meta_train_step(batch, optimizer))
                except NonFiniteError as exc:
                    optimizer.zero_grad(set_to_none=True)
                    if nan_policy == "stop":
                        raise Diverged(
                            f"non-finite {exc.quantity} at meta-iteration {step + 1}; the last good checkpoint "
                            f"{ckpt_dir / 'last.pt'} is kept; lower optimizer.lr, set strategy.clip.norm, "
                            "or pass trainer.nan_policy=skip"
                        ) from None
                    window.skipped += 1
                schedule.step()
                step += 1
                window.steps += 1
                bar.update(1)
                if step % t.log_every == 0 or step == t.iterations:
                    first = step - window.steps + 1
                    values = window.flush(t.meta_batch)  # the only host sync of a step
                    if values["skipped"] and nan_policy == "stop":  # flagged on the device, never applied
                        raise Diverged(
                            f"non-finite loss or meta-gradient in {values['skipped']} of meta-iterations {first}-{step} "
                            f"(skipped on the device, the weights never saw them); the last checkpoint "
                            f"{ckpt_dir / 'last.pt'} is kept; lower optimizer.lr, set strategy.clip.norm, "
                            "or pass trainer.nan_policy=skip"
                        )
                    values["lr"] = optimizer.param_groups[0]["lr"]
                    if metrics is not None:
                        metrics.log(step, "train", values)
                    bar.set_postfix({k: f"{values[k]:.3f}" for k in ("loss", "accuracy") if k in values}
                                    | {"tasks/s": f"{values['tasks_per_s']:.0f}"})
                paused = time.perf_counter()
                if main and (step % t.val_every == 0 or step == t.iterations):
                    val = summarize(evaluate_tasks(strategy, val_sampler, t.val_episodes, cfg.eval.batch_tasks, val_bn_mode))
                    metrics.log(step, "val", val)
                    log.info("step %d: val accuracy %.4f ± %.4f", step, val["accuracy"], val["ci95"])
                    if val["accuracy"] > best_val:
                        best_val, best_step = val["accuracy"], step
                        save_checkpoint(ckpt_dir / "best.pt", snapshot())
                if step % t.checkpoint_every == 0 or step == t.iterations or stop["signal"]:
                    save_last()
                window.started += time.perf_counter() - paused  # tasks/s counts meta-training only
                if stop["signal"]:
                    raise Interrupted(
                        stop["signal"],
                        f"{stop['signal']} at meta-iteration {step}/{t.iterations}; saved {ckpt_dir / 'last.pt'}; "
                        f"continue with: metalearn train resume={run_dir}",
                    )
    except Interrupted:
        if main:
            write_status(run_dir, "interrupted", step=step, iterations=t.iterations)
        raise
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()
    train_seconds = seconds_before + time.perf_counter() - session_start
    if not main:
        return best_val

    # Test what validation chose, read back from disk: `metalearn eval` on best.pt gives the same numbers.
    best = load_checkpoint(ckpt_dir / "best.pt")
    strategy.load_state_dict(best["model"])
    result = test_checkpoint(strategy, data, "test", (shapes.way, shapes.shot, shapes.query), cfg.eval, cfg.seed, device, run_dir)
    result.update({
        "checkpoint": "checkpoints/best.pt", "best_step": best_step, "val_accuracy": best_val,
        "iterations": t.iterations, "meta_batch": t.meta_batch, "train_way": shapes.train_way,
        "train_query": shapes.train_query, "train_seconds": round(train_seconds, 2),
        "train_tasks_per_s": round(t.iterations * t.meta_batch / max(train_seconds, 1e-9), 2),
        "wall_seconds": round(time.perf_counter() - wall_start, 2), "device": str(device),
        "precision": resolve_precision(cfg.trainer.precision, device, strategy), "torch": torch.__version__, "dataset": data.name,
        "published_accuracy": cfg.reference.accuracy, "published_source": cfg.reference.source,
    })
    write_json(run_dir / "results.json", result)
    write_status(run_dir, "completed", step=step, iterations=t.iterations, accuracy=result["accuracy"])
    log.info("test accuracy %.2f%% ± %.2f%% over %d %d-way %d-shot tasks (best val %.2f%% at step %d); %s",
             100 * result["accuracy"], 100 * result["ci95"], result["episodes"], shapes.way, shapes.shot,
             100 * best_val, best_step, run_dir)
    return best_val


def _check_same_run(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Resuming continues *the same* run: only bookkeeping keys may differ."""
    free = {"resume", "device", "threads", "trainer.progress", "trainer.log_every", "trainer.val_every",
            "trainer.checkpoint_every", "trainer.iterations", "eval", "reference"}

    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(d, dict):
            return {prefix.rstrip("."): d}
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}."))
        return out

    a, b = flat(saved), flat(current)
    diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and not any(k == f or k.startswith(f + ".") for f in free)]
    if diff:
        raise CheckpointError(
            f"{path} was trained with another config ({', '.join(f'{k}={a.get(k)!r}' for k in diff[:3])}); "
            "resume with the same settings, or start a new run"
        )


# ----------------------------------------------------------------------------- `metalearn eval`
def evaluate(cfg: Any, run_dir: Path) -> float:
    """Test a checkpoint on fixed tasks; writes ``results.json`` into ``run_dir``; returns accuracy."""
    wall_start = time.perf_counter()
    device = setup_device(cfg)
    state = load_checkpoint(cfg.checkpoint)
    train_cfg = validate_train_config(state["config"])
    episode = cfg.episode if cfg.episode is not None else train_cfg.episode
    seed = cfg.seed if cfg.seed is not None else train_cfg.seed
    if cfg.split not in ("test", "val"):
        raise ConfigError(f"split={cfg.split} is not an evaluation split; use test or val")
    data = DATASETS.build(train_cfg.dataset)
    strategy = build_strategy(train_cfg, data.image_shape, device)
    try:
        strategy.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{cfg.checkpoint} does not match its own config's meta-network: {str(exc).splitlines()[0][:160]}") from exc
    result = test_checkpoint(strategy, data, cfg.split, (episode.way, episode.shot, episode.query), cfg.eval, seed, device, run_dir)
    result.update({
        "checkpoint": str(Path(cfg.checkpoint).resolve()), "checkpoint_step": int(state["step"]),
        "wall_seconds": round(time.perf_counter() - wall_start, 2), "device": str(device),
        "precision": resolve_precision(train_cfg.trainer.precision, device, strategy), "torch": torch.__version__,
        "dataset": data.name,
    })
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(run_dir) / "results.json", result)
    write_status(run_dir, "completed", accuracy=result["accuracy"])
    log.info("%s accuracy %.2f%% ± %.2f%% over %d %d-way %d-shot tasks; %s", cfg.split, 100 * result["accuracy"],
             100 * result["ci95"], result["episodes"], episode.way, episode.shot, run_dir)
    return result["accuracy"]
