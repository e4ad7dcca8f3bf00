"""TIFF: tifffile and rasterio files read bit-exactly with metadata; hsfuse GeoTIFFs read back by both."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import tifffile
from rasterio.crs import CRS
from rasterio.errors import RasterioIOError

from conftest import smooth_cube
from hsfuse.cube import CubeMeta, GeoRef, Window
from hsfuse.errors import FormatError
from hsfuse.io import create_writer, open_cube, read_cube, write_cube
from hsfuse.io import tiff as tiff_mod

TRANSFORM = (10.0, 0.0, 300000.0, 0.0, -10.0, 5000000.0)


def _cube(dtype="uint16", shape=(6, 9, 7)) -> np.ndarray:
    rng = np.random.default_rng(3)
    if np.dtype(dtype).kind == "f":
        return rng.normal(size=shape).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)


@pytest.mark.parametrize("layout", ["separate", "contig", "pages"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_tifffile_layouts_read_bit_exactly(tmp_path, layout, dtype):
    cube = _cube(dtype)
    path = tmp_path / "t.tif"
    if layout == "separate":
        tifffile.imwrite(path, cube, photometric="minisblack", planarconfig="separate")
    elif layout == "contig":  # one (H, W, C) page is C bands
        tifffile.imwrite(path, cube.transpose(1, 2, 0), photometric="minisblack", planarconfig="contig")
    else:  # C single-band pages
        tifffile.imwrite(path, cube, photometric="minisblack")
    with open_cube(path) as src:
        assert src.shape == cube.shape and src.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(src.read(raw=True), cube)
        np.testing.assert_array_equal(src.read(Window(1, 2, 4, 3), bands=[5, 0], raw=True), cube[[5, 0], 1:5, 2:5])
        assert src.meta.source["layout"] == ("pages" if layout == "pages" else "image")


def test_compressed_page_stack(tmp_path):
    cube = _cube()
    tifffile.imwrite(tmp_path / "z.tif", cube, photometric="minisblack", compression="zlib")
    with open_cube(tmp_path / "z.tif") as src:
        np.testing.assert_array_equal(src.read(raw=True), cube)


def test_rasterio_geotiff_metadata(tmp_path):
    cube = _cube("int16")
    path = tmp_path / "g.tif"
    with rasterio.open(path, "w", driver="GTiff", width=7, height=9, count=6, dtype="int16", crs="EPSG:32631",
                       transform=rasterio.Affine(*TRANSFORM), nodata=-32768) as ds:
        ds.write(cube)
        for i in range(6):
            ds.update_tags(i + 1, wavelength=str(0.5 + 0.1 * i), fwhm="0.01", wavelength_units="micrometers")
            ds.set_band_description(i + 1, f"band {i}")
        ds.scales, ds.offsets = (0.001,) * 6, (0.5,) * 6
    with open_cube(path) as src:
        m = src.meta
        np.testing.assert_array_equal(src.read(raw=True), cube)
        assert CRS.from_wkt(m.georef.crs_wkt).to_epsg() == 32631
        assert m.georef.transform == pytest.approx(TRANSFORM)
        assert m.nodata == -32768
        np.testing.assert_allclose(m.wavelengths, 500 + 100 * np.arange(6))
        np.testing.assert_allclose(m.fwhm, 10)
        assert m.band_names == [f"band {i}" for i in range(6)]
        assert (m.scale, m.offset) == (pytest.approx(0.001), 0.5)
        phys = src.read()
    expect = np.where(cube == -32768, np.nan, cube * np.float32(0.001) + np.float32(0.5))
    np.testing.assert_allclose(phys, expect, rtol=1e-6)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_dataset_tag_wavelength_list_and_no_georef(tmp_path):
    cube = _cube()
    path = tmp_path / "d.tif"
    tifffile.imwrite(path, cube, photometric="minisblack", planarconfig="separate")
    with rasterio.open(path, "r+") as ds:
        ds.update_tags(wavelength="{400, 410, 420, 430, 440, 450}")
    m = read_cube(path).meta
    np.testing.assert_allclose(m.wavelengths, [400, 410, 420, 430, 440, 450])
    assert m.georef is None


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_overviews_are_not_bands(tmp_path):
    cube = _cube(shape=(3, 64, 64))
    path = tmp_path / "ov.tif"
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint16") as ds:
        ds.write(cube)
        ds.build_overviews([2, 4])
    with open_cube(path) as src:
        assert src.shape == (3, 64, 64)
        np.testing.assert_array_equal(src.read(raw=True), cube)


def test_pages_of_different_sizes_are_refused(tmp_path):
    path = tmp_path / "mixed.tif"
    tifffile.imwrite(path, np.zeros((8, 8), "uint8"))
    tifffile.imwrite(path, np.zeros((4, 8), "uint8"), append=True)
    with pytest.raises(FormatError, match="different sizes: page 0: 8x8, page 1: 4x8"):
        open_cube(path)


def test_falls_back_to_tifffile_when_gdal_cannot_read(tmp_path, monkeypatch):
    cube = _cube()
    tifffile.imwrite(tmp_path / "f.tif", cube.transpose(1, 2, 0), photometric="minisblack", planarconfig="contig")

    def refuse(path):
        raise RasterioIOError("not recognized")

    monkeypatch.setattr(tiff_mod, "RasterioSource", refuse)
    with open_cube(tmp_path / "f.tif") as src:
        np.testing.assert_array_equal(src.read(raw=True), cube)
        np.testing.assert_array_equal(src.read(Window(2, 2, 3, 3), bands=[1], raw=True), cube[[1], 2:5, 2:5])


@pytest.mark.parametrize("compress", [None, "deflate"])
def test_written_geotiff_read_by_rasterio_and_tifffile(tmp_path, compress):
    cube = smooth_cube(5, 300, 270)  # spans several 256x256 tiles
    cube[1, 10, 20] = np.nan
    meta = CubeMeta(wavelengths=np.linspace(450, 850, 5), fwhm=np.full(5, 12.0), band_names=list("abcde"),
                    nodata=-9999.0, georef=GeoRef(CRS.from_epsg(32631).to_wkt(), TRANSFORM))
    path = tmp_path / "o.tif"
    with create_writer(path, cube.shape, meta, "float32", compress=compress) as w:
        for r in range(0, 300, 128):  # windowed writes
            win = Window(r, 0, 128, 270).clip(300, 270)
            w.write(cube[:, win.slices[0], win.slices[1]], win)
    assert [p.name for p in tmp_path.iterdir()] == ["o.tif"]
    with rasterio.open(path) as ds:
        assert ds.count == 5 and ds.crs.to_epsg() == 32631
        assert tuple(ds.transform)[:6] == pytest.approx(TRANSFORM)
        assert ds.nodata == -9999 and ds.block_shapes[0] == (256, 256)
        assert ds.descriptions == tuple("abcde")
        assert float(ds.tags(3)["wavelength"]) == pytest.approx(650)
        assert [float(v) for v in ds.tags()["wavelength"].split(",")] == pytest.approx(list(meta.wavelengths))
        assert (ds.compression is not None) == bool(compress)
        np.testing.assert_array_equal(ds.read(), np.where(np.isnan(cube), -9999, cube))
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 1  # ONE N-band image, not N pages
        np.testing.assert_array_equal(tif.asarray(), np.where(np.isnan(cube), -9999, cube))
    back = read_cube(path)
    np.testing.assert_array_equal(np.isnan(back.data), np.isnan(cube))
    np.testing.assert_allclose(back.meta.wavelengths, meta.wavelengths)
    np.testing.assert_allclose(back.meta.fwhm, meta.fwhm)


def test_scaled_integer_roundtrip(tmp_path):
    cube = _cube("uint16")
    meta = CubeMeta(scale=1 / 65535, description="scaled")
    write_cube(tmp_path / "s.tif", cube.astype(np.float64) / 65535, meta, dtype="uint16")
    assert (tmp_path / "s.tif").stat().st_size < 4 * cube.nbytes  # a small image is not padded to 256x256 tiles
    with open_cube(tmp_path / "s.tif") as src:
        np.testing.assert_array_equal(src.read(raw=True), cube)
        assert src.meta.scale == pytest.approx(1 / 65535) and src.meta.description == "scaled"


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_gdal_envi_to_gtiff_conversion_keeps_wavelengths(tmp_path):
    """GDAL puts µm wavelengths in band tags and FWHM only in its IMAGERY domain."""
    from rasterio.shutil import copy as gdal_copy
    from spectral.io import envi as spy_envi

    cube = _cube(shape=(5, 4, 3))
    spy_envi.save_image(str(tmp_path / "e.hdr"), cube.transpose(1, 2, 0), interleave="bsq", ext=".img",
                        metadata={"wavelength": [0.5, 0.6, 0.7, 0.8, 0.9], "wavelength units": "Micrometers",
                                  "fwhm": [0.01] * 5})
    gdal_copy(tmp_path / "e.img", tmp_path / "e.tif", driver="GTiff")
    with open_cube(tmp_path / "e.tif") as src:
        np.testing.assert_array_equal(src.read(raw=True), cube)
        np.testing.assert_allclose(src.meta.wavelengths, [500, 600, 700, 800, 900])
        np.testing.assert_allclose(src.meta.fwhm, 10)
