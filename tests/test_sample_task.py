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


def test_the_printed_predict_line_names_the_folders_whole_and_no_missing_query(tmp_path, capsys):
    import shlex

    out = tmp_path / "my tâche"
    assert main(["sample-task", "--out", str(out), "--way", "2", "--query", "1"]) == 0
    words = shlex.split(capsys.readouterr().out.splitlines()[-1])
    assert words[-2:] == [f'support="{out}/support"', f'query="{out}/query"']  # one word each, as Hydra reads them
    assert "<" not in " ".join(words)  # no placeholder the shell reads as a redirect
    assert main(["sample-task", "--out", str(tmp_path / "none"), "--query", "0"]) == 0
    assert not (tmp_path / "none" / "query").exists() and "none/query" not in capsys.readouterr().out


def test_help_of_the_flag_commands_is_plain_text():
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).with_name("metalearn")
    for command in ("report", "compare", "sample-task"):
        text = subprocess.run([str(exe), command, "--help"], capture_output=True, text=True, timeout=60).stdout
        assert "`" not in text and ":mod:" not in text and text.count("(") == text.count(")"), text


def test_sample_tasks_hold_characters_as_drawn_never_their_turned_copies(tmp_path):
    """The test split holds each character four times (Vinyals et al.'s turns); a sample task is upright ones."""
    for seed in range(4):
        out = tmp_path / f"task{seed}"
        assert main(["sample-task", "--out", str(out), "--way", "20", "--query", "0", "--seed", str(seed)]) == 0
        names = [p.name for p in (out / "support").iterdir()]
        assert len(names) == 20 and not any("rot" in n for n in names), names
