#!/usr/bin/env python
"""Meta-training throughput of the gradient-based strategies: tasks/s and peak memory.

Setup (as in the strategies issue): Omniglot 5-way, 15 queries per class, Conv-4, a meta-batch of
32 tasks; 1-shot and 5-shot, 1 and 5 inner steps, second and first order, for each ``vectorize``
mode. Each configuration runs in its own process, so the peak memory is its own (CPU: peak RSS;
CUDA: peak allocated). Prints one markdown table of measured figures.

Usage:
    python scripts/bench_strategies.py [--device cpu|cuda] [--threads 2] [--iterations 3] [--quick]
        [--learn2learn-python PATH]

``--learn2learn-python`` names the interpreter of a throw-away environment where learn2learn 0.2.0
is installed (it is not a dependency of this project); its MAML runs the 1-shot, 1-step, second-
and first-order rows the way a user runs it (``clone()`` + ``adapt()`` per task) on the same tasks.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import time


VARIANTS = {
    "sync": "the per-step non-finite check forced to read the flag on the host (what the step cost before fused optimizers)",
    "nhwc": "trainer.channels_last=true (the CPU's default)",
    "nchw": "trainer.channels_last=false (the CUDA default)",
    "noautotune": "torch.backends.cudnn.benchmark=False (CUDA; the product autotunes unless trainer.deterministic)",
    "bf16": "trainer.precision=bf16 (first order only)",
}


def int_list(text: str) -> list[int]:
    """``1,5`` as ``[1, 5]``, an argparse type (this script also runs in learn2learn's env, without metalearn)."""
    try:
        return [int(part) for part in text.split(",") if part.strip()] or [int("")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of whole numbers (e.g. 1,5)") from None


def measure(args: argparse.Namespace) -> dict:
    import torch

    from metalearn_cli import optim
    from metalearn_cli.assemble import select_kernels
    from metalearn_cli.data import DATASETS
    from metalearn_cli.episodes import EpisodeSampler
    from metalearn_cli.host import keep_freed_memory
    from metalearn_cli.objectives import train_step
    from metalearn_cli.model import build_meta_model
    from metalearn_cli.optim import OPTIMIZERS, ClipParams
    from metalearn_cli.strategies import STRATEGIES
    from omegaconf import OmegaConf

    mode, *variants = args.vectorize.split("+")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variant {sorted(unknown)}; choose from {sorted(VARIANTS)}")
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if "sync" in variants:
        optim.defers_nonfinite_check = lambda optimizer: False
    select_kernels(device, deterministic=False)  # the product's kernel choice (cuDNN autotuning on CUDA)
    if "noautotune" in variants:
        torch.backends.cudnn.benchmark = False
    data = DATASETS.build({"name": "omniglot"})
    cfg = OmegaConf.create({"encoder": {"name": "conv4"}, "decoder": {"name": "linear"},
                            "episode": {"way": 5, "shot": args.shot, "query": 15}})
    torch.manual_seed(0)
    model = build_meta_model(cfg, data.image_shape)
    strategy = STRATEGIES.build({"name": "maml", "inner_steps": args.steps, "first_order": args.first_order,
                                 "vectorize": mode, "inner_lr": 0.4}, model=model)
    strategy.check_compatible()
    strategy.to(device)
    layout = True if "nhwc" in variants else False if "nchw" in variants else None
    model.use_channels_last(layout, device)  # None: the product's default for the device
    model.use_precision("bf16" if "bf16" in variants else "fp32")
    # The product's optimizer: fused on CUDA, which skips a non-finite step without a host sync.
    optimizer = OPTIMIZERS.build({"name": "adam", "lr": 1e-3}, parameters=list(strategy.parameters()))
    sampler = EpisodeSampler(data.train.to(device), 5, args.shot, 15, seed=0, device=device)
    batches = [sampler.sample(args.tasks) for _ in range(args.iterations + 2)]
    clip = ClipParams()  # the product's default
    for batch in batches[:2]:  # warm-up (and cuDNN's autotuning, where asked)
        train_step(strategy, batch, optimizer, clip)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for batch in batches[2:]:
        out, _ = train_step(strategy, batch, optimizer, clip)
    out.loss.item()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.iterations
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"s_per_iteration": seconds, "tasks_per_s": args.tasks / seconds, "peak_gb": peak / 2**30}


def measure_learn2learn(args: argparse.Namespace) -> dict:
    """learn2learn's MAML as its README runs it: a Python loop of clone/adapt per task."""
    import learn2learn as l2l
    import torch
    import torch.nn.functional as F

    from metalearn_cli.data import DATASETS
    from metalearn_cli.episodes import EpisodeSampler

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = DATASETS.build({"name": "omniglot"})
    torch.manual_seed(0)
    # The same backbone as ours: 4 x (conv3x3 -> BN -> ReLU -> max-pool), 64 channels, 28x28 -> 64.
    net = l2l.vision.models.CNN4(output_size=5, hidden_size=64, layers=4, channels=1, max_pool=True,
                                 embedding_size=64).to(device)
    maml = l2l.algorithms.MAML(net, lr=0.4, first_order=args.first_order)
    optimizer = torch.optim.Adam(maml.parameters(), lr=1e-3)
    sampler = EpisodeSampler(data.train.to(device), 5, args.shot, 15, seed=0, device=device)
    batches = [sampler.sample(args.tasks) for _ in range(args.iterations + 1)]

    def step(batch) -> torch.Tensor:
        optimizer.zero_grad()
        total = 0.0
        for t in range(batch.tasks):
            learner = maml.clone()
            for _ in range(args.steps):
                learner.adapt(F.cross_entropy(learner(batch.support_images[t]), batch.support_labels[t]))
            loss = F.cross_entropy(learner(batch.query_images[t]), batch.query_labels[t]) / batch.tasks
            loss.backward()
            total += loss.detach()
        optimizer.step()
        return total

    step(batches[0])
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for batch in batches[1:]:
        loss = step(batch)
    float(loss)
    seconds = (time.perf_counter() - start) / args.iterations
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"s_per_iteration": seconds, "tasks_per_s": args.tasks / seconds, "peak_gb": peak / 2**30}


def run_one(python: str, args: argparse.Namespace, shot: int, step: int, first_order: bool, mode: str) -> dict | str:
    cmd = [python, __file__, "--one", "--device", args.device, "--threads", str(args.threads),
           "--tasks", str(args.tasks), "--iterations", str(args.iterations), "--shot", str(shot),
           "--steps", str(step), "--vectorize", mode] + (["--first-order"] if first_order else [])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return (proc.stderr.strip().splitlines() or ["failed"])[-1][:60]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if os.environ.get("CUDA_VISIBLE_DEVICES") else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="only 1-shot, 1 inner step")
    parser.add_argument("--shots", type=int_list, default="1,5")
    parser.add_argument("--inner-steps", type=int_list, default="1,5")
    parser.add_argument("--modes", default="loop,vmap", help="vectorize modes for every row")
    parser.add_argument("--variants", default="",
                        help="extra rows for 1-shot, 1 step only, as MODE+VARIANT[+VARIANT], e.g. vmap+sync,vmap+nchw; "
                             "variants: " + "; ".join(f"{k}: {v}" for k, v in VARIANTS.items()))
    parser.add_argument("--learn2learn-python", help="python of a throw-away env with learn2learn 0.2.0")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shot", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--first-order", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--vectorize", default="loop", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_learn2learn(args) if args.vectorize == "learn2learn" else measure(args)))
        return 0

    shots, steps = ([1], [1]) if args.quick else (args.shots, args.inner_steps)
    import torch

    card = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{args.threads} threads"
    print(f"{args.device} ({card}), torch {torch.__version__}, {args.tasks} tasks per meta-iteration, Omniglot 5-way, "
          f"15 queries, Conv-4, {args.iterations} timed meta-iterations after 2 warm-up")
    print("| shot | inner steps | order | implementation | s / meta-iteration | tasks/s | peak memory (GB) |")
    print("|---|---|---|---|---|---|---|")
    seen: dict[tuple, dict[str, float]] = {}  # (shot, step, order) -> tasks/s of learn2learn and of the loop
    variants = [m for m in args.variants.split(",") if m]
    plan = []  # the main matrix first, the variants (1-shot, 1 step) last
    for shot, step, first_order in itertools.product(shots, steps, [False, True]):
        rows = [(mode, sys.executable) for mode in args.modes.split(",") if mode]
        if args.learn2learn_python and shot == 1 and step == 1:
            rows.insert(0, ("learn2learn", args.learn2learn_python))
        plan += [(shot, step, first_order, row) for row in rows]
    plan += [(1, 1, first_order, (mode, sys.executable)) for first_order in (False, True) for mode in variants
             if "bf16" not in mode or first_order]
    for shot, step, first_order, (mode, python) in plan:
        key = (shot, step, first_order)
        r = run_one(python, args, shot, step, first_order, mode)
        order = "first" if first_order else "second"
        name = "learn2learn 0.2.0 MAML" if mode == "learn2learn" else f"metalearn vectorize={mode}"
        if isinstance(r, str):
            print(f"| {shot} | {step} | {order} | {name} | – | – | {r} |", flush=True)
            continue
        if mode in ("learn2learn", "loop"):
            seen.setdefault(key, {})[mode] = r["tasks_per_s"]
        ratios = [f"{r['tasks_per_s'] / base:.2f}x {ref}" for ref, base in seen.get(key, {}).items() if ref != mode]
        speedup = f" ({', '.join(ratios)})" if ratios and mode != "learn2learn" else ""
        print(f"| {shot} | {step} | {order} | {name} | {r['s_per_iteration']:.3f} | "
              f"{r['tasks_per_s']:.1f}{speedup} | {r['peak_gb']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
