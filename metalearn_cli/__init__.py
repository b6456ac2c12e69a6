"""metalearn: a command-line experiment runner for meta-learning in few-shot image recognition.

``metalearn_cli.load(path)`` gives a trained meta-network ready for new tasks (see
:mod:`metalearn_cli.knowledge`); ``load([path, ...])`` several as one ensemble (:mod:`metalearn_cli.knowledge_ensemble`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Union

__version__ = "0.1.0"

if TYPE_CHECKING:
    from metalearn_cli.knowledge import MetaKnowledge
    from metalearn_cli.knowledge_ensemble import KnowledgeEnsemble


def load(path: Any, device: Any = "auto") -> Union["MetaKnowledge", "KnowledgeEnsemble"]:
    """Load meta-knowledge (a ``metalearn export`` file, a checkpoint or a run dir); ``.adapt(support_images,
    support_labels)`` on the result gives a classifier of query images. A list or tuple of paths gives an ensemble
    that answers with the mean of its members' class probabilities, as ``ensemble=`` does in eval and predict."""
    if isinstance(path, (list, tuple)):
        from metalearn_cli.knowledge_ensemble import KnowledgeEnsemble, load_members  # torch loads only when asked for

        return KnowledgeEnsemble(load_members(path, device))
    from metalearn_cli.knowledge import load as load_knowledge

    return load_knowledge(path, device)
