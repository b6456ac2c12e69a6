"""Stop requests: SIGINT and SIGTERM become a flag a run checks between steps, so it can save first.

A first request asks the run to stop at its next step (it saves ``last.pt`` and says how to resume);
a second one stops at once (a SIGTERM within 2 s of a first request is the same request, delivered again); once
nothing is left to save (the final test), a request stops at once with the message the run left in
``flag["now"]``.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from typing import Any, Iterator

from metalearn_cli.errors import Interrupted


SAME_SIGTERM_S = 2.0  # a SIGTERM this soon after a first request is the same stop request: a supervisor that signals
# a process group, or scripts/reproduce.py forwarding its own, may deliver one twice, and torchrun signalled twice
# (a Ctrl-C through a wrapper such as `timeout`) sends its workers SIGINT, then SIGTERM 1 ms later. A person's second
# Ctrl-C is SIGINT, never taken for a repeat.


@contextlib.contextmanager
def stop_requests() -> Iterator[dict[str, Any]]:
    """SIGINT/SIGTERM set a flag checked between meta-iterations, so a checkpoint can be saved. Once
    ``flag["now"]`` holds a message (the final test: nothing left to save), a request raises
    :class:`Interrupted` at once with it."""
    flag: dict[str, Any] = {"signal": None, "now": None, "again": None, "last": None, "at": 0.0}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        name, now = signal.Signals(signum).name, time.monotonic()
        if name == "SIGTERM" and flag["last"] is not None and now - flag["at"] < SAME_SIGTERM_S:
            return  # one request delivered again (to the process and its group, forwarded, escalated by torchrun)
        flag["last"], flag["at"] = name, now
        if flag["now"] is not None:
            raise Interrupted(name, f"{name} {flag['now']}")
        if flag["signal"] is not None:  # a second request: stop now
            flag["again"] = name
            raise KeyboardInterrupt
        flag["signal"] = name

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def second_request(flag: dict[str, Any]) -> tuple[str, str]:
    """The signal of a second stop request and how a message names the two (``SIGINT twice``, ``SIGTERM, then
    SIGINT``): a launcher's SIGTERM followed by a Ctrl-C is not two Ctrl-Cs."""
    first, again = flag.get("signal") or "SIGINT", flag.get("again") or "SIGINT"
    return again, f"{first} twice" if first == again else f"{first}, then {again}"
