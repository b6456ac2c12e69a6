"""``trainer.ema``: an exponential moving average of the meta-network's weights (Polyak averaging).

Validation scores the average and ``best.pt`` holds it, so the final test and ``metalearn eval`` of
``best.pt`` use it; ``last.pt`` holds the trained weights and the average beside them, so a resume
continues both. The update is one fused lerp over every floating tensor, on the device: no per-step
host work. Batch-norm statistics are averaged as the weights are (integer counters are copied).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch


class WeightAverage:
    """The average of ``module``'s state: ``decay`` per step, ramped in as ``(1 + n) / (10 + n)`` over the
    first updates (as timm's ModelEmaV2 warm-up does) so the random start does not linger."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.module, self.decay, self.updates = module, decay, 0
        state = module.state_dict()  # views of the module's own tensors, which loads and steps change in place
        self.shadow = {k: v.detach().clone() for k, v in state.items()}
        floats = [k for k, v in state.items() if v.is_floating_point()]
        others = [k for k in state if k not in floats]
        self._averaged, self._current = [self.shadow[k] for k in floats], [state[k].detach() for k in floats]
        self._kept, self._counters = [self.shadow[k] for k in others], [state[k].detach() for k in others]

    def restart(self) -> None:
        """The average starts at the module's weights now (after a first stage replaced them)."""
        with torch.no_grad():
            torch._foreach_copy_(self._averaged + self._kept, self._current + self._counters)
        self.updates = 0

    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():
            torch._foreach_lerp_(self._averaged, self._current, 1.0 - decay)
            if self._kept:
                torch._foreach_copy_(self._kept, self._counters)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The module holds the average inside the block, its trained weights again after it."""
        trained = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        self.module.load_state_dict(self.shadow)
        try:
            yield
        finally:
            self.module.load_state_dict(trained)

    def state(self) -> dict[str, Any]:
        return {"shadow": self.shadow, "updates": self.updates, "decay": self.decay}

    def load(self, state: dict[str, Any]) -> None:
        for key, value in state["shadow"].items():
            self.shadow[key].copy_(value)
        self.updates = int(state["updates"])
