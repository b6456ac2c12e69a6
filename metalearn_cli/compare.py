"""``metalearn compare RUN_A RUN_B [...]``: paired comparisons on the same fixed test tasks.

Runs with one seed, task shape and evaluation split are scored on the *same* test tasks, so two
methods are compared task by task rather than by two intervals that overlap:

- the mean per-task accuracy difference (B - A) with a 95% bootstrap interval over tasks (10,000
  resamples, seeded, so the table repeats);
- with several seeds of each setting (runs whose configs differ only in ``seed``, eval dirs of such
  runs, or the runs one ``--setting`` names: seeds of one recipe given in different ways), runs are paired by seed (each seed
  fixes its own test tasks) and the interval is Student's t over the seeds' mean differences, so it holds the
  spread between trained networks (2 seeds: 1 degree of freedom, a wide interval, said); tests of Lake et al.'s
  published runs (``eval.lake_runs``) are the same tasks whatever the seed, so two single runs of
  other seeds pair too (two copies of the runs that differ do not);
- the sign test over tasks: of the tasks on which the two runs' accuracies differ, how often each
  is the better (exact binomial); one seed's tasks are drawn independently, so this is the honest
  one-seed test (over several seeds it counts task-seed pairs, and on Lake et al.'s published runs
  every seed scores the same 20 runs: there the interval over seeds is the answer);
- McNemar's test on the per-query outcomes: of the queries exactly one run gets right, how often
  each one is that run (exact binomial below 25 discordant queries, chi-square with continuity
  correction above); a task's queries share its support set, so its p-value is smaller than the
  evidence warrants and it says only that these networks differ on these queries; over several
  seeds both tests pool the seeds' tasks, so they are about these trained networks;
- how many test predictions differ between the two runs (a decoder that changes none is the
  reference under another name); runs written before 2026-12-02 hold no predictions;
- a figure of the differences: per task (one seed) or per seed (several), under the interval.

The first run is the reference; every other run is compared with it. Runs and eval dirs written
since 2026-12-01 hold ``test_outcomes.npz``; an older one is re-scored with ``metalearn eval``.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

from metalearn_cli.compare_lines import figure, notes, one_setting, result_line, say_mixed
from metalearn_cli.console import OneLineParser, first_names, folder_arg, help_text
from metalearn_cli.errors import MetalearnError
from metalearn_cli.paired_stats import differing, paired, read_outcomes
from metalearn_cli.report_plots import missing_glyphs_said
from metalearn_cli.derived import INPUTS, default_output, outside_runs, record_inputs, record_written, refuse_other_output
from metalearn_cli.run_records import common_base, find_runs, read_run
from metalearn_cli.run_settings import COMMON
from metalearn_cli.same_tasks import published, same_tasks
from metalearn_cli.rundir import ERROR, canonical, refuse_replacing
from metalearn_cli.sweep_record import failed_and_stopped, sweep_note, unfinished_jobs

COLUMNS = ["reference", "run", "seeds", "tasks", "accuracy_reference", "accuracy_run", "difference", "ci95_low", "ci95_high",
           "reference_better_tasks", "run_better_tasks", "sign_p", "only_reference_right", "only_run_right", "mcnemar_p", "predictions_differ", "predictions"]


def settings(runs: list[Path]) -> list[tuple[str, dict[int, Path]]]:
    """Runs grouped by setting (configs equal but for seed and bookkeeping), each keyed by its seed;
    in the order given. Runs without a readable config, or two runs of one setting and seed, stand alone."""
    from metalearn_cli.run_settings import by_setting, config_labels

    records = [read_run(run) for run in runs]
    labels = config_labels(runs, []) if len(runs) > 1 and all(r["config"] for r in records) else [str(r) for r in runs]
    seeds = [int(r["results"].get("seed") or 0) for r in records]
    base = common_base(runs)
    groups = by_setting(labels, seeds, [str(run.resolve().relative_to(base)) for run in runs])  # as report names them
    return [(key, {seeds[i]: runs[i] for i in members}) for key, members in groups.items()]


def named_settings(named: list[list[Path]], label: Any) -> list[tuple[str, dict[int, Path]]]:
    """``--setting`` groups as given: each one setting whatever its runs' configs say, keyed by seed."""
    groups = []
    for runs in named:
        by_seed: dict[int, Path] = {}
        for run in runs:
            seed = int(read_run(run)["results"].get("seed") or 0)
            if seed in by_seed:
                raise MetalearnError(f"--setting holds two runs of seed {seed} ({by_seed[seed]} and {run}); a setting "
                                     "holds one run per seed")
            by_seed[seed] = run
        name = label(runs[0]) + (f" (+{len(runs) - 1} more)" if len(runs) > 1 else "")
        say_mixed(name, runs)
        groups.append((name, by_seed))
    return groups





def _named(name: str, runs: dict[int, Path], label: Any) -> str:
    """A setting as a message names it: its label, and the run dirs that hold it (a label such as
    ``encoder.width=16`` alone does not say where to look)."""
    where = [label(p) for p in runs.values()]
    if name == COMMON or name.startswith(f"{COMMON} ("):  # runs of one setting (one seed's rescores): their dirs alone tell them apart
        return first_names(where)
    short = name if len(name) <= 80 else name[:77] + "..."
    return short if all(name == w or name.startswith(f"{w} (") for w in where) else f"{short} ({first_names(where)})"


def run_label(run: Path, base: Path) -> str:
    """A run as the table, the figure and the messages name it: its path beside the others; an eval dir
    (named by its time by default) adds the run whose checkpoint it scored."""
    text = str(run.relative_to(base)) if run.is_relative_to(base) else str(run)
    record = read_run(run)
    scored = record["results"].get("checkpoint") if record["command"] == "eval" else None
    if isinstance(scored, str) and scored:
        path = Path(scored)
        path = path.parent.parent if path.parent.name == "checkpoints" else path  # RUN/checkpoints/best.pt: RUN
        members = record["results"].get("ensemble") or []  # an ensemble's eval: its first member and how many more
        more = f" with {len(members) - 1} more as an ensemble" if len(members) > 1 else ""
        text += f" (eval of {shortest(path, base)}{more})"
    return text


def shortest(path: Path, base: Path) -> Path:
    """``path`` (saved absolute) below the runs' common folder, else below the working directory, else as saved."""
    for folder in (base.resolve(), Path.cwd().resolve()):
        if path.is_absolute() and folder != Path(folder.anchor) and path.is_relative_to(folder) and path != folder:
            return path.relative_to(folder)
    return path


def compare_groups(groups: list[tuple[str, dict[int, Path]]], label: Any) -> tuple[list[dict[str, Any]], list[Any]]:
    """Each setting against the first, on the seeds they share: the table's rows and each row's
    differences for the figure: per task (one seed) or each seed's mean (several: what the interval is over)."""
    import numpy as np

    ref_name, rows, diffs = groups[0][0], [], []
    for name, group in groups[1:]:
        ref_runs = groups[0][1]
        seeds = sorted(set(ref_runs) & set(group))
        if not seeds and one_published_test(ref_runs, group):  # one run each, on the archive's runs: paired whatever the seeds
            seeds = list(group)
            ref_runs = {seeds[0]: next(iter(ref_runs.values()))}
        if not seeds:
            short = [_named(n, runs, label) for n, runs in ((name, group), (ref_name, ref_runs))]
            raise MetalearnError(f"{short[0]} shares no seed with {short[1]} (seeds {sorted(group)} vs {sorted(ref_runs)}); "
                                 "runs are compared on the test tasks of the same seed: score one on the other's with "
                                 f"metalearn eval checkpoint=RUN seed={sorted(ref_runs)[0]}")
        unpaired = sorted(set(ref_runs) ^ set(group))
        if unpaired:  # said, not dropped in silence: a seed without its partner is no paired comparison
            print(f"note: seed {', '.join(map(str, unpaired))} is in only one of {_named(name, group, label)} and "
                  f"{_named(ref_name, ref_runs, label)}; compared on seed "
                  f"{', '.join(map(str, seeds))}", file=sys.stderr)
        a, b, pa, pb = [], [], [], []
        for seed in seeds:
            same_tasks(ref_runs[seed], group[seed])
            for runs, correct, predicted in ((ref_runs, a, pa), (group, b, pb)):
                c, p = read_outcomes(runs[seed])
                correct.append(c)
                predicted.append(p)
            if a[-1].shape != b[-1].shape:
                raise MetalearnError(f"{group[seed]} holds {b[-1].shape} outcomes, {ref_runs[seed]} {a[-1].shape}; "
                                     "score both on the same tasks")
        changed, total = differing(pa, pb)
        one = len(ref_runs) == len(group) == 1
        rows.append({"reference": _named(ref_name, ref_runs, label) if one else _on_seeds(ref_name, ref_runs, seeds),
                     "run": _named(name, group, label) if one else _on_seeds(name, group, seeds), **paired(a, b),
                     "predictions_differ": changed, "predictions": total})
        per_task = [y.mean(1) - x.mean(1) for x, y in zip(a, b)]  # the figure's dots: what the interval is over
        diffs.append(per_task[0] if len(seeds) == 1 else np.array([d.mean() for d in per_task]))
    return rows, diffs


def _on_seeds(name: str, runs: dict[int, Path], seeds: list[int]) -> str:
    """A setting's name in the table, saying so where only some of its seeds were paired (its numbers are theirs)."""
    if sorted(runs) == seeds:
        return name
    return f"{name} (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))} of {', '.join(map(str, sorted(runs)))})"


def one_published_test(a: dict[int, Path], b: dict[int, Path]) -> bool:
    """Two single runs, both tested on Lake et al.'s published runs: their seeds did not draw the tasks."""
    return len(a) == len(b) == 1 and all(published(read_run(r)["results"]) for r in (*a.values(), *b.values()))





def sweeps_finished(found: list[list[Path]], given: list[Path]) -> list[Path]:
    """The runs each given path stands for; of a sweep dir, only its jobs with test results (a job named
    alone must have them, :func:`same_tasks`): the others are listed in a note, with how to finish them."""
    runs = []
    for path, inside in zip(given, found):
        unfinished = unfinished_jobs(inside) if inside != [path] else []  # a run named alone is checked whole, later
        runs += [run for run in inside if run not in unfinished]
        if inside != [path] and (note := sweep_note(path, inside)):
            print(f"note: left out of the comparison: {note}", file=sys.stderr)
        elif unfinished:
            failed, stopped = failed_and_stopped(unfinished)
            parts = [f"{first_names([r.name for r in failed])} failed (each {ERROR} says why)"] if failed else []
            parts += [f"{first_names([r.name for r in stopped])} stopped before {'their' if len(stopped) > 1 else 'its'} test: finish each (a training run: "
                      "metalearn train resume=RUN; an eval: the same metalearn eval again)"] if stopped else []
            print(f"note: left out {len(unfinished)} run{'s' if len(unfinished) > 1 else ''} without test results: "
                  f"{'; '.join(parts)}", file=sys.stderr)
    return runs



def refuse_twice(parser: OneLineParser, runs: list[Path], given: list[Path]) -> None:
    """A run beside itself is no comparison (however spelled: a link, a sweep dir holding it): the error
    names the arguments that hold it, so the user sees which to drop."""
    seen: dict[Path, Path] = {}
    for run in runs:
        if seen.setdefault(canonical(run), run) is not run:
            held = [f"as {arg}" if canonical(arg) == canonical(run) else f"within {arg}" for arg in given
                    if canonical(arg) == canonical(run) or canonical(arg) in canonical(run).parents]
            parser.error(f"{run} is given twice{f' ({held[0]} and {held[-1]})' if len(held) > 1 and held[0] != held[-1] else ''}; "
                         "compare each run once")


def main(argv: list[str]) -> int:
    parser = OneLineParser(prog="metalearn compare", description=help_text(__doc__))
    parser.add_argument("runs", nargs="*", type=Path, help="run dirs, eval dirs or sweep dirs; the first run's setting "
                                                          "is the reference; seeds of one setting are pooled, paired by seed")
    parser.add_argument("--setting", nargs="+", type=Path, action="append", default=[], metavar="RUN",
                        help="the runs (seeds) of one setting, whatever their configs say; repeat it per setting, "
                             "the first is the reference (instead of positional runs)")
    parser.add_argument("--out", type=folder_arg, default=None, help="where to write compare.csv and compare.png "
                                                               "(default: compare/ beside the first run; compare-2/, ... when compare/ holds other runs' comparison)")
    args = parser.parse_args(argv)
    if args.runs and args.setting:
        parser.error("give runs, or --setting groups, not both")
    named = [[r for path in group for r in find_runs([path])] for group in args.setting]
    runs = [r for group in named for r in group] if named else sweeps_finished([find_runs([path]) for path in args.runs], args.runs)
    if len(runs) < 2:
        parser.error("give two runs or more: the first is the reference")
    refuse_twice(parser, runs, [p for group in args.setting for p in group] or args.runs)
    base = outside_runs(runs[0].parent)  # beside the runs, never inside one
    label = lambda p: run_label(p, base)  # noqa: E731
    groups = named_settings(named, label) if named else settings(runs)
    if len(groups) < 2:
        parser.error("give --setting twice or more: the first is the reference" if args.setting else one_setting(groups[0][1]))
    rows, diffs = compare_groups(groups, label)
    if args.out is not None:
        refuse_replacing(args.out, "--out ")
        refuse_other_output(args.out, ("compare.csv", "compare.png", INPUTS), runs)
    out = args.out or default_output(base, "compare", runs)
    out.mkdir(parents=True, exist_ok=True)
    record_inputs(out, runs)
    with open(out / "compare.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows([{k: float(f"{v:.4g}") if k.endswith("_p") else round(v, 4) if isinstance(v, float) else v  # p: 4 significant digits
                           for k, v in r.items()} for r in rows])
    for r in rows:
        print(result_line(r))
    for note in notes(rows, next(iter(groups[0][1].values()))):
        print(note, file=sys.stderr)
    with missing_glyphs_said():  # a run named in CJK: one note, not a warning per character
        drawn = figure(rows, diffs, out)
    record_written(out, [out / "compare.csv", out / INPUTS, drawn])
    print(f"wrote {out / 'compare.csv'} and {drawn}")
    return 0
