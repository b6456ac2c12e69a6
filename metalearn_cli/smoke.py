"""What ``debug=smoke`` keeps of a preset, or of the command line, once the config is composed.

``configs/debug/smoke.yaml`` comes last in the defaults, so its ``trainer.iterations: 20`` replaces a
preset's. A preset without meta-training (``trainer.iterations: 0``: RFS's presets test the pre-trained
encoder as it is) would then meta-train under smoke, which is not the method the user asked to try.
Its shrunk encoder (``configs/debug/encoder/``) sets ``encoder.width``, which typed ``encoder.widths``
would otherwise meet as a conflict the user never typed.
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any, Iterable, Mapping, Optional

from omegaconf import OmegaConf

log = logging.getLogger(__name__)


def preset_iterations(name: str) -> Optional[int]:
    """The ``trainer.iterations`` a shipped preset sets in its own file, or None (unset, or not shipped)."""
    path = resources.files("metalearn_cli.configs") / "experiment" / f"{name}.yaml"
    if not path.is_file():
        return None
    value = OmegaConf.select(OmegaConf.create(path.read_text(encoding="utf-8")), "trainer.iterations")
    return value if isinstance(value, int) else None


def keep_what_was_asked(cfg: Any, choices: Mapping[str, Any], typed: Iterable[str]) -> list[str]:
    """Every adjustment of this module, in the order a run and ``--cfg``'s check make them; each is logged and
    returned in words (``--cfg job`` prints the config as composed, and says these beside it)."""
    typed = list(typed)
    said = [keep_no_meta_training(cfg, choices, typed), keep_typed_widths(cfg, choices, typed)]
    for line in filter(None, said):
        log.info("%s", line)
    return [line for line in said if line]


def keep_typed_widths(cfg: Any, choices: Mapping[str, Any], typed: Iterable[str]) -> Optional[str]:
    """Under ``debug=smoke``, ``encoder.widths`` typed (and ``encoder.width`` not) is the shape asked for: the
    smoke encoder's one width gives way to it. Returns what it changed, in words (None: nothing)."""
    typed = set(typed)
    if (choices.get("debug") == "smoke" and "encoder.widths" in typed and "encoder.width" not in typed
            and cfg.encoder.get("widths") is not None and cfg.encoder.get("width") is not None):
        said = (f"debug=smoke: encoder.widths={list(cfg.encoder.widths)} as typed, in place of the smoke encoder's "
                f"encoder.width={cfg.encoder.width}")
        cfg.encoder.width = None
        return said
    return None


def keep_no_meta_training(cfg: Any, choices: Mapping[str, Any], typed: Iterable[str]) -> Optional[str]:
    """Under ``debug=smoke``, a preset that does not meta-train still does not (unless
    ``trainer.iterations`` is typed, or the run is a resume, which repeats its saved config). Returns what it
    changed, in words (None: nothing)."""
    preset = choices.get("experiment")
    if choices.get("debug") != "smoke" or not preset or cfg.get("resume") or "trainer.iterations" in set(typed):
        return None
    if preset_iterations(str(preset)) == 0 and cfg.trainer.iterations != 0:
        cfg.trainer.iterations = 0
        return (f"debug=smoke keeps experiment={preset}'s trainer.iterations=0: it tests the pre-trained encoder "
                "without meta-training")
    return None
