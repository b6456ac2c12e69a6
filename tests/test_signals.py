"""Stop requests: a first SIGINT or SIGTERM asks for a save, a second stops at once and is named as it came."""

from __future__ import annotations

import os
import signal

import pytest

from metalearn_cli.signals import second_request, stop_requests


def test_a_second_request_stops_at_once_and_names_both_signals():
    with stop_requests() as flag:
        os.kill(os.getpid(), signal.SIGTERM)  # a launcher's pre-emption: saved at the next step
        assert flag["signal"] == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert second_request(flag) == ("SIGINT", "SIGTERM, then SIGINT")
    assert second_request({"signal": "SIGINT", "again": "SIGINT"}) == ("SIGINT", "SIGINT twice")


def test_a_sigterm_delivered_twice_at_once_is_one_request_but_a_later_one_stops_at_once(monkeypatch):
    """A supervisor that signals a process and its group, or reproduce.py forwarding its own SIGTERM, delivers one
    request twice: the run must still save. A SIGTERM after the grace is a second request, and so is a Ctrl-C."""
    from metalearn_cli import signals

    clock = [100.0]
    monkeypatch.setattr(signals.time, "monotonic", lambda: clock[0])
    with stop_requests() as flag:
        os.kill(os.getpid(), signal.SIGTERM)
        clock[0] += 0.5
        os.kill(os.getpid(), signal.SIGTERM)  # the same request again: no KeyboardInterrupt
        assert flag["signal"] == "SIGTERM" and flag["again"] is None
        clock[0] += signals.SAME_SIGTERM_S
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
    assert second_request(flag) == ("SIGTERM", "SIGTERM twice")
    with stop_requests() as flag:
        os.kill(os.getpid(), signal.SIGINT)
        clock[0] += 0.001
        os.kill(os.getpid(), signal.SIGTERM)  # torchrun signalled twice: SIGINT, then SIGTERM 1 ms later
        assert flag["signal"] == "SIGINT" and flag["again"] is None
        with pytest.raises(KeyboardInterrupt):  # a person's second Ctrl-C is never taken for a repeat
            os.kill(os.getpid(), signal.SIGINT)
    with stop_requests() as flag:
        flag["now"] = "during the final test"
        with pytest.raises(signals.Interrupted):
            os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # its repeat does not break into the first's handling


def test_a_stop_crosses_a_process_boundary_whole():
    """A launcher's worker (joblib) sends its job's stop back pickled: it must arrive with its signal and message,
    not as an unpickling error that turns a Ctrl-C into an "unexpected error"."""
    import pickle

    from metalearn_cli.errors import Interrupted, PeerLost

    for sent in (Interrupted("SIGINT", "SIGINT at meta-iteration 7; saved"), PeerLost("a peer died")):
        got = pickle.loads(pickle.dumps(sent))
        assert type(got) is type(sent) and str(got) == str(sent) and got.signal_name == sent.signal_name
