"""What the launching process knows of a sweep whose jobs run elsewhere, and how it leaves Ctrl-C to them."""

import os
import signal
import time

from omegaconf import OmegaConf

from metalearn_cli.cli.launched_jobs import (TAKEN_BY_JOBS, SweepStarted, job_takes_ctrl_c, jobs_ran_elsewhere,
                                             launching, takes_ctrl_c, wait_for_saving_jobs)
from metalearn_cli.rundir import exclusive

JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
BASIC = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


def started(folder, launcher):
    return OmegaConf.create({"hydra": {"sweep": {"dir": str(folder)}, "launcher": {"_target_": launcher}}})


def test_a_joblib_sweep_leaves_ctrl_c_to_its_jobs_and_gives_it_back_at_its_end(tmp_path):
    before = signal.getsignal(signal.SIGINT)
    with launching():
        SweepStarted().on_multirun_start(started(tmp_path, JOBLIB))
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and takes_ctrl_c()
        assert jobs_ran_elsewhere()
        assert "ignore:resource_tracker:UserWarning" in os.environ["PYTHONWARNINGS"]
        with job_takes_ctrl_c():  # a job (here: one at a time in this process) takes it back while it runs
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) is before and TAKEN_BY_JOBS not in os.environ and not takes_ctrl_c()


def test_the_basic_launcher_and_an_ignored_ctrl_c_are_left_as_they_are(tmp_path):
    before = signal.getsignal(signal.SIGINT)
    with launching():
        SweepStarted().on_multirun_start(started(tmp_path, BASIC))
        assert signal.getsignal(signal.SIGINT) is before and not takes_ctrl_c() and not jobs_ran_elsewhere()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a script's background job: its shell asked to ignore it
    try:
        with launching():
            SweepStarted().on_multirun_start(started(tmp_path, JOBLIB))
            assert not takes_ctrl_c()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_stopped_job_waits_only_while_another_job_holds_its_dir(tmp_path):
    own, other = tmp_path / "0_own", tmp_path / "1_other"
    own.mkdir()
    other.mkdir()
    with exclusive(own):  # its own lock does not hold it up
        start = time.monotonic()
        assert wait_for_saving_jobs(tmp_path, own, wait_s=5) == [] and time.monotonic() - start < 1
        with exclusive(other):
            start = time.monotonic()
            assert wait_for_saving_jobs(tmp_path, own, wait_s=0.5, poll_s=0.05) == [other]
            assert time.monotonic() - start >= 0.5
