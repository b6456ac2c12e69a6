"""metalearn: a command-line experiment runner for meta-learning in few-shot image recognition.

``metalearn_cli.load(path)`` gives a trained meta-network ready for new tasks (see
:mod:`metalearn_cli.knowledge`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from metalearn_cli.knowledge import MetaKnowledge


def load(path: Any, device: Any = "auto") -> "MetaKnowledge":
    """Load meta-knowledge (a ``metalearn export`` file, a checkpoint or a run dir); ``.adapt(support_images,
    support_labels)`` on the result gives a classifier of query images."""
    from metalearn_cli.knowledge import load as load_knowledge  # torch loads only when asked for

    return load_knowledge(path, device)
