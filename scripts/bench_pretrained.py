#!/usr/bin/env python
"""Meta-network decoders on one pre-trained encoder: what meta-training adds, by budget, 3 seeds paired.

    python scripts/bench_pretrained.py [--budgets 500,2000] [--seeds 0,1,2] [--rows 0,1,2,3,4,5]
                                       [--pretrain-epochs 30] [--within 1.0] [--val alphabets]
                                       [--episodes 1000] [--out DIR] [OVERRIDE ...]

Lake's split (``dataset=omniglot_background``: the background alphabets train, the 20 evaluation
alphabets test). Validation (``--val``, 500 tasks) holds out 5 background alphabets by default:
new alphabets, like the test's. ``--val drawers`` keeps all 30 for training and validates on new
drawers of their characters, which the pre-trained encoder has already learned to name (about 96.5%
at step 0, within the noise of 200 tasks of every later step), so that best.pt is picked by noise. One
supervised pre-training run (``pretrain=supervised``, ``--pretrain-epochs``, seed 0) gives the
encoder every row starts from (``trainer.init_from``). Then, per row, budget and seed, one
meta-training run on 20-way 1-shot tasks (5 queries), a ``--within`` share of them from one
alphabet (``trainer.within_alphabet``), scored on two test settings from the same checkpoint:

- **lake**: Lake et al.'s within-alphabet 20-way one-shot runs (``episode=lake20way1shot``, drawn);
- **20w**: random 20-way 1-shot tasks of the evaluation alphabets (``metalearn eval episode=20way1shot``).

Budget 0 is each decoder *before* meta-training; the prototype row at budget 0 is the pre-trained
encoder with no meta-training at all, the row every other is measured against. A seed fixes the test
tasks, so the rows of one seed share them: each difference is ``metalearn compare``'s, paired by
seed (Student's t over the seeds' differences; until 2026-12-07 a two-level bootstrap over seeds and tasks), and "differ" counts the test predictions that
are not the prototype row's at the same budget (a decoder that changes none is prototypes under
another name). Rows that train only a decoder on the frozen encoder (LEO, CNAPs, as their papers
did) use Adam at 1e-3; rows that fine-tune the encoder use 2e-4. Finished runs are reused, so an
interrupted bench continues. Trailing Hydra overrides (``encoder.width=96``) go to every run, after
the bench's own. Every figure printed is measured in this run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from metalearn_cli.console import int_list  # noqa: E402
from metalearn_cli.paired_stats import differing, outcomes, paired, predictions  # noqa: E402

FROZEN = ["trainer.freeze_encoder=true", "optimizer.lr=0.001"]
TUNED = ["optimizer.lr=0.0002"]
ROWS = {
    "prototypes (ProtoNet fine-tuning)": ["decoder=prototype", *TUNED],
    "FEAT (its code's recipe)": ["decoder=feat", *TUNED],
    "latent, prototype residual": ["decoder=latent", "decoder.prototype_residual=true", *TUNED],
    "FiLM, CNAPs-like (frozen encoder)": ["decoder=film", *FROZEN],
    "LEO (frozen encoder)": ["decoder=latent", "decoder.latent_steps=5", "decoder.finetune_steps=5",
                             "decoder.learn_rates=true", "decoder.dropout=0.3", "decoder.normalize=true", "decoder.l2=1e-8", *FROZEN],
    "RFS logistic regression (no meta-training)": ["decoder=logistic"],
}
NO_META = list(ROWS)[0], 0  # the prototype row before meta-training: the pre-trained encoder as it is
SETTINGS = ("lake", "20w")


def metalearn(command: str, args: list[str], run: Path) -> dict:
    """``metalearn train|eval`` in a fresh process (a finished run dir is reused); its results.json."""
    if not (run / "results.json").is_file():
        cmd = [sys.executable, "-m", "metalearn_cli", command, *args, f"hydra.run.dir={run}"]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"bench_pretrained: {command} {' '.join(args)} failed: "
                             f"{(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads((run / "results.json").read_text())


def score(args: argparse.Namespace, pre: Path, row: str, budget: int, seed: int) -> dict[str, Path]:
    """Train one row at one budget and seed; the dirs holding its test outcomes per setting."""
    run = args.out / "runs" / f"row{list(ROWS).index(row)}" / f"it{budget}" / f"seed{seed}"
    metalearn("train", [*args.common, f"seed={seed}", f"trainer.init_from={pre}", f"trainer.iterations={budget}",
                        "trainer.train_way=null", "trainer.train_query=5", f"trainer.within_alphabet={args.within}",
                        f"trainer.val_every={max(1, budget // 4)}", "trainer.val_episodes=500",
                        "trainer.progress=false", *ROWS[row], *args.overrides], run)
    random20 = run.parent / f"seed{seed}-20w"
    metalearn("eval", [f"checkpoint={run}", "episode=20way1shot", f"eval.episodes={args.episodes}",
                       *eval_overrides(args.overrides)], random20)
    return {"lake": run, "20w": random20}


def eval_overrides(overrides: list[str]) -> list[str]:
    """The overrides ``metalearn eval`` takes: its own options and ``device``; the rest shaped the trained run."""
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~") == "device" or o.startswith("eval.")]


def versus(runs: dict, row_a: tuple, row_b: tuple, setting: str, seeds: list[int]) -> str:
    """B - A, paired by seed on the same tasks: the mean and its CI95 (Student's t over the seeds, as compare's)."""
    a = [outcomes(runs[row_a][s][setting]) for s in seeds]
    b = [outcomes(runs[row_b][s][setting]) for s in seeds]
    r = paired(a, b)
    return f"{r['difference']:+.2f} [{r['ci95_low']:+.2f}, {r['ci95_high']:+.2f}]"


def table(runs: dict, setting: str, seeds: list[int]) -> list[str]:
    lines = [f"**{setting}**", "", "| row | meta-iterations | mean | per seed | vs no meta-training | vs prototypes "
             "(same budget) | predictions differing from prototypes | run s/seed (training, validation) | best.pt at step, per seed |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (row, budget), by_seed in runs.items():
        accs = [100 * json.loads((by_seed[s][setting] / "results.json").read_text())["accuracy"] for s in seeds]
        trained = [json.loads((by_seed[s]["lake"] / "results.json").read_text()) for s in seeds]
        seconds = [r["train_seconds"] for r in trained]
        kept = " / ".join(str(r["best_step"]) for r in trained) + (" (the start kept)" if budget and not any(
            r["best_step"] for r in trained) else "")  # every step hurt validation: the row is its starting point
        base = (list(ROWS)[0], budget)
        vs_none = versus(runs, NO_META, (row, budget), setting, seeds) if (row, budget) != NO_META else "–"
        vs_proto, changed = "–", "–"
        if base in runs and base != (row, budget):
            vs_proto = versus(runs, base, (row, budget), setting, seeds)
            n, total = differing([predictions(runs[base][s][setting]) for s in seeds],
                                 [predictions(by_seed[s][setting]) for s in seeds])
            changed = f"{n} of {total} ({100 * n / total:.1f}%)" if n is not None else "?"
        lines.append(f"| {row} | {budget} | {statistics.fmean(accs):.2f} | {' / '.join(f'{a:.2f}' for a in accs)} | "
                     f"{vs_none} | {vs_proto} | {changed} | {statistics.fmean(seconds):.0f} | {kept} |")
    return lines + [""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="conv4")
    parser.add_argument("--budgets", type=int_list, default="500,2000", help="meta-iterations per run (budget 0 is always measured)")
    parser.add_argument("--pretrain-epochs", type=float, default=30)
    parser.add_argument("--seeds", type=int_list, default="0,1,2")
    parser.add_argument("--rows", type=int_list, default=",".join(str(i) for i in range(len(ROWS))),
                        help=f"row numbers to run (0 to {len(ROWS) - 1})")
    parser.add_argument("--within", type=float, default=1.0, help="share of training tasks from one alphabet")
    parser.add_argument("--val", choices=("alphabets", "drawers"), default="alphabets",
                        help="what validation holds out of the background set (dataset.val)")
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run, after the bench's own")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_pretrained" / time.strftime("%Y-%m-%d_%H-%M-%S"))
    args = parser.parse_args()
    args.out = args.out.resolve()  # the runs start in the project root: a relative --out is the caller's folder
    if any(not 0 <= i < len(ROWS) for i in args.rows):
        parser.error(f"--rows: the rows are 0 to {len(ROWS) - 1}")
    seeds = args.seeds
    rows = [list(ROWS)[i] for i in args.rows]
    budgets = [0, *(b for b in args.budgets if b > 0)]
    args.common = [f"encoder={args.encoder}", f"device={args.device}", "dataset=omniglot_background", f"dataset.val={args.val}",
                   "episode=lake20way1shot", f"eval.episodes={args.episodes}"]
    start = time.perf_counter()
    pre_dir = args.out / f"pretrain-{args.encoder}"
    metalearn("train", [*args.common, "pretrain=supervised", f"pretrain.epochs={args.pretrain_epochs}", "trainer.iterations=0",
                        "trainer.progress=false", *args.overrides], pre_dir)
    stage = json.loads((pre_dir / "pretrain" / "results.json").read_text())
    print(f"pre-training: {args.pretrain_epochs:g} epochs in {stage['train_seconds']:.0f} s", flush=True)

    runs: dict[tuple[str, int], dict[int, dict[str, Path]]] = {}
    for row in [list(ROWS)[0], *[r for r in rows if r != list(ROWS)[0]]]:  # the no-meta-training row first
        for budget in budgets if "no meta-training" not in row else [0]:
            for seed in seeds:
                runs.setdefault((row, budget), {})[seed] = dirs = score(args, pre_dir / "pretrain", row, budget, seed)
                accs = {k: 100 * json.loads((d / "results.json").read_text())["accuracy"] for k, d in dirs.items()}
                print(f"{row} | {budget} | seed {seed} | lake {accs['lake']:.2f} | 20w {accs['20w']:.2f}", flush=True)

    start_kept = " (its best.pt is the random start: validation never rose)" if stage["best_step"] == 0 else ""
    held_out = {"alphabets": "5 held-out background alphabets", "drawers": "held-out drawers of the training characters"}
    lines = [f"Omniglot, Lake's split (background alphabets train; validation on {held_out[args.val]}), encoder={args.encoder} "
             f"pre-trained {args.pretrain_epochs:g} epoch{'' if args.pretrain_epochs == 1 else 's'} (seed 0, "
             f"{stage['train_seconds']:.0f} s, best.pt at step {stage['best_step']} of {stage['iterations']}){start_kept}; meta-training on 20-way 1-shot tasks, "
             f"{100 * args.within:.0f}% of them within one alphabet; {args.episodes} fixed test tasks per seed and setting; seeds "
             f"{','.join(map(str, args.seeds))}; device={args.device}; total {(time.perf_counter() - start) / 60:.0f} min", ""]
    for setting in SETTINGS:
        lines += table(runs, setting, seeds)
    text = "\n".join(lines)
    (args.out / "table.md").write_text(text)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
