"""`metalearn sample-task`: a task folder from the embedded Omniglot that predict reads as it is."""


import numpy as np
from PIL import Image

from metalearn_cli.cli import main


def test_sample_task_writes_dark_on_white_test_characters(tmp_path, capsys):
    out = tmp_path / "task"
    assert main(["sample-task", "--out", str(out), "--way", "3", "--shot", "2", "--query", "1"]) == 0
    assert "metalearn predict" in capsys.readouterr().out
    classes = sorted(p.name for p in (out / "support").iterdir())
    assert len(classes) == 3 and classes == sorted(p.name for p in (out / "query").iterdir())
    assert all(len(list((out / "support" / c).glob("*.png"))) == 2 for c in classes)
    pixels = np.stack([np.asarray(Image.open(p)) for p in out.rglob("*.png")])
    assert pixels.mean() > 200  # mostly white paper, dark strokes: the originals' look
    assert main(["sample-task", "--out", str(out)]) == 2  # never writes into a folder that holds files
    assert "not empty" in capsys.readouterr().err
