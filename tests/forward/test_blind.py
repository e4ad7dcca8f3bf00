"""Blind PSF/SRF estimation (hsfuse.forward.blind) and `hsfuse estimate`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from hsfuse.forward.blind import (BlindEstimate, estimate_blind, fit_gaussian_sigma, load_estimate, plot_estimate, psf_from_json, save_estimate, srf_from_json)
from hsfuse.forward.psf import Psf, gaussian_kernel
from hsfuse.forward.degrade import degrade_cube, spatial_degrade
from hsfuse.errors import InputError

WL = np.arange(400.0, 701.0, 10.0)


def rough_cube(bands: int = 31, size: int = 96, materials: int = 40, seed: int = 0) -> np.ndarray:
    """Spatially detailed cube whose spectra vary band to band, so that an SRF is identifiable.

    (Smooth spectra from a few materials leave R·LR = MSI_lr under-determined:
    many SRFs explain the data equally well, see docs/models/umsft.md.)
    """
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    spec = 0.2 + 0.8 * rng.random((materials, bands))
    logits = gaussian_filter(rng.standard_normal((materials, size, size)), (0, 1.5, 1.5)) * 8
    a = np.exp(logits - logits.max(0))
    a /= a.sum(0)
    cube = np.einsum("kc,khw->chw", spec, a)
    return (cube / cube.max()).astype(np.float32)


def gauss_srf(centres=(460.0, 550.0, 620.0), width=30.0) -> np.ndarray:
    r = np.exp(-0.5 * ((WL[None] - np.asarray(centres)[:, None]) / width) ** 2)
    return r / r.sum(1, keepdims=True)


@pytest.mark.parametrize("scale,sigma", [(4, 1.2), (3, 1.0)])
def test_recovers_gaussian_psf_and_srf(scale, sigma):
    z = rough_cube(size=96 // scale * scale)
    R = gauss_srf()
    lr, msi = degrade_cube(z, Psf.gaussian(scale, sigma), R)
    est = estimate_blind(lr, 0.8 * msi)  # MSI with a different gain: absorbed in est.gain
    assert isinstance(est, BlindEstimate) and est.psf.scale == scale
    assert abs(est.sigma - sigma) / sigma < 0.10
    assert np.linalg.norm(est.srf - R) / np.linalg.norm(R) <= 0.05
    np.testing.assert_allclose(est.srf.sum(1), 1.0, atol=1e-9)
    np.testing.assert_allclose(est.gain, 0.8, rtol=0.03)
    assert (est.srf >= 0).all() and est.residual < 0.01 and est.iterations >= 1 and not est.warnings
    k = est.psf.kernel
    assert (k >= 0).all() and abs(k.sum() - 1) < 1e-9 and k.shape[0] % 2 == scale % 2
    # the estimated PSF, applied to the HR cube, reproduces the LR
    rel = np.linalg.norm(spatial_degrade(z, est.psf) - lr) / np.linalg.norm(lr)
    assert rel < 0.01


def test_fixed_srf_and_errors():
    z = rough_cube(size=64)
    R = gauss_srf()
    lr, msi = degrade_cube(z, Psf.gaussian(4, 1.5), R)
    est = estimate_blind(lr, msi, srf=R, iters=2)
    np.testing.assert_allclose(est.srf, R, atol=1e-12)
    assert abs(est.sigma - 1.5) / 1.5 < 0.1
    with pytest.raises(InputError, match="more bands"):
        estimate_blind(msi[:, ::4, ::4][:2], np.concatenate([lr, lr])[:, :8, :8].repeat(4, 1).repeat(4, 2))
    with pytest.raises(InputError, match="scale"):
        estimate_blind(lr, msi[:, :60, :60])
    other = rough_cube(size=64, seed=5)  # an MSI of another scene: inconsistent pair -> warning, not silence
    bad = estimate_blind(lr, degrade_cube(other, Psf.gaussian(4, 1.5), R)[1], iters=1)
    assert bad.warnings  # here the kernel runs to the support edge (blurring hides the mismatch)
    nan_lr = np.full_like(lr, np.nan)
    with pytest.raises(InputError):
        estimate_blind(nan_lr, msi)


def test_fit_gaussian_sigma_exact():
    for s in (0.7, 1.3, 2.5):
        sig, (cy, cx) = fit_gaussian_sigma(gaussian_kernel(15, s))
        assert abs(sig - s) < 1e-3 and abs(cy - 7) < 1e-9 and abs(cx - 7) < 1e-9


def test_json_round_trip_and_plot(tmp_path):
    z = rough_cube(size=48)
    R = gauss_srf()
    lr, msi = degrade_cube(z, Psf.gaussian(4, 1.6), R)
    est = estimate_blind(lr, 2.0 * msi, iters=1)
    p = save_estimate(tmp_path / "est.json", est, lr_wavelengths=WL, msi_band_names=["B", "G", "R"])
    doc = json.loads(p.read_text())
    assert doc["scale"] == 4 and doc["srf"]["msi_band_names"] == ["B", "G", "R"] and len(doc["srf"]["lr_wavelengths"]) == 31
    psf, srf = load_estimate(p)
    np.testing.assert_allclose(psf.kernel, est.psf.kernel)
    assert psf.pad == est.psf.pad and psf.scale == 4
    np.testing.assert_allclose(spatial_degrade(z, psf), spatial_degrade(z, est.psf), atol=1e-6)
    np.testing.assert_allclose(srf, est.srf_effective)  # gain applied: what the data obey
    np.testing.assert_allclose(srf_from_json(p, effective=False).sum(1), 1.0, atol=1e-9)
    np.testing.assert_allclose(srf.sum(1), est.gain)
    assert abs(srf.sum(1).mean() - 2.0) < 0.1
    with pytest.raises(InputError, match="x4"):
        psf_from_json(p, scale=8)
    g = psf_from_json(f"{p}:gaussian", 4)
    assert abs(g.sigma - est.sigma) < 1e-9 and abs(g.kernel.sum() - 1) < 1e-9
    np.testing.assert_allclose(psf_from_json(p, 4, model="gaussian").kernel, g.kernel)
    (tmp_path / "bad.json").write_text("{\"kind\": \"other\"}")
    with pytest.raises(InputError):
        psf_from_json(tmp_path / "bad.json")
    png = plot_estimate(tmp_path / "est.png", est, WL, ["B", "G", "R"])
    assert png.stat().st_size > 1000


def _app():
    from hsfuse.cli.estimate import estimate

    app = typer.Typer()
    app.command()(estimate)
    return app


def test_cli_estimate(tmp_path):
    from hsfuse.cube import CubeMeta
    from hsfuse.io import write_cube

    z = rough_cube(size=48)
    R = gauss_srf()
    lr, msi = degrade_cube(z, Psf.gaussian(4, 1.4), R)
    write_cube(tmp_path / "lr.tif", lr, CubeMeta(wavelengths=WL))
    write_cube(tmp_path / "msi.tif", msi)
    runner = CliRunner()
    args = [str(tmp_path / "lr.tif"), str(tmp_path / "msi.tif"), "-o", str(tmp_path / "est.json"), "--json", "--iters", "1"]
    res = runner.invoke(_app(), args)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["scale"] == 4 and abs(doc["sigma"] - 1.4) < 0.14 and doc["output"].endswith("est.json")
    psf, srf = load_estimate(tmp_path / "est.json")
    assert psf.scale == 4 and srf.shape == (3, 31)
    res = runner.invoke(_app(), args)  # refuses to clobber
    assert res.exit_code == 1 and "exists" in res.output
    res = runner.invoke(_app(), args[:2] + ["--scale", "8"])
    assert res.exit_code == 2
    # the estimate drives the engine: psf_from_json / srf_from_json are the --psf/--srf JSON hooks
    from hsfuse.fusion.engine import FuseConfig, fuse_arrays

    out = fuse_arrays(lr, msi, FuseConfig(model="gsa", psf=psf_from_json(tmp_path / "est.json", 4),
                                          srf=srf_from_json(tmp_path / "est.json")))
    assert out.shape == z.shape and np.isfinite(out).all()
