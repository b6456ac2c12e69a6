"""Several trained meta-networks scored as one (``metalearn eval checkpoint=A ensemble=[B,C]``).

Each member adapts to the task on its own, with its own weights, batch-norm mode and test-time
views; the ensemble's class probabilities are the mean of the members' softmax probabilities (an
ensemble of independently trained networks, as Dvornik et al. 2019 evaluate for few-shot
classification). Members are scored on the same fixed tasks: their test classes must be the same;
a member that reads them at another image size (28 px beside 56 px) gets the same tasks at its own
size (:class:`LockstepTasks`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch
from omegaconf import ListConfig, OmegaConf

from metalearn_cli import bn_modes
from metalearn_cli.augment import TtaViews
from metalearn_cli.bn_modes import MODES
from metalearn_cli.encoders.norm import batch_norm_mode
from metalearn_cli.episodes import EpisodeBatch
from metalearn_cli.errors import CheckpointError, ConfigError
from metalearn_cli.strategies import Prediction, Strategy


class Ensemble:
    """Members scored together; what :func:`metalearn_cli.evaluation.evaluate_tasks` needs of a strategy."""

    def __init__(self, members: Sequence[Strategy], sources: Sequence[str] = (), datasets: Sequence[Any] = (),
                 evals: Sequence[Any] = ()) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = list(members)
        self.sources = [str(s) for s in sources]
        self.datasets = list(datasets)  # each member's saved dataset config (what it reads the test tasks as)
        self.evals = list(evals)  # each member's saved eval config (its own test views and batch-norm mode)
        self.exported_notes: list[dict[str, str]] = []  # per member after the first: an export's "unfinished" line
        self.model = self.members[0].model  # the first member describes the ensemble (precision, start-up line)

    def modes(self, bn_mode: str | Sequence[str]) -> list[str]:
        """One resolved batch-norm mode per member: a name for all of them, or one each."""
        modes = [bn_mode] * len(self.members) if isinstance(bn_mode, str) else list(bn_mode)
        if len(modes) != len(self.members):
            raise ValueError(f"{len(modes)} batch-norm modes for {len(self.members)} members")
        return modes

    def resolve_modes(self, bn_mode: Any) -> list[str]:
        """``eval.bn_mode`` for each member (one setting for all, or a list of one each): ``auto`` is each
        member's own protocol (so a member scores as it would alone); a named mode must suit the member,
        and a member it does not suit is named."""
        settings = list(bn_mode) if isinstance(bn_mode, (list, tuple)) else [bn_mode] * len(self.members)
        out = []
        for i, member in enumerate(self.members):
            try:
                out.append(bn_modes.resolve(settings[i], member.bn_modes))
            except ConfigError as e:
                name = self.sources[i] if i < len(self.sources) else f"member {i}"
                raise ConfigError(f"ensemble member {name}: {e}") from None
        return out

    def mixes_tasks(self, modes: Sequence[str]) -> bool:
        """Whether some member, in its mode, would share batch statistics across a batch's tasks."""
        return any(MODES[m].mixes_tasks and not member.isolates_tasks for member, m in zip(self.members, modes))

    def test_inner_steps(self) -> Optional[int]:
        """The first member's (results.json's ``inner_steps_at_test``); :meth:`inner_steps_each` has all."""
        return self.members[0].test_inner_steps()

    def inner_steps_each(self) -> list[Optional[int]]:
        """Each member's test-time inner steps (``ensemble_inner_steps_at_test``: a MAML member beside a ProtoNet)."""
        return [member.test_inner_steps() for member in self.members]

    @contextlib.contextmanager
    def statistics(self, bn_mode: str | Sequence[str]) -> Iterator[None]:
        """Every member in its batch-norm mode (one name for all, or one each) inside the block."""
        with contextlib.ExitStack() as stack:
            for member, mode in zip(self.members, self.modes(bn_mode)):
                stack.enter_context(batch_norm_mode(member.model, mode))
            yield

    def predict(self, batch: EpisodeBatch | MemberBatches, views: TtaViews | int | Sequence[TtaViews] = 0,
                with_stats: bool = False) -> Prediction:
        """Log of the members' mean class probabilities ``[T, Q, n_way]``, each member embedding the images
        with its views (one for all, or one each); with several members the decoders' norms are reported
        per member (``m0/...``, ``m1/...``)."""
        each = list(views) if isinstance(views, (list, tuple)) else [views] * len(self.members)
        outs = []
        for i, member in enumerate(self.members):
            with member.model.test_views(each[i]):
                outs.append(member.predict(batch.of(i) if isinstance(batch, MemberBatches) else batch, with_stats=with_stats))
        if len(outs) == 1:
            return outs[0]
        probs = torch.stack([o.logits.float().softmax(-1) for o in outs]).mean(0)
        stats = {f"m{i}/{k}": v for i, o in enumerate(outs) for k, v in o.stats.items()}
        return Prediction(probs.clamp_min(torch.finfo(probs.dtype).tiny).log(), stats)


@dataclass(frozen=True)
class MemberBatches:
    """One batch of tasks as each member reads it: the same tasks, one :class:`EpisodeBatch` per image
    size (``index[m]`` is member ``m``'s); labels and task counts are the first's, equal in all of them."""

    batches: tuple[EpisodeBatch, ...]
    index: tuple[int, ...]

    @property
    def tasks(self) -> int:
        return self.batches[0].tasks

    @property
    def query_labels(self) -> torch.Tensor:
        return self.batches[0].query_labels

    def of(self, member: int) -> EpisodeBatch:
        return self.batches[self.index[member]]

    def split_tasks(self) -> list["MemberBatches"]:
        return [MemberBatches(parts, self.index) for parts in zip(*(b.split_tasks() for b in self.batches))]


class LockstepTasks:
    """Fixed tasks drawn from several copies of one test split at different image sizes: the samplers
    share the seed, the class names and the images per class, so they draw the same classes and drawings
    in the same order (a draw depends on those, never on the pixels)."""

    def __init__(self, samplers: Sequence[Any], index: Sequence[int]) -> None:
        self.samplers, self.index = list(samplers), tuple(index)

    def fixed(self, episodes: int, batch_tasks: int) -> Iterator[MemberBatches]:
        for batches in zip(*(s.fixed(episodes, batch_tasks) for s in self.samplers)):
            yield MemberBatches(tuple(batches), self.index)


def ensemble_paths(value: Any) -> list[str]:
    """The ``ensemble=`` key as a list of paths: ``[B,C]``, one path ``B`` (a folder named ``3`` too),
    or nothing (``[]``, ``null``); an empty path is refused rather than read as the current folder."""
    if value is None:
        return []
    paths = [str(v) for v in value] if isinstance(value, (list, tuple, ListConfig)) else [str(value)]
    if any(not p.strip() for p in paths):
        raise ConfigError("ensemble= holds an empty path; give the members as ensemble=[B,C] "
                          "(quote a path with spaces: 'ensemble=[\"my runs/b\",c]'), or leave the key out")
    return paths


# Dataset keys members may differ in and still read the same test drawings: how the images are read (their size,
# where the files are, resampling, caching, framing by their ink) and what only training uses. Any other key may
# change the test drawings.
READING_KEYS = ("image_size", "root", "download", "cache", "resample", "channels", "normalise")
TRAINING_ONLY_KEYS = ("augment", "meta_augment", "rotations", "mirror", "val")


RECORDED_SPLIT_KEYS = ("split_file", "ratios", "split_seed")  # how a folder's split was made; recorded, it is the split


def check_same_test_data(first: Any, other: Any, source: str, first_source: str) -> None:
    """Refuse, from the saved configs alone (before any data is read), a member whose test images would differ."""
    if set(_differing(first, other)) - set(READING_KEYS) - set(TRAINING_ONLY_KEYS):
        raise other_data(first, other, source, first_source, "its test images would differ")


def _evaluated_classes(classes: Any) -> Any:
    """Of a folder run's recorded split, what an evaluation reads (its val and test classes); None if none."""
    return {s: list(classes.get(s) or []) for s in ("val", "test")} if classes else None


def other_data(first: Any, other: Any, source: str, first_source: str, what: str) -> ConfigError:
    """The refusal of a member whose test tasks are not the first member's (``what`` says how), naming the keys."""
    differ = _differing(first, other)
    if "name" in differ:  # another data set altogether: its name says it, not each of its options
        differ = {"name": differ["name"]}
    shown = ", ".join(f"dataset.{k}={theirs!r} against {mine!r}" for k, (mine, theirs) in list(differ.items())[:4])
    shown += f" and {len(differ) - 4} more" if len(differ) > 4 else ""
    return ConfigError(f"ensemble member {source} was trained on other data than {first_source} ({shown}): {what}; "
                       "an ensemble's members must be tested on the same classes, so that they are scored on the same tasks")


def _differing(first: Any, other: Any) -> dict[str, tuple[Any, Any]]:
    """The dataset keys whose saved values differ, sorted: ``{key: (first's, other's)}``."""
    mine, theirs = (OmegaConf.to_container(c, resolve=True) for c in (first, other))
    if mine.get("classes") and theirs.get("classes"):  # recorded folder splits: only the evaluated classes matter
        for config in (mine, theirs):
            config["classes"] = _evaluated_classes(config["classes"])
            for key in RECORDED_SPLIT_KEYS:
                config.pop(key, None)
    return {k: (mine.get(k), theirs.get(k)) for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)}


def load_ensemble(first: Strategy, first_cfg: Any, first_source: str, others: Sequence[str],
                  device: torch.device) -> Ensemble:
    """``first`` (already loaded) and the checkpoints, run dirs or exports ``others``, as one ensemble."""
    from metalearn_cli.assemble import load_strategy
    from metalearn_cli.checkpoint import read_meta_knowledge

    members, sources, datasets, evals = [first], [first_source], [first_cfg.dataset], [OmegaConf.select(first_cfg, "eval")]
    notes: list[dict[str, str]] = []
    for path in others:
        try:
            knowledge = read_meta_knowledge(path)
        except CheckpointError as exc:  # say which key named it: checkpoint= is fine
            raise CheckpointError(f"ensemble member {path}: {exc}") from None
        strategy, cfg = load_strategy(knowledge, device)
        check_same_test_data(first_cfg.dataset, cfg.dataset, knowledge["source"], first_source)
        resolved = str(Path(knowledge["source"]).resolve())
        check_new_member(path, resolved, strategy, members, sources)
        members.append(strategy)
        sources.append(resolved)
        datasets.append(cfg.dataset)
        evals.append(OmegaConf.select(cfg, "eval"))
        notes.append({"unfinished": knowledge["unfinished"]} if knowledge.get("unfinished") else {})
    ensemble = Ensemble(members, sources, datasets, evals)
    ensemble.exported_notes = notes  # an export of an unfinished run says so as a member too
    return ensemble


def check_new_member(path: Any, source: Optional[str], strategy: Strategy, members: Sequence[Strategy],
                     sources: Sequence[Optional[str]]) -> None:
    """An ensemble member (``ensemble=`` of eval and predict alike) is another trained network: not a file
    already listed, nor a copy of a member's weights (an export, another checkpoint of the same step)."""
    if source is not None and source in sources:
        spelled = f" ({source})" if str(Path(str(path)).expanduser().resolve()) != source else ""  # a run dir: its checkpoint
        raise ConfigError(f"ensemble member {path}{spelled} is listed twice; list each trained run once")
    twin = next((src for m, src in zip(members, sources) if same_weights(m, strategy)), None)
    if twin is not None:
        raise ConfigError(f"ensemble member {path} holds the same weights as {twin} (a copy, an export or another "
                          "checkpoint of the same step); an ensemble of copies scores as one network: list each "
                          "trained run once")


def same_weights(a: Strategy, b: Strategy) -> bool:
    """Whether two loaded members hold the same meta-knowledge, tensor for tensor."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)
