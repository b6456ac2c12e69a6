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
