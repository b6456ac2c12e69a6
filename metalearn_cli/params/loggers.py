"""The parameters of each metrics logger (``configs/logger/<name>.yaml`` extends them); torch-free.

Every run writes ``metrics.jsonl`` (what ``report`` and ``compare`` read); the logger chooses where
the same records go as well, as lightning-hydra-template's ``logger=`` group does.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Optional

from metalearn_cli.errors import ConfigError


@dataclass
class TensorBoardParams:
    name: str = "tensorboard"  # <run>/tensorboard/: `tensorboard --logdir outputs/`


@dataclass
class CSVParams:
    name: str = "csv"  # <run>/metrics.csv: one row per step, split and metric (step,split,metric,value)


@dataclass
class MLflowParams:
    name: str = "mlflow"
    tracking_uri: Optional[str] = None  # null: MLflow's local file store in <run>/mlruns (no server); or file:DIR, http://HOST:PORT, sqlite:///FILE
    experiment: str = "metalearn"  # the MLflow experiment the run is filed under

    def __post_init__(self) -> None:
        if not str(self.experiment).strip():
            raise ConfigError("logger.experiment is empty; name the MLflow experiment the run is filed under "
                              "(default: logger.experiment=metalearn)")
        if importlib.util.find_spec("mlflow") is None:
            raise ConfigError("logger=mlflow needs MLflow: pip install 'metalearn[mlflow]' (or mlflow-skinny), "
                              "or choose logger=tensorboard or logger=csv")
