"""A wheel (what `pip install .` installs) ships every data asset and every config."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_every_asset_and_config(tmp_path):
    pytest.importorskip("setuptools")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("metalearn-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assets = [p for p in (ROOT / "metalearn_cli" / "data" / "assets").rglob("*") if p.is_file()]
    configs = [p for p in (ROOT / "configs").rglob("*.yaml")]
    assert assets and configs
    missing = [str(p.relative_to(ROOT)) for p in assets if str(p.relative_to(ROOT)) not in names]
    missing += [str(p) for p in configs if f"metalearn_cli/configs/{p.relative_to(ROOT / 'configs')}" not in names]
    assert not missing, f"not in the wheel: {missing}"
