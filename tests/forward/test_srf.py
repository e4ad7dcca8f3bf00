"""SRF loading, resampling and normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from hsfuse.errors import InputError, UsageError
from hsfuse.forward.srf import LANDSAT_OLI, SENTINEL2_10M, SENTINEL2_20M, builtin_srfs, load_srf, srf_from_matrix

WL31 = np.arange(400.0, 701.0, 10.0)
WL_WIDE = np.arange(400.0, 2501.0, 10.0)


@pytest.mark.parametrize("name", sorted(builtin_srfs()))
def test_builtin_rows_sum_to_one(name):
    wide = name.startswith(("sentinel", "landsat", "worldview"))
    wl = WL_WIDE if wide else WL31
    srf = load_srf(name, wl, len(wl))
    assert srf.matrix.shape == (len(srf.band_names), len(wl))
    np.testing.assert_allclose(srf.matrix.sum(axis=1), 1.0, atol=1e-12)
    assert (srf.matrix >= 0).all()
    assert srf.centres is not None and np.all((srf.centres > 350) & (srf.centres < 2300))
    assert builtin_srfs()[name].source  # every built-in says where its numbers come from


def test_camera_and_cie():
    s = load_srf("Nikon 5100 (NPL)", WL31, 31)  # colour-science's own name works as alias
    assert s.band_names == ["R", "G", "B"]
    assert s.centres[0] > s.centres[1] > s.centres[2]
    x = load_srf("cie1931", WL31, 31)
    assert x.band_names == ["X", "Y", "Z"] and x.coverage.min() < 1.0  # 360-830 nm, partly outside 400-700


def test_shipped_tables_equal_colour_science():
    """The CSV tables in hsfuse/data are colour-science's, value for value (so the dependency can go)."""
    colour = pytest.importorskip("colour")
    from hsfuse.forward.srf import DATA

    for file, m in (("nikon-5100.csv", colour.MSDS_CAMERA_SENSITIVITIES["Nikon 5100 (NPL)"]),
                    ("sigma-sdmerrill.csv", colour.MSDS_CAMERA_SENSITIVITIES["Sigma SDMerill (NPL)"]),
                    ("cie1931.csv", colour.MSDS_CMFS["CIE 1931 2 Degree Standard Observer"])):
        arr = np.loadtxt(DATA / file, delimiter=",", skiprows=1)
        np.testing.assert_array_equal(arr[:, 0], np.asarray(m.wavelengths, float))
        np.testing.assert_array_equal(arr[:, 1:], np.asarray(m.values, float))


def test_band_selection_and_support_errors():
    s = load_srf("sentinel2-10m:B2,B3,B4", WL31, 31)
    assert s.band_names == ["B2", "B3", "B4"]
    np.testing.assert_allclose(s.centres, [492.4, 559.8, 664.6])
    with pytest.raises(InputError, match="B8"):
        load_srf("sentinel2-10m", WL31, 31)  # B8 (833 nm) lies outside 400-700 nm
    with pytest.raises(UsageError):
        load_srf("sentinel2-10m:B9", WL31, 31)
    with pytest.raises(UsageError):
        load_srf("no-such-sensor", WL31, 31)
    with pytest.raises(InputError, match="no wavelengths"):
        load_srf("sentinel2-10m:B2", None, 31)


def test_gaussian_band_resampling_exact():
    wl = np.arange(400.0, 701.0, 1.0)
    s = load_srf("landsat-oli:B3", wl, len(wl))
    name, c, f = LANDSAT_OLI[2]
    g = np.exp(-0.5 * ((wl - c) / (f / 2.354820045)) ** 2)
    g[np.abs(wl - c) > 1.5 * f] = 0
    np.testing.assert_allclose(s.matrix[0], g / g.sum(), atol=2e-4 * g.max() / g.sum())


def test_csv_table_linear_interp_zero_outside(tmp_path):
    p = tmp_path / "cam.csv"
    p.write_text("# a comment\nwavelength,red,green\n450,0,1\n500,1,1\n550,0,1\n")
    wl = np.array([400.0, 450.0, 475.0, 500.0, 525.0, 560.0])
    s = load_srf(str(p), wl, 6)
    assert s.band_names == ["red", "green"]
    red = np.array([0, 0, 0.5, 1, 0.5, 0])
    green = np.array([0, 1, 1, 1, 1, 0])
    np.testing.assert_allclose(s.matrix[0], red / red.sum())
    np.testing.assert_allclose(s.matrix[1], green / green.sum())
    assert s.centres[0] == pytest.approx(500.0)
    t = tmp_path / "tab.tsv"
    t.write_text("Wavelength\tB1\n440\t0.5\n460\t1.0\n480\t-0.01\n")  # tiny negative noise clipped
    s2 = load_srf(str(t), np.array([440.0, 460.0, 480.0]), 3)
    np.testing.assert_allclose(s2.matrix[0], [1 / 3, 2 / 3, 0])


def test_matrix_files(tmp_path):
    rng = np.random.default_rng(0)
    m = rng.uniform(0, 1, (4, 31))
    np.save(tmp_path / "m.npy", m)
    np.save(tmp_path / "mt.npy", m.T)
    a = load_srf(str(tmp_path / "m.npy"), None, 31)
    b = load_srf(str(tmp_path / "mt.npy"), WL31, 31)
    np.testing.assert_allclose(a.matrix, b.matrix)
    np.testing.assert_allclose(a.matrix.sum(1), 1.0)
    assert a.centres is None and b.centres is not None
    # SRF length not matching the cube's bands -> clear error
    np.save(tmp_path / "bad.npy", rng.uniform(0, 1, (3, 30)))
    with pytest.raises(InputError, match="31"):
        load_srf(str(tmp_path / "bad.npy"), WL31, 31)
    with pytest.raises(InputError, match="wavelengths"):
        load_srf("cie1931", WL31[:30], 31)
    # a .npy wavelength table (first column increasing nm)
    tab = np.column_stack([np.arange(400.0, 701.0, 5.0), np.linspace(0, 1, 61)])
    np.save(tmp_path / "tab.npy", tab)
    t = load_srf(str(tmp_path / "tab.npy"), WL31, 31)
    np.testing.assert_allclose(t.matrix[0], (WL31 - 400) / 300 / ((WL31 - 400) / 300).sum())


def test_mhf_response_coefficient_special_case(tmp_path):
    rng = np.random.default_rng(1)
    r = rng.uniform(0, 1, (31, 3))
    r /= r.sum(0)
    path = tmp_path / "response_coefficient.mat"
    scipy.io.savemat(path, {"R": r, "C": np.ones((32, 32)) / 1024})
    s = load_srf(str(path), None, 31)  # picks R, no wavelengths needed
    assert s.band_names == ["R", "G", "B"]
    np.testing.assert_allclose(s.matrix, r.T)
    s2 = load_srf(f"{path}:R", WL31, 31)
    np.testing.assert_allclose(s2.matrix, r.T)
    with pytest.raises(InputError):
        load_srf(f"{path}:X", WL31, 31)


def test_srf_from_matrix():
    s = srf_from_matrix(np.array([[1.0, 1.0, 0.0]]), np.array([500.0, 600.0, 700.0]))
    np.testing.assert_allclose(s.matrix, [[0.5, 0.5, 0]])
    assert s.centres[0] == pytest.approx(550.0)


@pytest.mark.shared
def test_gaussian_specs_match_published_tables(shared_data):
    """Our centre numbers agree with the centroids of the real 1 nm SRF tables in ../shared (not copied)."""
    folder = shared_data / "srf" / "prosail_sensor_srf"
    for fname, spec, cols in (("Sentinel_2A_Spectral_Response.csv", SENTINEL2_10M + SENTINEL2_20M, None),
                              ("Landsat_8_Spectral_Response.csv", LANDSAT_OLI, None)):
        lines = (folder / fname).read_text().splitlines()
        header = lines[0].split("\t")
        data = np.array([[float(v) for v in ln.split("\t")] for ln in lines[1:] if ln.strip()])
        wl = data[:, 0]
        for i, (name, centre, fwhm) in enumerate(spec):
            oli = {"B1": "CoastalAerosol", "B2": "Blue", "B3": "Green", "B4": "Red", "B5": "NIR", "B6": "SWIR1",
                   "B7": "SWIR2"}
            j = header.index(oli[name] if "Landsat" in fname else name)
            curve = np.clip(data[:, j], 0, None)
            centroid = (curve * wl).sum() / curve.sum()
            assert abs(centroid - centre) < 8.0, (fname, name, centroid, centre)
