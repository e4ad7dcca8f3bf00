"""A built wheel, installed outside the checkout, carries the trained weights and runs a network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    pytest.importorskip("setuptools")
    whl = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(whl),
                        str(REPO)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot build a wheel here: {r.stderr.strip().splitlines()[-1:]}")
    target = tmp_path_factory.mktemp("site")
    wheel = next(whl.glob("hsfuse-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    return target


def _hsfuse(target, cwd, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("HSFUSE_WEIGHTS", "HSFUSE_MHF_RESPONSE")}
    env["PYTHONPATH"] = str(target)
    return subprocess.run([sys.executable, "-c", "from hsfuse.cli import main; main()", *map(str, args)],
                          cwd=cwd, env=env, capture_output=True, text=True)


def test_wheel_carries_the_weights_and_runs_a_network(installed, tmp_path):
    r = _hsfuse(installed, tmp_path, "models", "--json")
    assert r.returncode == 0, r.stderr
    models = {m["name"]: m for m in json.loads(r.stdout)["models"]}
    shipped = sorted(p.stem for p in (REPO / "weights").glob("*.json"))
    for name in ("mulsr", "csakd-s"):
        assert models[name]["available"], models[name]
    installed_files = {i["file"] for m in models.values() for i in (m.get("installed") or [])}
    assert {f"{s}.safetensors" for s in shipped} <= installed_files
    for table in ("nikon-5100.csv", "sigma-sdmerrill.csv", "cie1931.csv"):  # built-in SRFs need no extra package
        assert (installed / "hsfuse" / "data" / table).is_file()
    # the package imported is the installed copy, not the checkout
    r = _hsfuse(installed, tmp_path, "--versions")
    assert r.returncode == 0
    from hsfuse.cube import CubeMeta
    from hsfuse.io import write_cube

    rng = np.random.default_rng(0)
    write_cube(tmp_path / "lr.tif", rng.random((31, 8, 8), dtype=np.float32), CubeMeta(wavelengths=np.arange(400., 701, 10)))
    write_cube(tmp_path / "msi.tif", rng.random((3, 64, 64), dtype=np.float32), CubeMeta())
    r = _hsfuse(installed, tmp_path, "fuse", "lr.tif", "msi.tif", "-o", "out.tif", "--model", "mulsr", "--estimate", "off",
                "--denoise", "off", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["plan"]["model"] == "mulsr" and str(installed) in doc["plan"]["weights"]
    assert (tmp_path / "out.tif").exists()
