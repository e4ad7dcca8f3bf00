"""`hsfuse degrade` and `hsfuse metrics` end to end through CliRunner, on files; outputs reopened."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from hsfuse.cli import app
from hsfuse.cube import CubeMeta, GeoRef
from hsfuse.io import read_cube, write_cube

from conftest import smooth_cube

WL = np.arange(400.0, 701.0, 10.0)
GEO = GeoRef(None, (2.0, 0.0, 500000.0, 0.0, -2.0, 4200000.0))


def run(*args):
    r = CliRunner().invoke(app, [str(a) for a in args])
    return r


def _stdout(r) -> str:
    return r.stdout if hasattr(r, "stdout") else r.output


def _stderr(r) -> str:
    try:
        return r.stderr
    except (ValueError, AttributeError):
        return r.output


@pytest.fixture
def hr_file(tmp_path):
    # values on a 1/256 grid: box means at s=4 are exact in float32
    z = np.round(smooth_cube(31, 34, 32, seed=5) * 256) / 256
    path = tmp_path / "hr.tif"
    write_cube(path, z.astype(np.float32), CubeMeta(wavelengths=WL, georef=GEO))
    return path, z.astype(np.float32)


def test_degrade_box_then_metrics_is_exact(tmp_path, hr_file):
    hr, z = hr_file
    lr, msi = tmp_path / "lr.tif", tmp_path / "msi.hdr"
    r = run("degrade", hr, "-o", lr, "--msi", msi, "--scale", 4, "--psf", "box", "--srf", "sentinel2-10m:B2,B3,B4", "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(_stdout(r))
    assert info["crop"] == {"rows_dropped": 2, "cols_dropped": 0, "hr_used": [32, 32]}
    assert "cropped 34×32 to 32×32" in _stderr(r)
    # reopen and check data + metadata
    lo = read_cube(lr)
    assert lo.shape == (31, 8, 8)
    np.testing.assert_allclose(lo.meta.wavelengths, WL)
    assert lo.meta.georef.transform == pytest.approx((8.0, 0.0, 500000.0, 0.0, -8.0, 4200000.0))
    mo = read_cube(msi)
    assert mo.shape == (3, 32, 32) and mo.meta.band_names == ["B2", "B3", "B4"]
    np.testing.assert_allclose(mo.meta.wavelengths, [492.4, 559.8, 664.6])
    assert mo.meta.georef.transform == pytest.approx(GEO.transform)
    # an independently box-averaged reference equals the LR exactly
    box = z[:, :32, :32].reshape(31, 8, 4, 8, 4).mean(axis=(2, 4))
    write_cube(tmp_path / "box.tif", box, CubeMeta(wavelengths=WL))
    r = run("metrics", tmp_path / "box.tif", lr, "--scale", 4, "--json")
    assert r.exit_code == 0, r.output
    m = json.loads(_stdout(r))
    assert m["summary"]["rmse"] == 0.0 and m["summary"]["psnr"] is None  # infinite PSNR -> null in strict JSON
    assert m["summary"]["ergas"] == 0.0 and m["summary"]["uiqi"] == pytest.approx(1.0)
    assert m["summary"]["ssim"] is None and "smaller than" in m["conventions"]["ssim"]  # 8×8 < 11×11 window
    assert m["conventions"]["peak"] == 1.0 and m["conventions"]["ergas_scale"] == 4.0
    assert len(m["per_band"]["psnr"]) == 31


def test_degrade_noise_and_protocol_options(tmp_path, hr_file):
    hr, _ = hr_file
    r = run("degrade", hr, "-o", tmp_path / "a.tif", "--scale", "2.5")
    assert r.exit_code == 2 and "integer" in _stderr(r)
    r = run("degrade", hr, "-o", tmp_path / "a.tif", "--protocol", "cave-gauss-x8", "--sigma", "3")
    assert r.exit_code == 2 and "--sigma" in _stderr(r)
    r = run("degrade", hr, "-o", tmp_path / "a.tif", "--protocol", "nope")
    assert r.exit_code == 2
    r = run("degrade", hr, "-o", tmp_path / "a.tif", "--msi", tmp_path / "m.tif", "-s", 2, "--srf", "no-such-srf")
    assert r.exit_code == 2
    r = run("degrade", hr, "-o", tmp_path / "a.tif", "--msi", tmp_path / "m.tif", "-s", 2, "--srf", "sentinel2-10m")
    assert r.exit_code == 1 and "B8" in _stderr(r)  # 833 nm is outside 400-700 nm
    out = tmp_path / "w.tif"
    r = run("degrade", hr, "-o", out, "--protocol", "wald-gauss", "-s", 2, "--snr-hsi", 30, "--seed", 3, "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(_stdout(r))
    assert info["protocol"] == "wald-gauss" and info["snr_hsi_db"] == 30 and info["psf"]["phase_offset_hr"] == 0
    r = run("degrade", hr, "-o", out, "--protocol", "wald-gauss", "-s", 2)
    assert r.exit_code == 1 and "exists" in _stderr(r)
    assert run("degrade", hr, "-o", out, "--protocol", "wald-gauss", "-s", 2, "--overwrite", "-q").exit_code == 0
    # a non-centred phase shifts the LR georeferencing by δ = (k − s)/2 − p HR pixels
    r = run("degrade", hr, "-o", tmp_path / "ph.tif", "-s", 2, "--pad", 0, "--json")
    assert r.exit_code == 0, r.output
    psf = json.loads(_stdout(r))["psf"]
    delta = (psf["kernel_size"] - 2) / 2
    assert psf["phase_offset_hr"] == delta > 0
    t = read_cube(tmp_path / "ph.tif").meta.georef.transform
    assert t == pytest.approx((4.0, 0.0, 500000.0 + 2.0 * delta, 0.0, -4.0, 4200000.0 - 2.0 * delta))


def test_srf_length_mismatch_is_one_line_error(tmp_path, hr_file):
    hr, _ = hr_file
    np.save(tmp_path / "r.npy", np.ones((3, 30)))
    r = run("degrade", hr, "-o", tmp_path / "lr.tif", "--msi", tmp_path / "m.tif", "-s", 2, "--srf", tmp_path / "r.npy")
    assert r.exit_code == 1
    lines = [ln for ln in _stderr(r).splitlines() if "error" in ln]
    assert len(lines) == 1 and "31" in lines[0]
    assert not (tmp_path / "lr.tif").exists()


def test_metrics_bad_inputs(tmp_path):
    a = smooth_cube(4, 16, 16)
    write_cube(tmp_path / "a.tif", a)
    write_cube(tmp_path / "b.tif", a[:, :12])
    write_cube(tmp_path / "c.tif", a[:3])
    r = run("metrics", tmp_path / "a.tif", tmp_path / "b.tif")
    assert r.exit_code == 1 and "a.tif" in _stderr(r) and "b.tif" in _stderr(r)
    r = run("metrics", tmp_path / "a.tif", tmp_path / "c.tif")
    assert r.exit_code == 1 and "band count" in _stderr(r)
    r = run("metrics", tmp_path / "a.tif", tmp_path / "a.tif", "--scale", "1.5")
    assert r.exit_code == 2
    r = run("metrics", tmp_path / "a.tif", tmp_path / "a.tif", "--peak", "huge")
    assert r.exit_code == 2
    nan = a.copy()
    nan[1, 3, 3] = np.nan
    write_cube(tmp_path / "nan.tif", nan)
    r = run("metrics", tmp_path / "nan.tif", tmp_path / "a.tif")
    assert r.exit_code == 1 and "NaN" in _stderr(r)
    assert len([ln for ln in _stderr(r).splitlines() if ln.strip()]) == 1
    # NaN in the estimate is masked, not an error
    r = run("metrics", tmp_path / "a.tif", tmp_path / "nan.tif", "--json", "--no-ssim")
    assert r.exit_code == 0, r.output
    assert json.loads(_stdout(r))["conventions"]["masked_pixels"] == 1
    # a reference that declares nodata gets masked
    write_cube(tmp_path / "nd.tif", np.where(np.isnan(nan), -1.0, nan), CubeMeta(nodata=-1.0))
    r = run("metrics", tmp_path / "nd.tif", tmp_path / "a.tif", "--json", "--no-ssim")
    assert r.exit_code == 0, r.output
    assert json.loads(_stdout(r))["conventions"]["masked_pixels"] == 1


def test_metrics_outputs_table_csv_plot(tmp_path):
    a = smooth_cube(5, 40, 40)
    b = a + np.float32(0.01)
    write_cube(tmp_path / "a.tif", a, CubeMeta(wavelengths=np.linspace(450, 650, 5)))
    write_cube(tmp_path / "b.tif", b)
    r = run("metrics", tmp_path / "a.tif", tmp_path / "b.tif", "--scale", 2, "--per-band", "--crop", 2,
            "--csv", tmp_path / "m.csv", "--plot", tmp_path / "p.png")
    assert r.exit_code == 0, r.output
    assert "PSNR" in _stdout(r) and "per band" in _stdout(r)
    text = (tmp_path / "m.csv").read_text()
    assert "# crop: 2" in text and "# peak: 1.0" in text and text.splitlines()[-1].startswith("mean,")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    from PIL import Image

    assert Image.open(tmp_path / "p.png").size == (1350, 1080)  # the 3×3 report: curves, maps, quicklooks, spectra
    r = run("metrics", tmp_path / "a.tif", tmp_path / "b.tif", "--json", "--peak", "band-max")
    m = json.loads(_stdout(r))
    assert m["conventions"]["peak"] == "band-max"
    assert m["summary"]["psnr"] == pytest.approx(
        np.mean(10 * np.log10(a.reshape(5, -1).max(1).astype(float) ** 2 / 0.01 ** 2)), abs=1e-3)


def test_metrics_no_reference(tmp_path, hr_file):
    hr, z = hr_file
    z = z[:, :32, :32]
    write_cube(tmp_path / "truth.tif", z, CubeMeta(wavelengths=WL))
    lr, msi = tmp_path / "lr.tif", tmp_path / "msi.tif"
    assert run("degrade", tmp_path / "truth.tif", "-o", lr, "--msi", msi, "-s", 4, "--psf", "box",
               "--srf", "nikon-5100", "-q").exit_code == 0
    r = run("metrics", "--lr", lr, "--msi", msi, tmp_path / "truth.tif", "--psf", "box", "--srf", "nikon-5100", "--json")
    assert r.exit_code == 0, r.output
    m = json.loads(_stdout(r))
    s = m["summary"]
    assert s["lr_consistency_rmse"] < 1e-6 and s["msi_consistency_rmse"] < 1e-6
    assert 0 <= s["d_lambda"] <= 1 and 0 <= s["d_s"] <= 1
    r = run("metrics", "--lr", lr, "--msi", msi, tmp_path / "truth.tif", "--json")  # PSF and SRF estimated
    assert r.exit_code == 0, r.output
    m = json.loads(_stdout(r))
    assert "estimated" in m["conventions"]["psf_rule"] and "estimated" in m["conventions"]["srf_rule"]
    assert m["summary"]["msi_consistency_psnr"] > 30
    r = run("metrics", "--lr", lr, tmp_path / "truth.tif")
    assert r.exit_code == 2
    r = run("metrics", "--lr", lr, "--msi", msi, tmp_path / "truth.tif", "--scale", 3)
    assert r.exit_code == 2


@pytest.mark.shared
def test_cave_gauss_x8_protocol_on_scene(tmp_path, shared_data):
    scene = shared_data / "cave" / "beads_ms"
    lr, msi = tmp_path / "lr.tif", tmp_path / "msi.tif"
    r = run("degrade", scene, "--protocol", "cave-gauss-x8", "-o", lr, "--msi", msi, "--json")
    assert r.exit_code == 0, r.output
    lo, mo = read_cube(lr), read_cube(msi)
    assert lo.shape == (31, 64, 64) and mo.shape == (3, 512, 512)
    assert mo.meta.band_names == ["R", "G", "B"]
    assert 0 <= np.nanmin(lo.data) and np.nanmax(lo.data) <= 1.0


def test_degrade_declares_nan_nodata(tmp_path):
    """A scene with nodata gives LR and MSI files that declare NaN as nodata (GDAL sees it)."""
    import rasterio

    z = smooth_cube(31, 32, 32)
    z[:, :4, :4] = np.nan
    write_cube(tmp_path / "hr.tif", z, CubeMeta(wavelengths=WL))
    r = run("degrade", tmp_path / "hr.tif", "-o", tmp_path / "lr.tif", "--msi", tmp_path / "msi.tif", "-s", 4,
            "--srf", "nikon-5100", "-q")
    assert r.exit_code == 0, r.output
    for f in ("lr.tif", "msi.tif"):
        with rasterio.open(tmp_path / f) as ds:
            assert ds.nodata is not None and np.isnan(ds.nodata)
