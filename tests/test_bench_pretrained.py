"""scripts/bench_pretrained.py end to end on the embedded Omniglot, shrunk to seconds by its trailing overrides."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["encoder.width=8", "trainer.val_episodes=2", "pretrain.val_episodes=2", "pretrain.max_iterations=3",
        "pretrain.batch_size=16", "episode.query=1"]


def bench(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_pretrained.py"), "--rows", "0,1", "--budgets", "2",
                           "--seeds", "0", "--episodes", "3", "--out", out.name, *TINY],  # relative: the caller's folder
                          capture_output=True, text=True, timeout=600, cwd=out.parent)


def test_the_bench_tabulates_each_row_by_budget_against_the_untrained_encoder_and_reuses_finished_runs(tmp_path):
    out = tmp_path / "bench dir"
    proc = bench(out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (out / "table.md").read_text()
    assert "**lake**" in table and "**20w**" in table
    rows = [line for line in table.splitlines() if line.startswith("| prototypes") or line.startswith("| FEAT")]
    assert [tuple(c.strip() for c in r.split("|")[1:3]) for r in rows] == [
        ("prototypes (ProtoNet fine-tuning)", "0"), ("prototypes (ProtoNet fine-tuning)", "2"),
        ("FEAT (its code's recipe)", "0"), ("FEAT (its code's recipe)", "2")] * 2
    untrained_feat = rows[2].split("|")
    assert re.fullmatch(r" [+-]\d+\.\d\d \[[+-]\d+\.\d\d, [+-]\d+\.\d\d\] ", untrained_feat[5])  # paired vs no meta-training
    assert re.fullmatch(r" \d+ of 60 \(\d+\.\d%\) ", untrained_feat[7])  # predictions differing, of 3 Lake runs x 20 queries
    assert re.fullmatch(r" \d+( \(the start kept\))? ", rows[1].split("|")[9])  # where best.pt is: the start is said
    assert re.search(r"best\.pt at step \d+ of 3", table)  # the pre-training stage's too
    run = out / "runs" / "row1" / "it2" / "seed0"
    assert (run / "checkpoints" / "best.pt").is_file() and (run.parent / "seed0-20w" / "results.json").is_file()
    assert "encoder.width=8" in (run / ".hydra" / "overrides.yaml").read_text()  # the trailing overrides reached the run
    stamp = (run / "results.json").stat().st_mtime_ns
    again = bench(out)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (run / "results.json").stat().st_mtime_ns == stamp  # a finished run is read, not trained again
    assert (out / "table.md").read_text().split("\n", 1)[1] == table.split("\n", 1)[1]  # the same figures


def test_a_list_argument_mistake_is_argparses_one_line():
    for args, needle in ((["--seeds", "a,b"], "argument --seeds: 'a,b' is not a comma-separated list"),
                         (["--rows", "99"], "--rows: the rows are 0 to")):
        done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_pretrained.py"), *args],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and needle in done.stderr and "Traceback" not in done.stderr, done.stderr
