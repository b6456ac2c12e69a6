"""Several trained meta-networks scored as one (``metalearn eval checkpoint=A ensemble=[B,C]``).

Each member adapts to the task on its own, with its own weights, batch-norm statistics and test-time
views; the ensemble's class probabilities are the mean of the members' softmax probabilities (an
ensemble of independently trained networks, as Dvornik et al. 2019 evaluate for few-shot
classification). Members must have been trained on the same data set, so that they are scored on
the same fixed tasks.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch
from omegaconf import OmegaConf

from metalearn_cli.encoders.norm import batch_norm_mode
from metalearn_cli.episodes import EpisodeBatch
from metalearn_cli.errors import ConfigError
from metalearn_cli.strategies import Prediction, Strategy


class Ensemble:
    """Members scored together; what :func:`metalearn_cli.evaluation.evaluate_tasks` needs of a strategy."""

    def __init__(self, members: Sequence[Strategy], sources: Sequence[str] = ()) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = list(members)
        self.sources = [str(s) for s in sources]
        self.model = self.members[0].model  # the first member describes the ensemble (precision, start-up line)

    @property
    def isolates_tasks(self) -> bool:
        return all(m.isolates_tasks for m in self.members)

    @property
    def bn_modes(self) -> tuple[str, ...]:
        """The modes every member can be evaluated in, in the first member's order (``auto``: its first)."""
        modes = tuple(m for m in self.members[0].bn_modes if all(m in other.bn_modes for other in self.members))
        if not modes:
            raise ConfigError("the ensemble's members share no batch-norm mode they can all be evaluated in; "
                              "score them one by one")
        return modes

    def test_inner_steps(self) -> Optional[int]:
        return self.members[0].test_inner_steps()

    @contextlib.contextmanager
    def statistics(self, bn_mode: str) -> Iterator[None]:
        """Every member in the batch-norm mode ``bn_mode`` inside the block."""
        with contextlib.ExitStack() as stack:
            for member in self.members:
                stack.enter_context(batch_norm_mode(member.model, bn_mode))
            yield

    def predict(self, batch: EpisodeBatch, tta_shift: int = 0, with_stats: bool = False) -> Prediction:
        """Log of the members' mean class probabilities ``[T, Q, n_way]``; with several members the
        decoders' norms are reported per member (``m0/...``, ``m1/...``)."""
        outs = []
        for member in self.members:
            with member.model.test_views(tta_shift):
                outs.append(member.predict(batch, with_stats=with_stats))
        if len(outs) == 1:
            return outs[0]
        probs = torch.stack([o.logits.float().softmax(-1) for o in outs]).mean(0)
        stats = {f"m{i}/{k}": v for i, o in enumerate(outs) for k, v in o.stats.items()}
        return Prediction(probs.clamp_min(torch.finfo(probs.dtype).tiny).log(), stats)


def ensemble_paths(value: Any) -> list[str]:
    """The ``ensemble=`` key as a list of paths: ``[B,C]``, one path ``B``, or nothing."""
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value or []]


def check_same_data(first: Any, other: Any, source: str, first_source: str) -> None:
    """A member trained on other data would be scored on tasks it was not meant for: refused, naming the keys."""
    mine, theirs = (OmegaConf.to_container(c, resolve=True) for c in (first, other))
    keys = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if keys:
        shown = ", ".join(f"dataset.{k}={theirs.get(k)!r} against {mine.get(k)!r}" for k in keys)
        raise ConfigError(f"ensemble member {source} was trained on other data than {first_source} ({shown}); "
                          "an ensemble's members must share their data set, so that they are scored on the same tasks")


def load_ensemble(first: Strategy, first_cfg: Any, first_source: str, others: Sequence[str],
                  device: torch.device) -> Ensemble:
    """``first`` (already loaded) and the checkpoints, run dirs or exports ``others``, as one ensemble."""
    from metalearn_cli.assemble import load_strategy
    from metalearn_cli.checkpoint import read_meta_knowledge

    members, sources = [first], [first_source]
    for path in others:
        knowledge = read_meta_knowledge(path)
        strategy, cfg = load_strategy(knowledge, device)
        check_same_data(first_cfg.dataset, cfg.dataset, knowledge["source"], first_source)
        members.append(strategy)
        sources.append(str(Path(knowledge["source"]).resolve()))
    return Ensemble(members, sources)
