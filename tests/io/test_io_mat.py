"""MAT: scipy v5 and h5py/hdf5storage v7.3 files read with MATLAB's (H, W, C) turned into (C, H, W)."""

from __future__ import annotations

import h5py
import hdf5storage
import numpy as np
import pytest
import scipy.io

from hsfuse.cube import CubeMeta, Window
from hsfuse.errors import FormatError, UsageError
from hsfuse.io import create_writer, open_cube, read_cube, write_cube
from hsfuse.io import mat as mat_mod

H, W, C = 9, 7, 5  # all different, so any axis mix-up shows


def _hwc(dtype="uint16") -> np.ndarray:
    rng = np.random.default_rng(7)
    if np.dtype(dtype).kind == "f":
        return rng.normal(size=(H, W, C)).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, (H, W, C), endpoint=True).astype(dtype)


def _check(path, hwc, **opts):
    with open_cube(path, **opts) as src:
        assert src.shape == (C, H, W)
        raw = src.read(raw=True)
        assert raw.dtype == hwc.dtype
        np.testing.assert_array_equal(raw, hwc.transpose(2, 0, 1))
        np.testing.assert_array_equal(src.read(Window(2, 1, 5, 4), bands=[4, 1, 3], raw=True),
                                      hwc[2:7, 1:5][:, :, [4, 1, 3]].transpose(2, 0, 1))
        return src.meta


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int32", "float32", "float64"])
def test_scipy_v5(tmp_path, dtype):
    hwc = _hwc(dtype)
    scipy.io.savemat(tmp_path / "a.mat", {"img": hwc, "wavelength": np.linspace(0.45, 0.85, C)[None, :], "other": np.eye(3)})
    meta = _check(tmp_path / "a.mat", hwc)
    np.testing.assert_allclose(meta.wavelengths, np.linspace(450, 850, C))  # µm -> nm
    assert meta.source["var"] == "img" and meta.source["version"] == "5"


def test_hdf5storage_v73(tmp_path):
    hwc = _hwc("float32")
    hdf5storage.savemat(str(tmp_path / "b.mat"), {"cube": hwc, "wl": np.linspace(400, 800, C)[:, None]},
                        format="7.3", matlab_compatible=True)
    assert (tmp_path / "b.mat").read_bytes()[:10] == b"MATLAB 7.3"
    meta = _check(tmp_path / "b.mat", hwc)
    np.testing.assert_allclose(meta.wavelengths, np.linspace(400, 800, C))
    assert meta.source["version"] == "7.3"


@pytest.mark.parametrize("stored", ["<u2", ">f8"])
def test_plain_h5py_file_has_reversed_axes(tmp_path, stored):
    """What MATLAB writes, as h5py sees it: the (H, W, C) array stored with axes reversed."""
    hwc = _hwc("uint16")
    with h5py.File(tmp_path / "c.mat", "w") as f:
        f.create_dataset("hsi", data=hwc.T, dtype=stored)  # (C, W, H)
        f["labels"] = np.zeros((W, H), "uint8")
    _check(tmp_path / "c.mat", hwc.astype(np.dtype(stored).newbyteorder("=")))


def test_variable_choice(tmp_path):
    path = tmp_path / "two.mat"
    scipy.io.savemat(path, {"A": _hwc(), "B": _hwc("uint8"), "v": np.arange(4.0)})
    with pytest.raises(FormatError, match=r"several 3-D arrays \(A, B\): choose one with option 'var'"):
        open_cube(path)
    _check(path, _hwc("uint8"), var="B")
    with pytest.raises(UsageError, match="no variable 'Z'.*3-D arrays: A, B"):
        open_cube(path, var="Z")
    with pytest.raises(UsageError, match="'v' is 1x4 double, not a 3-D"):
        open_cube(path, var="v")


def test_no_cube_lists_variables(tmp_path):
    scipy.io.savemat(tmp_path / "r.mat", {"R": np.ones((3, 31)), "name": "x"})
    with pytest.raises(FormatError, match=r"no 3-D numeric array.*R \(3x31 double\)"):
        open_cube(tmp_path / "r.mat")


@pytest.mark.parametrize("version", ["5", "7.3"])
@pytest.mark.parametrize("dtype", ["uint16", "float32", "float64"])
def test_written_files_read_by_scipy_and_hdf5storage(tmp_path, version, dtype):
    chw = _hwc(dtype).transpose(2, 0, 1).astype(np.float64)
    meta = CubeMeta(wavelengths=np.linspace(400, 700, C), source={"var": "HSim"})
    path = tmp_path / "o.mat"
    with create_writer(path, chw.shape, meta, dtype, version=version) as w:
        for r in range(0, H, 4):  # windowed writes
            win = Window(r, 0, 4, W).clip(H, W)
            w.write(chw[:, win.slices[0], win.slices[1]], win)
    assert [p.name for p in tmp_path.iterdir()] == ["o.mat"]  # buffers and temps gone
    loaded = scipy.io.loadmat(path) if version == "5" else hdf5storage.loadmat(str(path))
    assert loaded["HSim"].dtype == np.dtype(dtype)
    np.testing.assert_array_equal(loaded["HSim"], chw.transpose(1, 2, 0).astype(dtype))
    np.testing.assert_allclose(np.ravel(loaded["wavelength"]), meta.wavelengths)
    back = read_cube(path)
    np.testing.assert_array_equal(back.data, chw.astype(dtype).astype(np.float32))
    assert back.meta.source["version"] == version and back.meta.source["var"] == "HSim"


def test_large_cubes_go_to_v73(tmp_path, monkeypatch):
    monkeypatch.setattr(mat_mod, "V5_LIMIT", 100)  # stands in for 2 GB
    write_cube(tmp_path / "big.mat", np.ones((C, H, W)), CubeMeta())
    assert mat_mod.is_v73(tmp_path / "big.mat")
    with pytest.raises(UsageError, match="does not fit a v5"):
        create_writer(tmp_path / "v5.mat", (C, H, W), CubeMeta(), "float64", version="5")
