"""Bad inputs and outputs: one clear line naming the file, the right exit code, no half-written files."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import scipy.io
import tifffile
from spectral.io import envi as spy_envi
from typer.testing import CliRunner

from conftest import smooth_cube
from hsfuse.cli import app
from hsfuse.cube import CubeMeta
from hsfuse.errors import OutputError
from hsfuse.io import create_writer, write_cube

runner = CliRunner()


def _info(*args):
    return runner.invoke(app, ["info", *map(str, args)])


def _fails(result, code: int, *needles: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.stderr, result.stderr


def _envi(tmp_path, dtype_code=12, data_bytes=None):
    spy_envi.save_image(str(tmp_path / "s.hdr"), np.zeros((4, 5, 3), "uint16"), interleave="bsq", ext=".img")
    hdr = tmp_path / "s.hdr"
    if dtype_code != 12:
        hdr.write_text(hdr.read_text().replace("data type = 12", f"data type = {dtype_code}"))
    if data_bytes is not None:
        (tmp_path / "s.img").write_bytes(bytes(data_bytes))
    return hdr


def test_missing_file(tmp_path):
    _fails(_info(tmp_path / "nope.hdr"), 1, "nope.hdr", "file not found")


def test_header_without_data_file(tmp_path):
    hdr = _envi(tmp_path)
    (tmp_path / "s.img").unlink()
    _fails(_info(hdr), 1, str(hdr), "no data file", "s.img")


def test_data_file_shorter_than_header_says(tmp_path):
    hdr = _envi(tmp_path, data_bytes=100)
    _fails(_info(hdr), 1, str(tmp_path / "s.img"), "is 100 bytes, header needs 120")


def test_unknown_data_type(tmp_path):
    hdr = _envi(tmp_path, dtype_code=7)
    _fails(_info(hdr), 1, str(hdr), "unknown ENVI data type 7")


def test_unknown_extension(tmp_path):
    path = tmp_path / "cube.xyz"
    path.write_bytes(b"\0" * 10)
    _fails(_info(path), 1, str(path), "unknown file extension '.xyz'", ".hdr", "--format")


def test_mat_without_cube(tmp_path):
    path = tmp_path / "srf.mat"
    scipy.io.savemat(path, {"R": np.ones((3, 31))})
    _fails(_info(path), 1, str(path), "no 3-D numeric array", "R (3x31 double)")


def test_mat_with_several_cubes_needs_var(tmp_path):
    path = tmp_path / "pair.mat"
    scipy.io.savemat(path, {"hyprImg": np.ones((4, 4, 8)), "rgbImg": np.ones((16, 16, 3), "uint8")})
    _fails(_info(path), 1, str(path), "several 3-D arrays (hyprImg, rgbImg): choose one with --var")
    ok = _info(path, "--var", "rgbImg", "--json")
    assert ok.exit_code == 0 and json.loads(ok.stdout)["shape"] == {"bands": 3, "height": 16, "width": 16}
    _fails(_info(path, "--var", "nope"), 2, str(path), "no variable 'nope'")


def test_var_on_other_formats_is_a_usage_error(tmp_path):
    hdr = _envi(tmp_path)
    _fails(_info(hdr, "--var", "x"), 2, str(hdr), "do not apply to ENVI")


def test_tiff_pages_of_different_sizes(tmp_path):
    path = tmp_path / "pages.tif"
    tifffile.imwrite(path, np.zeros((8, 8), "uint16"))
    tifffile.imwrite(path, np.zeros((8, 6), "uint16"), append=True)
    _fails(_info(path), 1, str(path), "TIFF pages have different sizes")


def test_nan_is_reported_not_fatal(tmp_path):
    cube = smooth_cube(3, 5, 4)
    cube[1, 2, 3] = np.nan
    cube[0, 0, :] = np.nan
    write_cube(tmp_path / "n.tif", cube)
    result = _info(tmp_path / "n.tif", "--json")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)["stats"]
    assert stats["nan_values"] == 5 and stats["valid_values"] == 55
    table = _info(tmp_path / "n.tif")
    assert table.exit_code == 0 and "5 NaN" in table.stdout


@pytest.mark.parametrize("name", ["o.hdr", "o.tif", "o.mat"])
def test_existing_output_is_not_overwritten(tmp_path, name):
    write_cube(tmp_path / name, smooth_cube(2, 3, 3))
    with pytest.raises(OutputError, match="exists"):
        create_writer(tmp_path / name, (2, 3, 3), CubeMeta())
    write_cube(tmp_path / name, smooth_cube(2, 3, 3, seed=1), overwrite=True)


def test_envi_checks_both_files(tmp_path):
    (tmp_path / "o.img").write_bytes(b"precious")
    with pytest.raises(OutputError, match="o.img exists"):
        create_writer(tmp_path / "o.hdr", (1, 2, 2), CubeMeta())
    assert (tmp_path / "o.img").read_bytes() == b"precious"


def test_missing_output_directory(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        create_writer(tmp_path / "no" / "o.tif", (1, 2, 2), CubeMeta())


def test_unwritable_output_directory(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.geteuid() == 0:  # root writes anywhere: let the permission check see what a user would
        monkeypatch.setattr(os, "access", lambda path, mode: not (mode & os.W_OK and str(path) == str(locked)))
    try:
        with pytest.raises(OutputError, match="not writable"):
            create_writer(locked / "o.hdr", (1, 2, 2), CubeMeta())
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("name,opts", [("o.hdr", {}), ("o.tif", {}), ("o.mat", {}), ("o.mat", {"version": "7.3"})])
def test_interrupted_write_leaves_nothing(tmp_path, name, opts):
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with create_writer(tmp_path / name, (2, 4, 4), CubeMeta(), **opts) as w:
            w.write(smooth_cube(2, 4, 4))
            raise Boom
    assert list(tmp_path.iterdir()) == []
