#!/usr/bin/env python
"""Meta-network decoders on one pre-trained encoder, 3 seeds, paired against prototypes.

    python scripts/bench_pretrained.py [--encoder conv4] [--iterations 500] [--seeds 0,1,2]
                                       [--settings 5w1s,20w1s] [--pretrain-iterations 3000] [--out DIR]

One supervised pre-training run (``pretrain=supervised``, seed 0) gives the encoder every row starts
from (``trainer.init_from``). Each row then meta-trains for the same ``--iterations`` on tasks of
the evaluation's shape (15 queries per class), per seed, and its best-on-validation checkpoint is
tested on ``--episodes`` fixed tasks; a seed fixes the test tasks, so the rows of one seed are
scored on the same tasks. Rows that train only a decoder on the frozen encoder (LEO, CNAPs, as their
papers did) use Adam at 1e-3; rows that also fine-tune the encoder use 2e-4 (a pre-trained encoder
at 1e-3 first loses its features). Reported per row: the mean over seeds, each seed, and the
paired difference from prototypes with its 95% t-interval (2 degrees of freedom for 3 seeds).
Every figure printed is measured in this run.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FROZEN = ["trainer.freeze_encoder=true", "optimizer.lr=0.001"]
TUNED = ["optimizer.lr=0.0002"]
ROWS = {
    "prototypes (ProtoNet fine-tuning)": ["decoder=prototype", *TUNED],
    "RFS (logistic regression, no meta-training)": ["decoder=logistic", "trainer.iterations=0"],
    "LEO (frozen encoder; the leo_* presets)": ["decoder=latent", "decoder.latent_steps=5", "decoder.finetune_steps=5",
                                          "decoder.sample_weights=false", "decoder.learn_rates=true", "decoder.l2=0.0001",
                                          "decoder.dropout=0.3", "decoder.normalize=true", *FROZEN],
    "latent, prototype residual": ["decoder=latent", "decoder.prototype_residual=true", *TUNED],
    "FiLM, CNAPs-like (frozen encoder)": ["decoder=film", *FROZEN],
    "FEAT task encoder": ["decoder=feat", *TUNED],
}
SETTINGS = {"5w1s": "5way1shot", "20w1s": "20way1shot"}
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def metalearn(args: list[str], run: Path) -> dict:
    """Run ``metalearn train`` in a fresh process (or reuse a finished run dir); its results.json."""
    if not (run / "results.json").is_file():
        cmd = [sys.executable, "-m", "metalearn_cli", "train", *args, "trainer.progress=false", f"hydra.run.dir={run}"]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"bench_pretrained: {' '.join(args)} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads((run / "results.json").read_text())


def t_interval(diffs: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return mean, float("nan")
    return mean, T_975.get(len(diffs) - 1, 1.96) * statistics.stdev(diffs) / math.sqrt(len(diffs))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="conv4")
    parser.add_argument("--encoder-args", default="", help="more encoder overrides, space-separated")
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--pretrain-iterations", type=int, default=3000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--settings", default="5w1s,20w1s")
    parser.add_argument("--rows", default=",".join(str(i) for i in range(len(ROWS))), help="row numbers to run")
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_pretrained" / time.strftime("%Y-%m-%d_%H-%M-%S"))
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [list(ROWS)[int(i)] for i in args.rows.split(",")]
    common = [f"encoder={args.encoder}", *args.encoder_args.split(), f"device={args.device}"]

    start = time.perf_counter()
    pre_dir = args.out / f"pretrain-{args.encoder}"
    pre = metalearn([*common, "pretrain=supervised", f"pretrain.iterations={args.pretrain_iterations}",
                     "trainer.iterations=0", f"eval.episodes={args.episodes}"], pre_dir)
    stage = json.loads((pre_dir / "pretrain" / "results.json").read_text())
    print(f"pre-training: {args.pretrain_iterations} steps in {stage['train_seconds']:.0f} s; nearest-centroid 5-way 1-shot "
          f"test {100 * stage['accuracy']:.2f} ± {100 * stage['ci95']:.2f}", flush=True)

    table: dict[str, dict[str, list[float]]] = {}
    seconds: dict[str, dict[str, list[float]]] = {}
    for setting in args.settings.split(","):
        for row in rows:
            for seed in seeds:
                run = args.out / setting / f"{list(ROWS).index(row)}" / f"seed{seed}"
                r = metalearn([*common, f"episode={SETTINGS[setting]}", f"seed={seed}", f"trainer.init_from={pre_dir / 'pretrain'}",
                               f"trainer.iterations={args.iterations}", "trainer.train_way=null", "trainer.train_query=15",
                               f"trainer.val_every={max(1, args.iterations // 2)}", "trainer.val_episodes=200",
                               f"eval.episodes={args.episodes}", *ROWS[row]], run)
                table.setdefault(setting, {}).setdefault(row, []).append(100 * r["accuracy"])
                seconds.setdefault(setting, {}).setdefault(row, []).append(r["train_seconds"])
                print(f"{setting} | {row} | seed {seed} | {100 * r['accuracy']:.2f} ± {100 * r['ci95']:.2f} | "
                      f"{r['train_seconds']:.0f} s", flush=True)

    lines = [f"Omniglot (Vinyals split), encoder={args.encoder} {args.encoder_args}, pre-trained {args.pretrain_iterations} "
             f"steps (seed 0), then {args.iterations} meta-iterations per row; {args.episodes} fixed test tasks per seed; "
             f"seeds {args.seeds}; device={args.device}; total {(time.perf_counter() - start) / 60:.0f} min", ""]
    base_row = list(ROWS)[0]
    for setting, by_row in table.items():
        lines += [f"**{setting}**", "", "| row | mean | per seed | paired difference vs prototypes (95% t-interval) | training s/seed |",
                  "|---|---|---|---|---|"]
        for row, accs in by_row.items():
            per_seed = " / ".join(f"{a:.2f}" for a in accs)
            diff = "–"
            if row != base_row and base_row in by_row and len(by_row[base_row]) == len(accs):
                mean, half = t_interval([a - b for a, b in zip(accs, by_row[base_row])])
                diff = f"{mean:+.2f} ± {half:.2f}"
            lines.append(f"| {row} | {statistics.fmean(accs):.2f} | {per_seed} | {diff} | {statistics.fmean(seconds[setting][row]):.0f} |")
        lines.append("")
    text = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(text)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
