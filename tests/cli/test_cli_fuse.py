"""`hsfuse fuse` end to end on files: formats, georeferencing, overwrite, batch, interruption."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import smooth_cube
from hsfuse.forward.degrade import spatial_degrade
from hsfuse.cli import app
from hsfuse.cube import CubeMeta, GeoRef
from hsfuse.forward.psf import Psf
from hsfuse.io import read_cube, write_cube

runner = CliRunner()
WKT_UTM = 'PROJCS["WGS 84 / UTM zone 31N",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Transverse_Mercator"],PARAMETER["latitude_of_origin",0],PARAMETER["central_meridian",3],PARAMETER["scale_factor",0.9996],PARAMETER["false_easting",500000],PARAMETER["false_northing",0],UNIT["metre",1],AUTHORITY["EPSG","32631"]]'


def _make_pair(tmp_path, lr_ext=".hdr", msi_ext=".tif", scale=4, bands=8, size=64):
    z = smooth_cube(bands, size, size, seed=3)
    psf = Psf.gaussian(scale)
    lr, msi = spatial_degrade(z, psf), (z[:3] + z[-3:]) / 2
    wl = np.linspace(450, 900, bands)
    hr_geo = GeoRef(WKT_UTM, (10.0, 0.0, 440000.0, 0.0, -10.0, 5000000.0))
    lr_path, msi_path = tmp_path / f"lr{lr_ext}", tmp_path / f"msi{msi_ext}"
    write_cube(lr_path, lr, CubeMeta(wavelengths=wl, fwhm=np.full(bands, 10.0), georef=hr_geo.scaled(scale)))
    write_cube(msi_path, msi, CubeMeta(georef=hr_geo))
    return z, lr_path, msi_path, hr_geo, wl


@pytest.mark.parametrize("lr_ext,msi_ext,out_ext", [(".hdr", ".tif", ".hdr"), (".tif", ".tif", ".tif"), (".mat", ".hdr", ".tif")])
def test_fuse_files_end_to_end(tmp_path, lr_ext, msi_ext, out_ext):
    z, lr_path, msi_path, hr_geo, wl = _make_pair(tmp_path, lr_ext, msi_ext)
    out = tmp_path / f"fused{out_ext}"
    res = runner.invoke(app, ["fuse", str(lr_path), str(msi_path), "-o", str(out), "--model", "gsa", "--json", "--tile", "32"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["status"] == "ok" and info["plan"]["scale"] == 4 and info["plan"]["model"] == "gsa"
    fused = read_cube(out)
    assert fused.data.shape == z.shape
    np.testing.assert_allclose(fused.meta.wavelengths, wl, atol=1e-4)
    # fusion beats plain upsampling of the LR
    bic = tmp_path / f"bicubic{out_ext}"
    assert runner.invoke(app, ["fuse", str(lr_path), str(msi_path), "-o", str(bic), "--model", "bicubic", "-q"]).exit_code == 0
    err_fused = np.abs(fused.data - z).mean()
    err_bic = np.abs(read_cube(bic).data - z).mean()
    assert err_fused < 0.5 * err_bic
    if msi_ext != ".mat" and out_ext != ".mat":  # georeferencing is on the MSI grid; check with GDAL itself
        import rasterio

        gdal_path = out.with_suffix(".img") if out_ext == ".hdr" else out
        with rasterio.open(gdal_path) as ds:
            assert ds.count == z.shape[0]
            assert ds.crs.to_epsg() == 32631
            assert tuple(ds.transform)[:6] == pytest.approx(hr_geo.transform)


def test_refuses_to_overwrite_and_names_the_file(tmp_path):
    _, lr_path, msi_path, *_ = _make_pair(tmp_path)
    out = tmp_path / "out.tif"
    out.write_bytes(b"precious")
    res = runner.invoke(app, ["fuse", str(lr_path), str(msi_path), "-o", str(out)])
    assert res.exit_code == 1 and "out.tif" in res.stderr and "--overwrite" in res.stderr
    assert out.read_bytes() == b"precious"
    assert runner.invoke(app, ["fuse", str(lr_path), str(msi_path), "-o", str(out), "--overwrite", "-q"]).exit_code == 0


def test_dry_run_computes_nothing(tmp_path):
    _, lr_path, msi_path, *_ = _make_pair(tmp_path)
    out = tmp_path / "out.hdr"
    res = runner.invoke(app, ["fuse", str(lr_path), str(msi_path), "-o", str(out), "--dry-run", "--json", "--tile", "32"])
    assert res.exit_code == 0, res.output
    plan = json.loads(res.stdout)["plan"]
    assert plan["tiles"] == 4 and plan["scale"] == 4 and plan["device"] == "cpu"
    assert not out.exists() and not list(tmp_path.glob("out*"))


def test_bad_inputs_exit_with_one_line(tmp_path):
    z = smooth_cube(5, 30, 30)
    write_cube(tmp_path / "lr.tif", z[:, :12, :12])
    write_cube(tmp_path / "msi.tif", z[:3])
    res = runner.invoke(app, ["fuse", str(tmp_path / "lr.tif"), str(tmp_path / "msi.tif"), "-o", str(tmp_path / "o.tif")])
    assert res.exit_code == 1 and "integer ratio" in res.stderr and "msi.tif" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = runner.invoke(app, ["fuse", str(tmp_path / "lr.tif"), str(tmp_path / "msi.tif"), "-o", str(tmp_path / "o.tif"),
                              "--model", "nope"])
    assert res.exit_code == 2 and "valid:" in res.stderr
    res = runner.invoke(app, ["fuse", str(tmp_path / "nothere.hdr"), str(tmp_path / "msi.tif"), "-o", str(tmp_path / "o.tif")])
    assert res.exit_code == 1 and "nothere.hdr" in res.stderr


def test_srf_of_wrong_length_is_refused(tmp_path):
    _, lr_path, msi_path, *_ = _make_pair(tmp_path)
    np.save(tmp_path / "srf.npy", np.ones((3, 5)) / 5)
    res = runner.invoke(app, ["fuse", str(lr_path), str(msi_path), "-o", str(tmp_path / "o.tif"), "--model", "cnmf",
                              "--srf", str(tmp_path / "srf.npy")])
    assert res.exit_code in (1, 2) and "srf" in res.stderr.lower()
    assert not (tmp_path / "o.tif").exists()


def test_interrupted_fuse_leaves_no_file(tmp_path, monkeypatch):
    _, lr_path, msi_path, *_ = _make_pair(tmp_path)
    from hsfuse.models import classical

    calls = {"n": 0}
    real = classical.Bicubic.fuse_tile

    def interrupt_on_third(self, lr, msi):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, lr, msi)

    monkeypatch.setattr(classical.Bicubic, "fuse_tile", interrupt_on_third)
    for ext in (".hdr", ".tif"):
        calls["n"] = 0
        out = tmp_path / f"half{ext}"
        res = runner.invoke(app, ["fuse", str(lr_path), str(msi_path), "-o", str(out), "--model", "bicubic", "--tile", "16"])
        assert res.exit_code == 130
        left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("half", ".half")))
        assert left == [], left


def test_batch_keep_going_reports_failures(tmp_path):
    _, lr_path, msi_path, *_ = _make_pair(tmp_path)
    (tmp_path / "pairs.csv").write_text(f"lr,msi\n{lr_path.name},{msi_path.name}\nmissing.hdr,{msi_path.name}\n")
    out_dir = tmp_path / "out"
    res = runner.invoke(app, ["fuse", "--pairs", str(tmp_path / "pairs.csv"), "--out-dir", str(out_dir), "--keep-going",
                              "--json", "-q", "--model", "bicubic"])
    assert res.exit_code == 1
    summary = json.loads(res.stdout)
    assert summary["total"] == 2 and summary["failed"] == 1
    assert [p["status"] for p in summary["pairs"]] == ["ok", "failed"]
    assert (out_dir / "lr_fused.hdr").exists()


def test_estimate_then_fuse_with_the_estimate(tmp_path):
    """`hsfuse estimate` writes a JSON that `fuse --psf/--srf` accept; the fused result beats bicubic."""
    from hsfuse.forward.degrade import degrade_cube
    from hsfuse.demo import synthetic_scene

    z = synthetic_scene(64, seed=2)
    psf = Psf.gaussian(4, sigma=1.5)
    srf = np.stack([np.exp(-0.5 * ((np.arange(31) - c) / 4.0) ** 2) for c in (24, 14, 5)])
    srf /= srf.sum(1, keepdims=True)
    lr, msi = degrade_cube(z, psf, srf)
    write_cube(tmp_path / "lr.tif", lr)
    write_cube(tmp_path / "msi.tif", msi)
    est = tmp_path / "est.json"
    res = runner.invoke(app, ["estimate", str(tmp_path / "lr.tif"), str(tmp_path / "msi.tif"), "-o", str(est), "-q"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "fused.tif"
    res = runner.invoke(app, ["fuse", str(tmp_path / "lr.tif"), str(tmp_path / "msi.tif"), "-o", str(out), "--model", "gsa",
                              "--psf", str(est), "--srf", str(est), "--json"])
    assert res.exit_code == 0, res.output
    plan = json.loads(res.stdout)["plan"]
    assert "est.json" in plan["psf"]["source"] and "est.json" in plan["srf"]["source"]
    bic = runner.invoke(app, ["fuse", str(tmp_path / "lr.tif"), str(tmp_path / "msi.tif"), "-o", str(tmp_path / "b.tif"),
                              "--model", "bicubic", "-q"])
    assert bic.exit_code == 0
    assert np.abs(read_cube(out).data - z).mean() < 0.5 * np.abs(read_cube(tmp_path / "b.tif").data - z).mean()


def test_an_output_never_replaces_an_input(tmp_path):
    """-o onto an input (also an ENVI header's data file, or a hard link to it) is refused, --overwrite or not."""
    import hashlib
    import os

    _, lr_path, msi_path, _, _ = _make_pair(tmp_path)
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    before = {p: digest(p) for p in (lr_path, lr_path.with_suffix(".img"), msi_path)}
    os.link(msi_path, tmp_path / "msi_link.tif")
    for target in (msi_path, lr_path, lr_path.with_suffix(".img"), tmp_path / "msi_link.tif"):
        r = runner.invoke(app, ["fuse", str(lr_path), str(msi_path), "-o", str(target), "--model", "gsa", "--overwrite"])
        assert r.exit_code == 1 and "would replace the input" in r.stderr, (target, r.output)
    r = runner.invoke(app, ["degrade", str(msi_path), "-o", str(msi_path), "-s", "2", "--overwrite"])
    assert r.exit_code == 1 and "would replace the input" in r.stderr
    assert before == {p: digest(p) for p in before}


def test_batch_outputs_never_collide(tmp_path):
    """Two pairs whose LR files share a name get two outputs; explicit outputs that collide are refused."""
    pairs = []
    for d in ("sA", "sB"):
        (tmp_path / d).mkdir()
        _, lr_path, msi_path, _, _ = _make_pair(tmp_path / d)
        pairs += [str(lr_path), str(msi_path)]
    r = runner.invoke(app, ["fuse", *pairs, "--out-dir", str(tmp_path / "out"), "--model", "gsa", "--overwrite", "--json"])
    assert r.exit_code == 0, r.output
    outs = [p["output"] for p in json.loads(r.stdout)["pairs"]]
    assert len(set(outs)) == 2 and all((tmp_path / "out" / o).exists() or __import__("os").path.exists(o) for o in outs)
    csv = tmp_path / "pairs.csv"
    csv.write_text("lr,msi,output\nsA/lr.hdr,sA/msi.tif,same.tif\nsB/lr.hdr,sB/msi.tif,same.tif\n")
    r = runner.invoke(app, ["fuse", "--pairs", str(csv), "--model", "gsa"])
    assert r.exit_code == 2 and "would both be written" in r.stderr
    # with --out-dir the CSV's output column lands there, not beside the CSV
    csv.write_text("lr,msi,output\nsA/lr.hdr,sA/msi.tif,a.tif\n")
    r = runner.invoke(app, ["fuse", "--pairs", str(csv), "--out-dir", str(tmp_path / "o2"), "--model", "gsa"])
    assert r.exit_code == 0 and (tmp_path / "o2" / "a.tif").exists() and not (tmp_path / "a.tif").exists()


def test_metrics_outputs_follow_the_output_rules(tmp_path):
    z, lr_path, msi_path, _, _ = _make_pair(tmp_path)
    ref = tmp_path / "ref.tif"
    write_cube(ref, z, CubeMeta())
    before = ref.read_bytes()
    r = runner.invoke(app, ["metrics", str(ref), str(ref), "--csv", str(ref), "--overwrite"])
    assert r.exit_code == 1 and "would replace the input" in r.stderr and ref.read_bytes() == before
    (tmp_path / "m.csv").write_text("keep")
    r = runner.invoke(app, ["metrics", str(ref), str(ref), "--csv", str(tmp_path / "m.csv")])
    assert r.exit_code == 1 and "exists" in r.stderr and (tmp_path / "m.csv").read_text() == "keep"
    r = runner.invoke(app, ["metrics", str(ref), str(ref), "--csv", str(tmp_path / "m.csv"), "--overwrite", "--no-ssim"])
    assert r.exit_code == 0 and "psnr" in (tmp_path / "m.csv").read_text()
    assert not list(tmp_path.glob("*hsfuse-tmp*"))


def test_georeferenced_grids_must_agree(tmp_path):
    """A moved MSI, another UTM zone, or pixel sizes that are not the scale: refused, or warned with --force."""
    z = smooth_cube(8, 64, 64, seed=3)
    lr, msi = spatial_degrade(z, Psf.gaussian(4)), (z[:3] + z[-3:]) / 2
    wl = np.linspace(450, 900, 8)
    hr = GeoRef(WKT_UTM, (10.0, 0.0, 440000.0, 0.0, -10.0, 5000000.0))
    write_cube(tmp_path / "lr.hdr", lr, CubeMeta(wavelengths=wl, georef=hr.scaled(4)))
    cases = {
        "moved": (GeoRef(WKT_UTM, (10.0, 0.0, 540000.0, 0.0, -10.0, 5000000.0)), "do not overlap"),
        "zone": (GeoRef(WKT_UTM.replace("zone 31N", "zone 32N").replace('"central_meridian",3', '"central_meridian",9')
                        .replace("32631", "32632"), hr.transform), "different coordinate systems"),
        "pixels": (GeoRef(WKT_UTM, (7.5, 0.0, 440000.0, 0.0, -7.5, 5000000.0)), "pixel sizes"),
    }
    for name, (geo, needle) in cases.items():
        write_cube(tmp_path / f"msi_{name}.tif", msi, CubeMeta(georef=geo))
        r = runner.invoke(app, ["fuse", str(tmp_path / "lr.hdr"), str(tmp_path / f"msi_{name}.tif"), "-o",
                                str(tmp_path / f"o_{name}.tif"), "--model", "gsa"])
        assert r.exit_code == 1 and needle in r.stderr, (name, r.output)
        assert not (tmp_path / f"o_{name}.tif").exists()
    r = runner.invoke(app, ["fuse", str(tmp_path / "lr.hdr"), str(tmp_path / "msi_pixels.tif"), "-o",
                            str(tmp_path / "forced.tif"), "--model", "gsa", "--force"])
    assert r.exit_code == 0 and "warning: the pixel sizes" in r.stderr
    out = read_cube(tmp_path / "forced.tif")
    assert out.meta.georef.transform[0] == 7.5  # the output keeps the MSI's grid


def test_json_has_one_schema_and_jsonl_streams_pairs(tmp_path):
    _, lr_path, msi_path, _, _ = _make_pair(tmp_path)
    one = runner.invoke(app, ["fuse", str(lr_path), str(msi_path), "-o", str(tmp_path / "a.tif"), "--model", "gsa",
                              "--json"])
    doc = json.loads(one.stdout)
    assert one.exit_code == 0 and doc["total"] == 1 and doc["ok"] == 1 and doc["pairs"][0]["status"] == "ok"
    assert doc["plan"] == doc["pairs"][0]["plan"]  # one pair: its fields at the top level too
    bad = runner.invoke(app, ["fuse", str(lr_path), str(tmp_path / "missing.tif"), "-o", str(tmp_path / "b.tif"),
                              "--json"])
    doc = json.loads(bad.stdout)  # a failed single pair still prints its JSON, with the error
    assert bad.exit_code == 1 and doc["failed"] == 1 and "missing.tif" in doc["pairs"][0]["error"]
    import shutil

    for ext in (".hdr", ".img"):
        shutil.copy(lr_path.with_suffix(ext), tmp_path / f"lr2{ext}")
    lines = runner.invoke(app, ["fuse", str(lr_path), str(msi_path), str(tmp_path / "lr2.hdr"), str(tmp_path / "missing.tif"),
                                "--out-dir", str(tmp_path / "o"), "--model", "gsa", "--jsonl", "--keep-going"])
    rows = [json.loads(ln) for ln in lines.stdout.splitlines() if ln.strip()]
    assert lines.exit_code == 1 and [r["status"] for r in rows] == ["ok", "failed"]


def test_panchromatic_msi_from_a_2d_mat_variable(tmp_path):
    """Hyperspectral pansharpening: a named 2-D variable is a one-band MSI."""
    from scipy.io import savemat

    z = smooth_cube(8, 48, 48, seed=4)
    lr = spatial_degrade(z, Psf.gaussian(3))
    pan = z.mean(0)
    savemat(tmp_path / "pair.mat", {"HS": lr.transpose(1, 2, 0), "PAN": pan})
    r = runner.invoke(app, ["fuse", str(tmp_path / "pair.mat"), str(tmp_path / "pair.mat"), "--lr-var", "HS",
                            "--msi-var", "PAN", "-o", str(tmp_path / "out.tif"), "--model", "gsa", "--json"])
    assert r.exit_code == 0, r.output
    out = read_cube(tmp_path / "out.tif").data
    assert out.shape == (8, 48, 48) and np.isfinite(out).all()
    r = runner.invoke(app, ["info", str(tmp_path / "pair.mat")])  # without --var the cube is the only 3-D one
    assert r.exit_code == 0


def test_lr_header_fields_reach_the_fused_envi_file(tmp_path):
    _, lr_path, msi_path, _, _ = _make_pair(tmp_path)
    hdr = lr_path.with_suffix(".hdr")
    irr = "{" + ", ".join(str(1500 + i) for i in range(8)) + "}"
    hdr.write_text(hdr.read_text() + f"sensor type = AVIRIS-NG\nacquisition time = 2024-06-01T10:00:00Z\n"
                   f"solar irradiance = {irr}\ndata gain values = {{{', '.join(['2'] * 8)}}}\n")
    r = runner.invoke(app, ["fuse", str(lr_path), str(msi_path), "-o", str(tmp_path / "f.hdr"), "--model", "gsa", "-q"])
    assert r.exit_code == 0, r.output
    text = (tmp_path / "f.hdr").read_text()
    assert "sensor type = AVIRIS-NG" in text and "acquisition time = 2024-06-01T10:00:00Z" in text
    assert "solar irradiance = {1500" in text and "data gain values" not in text  # raw encoding: not carried
    assert "data ignore value = NaN" in text
    import spectral.io.envi as spy_envi

    assert spy_envi.read_envi_header(str(tmp_path / "f.hdr"))["sensor type"] == "AVIRIS-NG"


def test_negative_outputs_are_clipped_when_the_lr_has_none(tmp_path):
    """Detail injection can undershoot at sharp edges; a physical (non-negative) LR-HSI gives a non-negative
    output by default, and says how many values it changed."""
    rng = np.random.default_rng(0)
    z = smooth_cube(8, 64, 64, seed=3)
    z[:, 20:40, 20:40] *= 0.01  # a dark square with sharp edges
    lr, msi = spatial_degrade(z, Psf.gaussian(4)), (z[:3] + z[-3:]) / 2 + 0.02 * rng.standard_normal((3, 64, 64))
    write_cube(tmp_path / "lr.tif", np.maximum(lr, 0), CubeMeta(wavelengths=np.linspace(450, 900, 8)))
    write_cube(tmp_path / "msi.tif", msi.astype(np.float32), CubeMeta())
    args = ["fuse", str(tmp_path / "lr.tif"), str(tmp_path / "msi.tif"), "--model", "gsa", "--estimate", "off",
            "--denoise", "off", "--json"]
    off = runner.invoke(app, args + ["-o", str(tmp_path / "off.tif"), "--clip", "off"])
    auto = runner.invoke(app, args + ["-o", str(tmp_path / "auto.tif")])
    assert off.exit_code == 0 and auto.exit_code == 0, auto.output
    a, o = read_cube(tmp_path / "auto.tif").data, read_cube(tmp_path / "off.tif").data
    assert (o < 0).any() and a.min() >= 0
    assert json.loads(auto.stdout)["plan"]["clip"]["clipped"] == int((o < 0).sum())
    np.testing.assert_array_equal(a, np.maximum(o, 0))


def test_wavenumber_wavelengths_survive_fusion_to_envi(tmp_path):
    """Units hsfuse cannot turn into nm are kept verbatim, through fusion too."""
    _, lr_path, msi_path, _, _ = _make_pair(tmp_path)
    hdr = lr_path.with_suffix(".hdr")
    text = "\n".join(ln for ln in hdr.read_text().splitlines()
                     if not ln.startswith(("wavelength", "fwhm")) and "=" in ln or ln == "ENVI")
    hdr.write_text(text + "\nwavelength units = Wavenumber\nwavelength = {" + ", ".join(str(9000 - 500 * i)
                                                                                     for i in range(8)) + "}\n")
    r = runner.invoke(app, ["fuse", str(lr_path), str(msi_path), "-o", str(tmp_path / "f.hdr"), "--model", "gsa", "-q"])
    assert r.exit_code == 0, r.output
    out = (tmp_path / "f.hdr").read_text()
    assert "wavelength units = Wavenumber" in out and "wavelength = {9000" in out


def test_an_option_no_model_reads_is_reported(tmp_path):
    _, lr_path, msi_path, _, _ = _make_pair(tmp_path)
    r = runner.invoke(app, ["fuse", str(lr_path), str(msi_path), "-o", str(tmp_path / "a.tif"), "--model", "gsa",
                            "-O", "upsampler=bicubic", "-O", "upsampelr=bicubic"])
    assert r.exit_code == 0
    assert "option(s) upsampelr were not used by 'gsa'" in r.stderr and "upsampler," not in r.stderr


def test_output_dtype_and_creation_options(tmp_path):
    """--dtype same keeps a uint16 ×10000 input's encoding (half the size of float32); --co reaches the writer."""
    z = smooth_cube(8, 64, 64, seed=3)
    lr, msi = spatial_degrade(z, Psf.gaussian(4)), (z[:3] + z[-3:]) / 2
    meta = CubeMeta(wavelengths=np.linspace(450, 900, 8), scale=1e-4, nodata=0)
    write_cube(tmp_path / "lr.hdr", lr, meta, dtype="uint16")
    write_cube(tmp_path / "msi.tif", msi, CubeMeta())
    args = ["fuse", str(tmp_path / "lr.hdr"), str(tmp_path / "msi.tif"), "--model", "gsa", "-q"]
    assert runner.invoke(app, args + ["-o", str(tmp_path / "f32.tif")]).exit_code == 0
    r = runner.invoke(app, args + ["-o", str(tmp_path / "u16.tif"), "--dtype", "same", "--co", "compress=deflate"])
    assert r.exit_code == 0, r.output
    import tifffile

    with tifffile.TiffFile(tmp_path / "u16.tif") as t:
        assert t.pages[0].dtype == np.uint16 and t.pages[0].compression != 1
    a, b = read_cube(tmp_path / "f32.tif").data, read_cube(tmp_path / "u16.tif").data
    assert np.nanmax(np.abs(a - b)) <= 0.6e-4  # quantised to the input's 1e-4 step
    bad = runner.invoke(app, args + ["-o", str(tmp_path / "x.tif"), "--co", "colour=blue"])
    assert bad.exit_code == 2 and "unknown for tiff" in bad.stderr
    write_cube(tmp_path / "lrf.tif", lr, CubeMeta(wavelengths=np.linspace(450, 900, 8)))
    r = runner.invoke(app, ["fuse", str(tmp_path / "lrf.tif"), str(tmp_path / "msi.tif"), "-o", str(tmp_path / "y.tif"),
                            "--model", "gsa", "--dtype", "uint16"])
    assert r.exit_code == 2 and "use float32" in r.stderr  # a float LR has no integer encoding to reuse
