"""What ``metalearn`` says about itself: its usage, ``--version``, each command's ``--help`` (the
groups it accepts and their options, read from the shipped configs) and shell completion."""

from __future__ import annotations

import os
import string
import sys
from importlib import resources
from typing import Any, Callable

from metalearn_cli.command_line import GROUPS
from metalearn_cli.cpu_kind import this_cpu, version_bf16

USAGE = """\
usage: metalearn <command> [key=value ...] [group=option ...] [hydra flags]

Meta-learning experiments for few-shot image recognition, configured with Hydra.

commands:
  train     meta-train a meta-network on episodes, validate, test best.pt, write a run dir
  eval      test a checkpoint on fixed tasks of any episode shape
  predict   adapt a trained meta-network to your own support images and classify query images
  export    write a checkpoint's meta-knowledge alone, for metalearn_cli.load() and predict
  report    one table (markdown + CSV) and plots over run dirs or sweep dirs
  sample-task  write a small Omniglot task folder (support/, query/) to try predict on
  compare   paired comparison of runs on the same test tasks: difference with CI95 (tasks, or seeds), sign test

examples:
  metalearn train                                    # ProtoNet on Omniglot 5-way 1-shot (embedded data, CPU ok)
  metalearn train dataset=omniglot strategy=mgd episode=20way1shot trainer.iterations=2000 seed=3
  metalearn train debug=smoke                        # seconds, on generated data
  metalearn train experiment=maml_omniglot_5w1s      # a published table cell (configs/experiment/)
  metalearn train -m seed=0,1,2                      # a multirun sweep: one run dir per job
  metalearn train resume=outputs/train/<run>         # continue an interrupted run in its own dir
  metalearn eval checkpoint=outputs/train/<run>/checkpoints/best.pt episode=5way5shot
  metalearn predict checkpoint=<run>/checkpoints/best.pt support=task/support query=task/query
  metalearn export checkpoint=<run>/checkpoints/best.pt out=meta_knowledge.pt
  metalearn report outputs/multirun/train/<time>     # table, learning curves, accuracy chart
  metalearn compare outputs/train/<run A> outputs/train/<run B>   # B vs A, task by task
  metalearn sample-task --out my_task                # then: metalearn predict ... support=my_task/support query=my_task/query
  metalearn train 'hydra.run.dir="runs/my run"'      # quote values with spaces or non-ASCII characters
  metalearn --version
  metalearn train --help                             # config groups, options and the composed config
  metalearn train --cfg job                          # print the composed config and exit
  eval "$(metalearn -sc install=bash)"               # tab completion of commands, groups, keys (fish: install=fish)

Run dirs go to outputs/<command>/...; each holds .hydra/, checkpoints/, metrics.jsonl,
tensorboard/ (or logger=csv / logger=mlflow) and results.json. Errors print one line and exit with code 2.
"""


def version_line() -> str:
    """``metalearn --version``: the versions that decide numbers and speed, and whether this CPU
    computes bf16 natively and whether ``precision=auto`` trains in it there, without importing torch."""
    from importlib import metadata

    from metalearn_cli import __version__

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    bf16 = version_bf16(this_cpu())
    return (f"metalearn {__version__} (torch {version('torch')}, torchvision {version('torchvision')}, hydra-core "
            f"{version('hydra-core')}, Python {sys.version.split()[0]}; native bf16 on this CPU: {bf16}; "
            "CUDA is used when torch finds a GPU)")


def config_groups(command: str) -> dict[str, list[str]]:
    """The groups ``command`` accepts and their options, read from the shipped ``configs/`` folders."""
    root = resources.files("metalearn_cli.configs")
    return {group: sorted(f.name[:-5] for f in root.joinpath(group).iterdir() if f.name.endswith(".yaml"))
            for group in GROUPS[command]}


def render_help(command: str, template: str, config_yaml: str) -> str:
    """``--help`` from the command's help template (``configs/hydra/help/``) and its composed config,
    as Hydra's would read, listing only the groups the command accepts (not the internal ``schema/*``)."""
    groups = "\n".join(f"{group}: {', '.join(options)}" for group, options in sorted(config_groups(command).items()))
    text = string.Template(template).safe_substitute(APP_CONFIG_GROUPS=groups, CONFIG=config_yaml)
    return text + "\n"


def shell_completion(request: str, apps: dict[str, Callable[[], Any]]) -> int:
    """Hydra's shell completion for the whole command: the script names ``metalearn`` and each query
    goes to the app of the subcommand typed so far (Hydra alone would take ``train`` for an override)."""
    words = os.environ.get("COMP_LINE", "").split(" ")
    if request.startswith("query="):
        if len(words) <= 2:  # still typing the subcommand
            print(" ".join(c for c in apps if c.startswith(words[-1] if len(words) == 2 else "")))
            return 0
        if words[1] not in apps:
            return 0
        command = words[1]
        os.environ["COMP_LINE"] = " ".join([words[0], *words[2:]])
    else:
        command = "train"  # install/uninstall: any app prints the same script
    saved_argv = sys.argv
    sys.argv = ["metalearn", "--shell-completion", request]
    try:
        apps[command]()
    finally:
        sys.argv = saved_argv
    return 0
