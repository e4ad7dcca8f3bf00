"""Full-reference and no-reference quality metrics with every convention recorded.

All formulas are in docs/metrics.md. In short, for reference X and estimate Y
(C bands, valid pixel set Ω after border crop and masking, N = |Ω|):

* MSE_b = (1/N) Σ_Ω (X_b − Y_b)²,  RMSE_b = √MSE_b,  RMSE = √(mean_b MSE_b)
* PSNR_b = 10·log10(peak_b² / MSE_b); PSNR = mean_b PSNR_b (mean of per-band dB)
* SSIM_b: scikit-image ``structural_similarity`` with a Gaussian window
  (σ = 1.5, 11×11), population covariance, ``data_range = peak_b``; the SSIM map
  is averaged over valid pixels at least 5 px from the image edge (exactly
  scikit-image's mean when nothing is masked). SSIM = mean_b SSIM_b.
* SAM = mean over Ω' of arccos(<x, y> / (‖x‖‖y‖)) in degrees, Ω' = Ω minus pixels
  whose spectrum is all-zero in either cube (excluded and counted).
* ERGAS = (100 / s) · √( mean_b MSE_b / μ_b² ), μ_b = mean of X_b over Ω.
* CC_b = Pearson correlation of X_b and Y_b over Ω; CC = mean_b CC_b.
* UIQI_b = Wang–Bovik Q averaged over all 32×32 sliding windows (stride 1)
  that contain only valid pixels; UIQI = mean_b UIQI_b.

>>> rep = compute_metrics(ref, est, scale=8, peak=1.0)
>>> rep.summary["psnr"], rep.per_band["psnr"]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputError

SSIM_SIGMA = 1.5
SSIM_WIN = 11  # scikit-image: 2·int(3.5·σ + 0.5) + 1
UIQI_WIN = 32
QNR_BLOCK = 32


@dataclass
class MetricsReport:
    """Per-band arrays, a summary dict and the conventions used to compute them."""

    per_band: dict[str, np.ndarray]
    summary: dict[str, float | None]
    conventions: dict[str, Any]
    band_names: list[str] | None = None
    sam_map: np.ndarray | None = None  # (H, W) degrees, NaN where excluded
    error_map: np.ndarray | None = None  # (H, W) RMSE over bands, NaN where masked

    def to_dict(self, per_band: bool = True) -> dict:
        d: dict[str, Any] = {"summary": dict(self.summary), "conventions": dict(self.conventions)}
        if per_band:
            names = self.band_names or [str(i + 1) for i in range(len(next(iter(self.per_band.values()))))]
            d["per_band"] = {"band": names, **{k: v.tolist() for k, v in self.per_band.items()}}
        return d


def _as3d(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise InputError(f"{name} must be (C, H, W), got shape {a.shape}")
    return a


def auto_peak(stored_dtype, file_scale: float, file_offset: float, ref: np.ndarray) -> tuple[float, str]:
    """The PSNR/SSIM data range when none is given (``--peak auto``), and why.

    * integer data stored unscaled (scale 1, offset 0): the dtype's maximum
      (255, 65535, ...) -- the numbers are compared in stored units;
    * otherwise, reflectance-like data (max of the reference ≤ 1.5): 1.0;
    * scaled integers beyond that: the dtype maximum in physical units;
    * other floats: the reference's maximum (recorded as such).
    """
    dt = np.dtype(stored_dtype)
    if np.issubdtype(dt, np.integer) and file_scale == 1.0 and file_offset == 0.0:
        return float(np.iinfo(dt).max), f"{dt} range (integer data, unscaled)"
    vmax = float(np.nanmax(ref)) if np.isfinite(ref).any() else 1.0
    if vmax <= 1.5:
        return 1.0, f"reflectance-like: reference max {vmax:.4g} <= 1.5"
    if np.issubdtype(dt, np.integer):
        return float(np.iinfo(dt).max * file_scale + file_offset), f"{dt} range in physical units (scale {file_scale:g})"
    return vmax, f"reference maximum {vmax:.6g} (float data not in [0, 1.5])"


def psnr_from_mse(mse: np.ndarray, peak: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(np.asarray(peak, float) ** 2 / np.asarray(mse, float))


def sam_map(ref: np.ndarray, est: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Per-pixel spectral angle (degrees); NaN where invalid or either spectrum is all-zero.

    Returns (map (H, W), number of valid pixels excluded for a zero-norm spectrum).
    """
    x = np.asarray(ref, dtype=np.float64)
    y = np.asarray(est, dtype=np.float64)
    dot = np.einsum("chw,chw->hw", x, y)
    nx = np.sqrt(np.einsum("chw,chw->hw", x, x))
    ny = np.sqrt(np.einsum("chw,chw->hw", y, y))
    valid = np.isfinite(dot) if valid is None else (valid & np.isfinite(dot))
    zero = valid & ((nx == 0) | (ny == 0))
    ok = valid & ~zero
    out = np.full(dot.shape, np.nan)
    cos = dot[ok] / (nx[ok] * ny[ok])
    out[ok] = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    return out, int(zero.sum())


def _window_sums(a: np.ndarray, k: int) -> np.ndarray:
    """Sums over all k×k windows fully inside a (..., H, W) array (stride 1), via integral images."""
    s = np.cumsum(np.cumsum(a, axis=-2), axis=-1)
    s = np.pad(s, [(0, 0)] * (a.ndim - 2) + [(1, 0), (1, 0)])
    return s[..., k:, k:] - s[..., :-k, k:] - s[..., k:, :-k] + s[..., :-k, :-k]


def q_index_map(x: np.ndarray, y: np.ndarray, win: int) -> np.ndarray:
    """Wang–Bovik Q on every win×win sliding window (stride 1, 'valid'); special cases as Wang's img_qi.m.

    Q = 4 σxy μx μy / ((σx² + σy²)(μx² + μy²)) with population (1/n) moments;
    where σx² + σy² = 0 but μx² + μy² ≠ 0: Q = 2 μx μy / (μx² + μy²); where both are 0: Q = 1.
    """
    n = float(win * win)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    mx, my = _window_sums(x, win) / n, _window_sums(y, win) / n
    sxx = _window_sums(x * x, win) / n - mx * mx
    syy = _window_sums(y * y, win) / n - my * my
    sxy = _window_sums(x * y, win) / n - mx * my
    d1 = np.maximum(sxx + syy, 0.0)
    d2 = mx * mx + my * my
    # integral-image round-off: treat tiny variances as zero (relative to the window's mean power)
    d1 = np.where(d1 <= 1e-12 * np.maximum(d2, 1e-300), 0.0, d1)
    q = np.ones_like(mx)
    only_var0 = (d1 == 0) & (d2 != 0)
    q[only_var0] = 2 * mx[only_var0] * my[only_var0] / d2[only_var0]
    both = (d1 != 0) & (d2 != 0)
    q[both] = 4 * sxy[both] * mx[both] * my[both] / (d1[both] * d2[both])
    return q


def q_index_blocks(x: np.ndarray, y: np.ndarray, block: int) -> float:
    """Mean Wang–Bovik Q over non-overlapping block×block tiles (QNR convention); partial tiles dropped."""
    h, w = x.shape[-2:]
    b = min(block, h, w)
    hh, ww = (h // b) * b, (w // b) * b
    xs = np.asarray(x, np.float64)[:hh, :ww].reshape(hh // b, b, ww // b, b).transpose(0, 2, 1, 3).reshape(-1, b * b)
    ys = np.asarray(y, np.float64)[:hh, :ww].reshape(hh // b, b, ww // b, b).transpose(0, 2, 1, 3).reshape(-1, b * b)
    mx, my = xs.mean(1), ys.mean(1)
    sxx, syy = xs.var(1), ys.var(1)
    sxy = ((xs - mx[:, None]) * (ys - my[:, None])).mean(1)
    d1, d2 = sxx + syy, mx * mx + my * my
    q = np.ones_like(mx)
    a = (d1 == 0) & (d2 != 0)
    q[a] = 2 * mx[a] * my[a] / d2[a]
    bb = (d1 != 0) & (d2 != 0)
    q[bb] = 4 * sxy[bb] * mx[bb] * my[bb] / (d1[bb] * d2[bb])
    return float(q.mean())


def q_index_blocks_pairwise(a: np.ndarray, b: np.ndarray, block: int) -> np.ndarray:
    """(n, m) matrix of ``q_index_blocks(a[i], b[j], block)`` for (n, H, W) and (m, H, W), vectorised."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    h, w = a.shape[-2:]
    s = min(block, h, w)
    hh, ww = (h // s) * s, (w // s) * s

    def tiles(v):  # (k, H, W) -> (nb, k, P)
        k = v.shape[0]
        return v[:, :hh, :ww].reshape(k, hh // s, s, ww // s, s).transpose(1, 3, 0, 2, 4).reshape(-1, k, s * s)

    ta, tb = tiles(a), tiles(b)
    ma, mb = ta.mean(2), tb.mean(2)  # (nb, n), (nb, m)
    ca, cb = ta - ma[..., None], tb - mb[..., None]
    va, vb = (ca * ca).mean(2), (cb * cb).mean(2)
    cov = ca @ cb.transpose(0, 2, 1) / (s * s)  # (nb, n, m)
    mxy = ma[:, :, None] * mb[:, None, :]
    d1 = va[:, :, None] + vb[:, None, :]
    d2 = ma[:, :, None] ** 2 + mb[:, None, :] ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where((d1 != 0) & (d2 != 0), 4 * cov * mxy / (d1 * d2),
                     np.where((d1 == 0) & (d2 != 0), 2 * mxy / d2, 1.0))
    return q.mean(0)


def _ssim_band(x: np.ndarray, y: np.ndarray, valid: np.ndarray, peak: float) -> float:
    from skimage.metrics import structural_similarity

    if not valid.all():
        fill = float(np.mean(x[valid])) if valid.any() else 0.0
        x = np.where(valid, x, fill)
        y = np.where(valid, y, fill)
    h, w = x.shape
    if min(h, w) < SSIM_WIN:
        return float("nan")
    _, smap = structural_similarity(x, y, gaussian_weights=True, sigma=SSIM_SIGMA, use_sample_covariance=False,
                                    data_range=peak, full=True)
    pad = (SSIM_WIN - 1) // 2
    inner = np.zeros_like(valid)
    inner[pad:h - pad, pad:w - pad] = True
    sel = inner & valid
    return float(smap[sel].mean(dtype=np.float64)) if sel.any() else float("nan")


def compute_metrics(ref: np.ndarray, est: np.ndarray, scale: float | None = None, peak: float | str = 1.0,
                    crop: int = 0, mask: np.ndarray | None = None, ssim: bool = True, uiqi: bool = True,
                    band_names: list[str] | None = None, maps: bool = True) -> MetricsReport:
    """Full-reference metrics of ``est`` against ``ref`` (both (C, H, W)); see the module docstring.

    ``peak``: a number (fixed data range for PSNR/SSIM) or ``"band-max"`` (per
    band, the maximum of the reference over valid pixels). ``crop``: pixels
    dropped at every border before anything else. ``mask``: (H, W) bool, True =
    valid (before crop). Pixels non-finite in any band of either cube are
    masked too. ``scale``: the resolution ratio s for ERGAS (None: ERGAS not
    computed). ``ssim``/``uiqi`` False skip those (the slow ones).
    """
    x = _as3d(ref, "reference")
    y = _as3d(est, "estimate")
    if x.shape != y.shape:
        raise InputError(f"shape mismatch: reference {x.shape}, estimate {y.shape}")
    c, h, w = x.shape
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (h, w):
            raise InputError(f"mask shape {mask.shape} does not match the image {h}×{w}")
    crop = int(crop)
    if crop < 0 or 2 * crop >= min(h, w):
        raise InputError(f"crop {crop} leaves nothing of a {h}×{w} image")
    if crop:
        x, y = x[:, crop:h - crop, crop:w - crop], y[:, crop:h - crop, crop:w - crop]
        mask = None if mask is None else mask[crop:h - crop, crop:w - crop]
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    finite = np.isfinite(x).all(0) & np.isfinite(y).all(0)
    valid = finite if mask is None else (finite & mask)
    n = int(valid.sum())
    if n == 0:
        raise InputError("no valid pixels to compare (everything is masked or NaN)")
    xv, yv = x[:, valid], y[:, valid]  # (C, N)
    diff = xv - yv
    sq = diff * diff
    mse = np.mean(sq, axis=1)
    mse_pix = np.mean(sq, axis=0) if maps else None
    del sq
    if isinstance(peak, str):
        if peak != "band-max":
            raise InputError(f"peak must be a number or 'band-max', got '{peak}'")
        peaks = xv.max(axis=1)
        peak_desc: Any = "band-max"
    else:
        peaks = np.full(c, float(peak))
        peak_desc = float(peak)
    psnr = psnr_from_mse(mse, peaks)
    mu = xv.mean(axis=1)
    xc, yc = xv - mu[:, None], yv - yv.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        cc = (xc * yc).sum(1) / np.sqrt((xc * xc).sum(1) * (yc * yc).sum(1))
    per_band: dict[str, np.ndarray] = {"psnr": psnr, "rmse": np.sqrt(mse), "cc": cc}
    if ssim:
        per_band["ssim"] = np.array([_ssim_band(x[b], y[b], valid, float(peaks[b])) for b in range(c)])
    uwin = min(UIQI_WIN, x.shape[1], x.shape[2])
    if uiqi:
        vals = []
        bad_count = _window_sums((~valid).astype(np.float64), uwin) > 0.5
        for b in range(c):
            xb, yb = np.where(valid, x[b], 0.0), np.where(valid, y[b], 0.0)
            q = q_index_map(xb, yb, uwin)
            vals.append(float(q[~bad_count].mean()) if (~bad_count).any() else float("nan"))
        per_band["uiqi"] = np.array(vals)
    smap, n_zero = sam_map(x, y, valid)
    with np.errstate(invalid="ignore"):
        sam = float(np.nanmean(smap)) if np.isfinite(smap).any() else float("nan")
    ergas = None
    if scale is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            ergas = float(100.0 / float(scale) * math.sqrt(float(np.mean(mse / (mu * mu)))))
    summary: dict[str, float | None] = {
        "psnr": float(np.mean(psnr)),
        "ssim": float(np.mean(per_band["ssim"])) if ssim else None,
        "sam": sam,
        "ergas": ergas,
        "rmse": float(np.sqrt(np.mean(mse))),
        "cc": float(np.mean(cc)),
        "uiqi": float(np.mean(per_band["uiqi"])) if uiqi else None,
    }
    conventions = {
        "bands": c,
        "height": int(x.shape[1]),
        "width": int(x.shape[2]),
        "crop": crop,
        "valid_pixels": n,
        "masked_pixels": int(valid.size - n),
        "sam_zero_norm_excluded": n_zero,
        "peak": peak_desc,
        "peak_values": sorted(set(np.round(peaks, 8).tolist())) if peak_desc == "band-max" else float(peaks[0]),
        "psnr": "10*log10(peak^2/MSE_b) per band, then mean over bands (dB)",
        "ssim": (f"skimage structural_similarity, Gaussian window sigma={SSIM_SIGMA} ({SSIM_WIN}x{SSIM_WIN}), "
                 "use_sample_covariance=False, data_range=peak; map mean over valid pixels >= 5 px from the edge; "
                 "mean over bands") if ssim and min(x.shape[1:]) >= SSIM_WIN
                else ("not computed" if not ssim else f"NaN: image smaller than the {SSIM_WIN}x{SSIM_WIN} window"),
        "sam": "degrees; mean over valid pixels with non-zero spectra in both cubes",
        "ergas": "100/s*sqrt(mean_b(MSE_b/mu_b^2)), mu_b = reference band mean" if scale is not None
                 else "not computed (needs the scale s)",
        "ergas_scale": None if scale is None else float(scale),
        "rmse": "sqrt(mean over bands and valid pixels of squared error)",
        "cc": "Pearson correlation per band over valid pixels, mean over bands",
        "uiqi": (f"Wang-Bovik Q, {uwin}x{uwin} sliding windows (stride 1) with only valid pixels, mean over "
                 "windows then over bands") if uiqi else "not computed",
        "mask": "pixels non-finite in any band of either cube" + (" or outside the given mask" if mask is not None else ""),
    }
    err_map = None
    if maps:
        err_map = np.full(valid.shape, np.nan)
        err_map[valid] = np.sqrt(mse_pix)
    return MetricsReport(per_band, summary, conventions, band_names, smap if maps else None, err_map)


# -- no-reference (consistency + QNR) -------------------------------------------

def qnr(fused: np.ndarray, lr: np.ndarray, msi: np.ndarray, msi_lr: np.ndarray, block: int = QNR_BLOCK,
        p: int = 1, q: int = 1, alpha: float = 1.0, beta: float = 1.0) -> dict[str, float]:
    """QNR-style D_λ, D_s and QNR (Alparone et al. 2008), generalised to an MSI guide (docs/metrics.md).

    D_λ = ( 1/(C(C−1)) Σ_{l≠r} |Q(F_l, F_r) − Q(L_l, L_r)|^p )^{1/p}
    D_s = ( 1/(C·m) Σ_l Σ_k |Q(F_l, M_k) − Q(L_l, M̃_k)|^q )^{1/q}
    QNR = (1 − D_λ)^α (1 − D_s)^β

    F fused (C, H, W), L the LR-HSI, M the MSI (m, H, W), M̃ the MSI degraded to
    the LR grid. Q = Wang–Bovik index averaged over non-overlapping ``block``
    tiles (min(block, h, w) on the LR grid). Non-finite pixels are replaced by
    the band mean (QNR has no mask).
    """
    def fill(a):
        a = np.asarray(a, np.float64)
        if np.isfinite(a).all():
            return a
        m = np.nanmean(a.reshape(a.shape[0], -1), axis=1)
        return np.where(np.isfinite(a), a, m[:, None, None])

    f, l_, m_, mt = fill(fused), fill(lr), fill(msi), fill(msi_lr)
    c = f.shape[0]
    qf = q_index_blocks_pairwise(f, f, block)
    ql = q_index_blocks_pairwise(l_, l_, block)
    off = ~np.eye(c, dtype=bool)
    d_lambda = float((np.abs(qf - ql)[off] ** p).mean() ** (1.0 / p)) if c > 1 else 0.0
    qfm = q_index_blocks_pairwise(f, m_, block)
    qlm = q_index_blocks_pairwise(l_, mt, block)
    d_s = float((np.abs(qfm - qlm) ** q).mean() ** (1.0 / q))
    return {"d_lambda": float(d_lambda), "d_s": float(d_s), "qnr": float((1 - d_lambda) ** alpha * (1 - d_s) ** beta)}


def no_reference_metrics(fused: np.ndarray, lr: np.ndarray, msi: np.ndarray, psf=None, srf: np.ndarray | None = None,
                         lr_peak: Any = 1.0, msi_peak: Any = 1.0, psf_rule: str = "given",
                         srf_rule: str = "given") -> tuple[dict[str, float], dict[str, Any]]:
    """(summary, conventions) of a fused cube judged only by its inputs: re-degraded to each, and QNR.

    Without a reference the forward model is the yardstick: ``degrade(F, PSF)`` against the LR-HSI,
    ``SRF·F`` against the MSI. A PSF or SRF not given is estimated from the (LR, MSI) pair exactly as
    ``hsfuse fuse`` does with no flags, so the same pair is judged by the model it was fused with.
    ``fused`` and ``msi`` are cropped to the LR grid (s × the LR size).
    """
    from .forward.degrade import apply_srf, spatial_degrade
    from .forward.psf import describe_psf

    c, hh, ww = fused.shape
    h, w = lr.shape[1:]
    s = hh // h
    fused, msi = fused[:, : h * s, : w * s], msi[:, : h * s, : w * s]
    if psf is None or srf is None:
        from .forward.estimate import estimate_pair

        est = estimate_pair(lr, msi, s, psf=psf, srf=srf)
        if psf is None:
            psf = est.psf
            psf_rule = f"estimated from the pair as `hsfuse fuse` does (hsfuse.forward.estimate_pair): {est.summary()}"
        if srf is None:
            srf = est.srf
            srf_rule = ("estimated from the pair (hsfuse.forward.estimate_pair): non-negative least squares of "
                        "MSI_lr on LR, sensor gain kept")
    msi_lr = spatial_degrade(msi, psf)
    rl = compute_metrics(lr, spatial_degrade(fused, psf), peak=lr_peak, ssim=False, uiqi=False, maps=False)
    rm = compute_metrics(msi, apply_srf(fused, srf), peak=msi_peak, ssim=False, uiqi=False, maps=False)
    q = qnr(fused, lr, msi, msi_lr)
    summary = {
        "lr_consistency_psnr": rl.summary["psnr"], "lr_consistency_sam": rl.summary["sam"],
        "lr_consistency_rmse": rl.summary["rmse"],
        "msi_consistency_psnr": rm.summary["psnr"], "msi_consistency_rmse": rm.summary["rmse"],
        **q,
    }
    conventions = {
        "scale": s, "psf": describe_psf(psf), "psf_rule": psf_rule, "srf_rule": srf_rule,
        "srf_matrix": np.asarray(srf).tolist(),
        "lr_peak": lr_peak, "msi_peak": msi_peak,
        "lr_consistency": "PSNR/SAM of spatial_degrade(FUSED, PSF) against LR (masked as compute_metrics)",
        "msi_consistency": "PSNR of SRF·FUSED against MSI",
        "qnr": ("Alparone et al. 2008, p=q=1, alpha=beta=1; Q = Wang-Bovik on non-overlapping 32x32 blocks "
                "(min(32,h,w) on the LR grid); D_s averaged over all (HSI band, MSI band) pairs with MSI_lr = "
                "spatial_degrade(MSI, PSF)"),
    }
    return summary, conventions


__all__ = ["MetricsReport", "no_reference_metrics", "compute_metrics", "auto_peak", "sam_map", "q_index_map", "q_index_blocks", "q_index_blocks_pairwise", "qnr", "psnr_from_mse"]
