#!/usr/bin/env python
"""Every encoder x decoder of the meta-network, trained with the same budget, measured.

    python scripts/bench_meta_networks.py [--iterations 500] [--device cpu] [--out DIR]

Omniglot 5-way 1-shot (``dataset=omniglot``, the Vinyals split), ``strategy=mgd``, the same number of meta-iterations for every pair
(5-way 1-shot training tasks, 15 queries), the best-on-validation checkpoint tested on 1,000 fixed
tasks. Pairs the composition rules refuse (FiLM needs an encoder with per-block modulation) are
listed with the reason. Prints one markdown table: parameters, test accuracy ± CI95, training
time and meta-training tasks/s, all measured in this run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENCODERS = ("conv4", "resnet12", "rnn", "transformer")
DECODERS = ("prototype", "latent", "film")


def parameters(encoder: str, decoder: str) -> int | str:
    """Parameter count of the composed meta-network, or the one-line reason it cannot be built."""
    from hydra import compose, initialize_config_module

    from metalearn_cli.errors import MetalearnError
    from metalearn_cli.model import build_meta_model
    from metalearn_cli.cli import register_configs

    register_configs()
    with initialize_config_module(config_module="metalearn_cli.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["dataset=omniglot", f"encoder={encoder}", f"decoder={decoder}", "trainer.train_way=null"])
    try:
        return sum(p.numel() for p in build_meta_model(cfg, (1, 28, 28)).parameters())
    except MetalearnError as exc:
        return str(exc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_meta_networks" / time.strftime("%Y-%m-%d_%H-%M-%S"))
    args = parser.parse_args()
    args.out = args.out.resolve()  # the runs start in the project root: a relative --out is the caller's folder
    rows = []
    for encoder in ENCODERS:
        for decoder in DECODERS:
            params = parameters(encoder, decoder)
            if isinstance(params, str):
                rows.append(f"| `{encoder}` | `{decoder}` | – | refused: {params} | | |")
                continue
            run = args.out / f"{encoder}-{decoder}"
            cmd = [sys.executable, "-m", "metalearn_cli", "train", "dataset=omniglot", f"encoder={encoder}", f"decoder={decoder}",
                   f"trainer.iterations={args.iterations}", "trainer.train_way=null", "trainer.train_query=null",
                   f"trainer.val_every={max(1, args.iterations // 2)}", f"eval.episodes={args.episodes}",
                   f"device={args.device}", "trainer.progress=false", f"hydra.run.dir={run}"]
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if done.returncode != 0:
                reason = (done.stderr.strip().splitlines() or ["failed"])[-1]
                rows.append(f"| `{encoder}` | `{decoder}` | {params:,} | failed: {reason} | | |")
            else:
                r = json.loads((run / "results.json").read_text())
                rows.append(f"| `{encoder}` | `{decoder}` | {params:,} | {100 * r['accuracy']:.2f}% ± {100 * r['ci95']:.2f} | "
                            f"{r['train_seconds']:.0f} s | {r['train_tasks_per_s']:.1f} |")
            print(rows[-1], flush=True)
    print(f"\nOmniglot 5-way 1-shot, strategy=mgd, {args.iterations} meta-iterations of 5-way 1-shot tasks (15 queries), "
          f"{args.episodes} test tasks, device={args.device}\n")
    print("| encoder | decoder | parameters | test accuracy (± CI95) | training time | tasks/s |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
