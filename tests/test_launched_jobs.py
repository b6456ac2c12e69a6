"""What the launching process knows of a sweep whose jobs run elsewhere, and how it leaves Ctrl-C to them."""

import os
import signal
import time

from omegaconf import OmegaConf

from metalearn_cli.cli.launched_jobs import (OUTCOMES, TAKEN_BY_JOBS, SweepStarted, begun_sweep, job_takes_ctrl_c,
                                             jobs_ran_elsewhere, launching, record_outcome, takes_ctrl_c,
                                             tally_launched_jobs, wait_for_saving_jobs)
from metalearn_cli.cli.sweep_dirs import job_dirs, settle_stopped_jobs
from metalearn_cli.files import read_json
from metalearn_cli.rundir import STATUS, exclusive, write_status

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
        assert signal.getsignal(signal.SIGINT) not in (signal.default_int_handler, before)  # between jobs: kept for the next
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
        assert wait_for_saving_jobs(tmp_path, own, wait_s=20) == [] and time.monotonic() - start < 10
        with exclusive(other):
            start = time.monotonic()
            assert wait_for_saving_jobs(tmp_path, own, wait_s=0.5, poll_s=0.05) == [other]
            assert time.monotonic() - start >= 0.5


def test_the_other_jobs_are_found_as_deep_as_its_own(tmp_path):
    """hydra.sweep.subdir=${hydra.job.num}/x puts each job one folder deeper: their locks are still seen."""
    own, other = tmp_path / "0" / "x", tmp_path / "1" / "x"
    own.mkdir(parents=True)
    other.mkdir(parents=True)
    with exclusive(other):
        assert wait_for_saving_jobs(tmp_path, own, wait_s=0.2, poll_s=0.05) == [other]


def test_the_launching_process_counts_what_each_job_recorded_of_its_end(tmp_path):
    """Not the dirs' status.json (an export writes none; a refused resume leaves the run's old one; an earlier
    command's failed jobs may lie there): each job of this command records its end, in order of job number."""
    (tmp_path / OUTCOMES).mkdir()
    (tmp_path / OUTCOMES / "7").write_text("failed")  # a killed command's record: not this sweep's
    jobs, failed = [], []
    with launching():
        SweepStarted().on_multirun_start(started(tmp_path, JOBLIB))
        for job, status in (("10", "completed"), ("2", "failed"), ("0", "completed")):
            record_outcome(tmp_path, job, JOBLIB, status)
        record_outcome(tmp_path, "3", BASIC, "failed")  # a job in the launching process counts itself
        assert tally_launched_jobs(jobs, failed)
    assert jobs == ["0", "2", "10"] and failed == ["2"]
    assert not (tmp_path / OUTCOMES).exists()  # nothing left in the sweep dir


def test_a_ctrl_c_between_two_jobs_stops_the_next_one_before_it_begins(tmp_path):
    before = signal.getsignal(signal.SIGINT)
    began = []
    with launching():
        SweepStarted().on_multirun_start(started(tmp_path, JOBLIB))
        with job_takes_ctrl_c():
            began.append(0)
        os.kill(os.getpid(), signal.SIGINT)  # between jobs: kept, not a KeyboardInterrupt here
        time.sleep(0.05)
        try:
            with job_takes_ctrl_c():
                began.append(1)
        except KeyboardInterrupt:
            began.append("stopped")
        with job_takes_ctrl_c():  # the stop was taken once
            began.append(2)
    assert began == [0, "stopped", 2] and signal.getsignal(signal.SIGINT) is before


def test_a_sweep_whose_jobs_lie_deeper_is_found_and_settled_as_deep(tmp_path):
    """hydra.sweep.subdir=${hydra.job.num}/x: a job a killed worker left running, one folder down, is marked
    interrupted, and the sweep counts as begun (so the stop line says how to finish it)."""
    job, idle = tmp_path / "0" / "x", tmp_path / "1" / "x"
    job.mkdir(parents=True)
    idle.mkdir(parents=True)  # a job that never began: no run there
    (tmp_path / ".hydra").mkdir()
    write_status(job, "running", step=3, iterations=10, processes=1)
    assert job_dirs(tmp_path) == ["0/x"]
    with launching():
        SweepStarted().on_multirun_start(started(tmp_path, JOBLIB))
        assert begun_sweep(["metalearn", "train", "-m"]) == tmp_path.resolve()
    assert settle_stopped_jobs(tmp_path, wait_s=0) == [tmp_path / "0" / "x"]
    assert read_json(job / STATUS)["status"] == "interrupted"
