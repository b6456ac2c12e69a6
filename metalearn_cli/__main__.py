"""``python -m metalearn_cli`` == ``metalearn`` (also the entry point for ``torchrun``)."""

import sys

from metalearn_cli.entry import main

sys.exit(main())
