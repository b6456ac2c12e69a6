"""What a run will cost before it starts: memory (refused in one line when the device lacks it) and
compute (the floating-point operations of the encoder over the whole run, which bounds ``debug=smoke``).

Both come from one profile of the encoder, built on the ``meta`` device (no memory, no arithmetic):
every leaf module's output size per image, and the FLOPs of one forward pass per image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

from metalearn_cli.episodes import TaskShapes
from metalearn_cli.errors import ConfigError
from metalearn_cli.host import available_memory
from metalearn_cli.model import build_meta_model
from metalearn_cli.schema import is_episodic
from metalearn_cli.strategies import STRATEGIES


@dataclass(frozen=True)
class Profile:
    params: int  # the strategy's parameters (encoder, decoder, learned rates)
    activations: int  # values every leaf module of the encoder outputs, per image
    flops: int  # of one encoder forward pass, per image
    copies: int  # forward passes' activations a meta-step keeps alive (the strategy's own count)
    test_steps: int  # inner gradient steps at evaluation (0: none)


def profile(cfg: Any, image_shape: tuple[int, int, int]) -> Optional[Profile]:
    """The encoder's per-image cost on the ``meta`` device; None when a layer has no meta kernels."""
    try:
        with torch.device("meta"):
            strategy = STRATEGIES.build(cfg.strategy, model=build_meta_model(cfg, image_shape))
            sizes: list[int] = []
            leaves = [m for m in strategy.model.encoder.modules() if not list(m.children())]
            hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel() if isinstance(out, torch.Tensor) else 0))
                     for m in leaves]
            with FlopCounterMode(display=False) as counter:
                strategy.model.encoder(torch.zeros(2, *image_shape))  # two images: batch norm needs more than one value
            for h in hooks:
                h.remove()
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return None
    return Profile(sum(p.numel() for p in strategy.parameters()), sum(sizes) // 2, counter.get_total_flops() // 2,
                   strategy.activation_copies(), strategy.test_inner_steps() or 0)


def estimated_flops(cfg: Any, image_shape: tuple[int, int, int]) -> Optional[int]:
    """Encoder FLOPs of the whole run: pre-training, meta-training (a backward pass costs two forward
    passes), every validation and the final test (with the strategy's inner steps at evaluation).
    Decoders and inner loops on the decoder alone are small beside the encoder and are left out."""
    p = profile(cfg, image_shape)
    if p is None:
        return None
    s, t, e = TaskShapes.of(cfg), cfg.trainer, cfg.eval
    train_images = t.iterations * t.meta_batch * s.train_way * (s.shot + s.train_query)
    eval_pass = s.way * (s.shot + s.query) + 3 * s.way * s.shot * p.test_steps
    validations = t.iterations // t.val_every + 1
    images = (3 * p.copies * train_images + 3 * cfg.pretrain.iterations * stage_batch(cfg)[0]
              + (validations * t.val_episodes + e.episodes) * eval_pass)
    return images * p.flops


def stage_batch(cfg: Any) -> tuple[int, str]:
    """Images per step of the pre-training stage, and the setting that sizes it."""
    p, e = cfg.pretrain, cfg.episode
    if is_episodic(p):
        return (cfg.trainer.meta_batch * (p.train_way or e.way) * (e.shot + (p.train_query or e.query)),
                "pretrain.train_way, pretrain.train_query or trainer.meta_batch")
    return p.batch_size, "pretrain.batch_size"


def check_memory(cfg: Any, image_shape: tuple[int, int, int], device: torch.device) -> None:
    """Refuse, in one line, a run whose estimated memory exceeds what ``device`` has free.

    Parameters count four times (weights, gradients, two optimizer moments); activations count per
    image, times the images of a meta-iteration and the strategy's live copies of them."""
    p = profile(cfg, image_shape) if cfg.trainer.memory_check else None
    if p is None:  # not checked, or a layer without meta kernels: no estimate
        return
    s = TaskShapes.of(cfg)
    images = cfg.trainer.meta_batch * s.train_way * (s.shot + s.train_query)
    params, per_image = p.params, p.activations
    stages = [(images * p.copies, f"{images:,} images per meta-iteration", "trainer.meta_batch, the task shape")]
    if cfg.pretrain.iterations > 0:
        n, knob = stage_batch(cfg)
        stages.append((n, f"{n:,} images per pre-training step", knob))
    free = available_memory(device)
    for copies, what, knob in stages:
        need = 4 * (4 * params + per_image * copies)
        if need > free:
            raise ConfigError(
                f"this run needs about {need / 2**30:.1f} GiB ({params:,} parameters, {what}), more than the "
                f"{free / 2**30:.1f} GiB free on {device}; lower {knob} or the encoder's size, or pass "
                "trainer.memory_check=false to try anyway")
