"""Mutation testing with mutmut: does the suite fail when a line of the code that decides results is
wrong? Not part of CI (a module takes minutes to tens of minutes on 2 cores).

For each named module, a scratch copy of the project (the files git tracks) gets a ``[mutmut]``
section naming that module and its targeted tests, ``mutmut run`` mutates it (operators, constants,
arguments, removed calls) and runs the tests that cover each mutant; a mutant is killed when a test
fails. Prints a table of killed / survived per module (the rows of docs/mutation.md) and the
survivors' names (``mutmut show NAME`` in the scratch copy shows each diff); ``--json`` keeps both.

    python scripts/mutation.py optim resume          # some modules
    python scripts/mutation.py loop --sample 200     # a seeded random sample of the module's mutants
    python scripts/mutation.py --all --json rows.json
    python scripts/mutation.py --rejudge rows.json --json after.json   # survivors again, after new tests

A module whose mutants take longer than about 30 minutes on 2 cores (the loop, the decoders) is
scored on a seeded random sample: each mutant is judged by the same tests as in a full run, and the
score's 95% interval (Wilson) says how far the sample's figure may be from the full run's.
"""

from __future__ import annotations

import argparse
import importlib.util
import hashlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = Path(os.environ.get("METALEARN_MUTATION_DIR", "/tmp/metalearn-mutation"))

# module -> (files to mutate, the tests that must catch a wrong line there). In-process tests only:
# a subprocess imports the installed package, not mutmut's mutated copy.
TARGETS: dict[str, tuple[list[str], list[str]]] = {
    "optim": (["metalearn_cli/optim.py"], ["tests/test_optim.py"]),
    "resume": (["metalearn_cli/resume.py"], ["tests/test_resume.py"]),
    "episodes": (["metalearn_cli/episodes.py", "metalearn_cli/lake_runs.py"], ["tests/test_episodes.py", "tests/test_lake_runs.py"]),
    "rundir": (["metalearn_cli/rundir.py"], ["tests/test_rundir.py", "tests/test_run_dir_guards.py"]),
    "loop": (["metalearn_cli/loop.py", "metalearn_cli/objectives.py"],
             ["tests/test_loop.py", "tests/test_objectives.py", "tests/test_pretrain.py", "tests/test_loop_faults.py"]),
    "maml": (["metalearn_cli/strategies/maml.py"], ["tests/strategies/test_maml.py"]),
    "decoders": (["metalearn_cli/decoders/*"], ["tests/decoders"]),
}
STATUSES = ("killed", "survived", "timeout", "no tests", "suspicious", "skipped", "not checked", "segfault")


def scratch_copy(name: str) -> Path:
    """The tracked files of the working tree (edits included) in a fresh directory."""
    target = SCRATCH / name
    shutil.rmtree(target, ignore_errors=True)
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        source = ROOT / rel
        if source.is_file():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / rel)
    return target


def configure(directory: Path, mutate: list[str], tests: list[str]) -> None:
    lines = ["[mutmut]", "source_paths=metalearn_cli", "only_mutate=" + "\n    ".join(mutate),
             "pytest_add_cli_args_test_selection=" + "\n    ".join(tests),
             # -n 0: mutmut maps and runs tests in its own processes, not pytest-xdist's (addopts has -n auto)
             "pytest_add_cli_args=-q\n    -p\n    no:cacheprovider\n    -n\n    0\n    -m\n    not slow and not gpu",
             "use_git_change_detection=false",
             # A test's own duration is measured, but not the module fixture it may set up first (a trained
             # run): allow a minute on top, or mutants of code under such a fixture read as timeouts.
             "timeout_constant=60",
             # Workers forked from a process that ran torch code can deadlock (its thread pools do not
             # survive fork): fork them from a clean server instead.
             "process_isolation=forkserver"]
    (directory / "setup.cfg").write_text("\n".join(lines) + "\n")


def results(directory: Path) -> dict[str, list[str]]:
    """mutant name -> status, from ``mutmut results --all true``."""
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=directory,
                         capture_output=True, text=True).stdout
    found: dict[str, list[str]] = {s: [] for s in STATUSES}
    for line in out.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if status in found:
            found[status].append(name)
    return found


def wilson(killed: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% interval of a proportion measured on a sample (Wilson's: sound near 0 and 1 too)."""
    if not total:
        return float("nan"), float("nan")
    p = killed / total
    centre, half = p + z * z / (2 * total), z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    return (centre - half) / (1 + z * z / total), (centre + half) / (1 + z * z / total)


def sample_names(directory: Path, children: int, size: int, seed: int) -> list[str]:
    """Generate the module's mutants without running any (a filter that matches none: mutmut generates,
    collects which tests cover what, then stops), and draw ``size`` of their names."""
    mutmut = [sys.executable, "-m", "mutmut"]
    subprocess.run([*mutmut, "run", "--max-children", str(children), "no-mutant-is-named-so"], cwd=directory,
                   capture_output=True, text=True)
    names = sorted(n for names in results(directory).values() for n in names)
    if not names:
        raise SystemExit(f"mutmut generated no mutants in {directory}")
    return sorted(random.Random(seed).sample(names, min(size, len(names))))


def source_hash(mutate: list[str]) -> str:
    """The mutated files' contents: mutant names only mean the same mutants over the same code."""
    digest = hashlib.sha256()
    for pattern in mutate:
        for path in sorted(ROOT.glob(pattern)):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def run(name: str, children: int, sample: int | None = None, seed: int = 0, only: list[str] | None = None) -> dict[str, object]:
    mutate, tests = TARGETS[name]
    directory = scratch_copy(name)
    configure(directory, mutate, tests)
    start = time.perf_counter()
    chosen = only or (sample_names(directory, children, sample, seed) if sample else [])
    proc = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(children), *chosen],
                          cwd=directory, capture_output=True, text=True)
    minutes = (time.perf_counter() - start) / 60
    found = results(directory)
    # A timeout is not counted as killed: on a loaded 2-core machine a slow test times out without
    # having seen anything wrong. It is listed apart, and the score is over the mutants judged.
    killed, survived = len(found["killed"]), found["survived"] + found["no tests"]
    total = killed + len(survived)
    low, high = wilson(killed, total)
    row = {"module": name, "files": mutate, "tests": tests, "mutants": total + len(found["timeout"]), "killed": killed,
           "survived": len(survived), "timeout": len(found["timeout"]), "not_checked": len(found["not checked"]),
           "score": killed / total if total else float("nan"), "interval": [low, high], "minutes": round(minutes, 1),
           "sample": f"{len(chosen)} of {len(chosen) + len(found['not checked'])}, seed {seed}" if sample else "all",
           "survivors": sorted(survived), "exit": proc.returncode, "source": source_hash(mutate)}
    if proc.returncode and (not total or chosen):
        row["error"] = (proc.stderr or proc.stdout)[-2000:]
    return row


def rejudge(old: dict[str, object], children: int) -> dict[str, object]:
    """A finished row's survivors judged again by the tests as they are now (tests written for them):
    the killed ones join the row's killed, the rest stay survivors. The code must be unchanged."""
    name = str(old["module"])
    if old.get("source") != source_hash(TARGETS[name][0]):
        raise SystemExit(f"{name}: the mutated files changed since that run; run the module again instead")
    if not old["survivors"]:
        return old
    new = run(name, children, only=list(old["survivors"]))
    judged = int(new["killed"]) + int(new["survived"]) + int(new["timeout"])
    if judged != len(old["survivors"]):  # mutmut stopped early, e.g. a test that fails on the unmutated code
        raise SystemExit(f"{name}: {judged} of {len(old['survivors'])} survivors judged; "
                         f"{new.get('error') or 'see mutmut run in ' + str(SCRATCH / name)}")
    killed, survivors = int(old["killed"]) + int(new["killed"]), new["survivors"]
    total = killed + len(survivors)
    return {**old, "killed": killed, "survived": len(survivors), "survivors": survivors,
            "timeout": int(old["timeout"]) + int(new["timeout"]), "score": killed / total, "interval": list(wilson(killed, total)),
            "minutes": round(float(old["minutes"]) + float(new["minutes"]), 1),
            "sample": f"{old['sample']}; survivors judged again after their tests"}


def table(rows: list[dict[str, object]]) -> str:
    lines = ["| module | files | tests | mutants judged | killed | survived | timed out | score (95% interval) | minutes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        low, high = r["interval"]
        lines.append(f"| {r['module']} | {', '.join(r['files'])} | {', '.join(r['tests'])} | {r['mutants']} ({r['sample']}) | "
                     f"{r['killed']} | {r['survived']} | {r['timeout']} | {100 * r['score']:.0f}% "
                     f"[{100 * low:.0f}, {100 * high:.0f}] | {r['minutes']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("modules", nargs="*", metavar="MODULE",
                        help=f"modules to mutate, each with its targeted tests: {', '.join(TARGETS)}")
    parser.add_argument("--all", action="store_true", help="every module")
    parser.add_argument("--children", type=int, default=2, help="parallel test processes (default 2: the cores)")
    parser.add_argument("--sample", type=int, help="judge a random sample of this many mutants per module (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="the sample's seed (default 0)")
    parser.add_argument("--rejudge", type=Path, help="a --json file of an earlier run: judge its survivors again "
                                                      "with the tests as they are now (its modules, or those named)")
    parser.add_argument("--json", type=Path, help="also write the rows, survivors included, to this file")
    args = parser.parse_args()
    unknown = [m for m in args.modules if m not in TARGETS]
    if unknown:
        parser.error(f"no module {unknown[0]}; choose from {', '.join(TARGETS)}")
    if importlib.util.find_spec("mutmut") is None:
        parser.error("mutmut is not installed: pip install mutmut (mutation testing is not in CI)")
    if args.rejudge and not args.rejudge.is_file():
        parser.error(f"--rejudge {args.rejudge} does not exist; pass a file written by --json")
    earlier = {r["module"]: r for r in json.loads(args.rejudge.read_text())} if args.rejudge else {}
    names = list(TARGETS) if args.all else args.modules or list(earlier)
    if not names:
        parser.error("name modules or pass --all")
    rows = []
    for name in names:
        row = rejudge(earlier[name], args.children) if name in earlier else run(name, args.children, args.sample, args.seed)
        rows.append(row)
        print(table([row]).splitlines()[-1], flush=True)
        if "error" in row:
            print(row["error"], file=sys.stderr)
    print(table(rows))
    for r in rows:
        if r["survivors"]:
            print(f"\n{r['module']} survivors ({SCRATCH / str(r['module'])}: mutmut show NAME):\n  " + "\n  ".join(r["survivors"]))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
