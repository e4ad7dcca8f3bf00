"""Metrics agree with independent implementations and with hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hsfuse.errors import InputError
from hsfuse.metrics import (auto_peak, compute_metrics, q_index_blocks, q_index_blocks_pairwise, q_index_map, qnr,
                            sam_map)

from conftest import smooth_cube


@pytest.fixture
def pair():
    ref = smooth_cube(6, 48, 40, seed=1).astype(np.float64)
    est = ref + np.random.default_rng(2).normal(0, 0.02, ref.shape)
    return ref, est


def test_psnr_ssim_match_skimage(pair):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    ref, est = pair
    rep = compute_metrics(ref, est, peak=1.0)
    sk_psnr = [peak_signal_noise_ratio(ref[b], est[b], data_range=1.0) for b in range(6)]
    sk_ssim = [structural_similarity(ref[b], est[b], gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                     data_range=1.0) for b in range(6)]
    np.testing.assert_allclose(rep.per_band["psnr"], sk_psnr, rtol=1e-10)
    np.testing.assert_allclose(rep.per_band["ssim"], sk_ssim, rtol=1e-10)
    assert rep.summary["psnr"] == pytest.approx(np.mean(sk_psnr))
    rep2 = compute_metrics(ref, est, peak="band-max")
    bm = ref.reshape(6, -1).max(1)
    np.testing.assert_allclose(rep2.per_band["psnr"],
                               [peak_signal_noise_ratio(ref[b], est[b], data_range=bm[b]) for b in range(6)], rtol=1e-10)


def _torchmetrics_ergas_per_scale(ref, est, s):
    """torchmetrics ERGAS with its `ratio` chosen so that it means 100/s, whichever way this version uses it."""
    import torch
    from torchmetrics.functional.image import error_relative_global_dimensionless_synthesis as ergas

    p, t = torch.from_numpy(est)[None], torch.from_numpy(ref)[None]
    e1, e2 = ergas(p, t, ratio=1.0).item(), ergas(p, t, ratio=2.0).item()
    divides = e2 < e1  # torchmetrics >= 1.? computes 100/ratio; older versions 100*ratio
    return ergas(p, t, ratio=float(s) if divides else 1.0 / s).item()


def test_sam_ergas_match_torchmetrics(pair):
    import torch
    from torchmetrics.functional.image import spectral_angle_mapper

    ref, est = pair
    rep = compute_metrics(ref, est, scale=4, ssim=False)
    tm_sam = spectral_angle_mapper(torch.from_numpy(est)[None], torch.from_numpy(ref)[None]).item()
    assert rep.summary["sam"] == pytest.approx(math.degrees(tm_sam), rel=1e-9)
    assert rep.summary["ergas"] == pytest.approx(_torchmetrics_ergas_per_scale(ref, est, 4), rel=1e-9)


def test_sam_finite_with_zero_pixels(pair):
    import torch
    from torchmetrics.functional.image import spectral_angle_mapper

    ref, est = pair
    ref = ref.copy()
    ref[:, 0, :5] = 0.0  # black pixels (CAVE has them)
    est = est.copy()
    est[:, 3, 3] = 0.0
    tm = spectral_angle_mapper(torch.from_numpy(est)[None], torch.from_numpy(ref)[None]).item()
    assert math.isnan(tm)  # the trap: one zero spectrum poisons torchmetrics' mean
    rep = compute_metrics(ref, est, ssim=False, uiqi=False)
    assert math.isfinite(rep.summary["sam"])
    assert rep.conventions["sam_zero_norm_excluded"] == 6
    m, nz = sam_map(ref, est)
    assert nz == 6 and np.isnan(m).sum() == 6
    assert rep.summary["sam"] == pytest.approx(np.nanmean(m))


def test_ergas_hand_computed_2x2x2():
    ref = np.array([[[1.0, 1.0], [1.0, 1.0]], [[2.0, 2.0], [2.0, 2.0]]])
    est = ref + np.array([[[0.1, -0.1], [0.1, -0.1]], [[0.2, 0.2], [0.2, 0.2]]])
    # MSE = (0.01, 0.04), mu = (1, 2): mean(MSE/mu^2) = 0.01 -> 100/4 * 0.1 = 2.5
    rep = compute_metrics(ref, est, scale=4, ssim=False, uiqi=False)
    assert rep.summary["ergas"] == pytest.approx(2.5)
    assert rep.summary["rmse"] == pytest.approx(math.sqrt(0.025))
    assert compute_metrics(ref, est, ssim=False, uiqi=False).summary["ergas"] is None


def test_masking_nan_and_mask(pair):
    ref, est = pair
    est = est.copy()
    est[2, 10, 10] = np.nan  # NaN in one band masks the pixel in all bands
    rep = compute_metrics(ref, est, ssim=False, uiqi=False)
    assert rep.conventions["masked_pixels"] == 1
    keep = np.ones(ref.shape[1:], bool)
    keep[10, 10] = False
    mse = ((ref[:, keep] - est[:, keep]) ** 2).mean(1)
    np.testing.assert_allclose(rep.per_band["rmse"], np.sqrt(mse))
    mask = np.ones(ref.shape[1:], bool)
    mask[:, :4] = False
    rep2 = compute_metrics(ref, est, mask=mask, ssim=False, uiqi=False)
    assert rep2.conventions["masked_pixels"] == 48 * 4 + 1
    rep3 = compute_metrics(ref, est, crop=4, ssim=False, uiqi=False)
    assert rep3.conventions["height"] == 40 and rep3.conventions["width"] == 32


def test_identical_and_errors(pair):
    ref, _ = pair
    rep = compute_metrics(ref, ref.copy(), scale=2)
    assert rep.summary["rmse"] == 0 and math.isinf(rep.summary["psnr"])
    assert rep.summary["sam"] == pytest.approx(0, abs=1e-5) and rep.summary["ergas"] == 0
    assert rep.summary["ssim"] == pytest.approx(1) and rep.summary["uiqi"] == pytest.approx(1)
    assert rep.summary["cc"] == pytest.approx(1)
    with pytest.raises(InputError, match="shape"):
        compute_metrics(ref, ref[:, :-1])
    with pytest.raises(InputError):
        compute_metrics(ref, ref, crop=100)
    with pytest.raises(InputError):
        compute_metrics(np.full_like(ref, np.nan), ref)


def test_cc_matches_numpy(pair):
    ref, est = pair
    rep = compute_metrics(ref, est, ssim=False, uiqi=False)
    np.testing.assert_allclose(rep.per_band["cc"], [np.corrcoef(ref[b].ravel(), est[b].ravel())[0, 1] for b in range(6)])


def _q_brute(x, y):
    mx, my = x.mean(), y.mean()
    sxx, syy, sxy = x.var(), y.var(), ((x - mx) * (y - my)).mean()
    return 4 * sxy * mx * my / ((sxx + syy) * (mx * mx + my * my))


def test_uiqi_sliding_and_blocks_against_brute_force(pair):
    ref, est = pair
    x, y = ref[0], est[0]
    win = 8
    q = q_index_map(x, y, win)
    assert q.shape == (48 - win + 1, 40 - win + 1)
    for i, j in ((0, 0), (5, 17), (40, 32)):
        assert q[i, j] == pytest.approx(_q_brute(x[i:i + win, j:j + win], y[i:i + win, j:j + win]), rel=1e-7)
    qb = q_index_blocks(x, y, 16)
    brute = np.mean([_q_brute(x[i:i + 16, j:j + 16], y[i:i + 16, j:j + 16]) for i in (0, 16, 32) for j in (0, 16)])
    assert qb == pytest.approx(brute, rel=1e-10)
    pw = q_index_blocks_pairwise(ref[:3], est[:2], 16)
    assert pw[2, 1] == pytest.approx(q_index_blocks(ref[2], est[1], 16), rel=1e-10)
    const = np.full((16, 16), 0.5)
    assert q_index_map(const, const, 8).min() == pytest.approx(1.0)  # Wang's special case
    rep = compute_metrics(ref, est, ssim=False)
    assert rep.conventions["uiqi"].startswith("Wang-Bovik Q, 32x32 sliding")
    assert rep.per_band["uiqi"][0] == pytest.approx(q_index_map(x, y, 32).mean())


def test_qnr_properties():
    truth = smooth_cube(5, 64, 64, seed=4).astype(np.float64)
    from hsfuse.forward.psf import Psf
    from hsfuse.forward.degrade import apply_srf, spatial_degrade

    psf = Psf.gaussian(4)
    r = np.random.default_rng(0).uniform(0, 1, (3, 5))
    r /= r.sum(1, keepdims=True)
    lr, msi = spatial_degrade(truth, psf), apply_srf(truth, r)
    good = qnr(truth, lr, msi, spatial_degrade(msi, psf))
    noisy = truth + np.random.default_rng(1).normal(0, 0.1, truth.shape)
    bad = qnr(noisy, lr, msi, spatial_degrade(msi, psf))
    for v in (good, bad):
        assert 0 <= v["d_lambda"] <= 1 and 0 <= v["d_s"] <= 1
    assert good["qnr"] > bad["qnr"]


def test_auto_peak():
    x = np.array([[[0.2, 0.9]]])
    assert auto_peak(np.uint16, 1.0, 0.0, x)[0] == 65535
    assert auto_peak(np.uint8, 1.0, 0.0, x)[0] == 255
    assert auto_peak(np.float32, 1.0, 0.0, x)[0] == 1.0
    assert auto_peak(np.int16, 1e-4, 0.0, x)[0] == 1.0
    assert auto_peak(np.float32, 1.0, 0.0, x * 1000)[0] == pytest.approx(900)


def test_without_ssim_skips_the_slow_metrics(monkeypatch):
    """ssim=False / uiqi=False never run the windowed metrics (speed is benchmarked, not unit-tested)."""
    import hsfuse.metrics as M

    def boom(*a, **k):
        raise AssertionError("SSIM computed although ssim=False")

    monkeypatch.setattr(M, "_ssim_band", boom)
    rng = np.random.default_rng(0)
    a = rng.uniform(0.05, 1, (4, 64, 64)).astype(np.float32)
    rep = compute_metrics(a, a + np.float32(0.01), scale=8, ssim=False, uiqi=False)
    assert rep.summary["ssim"] is None and rep.summary["uiqi"] is None
    assert rep.summary["rmse"] == pytest.approx(0.01, rel=1e-3)
    with pytest.raises(AssertionError, match="SSIM computed"):
        compute_metrics(a, a + np.float32(0.01), scale=8, ssim=True, uiqi=False)
