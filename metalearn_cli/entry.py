"""The ``metalearn`` console script and ``python -m metalearn_cli``: a Ctrl-C while the CLI's modules still
import (the first half second: Hydra, OmegaConf) ends as one line, as one a moment later does, not as a
traceback of the import machinery."""

from __future__ import annotations

import sys
import warnings


def main() -> int:
    # PIL's decompression-bomb warning names PIL's own source file; read_image says it naming the image instead
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")
    try:
        from metalearn_cli.cli import main as run
    except KeyboardInterrupt:
        print("metalearn: interrupted", file=sys.stderr)
        return 130
    return run()
