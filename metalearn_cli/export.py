"""``metalearn export``: a checkpoint's meta-knowledge alone, in a file of its own.

A training checkpoint carries optimizer, RNG and sampler states a user of the trained model never
needs. An export keeps the meta-knowledge (the strategy's state: encoder, decoder and what the
strategy learns itself, such as Meta-SGD's inner learning rates), the run config that rebuilds the
meta-network and the image format its pixels must have; it loads with ``weights_only=True``.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Optional

import torch

from metalearn_cli.checkpoint import EXPORT_FORMAT, VERSION, check_header, read_meta_knowledge, read_state
from metalearn_cli.errors import CheckpointError, ConfigError
from metalearn_cli.files import save_torch, write_json
from metalearn_cli.resume import unfinished_note
from metalearn_cli.rundir import CHECKPOINTS, refuse_replacing

log = logging.getLogger(__name__)


def _earlier_export(path: Path) -> Optional[dict[str, Any]]:
    """The export at ``path``, read once; None when the file is not one."""
    try:
        state = read_state(path)
        return state if check_header(state, path, (EXPORT_FORMAT,)) is not None else None
    except CheckpointError:
        return None


def _same_weights(earlier: Any, model: dict[str, Any]) -> bool:
    """Whether an earlier export holds exactly these tensors (however the checkpoint was reached: a copy,
    a link, ``last.pt`` at the step of ``best.pt``)."""
    return (isinstance(earlier, dict) and earlier.keys() == model.keys()
            and all(torch.equal(earlier[k], v) if isinstance(v, torch.Tensor) else earlier[k] == v for k, v in model.items()))


def _is_checkpoint(path: Path) -> bool:
    try:
        return check_header(read_state(path), path) is not None
    except CheckpointError:
        return False


def export(checkpoint: Path | str, out: Path | str) -> dict[str, Any]:
    """Write the meta-knowledge of ``checkpoint`` to ``out`` (atomically); returns what was written."""
    from metalearn_cli.knowledge import load  # builds the meta-network: refuse a file that would not load

    if Path(out).is_symlink():  # written where the link leads (each guard below looks there), the link kept
        out = os.path.realpath(out)
    if str(out).endswith(("/", os.sep)) and not Path(out).is_file():  # Path() would drop the slash and write a file
        raise ConfigError(f"out={out} names a folder; name the file to write, e.g. out={Path(out) / 'model.pt'}")
    if Path(out).is_dir():
        raise ConfigError(f"out={out} is a folder; name the file to write, e.g. out={Path(out) / 'model.pt'}")
    state = read_meta_knowledge(checkpoint)
    if note := unfinished_note(checkpoint, state):
        log.warning("%s", note)
    if Path(out).resolve() == Path(state["source"]).resolve():
        raise ConfigError(f"out={out} is the checkpoint being exported; choose another out=PATH")
    if Path(out).exists() and (Path(out).parent.name == CHECKPOINTS or _is_checkpoint(Path(out))):
        raise ConfigError(f"out={out} is a training checkpoint, which an export would replace; choose another out=PATH")
    refuse_replacing(out)
    earlier = _earlier_export(Path(out)) if Path(out).exists() else None
    if Path(out).exists() and earlier is None:
        raise ConfigError(f"out={out} exists and is not an earlier export, which an export would replace; choose another out=PATH")
    if earlier is not None:  # an earlier export of the same weights may be written again; another run's may not
        if not _same_weights(earlier.get("model"), state["model"]):
            raise ConfigError(f"out={out} holds an export of {earlier.get('exported_from')} (step {earlier.get('step')}), "
                              "which this export would replace; choose another out=PATH, or delete it first")
    payload = {"format": EXPORT_FORMAT, "version": VERSION, "config": state["config"], "model": state["model"],
               "image_format": state["image_format"], "step": state["step"],
               "exported_from": str(Path(state["source"]).resolve()), "pixel_mean": state["pixel_mean"],
               **({"unfinished": note} if note else {})}  # said again wherever the export is used
    load(payload, device="cpu")
    save_torch(Path(out), payload, "meta-knowledge", "choose a writable path for out= or free disk space")
    return payload


def export_command(cfg: Any, run_dir: Path) -> float:
    """``metalearn export``: write ``cfg.out`` and a record of it; returns NaN (no metric)."""
    payload = export(cfg.checkpoint, str(cfg.out))  # as typed: a trailing slash names a folder
    size = Path(cfg.out).stat().st_size
    params = sum(v.numel() for v in payload["model"].values() if isinstance(v, torch.Tensor) and v.is_floating_point())
    write_json(Path(run_dir) / "export.json", {"out": str(Path(cfg.out).resolve()), "from": payload["exported_from"],
                                                "step": payload["step"], "bytes": size, "parameters": params})
    size_text = f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"  # a small network is not "0.0 MB"
    log.info("wrote %s (%d parameters and buffers, %s, step %d); load it with metalearn_cli.load(%r)",
             cfg.out, params, size_text, payload["step"], str(cfg.out))
    return math.nan
