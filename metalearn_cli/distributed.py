"""Data-parallel meta-training over processes (``torchrun --nproc-per-node=N -m metalearn_cli train``).

The tasks of a meta-batch are split across ranks: every rank draws the whole meta-batch's task
indices from the same seeded stream and gathers the images of its own share only, so ranks see
disjoint tasks and together exactly the tasks one process would. Meta-gradients are averaged with
one all-reduce before clipping, so the update equals single-process training on the same
meta-batch (exactly so for strategies that keep tasks apart, such as the MAML family; with `mgd`
batch-norm statistics are per rank, as with DDP without SyncBN). Only rank 0 validates, tests and
writes the run dir.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def die_with_launcher() -> None:
    """Ask Linux to send this rank SIGTERM when its launcher dies: a torchrun killed with SIGKILL cannot end
    its workers, which would train on as orphans holding the run dir's lock. SIGTERM stops a rank as a
    pre-emption does (it saves, then stops); elsewhere (no ``prctl``) this does nothing."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the launcher died before the request: nobody is left to send it
        os.kill(os.getpid(), signal.SIGTERM)


def world() -> World:
    """The process group described by torchrun's environment, joined on first use."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        die_with_launcher()
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


class StopVote:
    """Agree on stop requests over ranks, so every rank stops after the same step. Signals reach ranks a
    little apart: a rank that stopped alone would leave the others waiting in the next all-reduce, which
    then fails, and the run would end "failed", not resumable. A vote is an all-reduce (MAX) of two numbers
    in its own CPU (gloo) group, started after one step and read after the next, so it travels while a
    step computes; ranks vote about every 50 ms of training (the same steps on every rank: the interval
    travels in the vote), so a vote costs no measurable step time and a stop comes a fraction of a second
    later than in one process."""

    PERIOD_S = 0.05

    def __init__(self) -> None:
        self.reset()

    def settle(self) -> None:
        """Wait for the last vote, so no collective is in flight when ranks leave: a process that exits
        while gloo still holds unfinished work is aborted (SIGABRT) instead of ending."""
        if self.pending is not None:
            self.pending[0].wait()
            self.pending = None

    def reset(self) -> None:
        """Forget the group (after it is destroyed)."""
        self.group: Any = None
        self.pending: Any = None
        self.every = self.countdown = 1
        self.steps, self.since = 0, time.perf_counter()

    def __call__(self, signal_name: Optional[str]) -> Optional[str]:
        """The request any rank held at the last vote, or None; a single process answers its own."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return signal_name
        self.countdown, self.steps = self.countdown - 1, self.steps + 1
        if self.countdown > 0:
            return None
        if self.group is None:
            self.group = dist.new_group(backend="gloo")  # every rank reaches its first vote: created together
        agreed = None
        if self.pending is not None:
            work, numbers = self.pending
            work.wait()
            agreed = signal.Signals(int(numbers[0])).name if int(numbers[0]) else None
            self.every = int(numbers[1])
        now = time.perf_counter()
        proposal = max(1, min(1000, int(self.PERIOD_S * self.steps / max(now - self.since, 1e-9))))
        numbers = torch.tensor([int(signal.Signals[signal_name]) if signal_name else 0, proposal], dtype=torch.int64)
        self.pending = (dist.all_reduce(numbers, op=dist.ReduceOp.MAX, group=self.group, async_op=True), numbers)
        self.steps, self.since, self.countdown = 0, now, self.every
        return agreed


agreed_stop = StopVote()


def lost_peer(exc: BaseException) -> bool:
    """Whether a collective failed because another rank is gone (its connection closed or reset)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return False
    text = str(exc)
    return isinstance(exc, dist.DistNetworkError) or any(sign in text for sign in (
        "Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted"))


def together() -> None:
    """Wait for every rank (no-op in one process): a check all ranks make of the run dir is made before
    rank 0 writes in it, or a slower rank would find rank 0's first files and refuse its own run."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def leave(finished: bool) -> None:
    """Leave the process group, if one was joined: after a finished run every rank first waits for
    rank 0's final test, so no rank tears its connections down while another still holds them (a
    rank that exited early could abort in gloo's teardown); after an error, at once. The group is
    destroyed even when the wait fails (a signal, a lost peer): a process that exits with gloo's
    state alive aborts, and the signal's own message would be lost."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if finished:
            agreed_stop.settle()  # every rank cast the same votes: the last one completes
            dist.barrier()
    finally:
        dist.destroy_process_group()
        agreed_stop.reset()


def average_gradients(parameters: list[torch.nn.Parameter]) -> None:
    """Average the gradients over ranks with one flat all-reduce (no-op in a single process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def every_rank(obj: Any) -> Optional[list[Any]]:
    """Each rank's ``obj``, in rank order (one all-gather, every rank calls it), or ``None`` in one process: what
    rank 0 saves for all (a partial metric window), so a resume gives each rank back its own."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def average_metrics(sums: dict[str, torch.Tensor]) -> None:
    """Average a metric window's scalar sums over ranks in place (one all-reduce), so the records
    rank 0 writes describe the whole meta-batch, not its own share of the tasks."""
    if not sums or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    keys = sorted(sums)
    flat = torch.stack([sums[k].detach().float().reshape(()) for k in keys])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for key, value in zip(keys, flat):
        sums[key] = value.to(sums[key].dtype)
