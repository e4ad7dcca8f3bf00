"""The fault corpus: bad, corrupt and hostile inputs, a full disk, bad paths.

Every case asserts the exit code, a one-line message naming the file, no traceback, nothing left behind
and no input changed (docs/safety.md). Crafted checkpoints: tests/train/test_train.py; outputs onto inputs and
colliding batch outputs: tests/cli/test_cli_fuse.py.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import uuid

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import smooth_cube
from hsfuse.forward.degrade import spatial_degrade
from hsfuse.cli import app
from hsfuse.cube import CubeMeta
from hsfuse.forward.psf import Psf
from hsfuse.io import write_cube

runner = CliRunner()


def _digest(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _pair(tmp_path, bands=8, size=64, scale=4):
    z = smooth_cube(bands, size, size, seed=3)
    lr, msi = spatial_degrade(z, Psf.gaussian(scale)), (z[:3] + z[-3:]) / 2
    lp, mp = tmp_path / "lr.tif", tmp_path / "msi.tif"
    write_cube(lp, lr, CubeMeta(wavelengths=np.linspace(450, 900, bands)))
    write_cube(mp, msi, CubeMeta())
    return lp, mp


def _one_line_error(result, *needles):
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("hsfuse: error:"), result.stderr
    assert "Traceback" not in result.output
    for n in needles:
        assert n in lines[-1], (n, lines[-1])


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if "hsfuse-tmp" in p.name]


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_truncated_tiff_is_a_one_line_error(tmp_path, compression):
    import tifffile

    lp, mp = _pair(tmp_path)
    data = np.random.default_rng(0).random((3, 64, 64)).astype(np.float32)
    bad = tmp_path / "trunc.tif"
    tifffile.imwrite(bad, data, photometric="minisblack", planarconfig="separate", compression=compression,
                     rowsperstrip=8)
    raw = bad.read_bytes()
    bad.write_bytes(raw[: len(raw) * 2 // 3])
    r = runner.invoke(app, ["fuse", str(lp), str(bad), "-o", str(tmp_path / "out.tif"), "--model", "gsa"])
    _one_line_error(r, "trunc.tif")
    assert not (tmp_path / "out.tif").exists() and not _leftovers(tmp_path)


def test_envi_with_zero_size_is_refused(tmp_path):
    (tmp_path / "z.img").write_bytes(b"")
    (tmp_path / "z.hdr").write_text("ENVI\nsamples = 0\nlines = 10\nbands = 3\nheader offset = 0\n"
                                    "file type = ENVI Standard\ndata type = 4\ninterleave = bsq\nbyte order = 0\n")
    r = runner.invoke(app, ["info", str(tmp_path / "z.hdr")])
    _one_line_error(r, "empty cube")


def test_complex_mat_is_refused(tmp_path):
    from scipy.io import savemat

    savemat(tmp_path / "c.mat", {"cube": np.ones((16, 16, 5)) * (1 + 2j)})
    r = runner.invoke(app, ["info", str(tmp_path / "c.mat")])
    _one_line_error(r, "complex")


def test_constant_images_are_not_identifiable(tmp_path):
    write_cube(tmp_path / "lr.tif", np.full((8, 16, 16), 0.3, np.float32), CubeMeta())
    write_cube(tmp_path / "msi.tif", np.full((3, 64, 64), 0.3, np.float32), CubeMeta())
    r = runner.invoke(app, ["estimate", str(tmp_path / "lr.tif"), str(tmp_path / "msi.tif"), "-o",
                            str(tmp_path / "e.json")])
    _one_line_error(r, "constant")
    assert not (tmp_path / "e.json").exists()


def test_bad_paths_are_one_line_errors(tmp_path):
    lp, mp = _pair(tmp_path)
    (tmp_path / "afile").write_text("x")
    r = runner.invoke(app, ["fuse", str(lp), str(mp), "--out-dir", str(tmp_path / "afile"), "--model", "gsa"])
    _one_line_error(r, "not a folder")
    (tmp_path / "adir.tif").mkdir()
    r = runner.invoke(app, ["fuse", str(lp), str(mp), "-o", str(tmp_path / "adir.tif"), "--model", "gsa", "--overwrite"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    r = runner.invoke(app, ["demo", "--size", "-64", "--out-dir", str(tmp_path / "d")])
    assert r.exit_code == 2 and "--size" in r.stderr


def test_stale_temporaries_of_a_killed_run_are_removed(tmp_path):
    lp, mp = _pair(tmp_path)
    dead = 2 ** 22 + 12345  # above the usual pid_max: no such process
    stale = tmp_path / f".out.hsfuse-tmp-{dead}-abcdef.tif"
    stale.write_bytes(b"half-written")
    r = runner.invoke(app, ["fuse", str(lp), str(mp), "-o", str(tmp_path / "out.tif"), "--model", "gsa", "-q"])
    assert r.exit_code == 0, r.output
    assert not stale.exists() and (tmp_path / "out.tif").exists()


def _small_tmpfs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / f"full-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    return mnt


@pytest.mark.parametrize("ext", [".tif", ".hdr", ".mat"])
def test_full_disk_leaves_nothing_and_says_so(tmp_path, ext):
    lp, mp = _pair(tmp_path)
    before = {p: _digest(p) for p in (lp, mp)}
    mnt = _small_tmpfs(tmp_path)
    try:
        r = runner.invoke(app, ["fuse", str(lp), str(mp), "-o", str(mnt / f"out{ext}"), "--model", "gsa"])
        _one_line_error(r, "no space left")
        assert list(mnt.iterdir()) == []
        r = runner.invoke(app, ["degrade", str(lp), "-o", str(mnt / f"lr2{ext}"), "-s", "2"])
        assert r.exit_code == 1 and "no space left" in r.stderr and list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
    assert before == {p: _digest(p) for p in before}


def test_full_disk_for_small_outputs(tmp_path):
    """The JSON estimate does not fit a 4 KiB filesystem: one line, no 0-byte file."""
    lp, mp = _pair(tmp_path)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        r = runner.invoke(app, ["estimate", str(lp), str(mp), "-o", str(mnt / "e.json")])
        if r.exit_code == 0:  # the estimate fitted after all: then it is complete JSON
            import json

            json.loads((mnt / "e.json").read_text())
        else:
            _one_line_error(r)
            assert "no space left" in r.stderr and list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
