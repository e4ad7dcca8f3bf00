"""Noise in the pair: estimate it per band, and take it out before fusion when the inputs are clearly noisy.

Why: detail injection passes the MSI's noise into every fused band and carries the LR-HSI's
band-independent noise into the spectra (at 30 dB per-band SNR, gsa lost 10 dB and gained 12° of SAM
on CAVE, docs/BENCHMARKS.md). Two cheap, local steps recover a good part of it:

* **LR-HSI**: neighbouring bands are nearly collinear, noise is not. Noise per band is estimated by
  multiple regression of each band on the others (HySime's estimator: Bioucas-Dias & Nascimento,
  IEEE TGRS 46(8), 2008), and the cube is projected onto the leading components of its noise-whitened
  spectra (components whose energy stands clearly above the noise floor).
* **MSI**: a few broad bands, no spectral redundancy: noise per band from the median absolute finest
  diagonal wavelet coefficient (Donoho) in the *smoothest* blocks (a low percentile over 8×8 blocks, so
  texture is not taken for noise), then an adaptive (local Wiener) 3×3 filter with that noise power.

Both are applied only when an input's estimated SNR is below ``NOISY_SNR_DB``: on clean or mildly
noisy scenes they cost more detail than they remove noise (measured, docs/fusion.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .cube import Window
from .io.base import CubeSource

#: denoise an input whose median per-band SNR (estimated) is below this
NOISY_SNR_DB = 36.0
#: the MSI filter's window side (pixels)
WIENER_SIZE = 3


def mad_noise(band: np.ndarray, block: int = 16, quantile: float = 0.1) -> float:
    """Noise σ of one image band: MAD of the finest diagonal Haar detail, in its smoothest blocks."""
    b = np.asarray(band, dtype=np.float32)
    h, w = (b.shape[0] // 2) * 2, (b.shape[1] // 2) * 2
    b = b[:h, :w]
    hh = (b[0::2, 0::2] - b[1::2, 0::2] - b[0::2, 1::2] + b[1::2, 1::2]) / 2.0
    nb = block // 2
    hb, wb = hh.shape[0] // nb, hh.shape[1] // nb
    if hb * wb >= 8:
        blocks = hh[:hb * nb, :wb * nb].reshape(hb, nb, wb, nb).transpose(0, 2, 1, 3).reshape(-1, nb * nb)
        ok = np.isfinite(blocks).all(1)
        if ok.sum() >= 8:
            return float(np.quantile(np.median(np.abs(blocks[ok]), 1), quantile) / 0.6745)
    v = hh[np.isfinite(hh)]
    return float(np.median(np.abs(v)) / 0.6745) if v.size else 0.0


def regression_noise(x: np.ndarray) -> np.ndarray:
    """Noise σ per band of (C, N) spectra: residual of each band regressed on all others (HySime)."""
    c = x.shape[0]
    if c < 3:
        return np.array([mad_noise(b.reshape(1, -1)) for b in x])
    g = x @ x.T
    ridge = max(1e-10 * np.trace(g) / c, 1e-300)
    # the residual sum of squares of band i regressed on all others is 1 / (G⁻¹)_ii: one inversion, not C solves
    try:
        ginv = np.linalg.inv(g + ridge * np.eye(c))
    except np.linalg.LinAlgError:
        return np.array([mad_noise(b.reshape(1, -1)) for b in x])
    rss = 1.0 / np.maximum(np.diag(ginv), 1e-300)
    return np.sqrt(np.maximum(rss, 0.0) / x.shape[1])


def _snr_db(x: np.ndarray, sigma: np.ndarray) -> float:
    rms = np.array([math.sqrt(float(np.nanmean(np.square(b, dtype=np.float64)))) for b in x])
    snr = 20 * np.log10(np.maximum(rms, 1e-30) / np.maximum(sigma, 1e-30))
    return float(np.median(snr))


@dataclass
class NoiseEstimate:
    lr_sigma: np.ndarray
    msi_sigma: np.ndarray
    lr_snr_db: float
    msi_snr_db: float

    def noisy(self, threshold: float = NOISY_SNR_DB) -> tuple[bool, bool]:
        return self.lr_snr_db < threshold, self.msi_snr_db < threshold

    def describe(self) -> dict[str, Any]:
        return {"lr_snr_db": self.lr_snr_db, "msi_snr_db": self.msi_snr_db,
                "lr_sigma": [float(v) for v in self.lr_sigma], "msi_sigma": [float(v) for v in self.msi_sigma],
                "threshold_db": NOISY_SNR_DB}


def estimate_noise(lr: np.ndarray, msi: np.ndarray) -> NoiseEstimate:
    """Per-band noise σ and median SNR (dB) of an LR window (C, h, w) and an MSI window (m, H, W)."""
    c = lr.shape[0]
    x = lr.reshape(c, -1).astype(np.float64)
    x = x[:, np.isfinite(x).all(0)]
    lr_sigma = regression_noise(x) if x.shape[1] > 4 * c else np.array([mad_noise(b) for b in lr])
    msi_sigma = np.array([mad_noise(b) for b in msi])
    return NoiseEstimate(lr_sigma, msi_sigma, _snr_db(x, lr_sigma) if x.size else float("inf"),
                         _snr_db(msi, msi_sigma))


def subspace_denoise(lr: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, int]:
    """Project (C, h, w) onto the leading components of its noise-whitened spectra; (cube, components kept)."""
    c = lr.shape[0]
    flat = lr.reshape(c, -1).astype(np.float64)
    ok = np.isfinite(flat).all(0)
    if ok.sum() < 2 * c:
        return lr, c
    s = np.maximum(np.asarray(sigma, dtype=np.float64), 1e-12)
    mu = flat[:, ok].mean(1, keepdims=True)
    xw = (flat[:, ok] - mu) / s[:, None]
    u, sv, _ = np.linalg.svd(xw, full_matrices=False)
    n = xw.shape[1]
    ev = sv ** 2 / n  # eigenvalues of the whitened covariance: noise alone gives about 1
    p = int(max(1, (ev > 3.0 + 4.0 * math.sqrt(c / n)).sum()))
    if p >= c:
        return lr, c
    proj = u[:, :p] @ u[:, :p].T
    out = flat.copy()
    out[:, ok] = (proj @ xw) * s[:, None] + mu
    return out.reshape(lr.shape).astype(np.float32), p


def wiener_band(band: np.ndarray, noise_var: float, size: int = WIENER_SIZE) -> np.ndarray:
    """Local Wiener filter of one band (``scipy.signal.wiener`` form) with a known noise power; NaN kept."""
    from scipy.ndimage import uniform_filter

    b = np.asarray(band, dtype=np.float64)
    bad = ~np.isfinite(b)
    if bad.any():
        b = np.where(bad, np.nanmean(b) if (~bad).any() else 0.0, b)
    mean = uniform_filter(b, size, mode="reflect")
    var = np.maximum(uniform_filter(b * b, size, mode="reflect") - mean * mean, 0.0)
    gain = np.where(var > noise_var, (var - noise_var) / np.maximum(var, 1e-300), 0.0)
    out = mean + gain * (b - mean)
    if bad.any():
        out[bad] = np.nan
    return out.astype(np.float32)


class WienerSource(CubeSource):
    """An opened MSI whose reads come back Wiener-filtered, tile by tile, identical to filtering it whole.

    Each read is widened by the filter's half window (mirrored at the scene border, as the whole-image
    filter's own mirror padding), filtered, and cut back.
    """

    format = "denoised"

    def __init__(self, src: CubeSource, sigma: np.ndarray, size: int = WIENER_SIZE):
        super().__init__(src.path, src.shape, np.float32, src.meta.copy(scale=1.0, offset=0.0))
        self.src, self.sigma, self.size = src, np.asarray(sigma, dtype=np.float64), int(size)

    def read(self, window: Window | None = None, bands=None, raw: bool = False) -> np.ndarray:
        from .fusion.tiling import read_mirrored

        if window is None:
            window = Window(0, 0, self.height, self.width)
        window = window.clip(self.height, self.width)
        h = self.size // 2
        block = read_mirrored(self.src, window.row - h, window.row + window.height + h,
                              window.col - h, window.col + window.width + h)
        idx = range(self.bands) if bands is None else [int(b) for b in bands]
        out = np.stack([wiener_band(block[i], float(self.sigma[i]) ** 2, self.size) for i in idx])
        return out[:, h:h + window.height, h:h + window.width]
