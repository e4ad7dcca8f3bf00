"""`describe()` / `hsfuse info`: what a cube holds, streamed; real data in ../shared when present."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rasterio.crs import CRS
from typer.testing import CliRunner

from conftest import smooth_cube
from hsfuse.cli import app
from hsfuse.cube import CubeMeta, GeoRef
from hsfuse.errors import FormatError
from hsfuse.info import describe
from hsfuse.io import write_cube

runner = CliRunner()


@pytest.fixture
def envi_scene(tmp_path):
    cube = smooth_cube(12, 20, 16)
    cube[3, 4, 5] = np.nan
    meta = CubeMeta(wavelengths=np.linspace(400, 950, 12), fwhm=np.full(12, 10.0), nodata=0.0, scale=1e-4,
                    band_names=[f"B{i}" for i in range(12)],
                    georef=GeoRef(CRS.from_epsg(32633).to_wkt(), (20.0, 0.0, 400000.0, 0.0, -20.0, 5500000.0)))
    return write_cube(tmp_path / "scene.hdr", cube, meta, dtype="uint16")


def test_describe_envi(envi_scene):
    d = describe(envi_scene)
    assert d["format"] == "envi" and d["dtype"] == "uint16" and d["interleave"] == "bsq"
    assert d["shape"] == {"bands": 12, "height": 20, "width": 16}
    assert d["wavelengths"] == {"count": 12, "min_nm": 400.0, "max_nm": 950.0, "step_nm": 50.0}
    assert d["fwhm"] is True and d["nodata"] == 0 and d["scale"] == pytest.approx(1e-4)
    assert d["georef"]["epsg"] == 32633 and d["georef"]["pixel_size"] == [20.0, 20.0]
    assert d["georef"]["crs"] == "WGS_1984_UTM_Zone_33N"
    assert d["band_names"] == ["B0", "B1", "B2", "B3", "B4"] and d["band_names_total"] == 12
    files = [envi_scene, envi_scene.with_suffix(".img")]
    assert d["files"] == [str(f) for f in files] and d["size_bytes"] == sum(f.stat().st_size for f in files)
    s = d["stats"]
    assert s["sampled"] is False and s["values"] == 12 * 20 * 16
    assert s["nodata_values"] == 1 and s["nan_values"] == 0  # the NaN was stored as nodata
    assert 0.05 <= s["min"] <= s["mean"] <= s["max"] <= 0.95
    assert s["raw_min"] == round(s["min"] / 1e-4)


def test_large_images_are_sampled(tmp_path):
    write_cube(tmp_path / "big.tif", smooth_cube(3, 400, 50))
    s = describe(tmp_path / "big.tif", sample_pixels=2_000)["stats"]
    assert s["sampled"] is True and 2_000 <= s["pixels"] < 4_000
    assert describe(tmp_path / "big.tif", sample_pixels=10**9)["stats"]["pixels"] == 20_000


def test_cli_json_is_one_object(envi_scene):
    result = runner.invoke(app, ["info", str(envi_scene), "--json"])
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    assert d["shape"]["bands"] == 12 and d["georef"]["epsg"] == 32633


def test_cli_table(envi_scene):
    result = runner.invoke(app, ["info", str(envi_scene)])
    assert result.exit_code == 0, result.output
    for text in ("12 bands x 20 rows x 16 cols", "400-950 nm", "EPSG:32633", "1 nodata"):
        assert text in result.stdout


@pytest.mark.shared
def test_real_data(shared_data):
    scenes = sorted(p for p in (shared_data / "cave").iterdir() if p.is_dir())[:2]
    for scene in scenes:
        d = describe(scene, sample_pixels=50_000)
        assert d["format"] == "bands" and d["shape"] == {"bands": 31, "height": 512, "width": 512}
        assert d["wavelengths"]["min_nm"] == 400 and d["wavelengths"]["max_nm"] == 700
        assert 0 <= d["stats"]["min"] <= d["stats"]["max"] <= 1
    houston = shared_data / "houston2018_dfc_subset" / "houston_dataset.mat"
    with pytest.raises(FormatError, match=r"several 3-D arrays \(hyprImg, rgbImg\): choose one with option 'var'"):
        describe(houston)
    d = describe(houston, var="hyprImg")
    assert d["shape"] == {"bands": 48, "height": 128, "width": 128} and d["dtype"] == "uint16"
    assert (d["stats"]["raw_min"], d["stats"]["raw_max"]) == (188, 19534)
    paris = shared_data / "paris_eo1_hyperion_ali" / "paris_data_hs_ms.mat"
    with pytest.raises(FormatError, match=r"\(HSim, MSim\)"):
        describe(paris)
    assert describe(paris, var="HSim")["shape"] == {"bands": 128, "height": 72, "width": 72}
    assert describe(paris, var="MSim")["shape"] == {"bands": 9, "height": 72, "width": 72}
    pan = describe(shared_data / "paris_eo1_hyperion_ali" / "paris_data_hs_pan.mat")
    assert pan["variable"] == "HSim" and pan["shape"] == {"bands": 128, "height": 72, "width": 58}
