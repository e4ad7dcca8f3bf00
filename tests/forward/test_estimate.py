"""hsfuse.forward.estimate: SRF and PSF-width estimation from the data pair."""

from __future__ import annotations

import numpy as np
import pytest

from hsfuse.forward.psf import Psf
from hsfuse.forward.degrade import spatial_degrade
from hsfuse.forward.estimate import estimate_psf_sigma, estimate_srf

from conftest import smooth_cube


def _pair(bands=24, msi_bands=4, size=64, scale=4, sigma=1.7, seed=1):
    """HR cube with full spectral rank (smooth materials + texture), a sparse non-negative SRF, LR, MSI."""
    rng = np.random.default_rng(seed)
    z = smooth_cube(bands, size, size, seed=seed).astype(np.float64)
    z = z + 0.05 * rng.random(z.shape)  # full rank: the SRF is identifiable
    srf = rng.random((msi_bands, bands))
    srf[srf < 0.5] = 0.0
    srf /= srf.sum(1, keepdims=True)
    srf *= rng.uniform(0.5, 2.0, (msi_bands, 1))  # gains other than 1
    psf = Psf.gaussian(scale, sigma)
    lr = spatial_degrade(z, psf)
    msi = np.einsum("mc,chw->mhw", srf, z)
    return z, srf, psf, lr, msi


@pytest.mark.parametrize("nonneg", [True, False])
def test_estimate_srf_recovers_known_srf(nonneg):
    _, srf, psf, lr, msi = _pair()
    est = estimate_srf(lr, spatial_degrade(msi, psf), nonneg=nonneg)
    assert est.shape == srf.shape
    assert np.linalg.norm(est - srf) / np.linalg.norm(srf) < 1e-3


def test_estimate_srf_ignores_nan_pixels_and_keeps_gain():
    _, srf, psf, lr, msi = _pair(bands=9, msi_bands=3, seed=3)
    msi_lr = spatial_degrade(msi, psf)
    lr = lr.copy()
    lr[2, 3, 4] = np.nan
    msi_lr[:, 5, 6] = np.nan
    msi_lr[0, 7, 7] = 1e6  # garbage, but masked below
    msi_lr[:, 7, 7] = np.nan
    est = estimate_srf(lr.astype(np.float32), msi_lr.astype(np.float32))
    assert np.all(np.isfinite(est)) and np.all(est >= 0)
    assert np.linalg.norm(est - srf) / np.linalg.norm(srf) < 1e-3
    # rows are not normalised: the per-band gains survive
    np.testing.assert_allclose(est.sum(1), srf.sum(1), rtol=1e-3)


def test_estimate_srf_smoothness_and_errors():
    _, srf, psf, lr, msi = _pair(bands=12, msi_bands=2, seed=4)
    rough = estimate_srf(lr, spatial_degrade(msi, psf), smooth=0.0)
    smooth = estimate_srf(lr, spatial_degrade(msi, psf), smooth=1.0)
    assert np.abs(np.diff(smooth, axis=1)).sum() < np.abs(np.diff(rough, axis=1)).sum()
    with pytest.raises(ValueError):
        estimate_srf(lr[0], msi)
    with pytest.raises(ValueError):
        estimate_srf(lr, spatial_degrade(msi, psf)[:, :-1])


@pytest.mark.parametrize("sigma", [1.2, 2.5])
def test_estimate_psf_sigma_recovers_sigma(sigma):
    _, srf, _, lr, msi = _pair(sigma=sigma, scale=4, size=96)
    est = estimate_psf_sigma(lr, msi, srf, 4)
    assert abs(est - sigma) / sigma < 0.10


def test_estimate_psf_sigma_with_estimated_srf():
    z, srf, psf, lr, msi = _pair(sigma=2.0, size=96, seed=5)
    est_srf = estimate_srf(lr, spatial_degrade(msi, Psf.gaussian(4)))  # SRF under a wrong PSF guess
    est = estimate_psf_sigma(lr, msi, est_srf, 4)
    assert abs(est - 2.0) / 2.0 < 0.10
