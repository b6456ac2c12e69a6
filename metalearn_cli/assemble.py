"""From a validated config to a ready strategy on a device: resolution of the run's settings,
building, and loading meta-knowledge into it.

Owns: the resolution of ``device``, kernels, ``precision``, ``channels_last`` and the batch-norm
mode, :func:`build_strategy` and :func:`load_strategy`. train, eval, predict, ``load``,
``trainer.init_from`` and the benchmarks all assemble through here; the range checks that come
first live in :mod:`metalearn_cli.config_checks`.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from omegaconf import DictConfig

from metalearn_cli import bn_modes
from metalearn_cli.checkpoint import read_meta_knowledge
from metalearn_cli.config_checks import parse_device, validate_host, validate_train_config
from metalearn_cli.encoders.norm import per_step_copies
from metalearn_cli.errors import CheckpointError, ConfigError
from metalearn_cli.host import keep_freed_memory, native_bf16
from metalearn_cli.model import build_meta_model, resolve_precision
from metalearn_cli.strategies import STRATEGIES, Strategy

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- the host and device
def resolve_device(name: str, spell: Callable[[str], str] = "device={}".format) -> torch.device:
    """The device ``name`` means here (auto: CUDA if present), refused when this machine lacks it;
    ``spell`` as in ``parse_device``."""
    device = parse_device(name, spell)
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{spell(name)} but CUDA is not available here; use {spell('auto')} or {spell('cpu')}")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"{spell(name)} but this machine has {torch.cuda.device_count()} GPU(s), cuda:0 to "
                          f"cuda:{torch.cuda.device_count() - 1}")
    return device


def setup_device(cfg: Any) -> torch.device:
    """Host settings (allocator, threads) and the device a run uses."""
    validate_host(cfg)
    keep_freed_memory()
    if cfg.threads is not None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if cfg.threads > cores:
            log.warning("threads=%d is more than the %d CPU cores this process may use: the extra threads wait on "
                        "each other and slow the run; threads=null uses them all", cfg.threads, cores)
        torch.set_num_threads(cfg.threads)
    return resolve_device(cfg.device)


def select_kernels(device: torch.device, deterministic: bool) -> None:
    """Deterministic kernels where asked (cuBLAS needs its workspace pinned first); otherwise cuDNN
    autotuning on CUDA. Episodes keep their shapes, so autotuning pays once: Conv-4 MAML on an H100
    went from 878 to 1026 tasks/s (second order) and 1147 to 1392 (first order)."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _name(value: Any) -> str:
    return value.value if hasattr(value, "value") else str(value)


def precision_reason(precision: Any, device: torch.device, strategy: Strategy) -> str:
    """Why a run computes in the precision it does, in words for its start-up line."""
    chosen = resolve_precision(precision, device, strategy.second_order)
    if _name(precision) != "auto":
        return f"{chosen} (trainer.precision={chosen})"
    if strategy.second_order:
        return "fp32 (auto: second-order meta-gradients stay in fp32)"
    if chosen == "bf16":
        return "bf16 (auto: native bf16 on this device)"
    if native_bf16(device):
        return "fp32 (auto: bf16 is native on this Intel CPU but, without AMX, no faster than fp32)"
    where = "this GPU" if device.type == "cuda" else f"this CPU ({torch.backends.cpu.get_cpu_capability()} kernels)"
    return f"fp32 (auto: no native bf16 on {where}; timings in the docs assume bf16 CPUs, about 1.6x faster)"


def startup_line(what: str, device: torch.device, precision: Any, strategy: Strategy, run_dir: Any) -> str:
    """The first line of a run: where it computes, in what precision and why, with how many threads."""
    threads = f"{torch.get_num_threads()} CPU thread{'' if torch.get_num_threads() == 1 else 's'}"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.backends.cpu.get_cpu_capability()} kernels"
    return (f"{what} on {device} ({name}), {precision_reason(precision, device, strategy)}, {threads}; "
            f"run dir {run_dir}")


def resolve_bn_mode(bn_mode: Any, strategy: Strategy) -> str:
    """``auto`` -> the strategy's own protocol; a mode the strategy cannot honour is a config error."""
    per_step_bn = getattr(getattr(strategy, "params_", None), "per_step_bn", None)  # the MAML family's, off
    why_not = (" as trained: it needs a run trained with strategy.per_step_bn=true (MAML++'s per-step statistics)"
               if per_step_bn is False and getattr(bn_mode, "value", str(bn_mode)) == "per_step" else "")
    return bn_modes.resolve(bn_mode, strategy.bn_modes, why_not)


# ----------------------------------------------------------------------------- building and loading
def build_strategy(cfg: Any, image_shape: tuple[int, int, int], device: torch.device) -> Strategy:
    """Meta-network + strategy for ``cfg`` and images of ``image_shape``, on ``device``, with the configured kernels."""
    model = build_meta_model(cfg, image_shape)
    strategy = STRATEGIES.build(cfg.strategy, model=model)
    strategy.check_compatible()
    strategy.to(device)
    model.use_channels_last(cfg.trainer.channels_last, device)  # the model resolves null and auto itself
    model.use_precision(cfg.trainer.precision, device, strategy.second_order)
    if cfg.trainer.compile:
        if strategy.second_order:
            raise ConfigError("trainer.compile=true cannot be used with second-order gradients (torch.compile has no "
                              "double backward); use strategy=fomaml or strategy.first_order=true, or drop compile")
        model.encoder.compile()  # in place: parameter names (and checkpoints) stay the same
    return strategy


def first_non_finite(tensors: dict[str, Any]) -> Optional[str]:
    """The name of the first floating tensor holding NaN or Inf (weights, batch-norm statistics), or None."""
    return next((k for k, v in tensors.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
                 and not bool(torch.isfinite(v).all())), None)


def load_weights(strategy: Strategy, weights: dict[str, Any], source: Any) -> None:
    bad = first_non_finite(weights)
    if bad:
        raise CheckpointError(f"{source} holds non-finite values in {bad}; it came from a diverged run, use an "
                              "earlier checkpoint")
    try:
        strategy.load_state_dict(weights)
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:  # torch's lines name the keys: one line of them
        said = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise CheckpointError(f"{source} does not match its own config's meta-network ({said[:300]}); the file was "
                              "edited or damaged: use the checkpoint it came from, or export it again") from exc


def load_strategy(knowledge: dict[str, Any], device: torch.device) -> tuple[Strategy, DictConfig]:
    """Rebuild the strategy a checkpoint or export describes (see :func:`read_meta_knowledge`), for
    images of its own format, and load its meta-knowledge; returns it with its validated config.
    No compile: that pays off over long runs, not for evaluation."""
    from metalearn_cli.data.images import ImageFormat

    config = validate_train_config(knowledge["config"])
    config.trainer.compile = False
    strategy = build_strategy(config, ImageFormat.from_dict(knowledge["image_format"]).shape, device)
    load_weights(strategy, knowledge["model"], knowledge.get("source") or "the state dict")
    return strategy, config


def freeze_encoder(strategy: Strategy, cfg: Any) -> None:
    """``trainer.freeze_encoder``: the encoder's weights and batch-norm statistics stay as loaded;
    the strategy must still have something to meta-train."""
    if strategy.adapts_encoder:
        raise ConfigError(f"trainer.freeze_encoder=true with strategy={cfg.strategy.name} would adapt the frozen encoder in "
                          "its inner loop; use strategy=anil (head only) or drop freeze_encoder")
    strategy.model.freeze_encoder()
    if cfg.trainer.iterations > 0 and not any(p.requires_grad for p in strategy.parameters()):
        raise ConfigError(f"trainer.freeze_encoder=true leaves nothing to meta-train in decoder={cfg.decoder.name}; "
                          "use trainer.iterations=0 to evaluate the pre-trained encoder, or another decoder")


def initialise_from(strategy: Strategy, source: str) -> None:
    """Copy the tensors of another run's meta-knowledge whose names and shapes match (e.g. a
    ProtoNet-trained encoder under a latent decoder); everything else keeps its fresh initialisation."""
    from metalearn_cli.resume import run_dir_of, unfinished_note

    knowledge = read_meta_knowledge(source)
    theirs = knowledge["model"]
    if note := unfinished_note(source, knowledge):  # a stopped run's checkpoint: maybe the weights it started from
        stage = run_dir_of(Path(source)) / "pretrain"
        log.warning("trainer.init_from: %s%s", note, "" if knowledge.get("step") != 0 else
                    " (its checkpoint is of step 0: untrained weights" + (f"; its pre-training stage's: trainer.init_from={stage})"
                                                                         if stage.is_dir() else ")"))
    bad = first_non_finite(theirs)
    if bad:
        raise CheckpointError(f"trainer.init_from={source} holds non-finite values in {bad}; it came from a diverged run, "
                              "pass an earlier checkpoint of it")
    ours = strategy.state_dict()
    matched = {k: v for k, v in theirs.items()
               if k in ours and isinstance(v, torch.Tensor) and v.is_floating_point() and v.shape == ours[k].shape}
    matched.update(per_step_copies(theirs, ours))  # MAML++'s per-step pairs from a one-pair network's, and back
    if not matched:
        raise ConfigError(f"trainer.init_from={source} shares no parameter (same name and shape) with this meta-network; "
                          "pass a checkpoint of a run with the same encoder")
    strategy.load_state_dict({**ours, **{k: v.to(ours[k].device, ours[k].dtype) for k, v in matched.items()}})
    weights = [k for k, v in ours.items() if v.is_floating_point()]  # not batch norm's step counters, which restart
    log.info("initialised %d of %d weight and statistics tensors from %s", len(matched), len(weights), source)

