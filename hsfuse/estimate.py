"""Estimate the unknowns of the forward model from the data pair itself.

Real LR-HSI / HR-MSI pairs rarely come with a trustworthy spectral response
(SRF) or point spread function (PSF). Both can be estimated from the pair:

* ``estimate_srf``: the MSI degraded onto the LR grid is (ideally) a linear
  combination of the LR bands, ``MSI_lr = R · LR``; solve for ``R`` (m × C) by
  (non-negative, optionally smoothness-regularised) least squares over the
  pixels that are valid in both. Rows are *not* forced to sum to 1: the MSI
  may have a different gain (radiance vs reflectance, 8-bit RGB vs
  reflectance), and forcing a unit sum would push that gain mismatch into the
  fusion as a bias.
* ``estimate_psf_sigma``: with an SRF in hand, ``R · LR`` is an MSI seen at
  LR resolution; the Gaussian PSF width σ is the one for which
  ``spatial_degrade(MSI, Psf.gaussian(s, σ))`` matches it best.

Example::

    $ hsfuse metrics --lr lr.hdr --msi msi.tif      # reports the estimated SRF

    >>> from hsfuse.estimate import estimate_srf
    >>> R = estimate_srf(lr, spatial_degrade(msi, psf))   # (m, C)
"""

from __future__ import annotations

import math

import numpy as np

from .errors import InputError

__all__ = ["estimate_srf", "estimate_psf_sigma", "valid_pixels"]

#: at most this many pixels enter a least-squares fit (a regular subsample beyond)
MAX_FIT_PIXELS = 2_000_000


def valid_pixels(*arrays: np.ndarray, max_pixels: int | None = MAX_FIT_PIXELS) -> list[np.ndarray]:
    """Pixels finite in every band of every (bands, h, w) array -> list of (bands, N) float64.

    Beyond ``max_pixels`` a regular (deterministic) subsample is taken.
    """
    h, w = arrays[0].shape[-2:]
    for a in arrays:
        if a.shape[-2:] != (h, w):
            raise InputError(f"spatial shapes differ: {[x.shape for x in arrays]}")
    mask = np.ones((h, w), dtype=bool)
    for a in arrays:
        mask &= np.isfinite(a).all(axis=0)
    idx = np.flatnonzero(mask.ravel())
    if max_pixels is not None and idx.size > max_pixels:
        idx = idx[:: int(math.ceil(idx.size / max_pixels))]
    return [a.reshape(a.shape[0], -1)[:, idx].astype(np.float64) for a in arrays]


def _diff_matrix(c: int) -> np.ndarray:
    d = np.zeros((max(c - 1, 0), c))
    for i in range(c - 1):
        d[i, i], d[i, i + 1] = -1.0, 1.0
    return d


def _nnls_gram(g: np.ndarray, b: np.ndarray) -> np.ndarray:
    """min_x ½xᵀGx − bᵀx, x ≥ 0 (G symmetric positive (semi)definite) via scipy NNLS on a square root of G."""
    from scipy.optimize import nnls

    c = g.shape[0]
    evals, evecs = np.linalg.eigh(g)
    floor = max(evals.max(), 1e-300) * 1e-14
    evals = np.maximum(evals, floor)
    root = evecs * np.sqrt(evals)  # G = root rootᵀ
    a = root.T  # ||A x − y||² = xᵀGx − 2 yᵀA x + ...; want Aᵀy = b
    y = (evecs.T @ b) / np.sqrt(evals)
    x, _ = nnls(a, y, maxiter=max(50 * c, 1000))
    return x


def estimate_srf(lr: np.ndarray, msi_lr: np.ndarray, nonneg: bool = True, smooth: float = 0.0) -> np.ndarray:
    """Spectral response (m, C) such that ``msi_lr ≈ R · lr`` pixelwise, by least squares.

    ``lr``: (C, h, w) LR-HSI; ``msi_lr``: (m, h, w) the MSI degraded onto the
    same LR grid (same PSF as the LR). NaN pixels (in any band of either) are
    left out. ``nonneg``: constrain R ≥ 0 (a physical response is
    non-negative; it also regularises the badly conditioned problem, since
    neighbouring HS bands are nearly collinear). ``smooth`` ≥ 0 adds
    ``smooth · tr(G)/C · ‖D r‖²`` per row with D the first spectral difference
    (the trace factor makes it independent of the data scale). Rows are not
    normalised to sum to 1 (see module docstring).
    """
    lr = np.asarray(lr)
    msi_lr = np.asarray(msi_lr)
    if lr.ndim != 3 or msi_lr.ndim != 3:
        raise InputError(f"expected (C, h, w) and (m, h, w), got {lr.shape} and {msi_lr.shape}")
    x, y = valid_pixels(lr, msi_lr)
    c, n = x.shape
    if n < c:
        raise InputError(f"only {n} valid pixels to estimate an SRF over {c} bands")
    g = x @ x.T  # (C, C)
    rhs = y @ x.T  # (m, C)
    if smooth > 0:
        d = _diff_matrix(c)
        g = g + float(smooth) * np.trace(g) / c * (d.T @ d)
    out = np.empty((y.shape[0], c))
    if not nonneg:
        jitter = np.trace(g) / c * 1e-12
        out[:] = np.linalg.solve(g + jitter * np.eye(c), rhs.T).T
    else:
        for i in range(y.shape[0]):
            out[i] = _nnls_gram(g, rhs[i])
    return out


def estimate_psf_sigma(
    lr: np.ndarray,
    msi: np.ndarray,
    srf: np.ndarray,
    scale: int,
    sigmas: np.ndarray | None = None,
    refine: bool = True,
) -> float:
    """Width σ (HR pixels) of a centred Gaussian PSF that best explains the pair.

    Compares ``R · LR`` (what the MSI bands look like at LR resolution, from the
    HSI) with ``spatial_degrade(MSI, Psf.gaussian(scale, σ))`` for σ on a grid
    (default 0.1·s … 1.5·s) and refines around the best by golden-section
    search. A per-band gain and offset is fitted out at every σ, so an SRF with
    the wrong gain (e.g. estimated under another PSF) does not bias σ.
    """
    from .degrade import Psf, spatial_degrade

    lr = np.asarray(lr, dtype=np.float64)
    msi = np.asarray(msi, dtype=np.float64)
    srf = np.asarray(srf, dtype=np.float64)
    s = int(scale)
    c, h, w = lr.shape
    if msi.shape[1:] != (h * s, w * s):
        raise InputError(f"MSI {msi.shape} does not match LR {lr.shape} at scale {s}")
    target = np.einsum("mc,chw->mhw", srf, lr)
    msi_f = np.where(np.isfinite(msi), msi, np.nanmean(msi))
    bad_hr = ~np.isfinite(msi).all(axis=0)
    bad_lr = bad_hr.reshape(h, s, w, s).any(axis=(1, 3)) if bad_hr.any() else np.zeros((h, w), bool)
    # ignore a border of 1 LR pixel (border handling of the unknown true PSF may differ)
    mask = np.isfinite(target).all(axis=0) & ~bad_lr
    b = 1 if min(h, w) > 4 else 0
    if b:
        mask[:b], mask[-b:], mask[:, :b], mask[:, -b:] = False, False, False, False

    def cost(sigma: float) -> float:
        sim = spatial_degrade(msi_f, Psf.gaussian(s, sigma))
        err = 0.0
        for i in range(target.shape[0]):
            t, u = target[i][mask], sim[i][mask]
            a = np.stack([u, np.ones_like(u)], 1)
            coef, *_ = np.linalg.lstsq(a, t, rcond=None)
            err += float(np.sum((t - a @ coef) ** 2))
        return err

    if sigmas is None:
        sigmas = s * np.linspace(0.1, 1.5, 15)
    return golden_min(cost, np.asarray(sigmas, dtype=np.float64), steps=12, refine=refine)


def golden_section(f, lo: float, hi: float, steps: int) -> tuple[float, float, float, float]:
    """Golden-section search of a 1-D cost on [lo, hi]: (best probe x, its cost, final lo, final hi)."""
    gr = (math.sqrt(5) - 1) / 2
    x1, x2 = hi - gr * (hi - lo), lo + gr * (hi - lo)
    f1, f2 = f(x1), f(x2)
    for _ in range(steps):
        if f1 < f2:
            hi, x2, f2 = x2, x1, f1
            x1 = hi - gr * (hi - lo)
            f1 = f(x1)
        else:
            lo, x1, f1 = x1, x2, f2
            x2 = lo + gr * (hi - lo)
            f2 = f(x2)
    x, fx = (x1, f1) if f1 < f2 else (x2, f2)
    return x, fx, lo, hi


def golden_min(f, grid: np.ndarray, steps: int, refine: bool = True) -> float:
    """argmin of a 1-D cost over ``grid``, refined by golden-section search between the best point's neighbours."""
    costs = [f(float(v)) for v in grid]
    j = int(np.argmin(costs))
    if not refine or len(grid) < 3:
        return float(grid[j])
    lo, hi = float(grid[max(j - 1, 0)]), float(grid[min(j + 1, len(grid) - 1)])
    _, _, lo, hi = golden_section(f, lo, hi, steps)
    return (lo + hi) / 2
