"""ENVI: files written by SPy and GDAL read bit-exactly; files hsfuse writes read back by SPy and GDAL."""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from spectral.io import envi as spy_envi

from conftest import smooth_cube
from hsfuse.cube import CubeMeta, GeoRef, Window
from hsfuse.errors import FormatError, OutputError
from hsfuse.io import create_writer, open_cube, read_cube, write_cube
from hsfuse.io.envi import to_nm

UTM13 = CRS.from_epsg(32613)


def _ints(dtype: str, shape=(5, 7, 6), seed=0) -> np.ndarray:
    """A (C, H, W) array of ``dtype`` spanning much of its range (distinct H, W, C catch axis mix-ups)."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.normal(0, 1000, shape).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(max(info.min, -(2**40)), min(info.max, 2**40), shape, endpoint=True).astype(dt)


@pytest.mark.parametrize("interleave", ["bsq", "bil", "bip"])
@pytest.mark.parametrize("dtype", ["uint8", "int16", "int32", "float32", "float64", "uint16", "uint32", "int64", "uint64"])
@pytest.mark.parametrize("byteorder", [0, 1])
def test_spy_written_files_read_bit_exactly(tmp_path, interleave, dtype, byteorder):
    chw = _ints(dtype)
    hdr = tmp_path / "x.hdr"
    spy_envi.save_image(str(hdr), chw.transpose(1, 2, 0), interleave=interleave, byteorder=byteorder, ext=".img",
                        metadata={"wavelength": [450, 500, 550, 600, 650], "wavelength units": "Nanometers"})
    with open_cube(hdr) as src:
        assert src.shape == chw.shape
        raw = src.read(raw=True)
        assert raw.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(raw, chw)
        win = src.read(Window(2, 1, 3, 4), bands=[4, 0, 2], raw=True)
        np.testing.assert_array_equal(win, chw[[4, 0, 2], 2:5, 1:5])
        assert src.meta.source["interleave"] == interleave
        assert src.meta.source["byte_order"] == byteorder
        np.testing.assert_allclose(src.meta.wavelengths, [450, 500, 550, 600, 650])
    np.testing.assert_array_equal(raw, chw)  # a copy, valid after the mapping closed


def _write_header(path, text: str) -> None:
    path.write_text("ENVI\n" + text.strip() + "\n")


def test_header_fields_are_interpreted(tmp_path):
    """µm wavelengths, fwhm, nodata, scale factor, bbl, names, description, header offset, map info + CSS."""
    raw = np.arange(3 * 4 * 5, dtype="<u2").reshape(3, 4, 5) + 100
    raw[1, 2, 3] = 0
    (tmp_path / "s.dat").write_bytes(b"\xff" * 16 + raw.tobytes())
    css = UTM13.to_wkt()
    _write_header(tmp_path / "s.hdr", f"""
description = {{A test scene
 over two lines}}
samples = 5
lines = 4
bands = 3
header offset = 16
file type = ENVI Standard
data type = 12
interleave = bsq
byte order = 0
data ignore value = 0
reflectance scale factor = 10000
map info = {{UTM, 1.5, 2.5, 500030.0, 4000060.0, 30.0, 30.0, 13, North, WGS-84, units=Meters}}
coordinate system string = {{{css}}}
wavelength units = Micrometers
wavelength = {{0.45, 0.55,
 0.65}}
fwhm = {{0.01, 0.01, 0.012}}
bbl = {{1, 0, 1}}
band names = {{blue, green, red}}
sensor type = Unknown
""")
    with open_cube(tmp_path / "s.hdr") as src:
        m = src.meta
        np.testing.assert_allclose(m.wavelengths, [450, 550, 650])
        np.testing.assert_allclose(m.fwhm, [10, 10, 12])
        assert m.nodata == 0 and m.scale == pytest.approx(1e-4)
        assert m.band_names == ["blue", "green", "red"]
        np.testing.assert_array_equal(m.bad_bands, [1, 0, 1])
        assert "two lines" in m.description
        assert CRS.from_wkt(m.georef.crs_wkt).to_epsg() == 32613
        # reference pixel (1.5, 2.5) is 1-based: the image corner lies half a pixel left, 1.5 pixels up
        assert m.georef.transform == pytest.approx((30, 0, 500015, 0, -30, 4000105))
        assert m.source["header"]["sensor type"] == "Unknown"
        np.testing.assert_array_equal(src.read(raw=True), raw)
        phys = src.read()
    assert np.isnan(phys[1, 2, 3]) and np.isnan(phys).sum() == 1
    np.testing.assert_allclose(phys[0], raw[0] * 1e-4, rtol=1e-6)
    with rasterio.open(tmp_path / "s.dat") as ds:  # GDAL agrees on the georeferencing
        assert tuple(ds.transform)[:6] == pytest.approx(m.georef.transform)


def test_crs_from_map_info_without_css(tmp_path):
    (tmp_path / "m.img").write_bytes(np.zeros((1, 2, 2), "u1").tobytes())
    _write_header(tmp_path / "m.hdr", """
samples = 2
lines = 2
bands = 1
data type = 1
interleave = bsq
byte order = 0
map info = {UTM, 1, 1, 300000, 5000000, 10, 10, 33, South, WGS-84, units=Meters, rotation=30}
""")
    m = read_cube(tmp_path / "m.hdr").meta
    assert CRS.from_wkt(m.georef.crs_wkt).to_epsg() == 32733
    with rasterio.open(tmp_path / "m.img") as ds:
        assert tuple(ds.transform)[:6] == pytest.approx(m.georef.transform)


def test_unconvertible_wavelengths_are_kept_verbatim(tmp_path):
    spy_envi.save_image(str(tmp_path / "k.hdr"), np.zeros((2, 2, 2), "uint8"), interleave="bsq", ext=".img",
                        metadata={"wavelength": [1000, 2000], "wavelength units": "Wavenumber"})
    src = read_cube(tmp_path / "k.hdr")
    assert src.meta.wavelengths is None
    write_cube(tmp_path / "o.hdr", src.data, src.meta)
    text = (tmp_path / "o.hdr").read_text()
    assert "wavelength units = Wavenumber" in text and "wavelength = {1000, 2000}" in text


@pytest.mark.parametrize("units,values,expected", [
    ("Nanometers", [400, 500], [400, 500]),
    ("micrometers", [0.4, 0.5], [400, 500]),
    (None, [0.4, 2.5], [400, 2500]),  # no units and all < 100: µm
    (None, [400, 2500], [400, 2500]),
    ("Unknown", [1.2, 1.3], [1200, 1300]),
    ("Wavenumber", [4000, 3000], None),
])
def test_wavelength_units_rule(units, values, expected):
    got = to_nm(values, units)
    assert (got is None) if expected is None else np.allclose(got, expected)


@pytest.mark.parametrize("ext", [".dat", ".raw", "", ".IMG"])
def test_data_file_found_and_accepted_as_input(tmp_path, ext):
    cube = _ints("int16", (2, 3, 4))
    spy_envi.save_image(str(tmp_path / "a.hdr"), cube.transpose(1, 2, 0), interleave="bsq", ext=ext or None)
    data = tmp_path / f"a{ext}"
    assert data.exists()
    np.testing.assert_array_equal(read_cube(tmp_path / "a.hdr").data, cube)
    with open_cube(data, fmt="envi") as src:  # the data file instead of the header
        np.testing.assert_array_equal(src.read(raw=True), cube)


def test_gdal_written_file(tmp_path):
    cube = _ints("float32", (4, 6, 5))
    tr = rasterio.Affine(30, 0, 500000, 0, -30, 4000000)
    with rasterio.open(tmp_path / "g.img", "w", driver="ENVI", width=5, height=6, count=4, dtype="float32",
                       crs=UTM13, transform=tr, nodata=-9999, interleave="bil") as ds:
        ds.write(cube)
    with open_cube(tmp_path / "g.hdr") as src:
        np.testing.assert_array_equal(src.read(raw=True), cube)
        assert src.meta.nodata == -9999
        assert CRS.from_wkt(src.meta.georef.crs_wkt).to_epsg() == 32613
        assert src.meta.georef.transform == pytest.approx(tuple(tr)[:6])


def _meta(bands: int, **kw) -> CubeMeta:
    base = dict(wavelengths=np.linspace(420.5, 980.25, bands), fwhm=np.full(bands, 7.5),
                band_names=[f"b{i}, x" for i in range(bands)], nodata=-1.0,
                georef=GeoRef(UTM13.to_wkt(), (30.0, 0.0, 500000.0, 0.0, -30.0, 4000000.0)),
                bad_bands=np.array([1] * (bands - 1) + [0], np.uint8), description="written by hsfuse")
    base.update(kw)
    return CubeMeta(**base)


@pytest.mark.parametrize("interleave", ["bsq", "bil", "bip"])
def test_written_files_read_by_spy_and_gdal(tmp_path, interleave):
    cube = smooth_cube(6, 9, 11)
    cube[2, 3, 4] = np.nan
    meta = _meta(6, source={"interleave": interleave})
    out = write_cube(tmp_path / "o.hdr", cube, meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.hdr", "o.img"]  # no temp files left

    img = spy_envi.open(str(tmp_path / "o.hdr"), str(tmp_path / "o.img"))
    np.testing.assert_array_equal(img.load().transpose(2, 0, 1)[:, ~np.isnan(cube).any(0)], cube[:, ~np.isnan(cube).any(0)])
    assert img.metadata["interleave"] == interleave
    np.testing.assert_allclose([float(v) for v in img.metadata["wavelength"]], meta.wavelengths)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. NotGeoreferencedWarning would mean GDAL lost the transform
        with rasterio.open(tmp_path / "o.img") as ds:
            assert ds.count == 6 and ds.crs.to_epsg() == 32613
            assert tuple(ds.transform)[:6] == pytest.approx(meta.georef.transform)
            assert ds.nodata == -1
            gdal = ds.read()
    np.testing.assert_array_equal(gdal, np.where(np.isnan(cube), -1, cube))  # NaN stored as the nodata value

    back = read_cube(out)
    np.testing.assert_array_equal(np.isnan(back.data), np.isnan(cube))
    np.testing.assert_allclose(back.meta.wavelengths, meta.wavelengths)
    np.testing.assert_allclose(back.meta.fwhm, meta.fwhm)
    assert back.meta.band_names == [f"b{i}; x" for i in range(6)]  # commas would split the list
    np.testing.assert_array_equal(back.meta.bad_bands, meta.bad_bands)
    assert back.meta.description == "written by hsfuse"
    assert back.meta.georef.transform == pytest.approx(meta.georef.transform)


def test_roundtrip_keeps_scale_and_extra_fields_windowed(tmp_path):
    """read -> write (window by window) -> read keeps raw numbers, scale factor and unparsed fields."""
    raw = _ints("uint16", (4, 40, 9)) // 8
    spy_envi.save_image(str(tmp_path / "r.hdr"), raw.transpose(1, 2, 0), interleave="bil", ext=".img", byteorder=1,
                        metadata={"reflectance scale factor": 10000, "sensor type": "AVIRIS", "data ignore value": 0})
    src = open_cube(tmp_path / "r.hdr")
    with create_writer(tmp_path / "w.hdr", src.shape, src.meta, dtype=src.dtype) as w:
        for r in range(0, src.height, 16):
            win = Window(r, 0, 16, src.width).clip(src.height, src.width)
            w.write(src.read(win), win)
    src.close()
    with open_cube(tmp_path / "w.hdr") as back:
        np.testing.assert_array_equal(back.read(raw=True), raw)
        assert back.meta.scale == pytest.approx(1e-4)
        assert back.meta.source["interleave"] == "bil" and back.meta.source["byte_order"] == 0  # native
        assert back.meta.source["header"]["sensor type"] == "AVIRIS"
    assert "reflectance scale factor = 10000\n" in (tmp_path / "w.hdr").read_text()


def test_rotated_transform_roundtrip_through_gdal(tmp_path):
    tr = rasterio.Affine.translation(500000, 4000000) @ rasterio.Affine.rotation(20) @ rasterio.Affine.scale(30, -30)
    meta = CubeMeta(georef=GeoRef(UTM13.to_wkt(), tuple(tr)[:6]))
    write_cube(tmp_path / "rot.hdr", smooth_cube(2, 4, 5), meta)
    with rasterio.open(tmp_path / "rot.img") as ds:
        assert tuple(ds.transform)[:6] == pytest.approx(tuple(tr)[:6])
    assert read_cube(tmp_path / "rot.hdr").meta.georef.transform == pytest.approx(tuple(tr)[:6])


def test_unsupported_writes_are_refused(tmp_path):
    with pytest.raises(OutputError, match="int8"):
        create_writer(tmp_path / "x.hdr", (1, 2, 2), CubeMeta(), "int8")
    sheared = CubeMeta(georef=GeoRef(None, (30.0, 5.0, 0.0, 0.0, -30.0, 0.0)))
    with pytest.raises(OutputError, match="shear"):
        create_writer(tmp_path / "x.hdr", (1, 2, 2), sheared, "float32")
    assert list(tmp_path.iterdir()) == []


def test_complex_data_type_is_refused(tmp_path):
    (tmp_path / "c.img").write_bytes(bytes(64))
    _write_header(tmp_path / "c.hdr", "samples = 2\nlines = 2\nbands = 1\ndata type = 6\ninterleave = bsq\nbyte order = 0")
    with pytest.raises(FormatError, match="complex"):
        open_cube(tmp_path / "c.hdr")


@pytest.mark.parametrize("interleave", ["bsq", "bip"])
def test_windowed_reads_stay_within_memory_budget(tmp_path, interleave):
    """A 200 MB file read 64 rows at a time never holds more than a window (memmap, not a load)."""
    bands, height, width = 50, 2000, 1000  # uint16: 200 MB
    data = tmp_path / "big.img"
    with open(data, "wb") as fh:
        fh.truncate(bands * height * width * 2)  # sparse: cheap to make, same mapping cost to read
    _write_header(tmp_path / "big.hdr", f"samples = {width}\nlines = {height}\nbands = {bands}\ndata type = 12\n"
                                       f"interleave = {interleave}\nbyte order = 0")
    mm = np.memmap(data, dtype="<u2", mode="r+", shape=(bands, height, width) if interleave == "bsq" else (height, width, bands))
    if interleave == "bsq":
        mm[7, 1999, 999] = 4242
    else:
        mm[1999, 999, 7] = 4242
    mm.flush()
    del mm
    tracemalloc.start()
    try:
        with open_cube(tmp_path / "big.hdr") as src:
            peak_max, found = 0.0, 0.0
            for r in range(0, height, 64):
                block = src.read(Window(r, 0, 64, width))
                found = max(found, float(block.max()))
                del block
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found == 4242
    assert peak < 30 * 2**20, f"peak {peak / 2**20:.1f} MiB"
