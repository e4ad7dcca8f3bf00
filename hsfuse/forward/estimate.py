"""Estimating the forward model from the pair itself: one home for `fuse`, `metrics` and `estimate`.

Why estimate by default: a wrong PSF or SRF costs far more than any choice of
method (12–15 dB measured on CAVE and remote-sensing pairs, docs/fusion.md),
and both are identifiable from the pair, because the two observations of the
same scene must agree once each is degraded to the other's resolution
(HySure, Simões et al., IEEE TGRS 2015)::

    SRF · LR  ≈  degrade(MSI, PSF)       (m images on the LR grid)

``estimate_pair`` is built to be cheap (well under the cost of ``gsa`` on a
512² scene): it reads a bounded window of LR pixels, gathers the MSI taps each
of them sees once, and then scores any candidate kernel with one tensor
contraction and a projection onto the span of the LR spectra (the SRF never
has to be solved while searching: the best SRF for a kernel is that
projection). Candidates, best first:

1. the named presets at this scale (``hsfuse.forward.protocols``): when one explains
   the pair as well as the best free fit, it is taken *as the forward model*
   (exact: the pretrained networks and the LR-consistency step then behave as
   if ``--protocol`` had been given);
2. a Gaussian with free width σ and sub-pixel centre (dy, dx): the sampling
   phase of the LR grid, or a shift between the grids, is the centre offset;
3. a free non-negative kernel (s ≤ 16), adopted only when it explains pixels it
   was not fitted on clearly better than the Gaussian (so noise is not fitted).

The score is the relative residual ‖P⊥ degrade(MSI)‖ / ‖degrade(MSI) − mean‖,
where P⊥ removes what a linear combination of the LR bands (plus an offset)
explains. It is 0 for a noise-free pair under the true PSF, about 1/SNR
with noise, and near 1 when the MSI is not the LR's scene.

Building blocks also used directly: ``estimate_srf`` (least-squares SRF, rows not forced to sum to 1:
the MSI may have another gain), ``estimate_psf_sigma`` (Gaussian width given an SRF), ``golden_section``.
The HySure alternation (``hsfuse estimate --method hysure``) and the estimate JSON live in ``blind.py``.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError, UsageError
from .psf import Psf, make_psf

__all__ = ["PairEstimate", "estimate_pair", "estimate_from_sources", "estimate_srf", "estimate_psf_sigma",
           "valid_pixels", "RESIDUAL_POOR", "RESIDUAL_FAIL"]

#: above this relative residual the pair follows the linear model only loosely: a warning
RESIDUAL_POOR = 0.08
#: below this forward-model residual the inputs agree too well for their "noise" to be observation noise
RESIDUAL_NOISY = 0.005
#: above this the MSI does not explain the LR at all (another scene, grossly misregistered): an error
RESIDUAL_FAIL = 0.7
#: a preset is taken as the forward model when its residual is within this factor of the best fit
SNAP_TOLERANCE = 1.04
#: the free kernel replaces the Gaussian only if its held-out residual is below this factor of the Gaussian's
FREE_KERNEL_GAIN = 0.9
#: at most this many LR pixels (a regular subsample of a central window) enter the estimate ...
MAX_FIT_PIXELS = 3000
#: ... and at most this many MSI taps (bands × pixels × kernel taps, float32): bounded memory, about 12 MB
MAX_FIT_TAPS = 3_000_000
#: the central window read from large scenes (side, HR pixels; at least 16 LR pixels)
WINDOW_HR = 640


#: at most this many pixels enter a least-squares fit (a regular subsample beyond)
MAX_LSQ_PIXELS = 2_000_000


def valid_pixels(*arrays: np.ndarray, max_pixels: int | None = MAX_LSQ_PIXELS) -> list[np.ndarray]:
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
    from .degrade import spatial_degrade

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


@dataclass
class PairEstimate:
    """What ``estimate_pair`` found. ``srf`` is the effective (m, C) matrix (gain included)."""

    psf: Psf
    psf_kind: str  # "preset NAME" | "gaussian" | "free kernel" | "given"
    sigma: float | None
    centre_offset: tuple[float, float]  # HR pixels, of the kernel centre from the s×s block centre
    srf: np.ndarray
    srf_kind: str  # "preset NAME" | "estimated" | "given"
    residual: float  # relative residual of the chosen model (module docstring)
    gain: np.ndarray  # (m,) row sums of ``srf``
    preset: str | None = None  # the preset whose PSF (and SRF, when srf_kind says so) the pair follows
    candidates: dict[str, float] = field(default_factory=dict)
    pixels: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return "poor" if self.residual > RESIDUAL_POOR else "good"

    def summary(self) -> str:
        """One line for the user: what was estimated and how well."""
        if self.psf_kind.startswith("preset"):
            p = f"PSF = {self.psf_kind}"
        elif self.psf_kind == "given":
            p = "PSF given"
        else:
            p = f"PSF {self.psf_kind} sigma {self.sigma:.3g} px" if self.sigma is not None else f"PSF {self.psf_kind}"
            p += f", centre offset ({self.centre_offset[0]:+.2f}, {self.centre_offset[1]:+.2f}) px"
        s = f"SRF {self.srf_kind}" + ("" if self.srf_kind == "given" else
                                      f" (gain {', '.join(f'{g:.3g}' for g in self.gain[:6])}"
                                      f"{', ...' if self.gain.size > 6 else ''})")
        return (f"estimated from the pair: {p}; {s}; residual {self.residual:.2g} ({self.status}) "
                f"on {self.pixels} LR pixels in {self.seconds:.2f} s")

    def describe(self) -> dict[str, Any]:
        return {
            "psf_kind": self.psf_kind, "sigma": self.sigma, "centre_offset_hr": list(self.centre_offset),
            "kernel_size": self.psf.size, "pad": self.psf.pad, "srf_kind": self.srf_kind,
            "gain": [float(g) for g in self.gain], "residual": self.residual, "status": self.status,
            "preset": self.preset, "candidates": {k: float(v) for k, v in self.candidates.items()},
            "pixels": self.pixels, "seconds": self.seconds, "warnings": list(self.warnings),
        }


# --------------------------------------------------------------------------- the sample


def support_for(scale: int) -> int:
    """Kernel support k = s + 2r (same parity as s) covering a Gaussian of FWHM up to ~1.2 s (σ ≈ 0.5 s).

    Up to ×8 the HySure estimate's support; above, 2.5 s (that one's 2 s cannot hold σ > 0.4 s: a ×16
    Gaussian of σ 7.2 was 5.5 dB behind the truth).
    """
    s = int(scale)
    return default_support(s) if s <= 8 else s + 2 * math.ceil(0.75 * s)


def gaussian_support_for(scale: int) -> int:
    """The support the Gaussian fit runs on: above ×8, 4 s (σ up to 0.8 s), wider than ``support_for``'s 2.5 s.

    On 2.5 s the fitted σ is capped at s/2: a ×32 pair blurred with a Gaussian of σ 20 (0.63 s, FWHM 1.5 LR
    pixels, a plausible sensor) was fitted as σ 16, and gsa with that PSF was 9.3 dB behind gsa told σ 20
    (stuffed_toys: 33.1 against 42.4 dB; 2026-12-07). The free kernel keeps ``support_for`` (its normal
    equations grow as k⁴).
    """
    s = int(scale)
    return support_for(s) if s <= 8 else s + 2 * math.ceil(1.5 * s)


#: presets whose kernels are wider than this (taps) are not tried (bicubic ×10 and up: too costly to fit)
MAX_PRESET_SUPPORT = 40


def estimation_support(scale: int, psf: Psf | None = None, presets: bool = False) -> tuple[int, int, int]:
    """(k, r, halo): kernel support side, its pad, and the LR pixels of MSI context a window needs.

    The support holds a given kernel, or (``presets``) every preset kernel up to ``MAX_PRESET_SUPPORT``.
    """
    s = int(scale)
    k = gaussian_support_for(s)
    kernels = [psf] if psf is not None else []
    if psf is None and presets:
        kernels = [p for _, p, _ in _presets(s, 0, 0) if p.size <= MAX_PRESET_SUPPORT]
    for p in kernels:  # grow the support (same parity as s) until it holds the kernel at its phase
        while True:
            r = (k - s) // 2
            off = r - int(p.pad)
            if off >= 0 and off + p.size <= k:
                break
            k += 2
    r = (k - s) // 2
    return k, r, math.ceil(r / s)


class _Sample:
    """LR spectra and the MSI taps each LR pixel sees, for a regular subsample of fit pixels.

    ``a``: (m, N, k, k) float32 MSI windows (kernel pad r = (k − s)/2, i.e. centred on the block);
    ``x``: (C, N) LR spectra; ``q``: orthonormal (N, p+1) basis of the leading LR spectral components
    and the constant (what an SRF plus an offset can explain).
    """

    def __init__(self, lr: np.ndarray, msi_ext: np.ndarray, halo: int, scale: int, k: int,
                 max_pixels: int = MAX_FIT_PIXELS, border: int = 0):
        from numpy.lib.stride_tricks import sliding_window_view

        s, r = scale, (k - scale) // 2
        c, h, w = lr.shape
        ok = np.isfinite(lr).all(0)
        msi_bad = ~np.isfinite(msi_ext).all(0)
        off = halo * s - r  # where LR pixel (0, 0)'s window starts in msi_ext
        if off < 0:
            raise ValueError("MSI halo too small for the kernel support")
        if msi_bad.any():
            win = sliding_window_view(msi_bad, (k, k))[off::s, off::s][:h, :w]
            ok &= ~win.any(axis=(2, 3))
        if border and min(h, w) > 2 * border + 4:
            ok[:border], ok[-border:], ok[:, :border], ok[:, -border:] = False, False, False, False
        idx = np.flatnonzero(ok.ravel())
        max_pixels = max(64, min(max_pixels, MAX_FIT_TAPS // (msi_ext.shape[0] * k * k)))
        if idx.size > max_pixels:
            idx = idx[np.linspace(0, idx.size - 1, max_pixels).round().astype(int)]
        if idx.size < 8:
            raise InputError("too few valid LR pixels to estimate the PSF/SRF from the pair")
        ii, jj = np.unravel_index(idx, (h, w))
        m = msi_ext.shape[0]
        self.a = np.empty((m, idx.size, k, k), dtype=np.float32)
        for i in range(m):  # band by band: a bounded working set whatever the window
            band = np.nan_to_num(np.asarray(msi_ext[i], dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
            self.a[i] = sliding_window_view(band, (k, k))[off::s, off::s][ii, jj]
        self.x = lr.reshape(c, -1)[:, idx].astype(np.float64)
        self.scale, self.k, self.r, self.n = s, k, r, idx.size
        # leading spectral components (a subspace: neighbouring HS bands are nearly collinear and noisy)
        xc = self.x - self.x.mean(1, keepdims=True)
        p = int(min(c, max(2, self.n // 3)))  # all the spectral rank the pixels can carry without overfitting
        # the leading right singular vectors from the small C×C covariance (an N×C SVD or QR is far slower,
        # worst when other processes hold the cores); they are orthogonal to the constant (xc is centred)
        ev, u = np.linalg.eigh(xc @ xc.T)
        ev, u = ev[::-1], u[:, ::-1]
        keep = np.flatnonzero(ev[:p] > max(ev[0], 0.0) * 1e-12) if ev.size and ev[0] > 0 else np.zeros(0, int)
        v = (u[:, keep].T @ xc) / np.sqrt(ev[keep])[:, None]  # (k, N), orthonormal rows
        self.q = np.concatenate([np.full((1, self.n), 1.0 / math.sqrt(self.n)), v], 0).T

    def degrade(self, kern: np.ndarray) -> np.ndarray:
        """(m, N): the MSI degraded with a k×k kernel at the sample pixels."""
        return np.tensordot(self.a, kern.astype(np.float32), axes=([2, 3], [0, 1])).astype(np.float64)

    def residual(self, y: np.ndarray, srf: np.ndarray | None = None, rows: np.ndarray | None = None) -> float:
        """Relative residual of ``y`` (m, N) against the LR: free SRF (projection) or a fixed one (gain + offset)."""
        if rows is not None:
            y = y[:, rows]
        yc = y - y.mean(1, keepdims=True)
        den = float(np.sum(yc * yc))
        if den <= 0:
            return float("inf")
        if srf is None:
            q = self.q if rows is None else np.linalg.qr(self.q[rows])[0]
            e = y - (y @ q) @ q.T
            return math.sqrt(max(float(np.sum(e * e)), 0.0) / den)
        x = self.x if rows is None else self.x[:, rows]
        t = srf @ x
        tc = t - t.mean(1, keepdims=True)
        num = np.sum(tc * yc, 1)
        tt = np.sum(tc * tc, 1)
        g = np.where(tt > 0, num / np.where(tt > 0, tt, 1.0), 0.0)
        e = yc - g[:, None] * tc
        return math.sqrt(float(np.sum(e * e)) / den)

    def embed(self, psf: Psf) -> np.ndarray | None:
        """``psf``'s kernel on this sample's k×k support (None when it does not fit there)."""
        k, r = self.k, self.r
        off = r - int(psf.pad)
        ks = psf.size
        if off < 0 or off + ks > k:
            return None
        out = np.zeros((k, k))
        out[off:off + ks, off:off + ks] = psf.kernel
        return out


def _gauss(k: int, sigma: float, cy: float, cx: float) -> np.ndarray:
    ax = np.arange(k, dtype=np.float64)
    gy = np.exp(-0.5 * ((ax - cy) / sigma) ** 2)
    gx = np.exp(-0.5 * ((ax - cx) / sigma) ** 2)
    kern = np.outer(gy, gx)
    return kern / kern.sum()


def _line_search(f, grid: np.ndarray, steps: int = 10) -> tuple[float, float]:
    costs = [f(float(v)) for v in grid]
    j = int(np.argmin(costs))
    lo, hi = float(grid[max(j - 1, 0)]), float(grid[min(j + 1, len(grid) - 1)])
    x, c, _, _ = golden_section(f, lo, hi, steps)
    return (x, c) if c < costs[j] else (float(grid[j]), float(costs[j]))


def _fit_gaussian(sample: _Sample, srf: np.ndarray | None) -> tuple[float, float, float, float]:
    """(σ, dy, dx, residual) of the best Gaussian kernel on the support (coordinate search)."""
    s, k = sample.scale, sample.k
    c0 = (k - 1) / 2.0
    state = {"sig": s / 2.3548, "dy": 0.0, "dx": 0.0}

    def cost(sig=None, dy=None, dx=None) -> float:
        sg = state["sig"] if sig is None else sig
        yy = state["dy"] if dy is None else dy
        xx = state["dx"] if dx is None else dx
        return sample.residual(sample.degrade(_gauss(k, sg, c0 + yy, c0 + xx)), srf)

    reach = max(0.5, (k - s) / 2.0 - 1.0)  # keep the centre where most of the kernel stays on the support
    sig_max = max(0.3, min(1.2 * s, (k / 2.0) / 2.5))
    lim = min(s / 2.0 + 0.5, reach)

    def search(sigma_first: bool) -> tuple[float, float, float, float]:
        state.update(sig=min(s / 3.0, sig_max), dy=0.0, dx=0.0)
        res = float("inf")
        if sigma_first:  # the width at the block centre first
            state["sig"], res = _line_search(lambda v: cost(sig=v), np.geomspace(0.25, sig_max, 12), 10)
        # the phase, then σ, then both again on finer grids
        for rnd, (half, ns) in enumerate(((lim, 9), (0.75, 5), (0.25, 5))):
            for ax in ("dy", "dx"):
                g = np.linspace(-half, half, ns) + (0.0 if rnd == 0 else state[ax])
                state[ax], res = _line_search(lambda v, a=ax: cost(**{a: v}), np.clip(g, -reach, reach), 8)
            if rnd == 0 and not sigma_first:
                grid = np.geomspace(0.25, sig_max, 12)
            else:
                grid = np.clip(state["sig"] * np.array([0.85, 0.93, 1.0, 1.08, 1.18]), 0.2, sig_max)
            state["sig"], res = _line_search(lambda v: cost(sig=v), grid, 10)
        return state["sig"], state["dy"], state["dx"], res

    # the phase first, at a moderate width (fitted first, σ would absorb a shift as extra blur). Above ×8 also
    # the width first: a wide kernel (×32, σ 20) makes the phase search at σ s/3 land 6 HR pixels off, with a
    # residual 100x the truth's (2026-12-07); the better of the two starts is kept
    best = search(sigma_first=False)
    if s > 8:
        other = search(sigma_first=True)
        best = other if other[3] < best[3] else best
    return best


def _fit_free_kernel(sample: _Sample, init: np.ndarray, srf: np.ndarray, rows: np.ndarray,
                     smooth: float = 1e-4, iters: int = 400) -> np.ndarray:
    """Non-negative kernel summing to 1 minimising ‖degrade(MSI) − g·SRF·LR‖² + λ‖∇K‖² on ``rows`` (FISTA)."""
    # on the default support (the sample's may be wider, to hold the preset kernels), centred alike
    kf = min(sample.k, support_for(sample.scale))
    c0 = (sample.k - kf) // 2
    init_full, init = init, init[c0:c0 + kf, c0:c0 + kf]
    k = kf
    t = srf @ sample.x[:, rows]
    g = np.zeros((k * k, k * k))
    rhs = np.zeros(k * k)
    for i in range(sample.a.shape[0]):  # band by band: bounded memory
        a = sample.a[i, rows][:, c0:c0 + k, c0:c0 + k].reshape(-1, k * k)
        g += (a.T @ a).astype(np.float64)
        rhs += a.T.astype(np.float64) @ t[i]
    dd = _diff2d(k)
    g = g + smooth * np.trace(g) / (k * k) * (dd.T @ dd)
    x = simplex_qp(g, rhs, init.ravel(), iters=iters, tol=1e-9, power_iters=50, margin=1.05)
    if x is None:
        return init_full
    out = np.zeros_like(init_full)
    out[c0:c0 + k, c0:c0 + k] = x.reshape(k, k)
    return out


def _fit_srf(sample: _Sample, kern: np.ndarray) -> np.ndarray:
    """Effective SRF (m, C) for a kernel: non-negative least squares of the degraded MSI on the LR bands."""
    y = sample.degrade(kern)
    n = sample.n
    return estimate_srf(sample.x.reshape(sample.x.shape[0], 1, n), y.reshape(y.shape[0], 1, n))


def preset_forward_models(scale: int, lr_bands: int, msi_bands: int) -> list[tuple[str, Psf, np.ndarray | None]]:
    """(name, PSF, SRF or None) of every named preset that can describe an x``scale`` pair of these band counts."""
    import copy

    return [(n, copy.deepcopy(p), None if r is None else r.copy()) for n, p, r in _presets(scale, lr_bands, msi_bands)]


@functools.lru_cache(maxsize=32)
def _presets(scale: int, lr_bands: int, msi_bands: int) -> tuple:
    from .protocols import PROTOCOLS

    out = []
    for name, proto in PROTOCOLS.items():
        if proto.scale is not None and proto.scale != scale:
            continue
        try:
            psf = proto.build_psf(scale=scale)
        except (InputError, UsageError, ValueError, OSError):
            continue
        try:
            srf = proto.build(scale=scale)[1]
        except (InputError, UsageError, ValueError, OSError):
            srf = None  # e.g. the MHF-Net response table is not installed here: the PSF alone is still a preset
        if srf is not None and srf.shape != (msi_bands, lr_bands):
            srf = None
        out.append((name, psf, srf))
    return tuple(out)


def _psf_key(psf: Psf) -> tuple:
    return (psf.size, psf.pad, np.round(psf.kernel, 10).tobytes())


def estimate_pair(lr: np.ndarray, msi_ext: np.ndarray, scale: int, *, halo: int | None = None,
                  psf: Psf | None = None, srf: np.ndarray | None = None, presets: bool = True,
                  border: int | None = None, max_pixels: int = MAX_FIT_PIXELS, checked: bool = False) -> PairEstimate:
    """Estimate what is not given of (PSF, SRF) for an LR (C, h, w) and its MSI (module docstring).

    ``msi_ext`` is the MSI over the LR window extended by ``halo`` LR pixels on each side (mirrored at
    the scene border; ``halo=None``: the MSI exactly covers the LR and is mirrored here). A given
    ``psf`` or ``srf`` is kept fixed. Raises ``InputError`` when the pair carries no usable signal.
    """
    t0 = time.perf_counter()
    lr = np.asarray(lr, dtype=np.float64)
    s = int(scale)
    k, r, need = estimation_support(s, psf, presets=presets)
    if halo is None:
        from ..fusion.tiling import mirror_index

        H, W = msi_ext.shape[1:]
        ri = mirror_index(np.arange(-need * s, H + need * s), H)
        ci = mirror_index(np.arange(-need * s, W + need * s), W)
        msi_ext = np.asarray(msi_ext)[:, ri[:, None], ci[None, :]]
        halo = need
    if halo < need:
        raise ValueError(f"MSI halo {halo} LR px < {need} needed")
    m, c = msi_ext.shape[0], lr.shape[0]
    if m > c:
        raise InputError(f"the MSI has more bands ({m}) than the LR cube ({c}): are the inputs swapped?")
    if srf is not None:
        srf = np.asarray(srf, dtype=np.float64)
        if srf.shape != (m, c):
            raise InputError(f"SRF has shape {srf.shape}, expected (MSI bands, LR bands) = ({m}, {c})")
    if not checked:  # estimate_from_sources has checked its window already
        _check_signal(lr, msi_ext)
    sample = _Sample(lr, msi_ext, halo, s, k, max_pixels, border=0 if border is None else border)
    warns: list[str] = []
    cands: dict[str, float] = {}
    # a free fit explains part of the noise too (about (p+1)/N of its energy): the snap tolerance grows with it
    tol = SNAP_TOLERANCE + (sample.q.shape[1]) / sample.n

    if psf is not None:
        kern = sample.embed(psf)
        if kern is None:
            raise UsageError(f"the PSF ({psf.size}x{psf.size}, pad {psf.pad}) does not fit the estimation support")
        best = ("given", psf, sample.residual(sample.degrade(kern), srf), kern)
        sig, dy, dx = getattr(psf, "sigma", None), 0.0, 0.0
        cands["given"] = best[2]
    else:
        sig, dy, dx, gres = _fit_gaussian(sample, srf)
        c0 = (k - 1) / 2.0
        gkern = _gauss(k, sig, c0 + dy, c0 + dx)
        cands["gaussian"] = gres
        best = ("gaussian", None, gres, gkern)
        # an alternative kernel is kept only if it explains held-out pixels clearly better than the Gaussian:
        # a free kernel up to x16, above it (no free kernel) a Gaussian *block* (s×s taps, pad 0)
        fit_rows, test_rows = np.arange(0, sample.n, 2), np.arange(1, sample.n, 2)
        if s <= 16 and sample.n >= 64:
            r_g = _fit_srf(sample, gkern) if srf is None else srf
            fkern = _fit_free_kernel(sample, gkern, r_g, fit_rows)
            held_f = sample.residual(sample.degrade(fkern), srf, rows=test_rows)
            held_g = sample.residual(sample.degrade(gkern), srf, rows=test_rows)
            cands["free kernel (held-out)"] = held_f
            cands["gaussian (held-out)"] = held_g
            if held_f < FREE_KERNEL_GAIN * held_g and held_g - held_f > 2e-3:
                best = ("free kernel", None, sample.residual(sample.degrade(fkern), srf), fkern)
        elif s > 16 and sample.n >= 32:
            def block(sig: float) -> Psf:
                return make_psf("gaussian", s, sigma=sig, form="block")

            bsig, _ = _line_search(lambda v: sample.residual(sample.degrade(sample.embed(block(v))), srf),
                                   np.geomspace(0.1 * s, 1.5 * s, 12), 10)
            bpsf = block(bsig)
            bkern = sample.embed(bpsf)
            held_b = sample.residual(sample.degrade(bkern), srf, rows=test_rows)
            held_g = sample.residual(sample.degrade(gkern), srf, rows=test_rows)
            cands["gaussian block (held-out)"] = held_b
            cands["gaussian (held-out)"] = held_g
            if held_b < FREE_KERNEL_GAIN * held_g:
                best = ("gaussian block", bpsf, sample.residual(sample.degrade(bkern), srf), bkern)
        if presets and best[2] <= RESIDUAL_POOR:  # a preset is only recognised in a pair that follows the model
            seen = set()
            for name, ppsf, _ in preset_forward_models(s, c, m):
                if _psf_key(ppsf) in seen:
                    continue
                seen.add(_psf_key(ppsf))
                pk = sample.embed(ppsf)
                if pk is None:
                    continue
                pres = sample.residual(sample.degrade(pk), srf)
                cands[f"preset {name}"] = pres
                if pres <= tol * best[2] + 1e-6 and (best[0] in ("gaussian", "free kernel", "gaussian block")
                                                               or pres < best[2]):
                    best = (f"preset {name}", ppsf, pres, pk)
    kind, chosen_psf, res, kern = best
    preset = kind.split(" ", 1)[1] if kind.startswith("preset") else None
    if chosen_psf is None:
        chosen_psf = Psf(kern, s, pad=r, border="reflect", name=f"estimated {kind}")
    # sigma and centre of what was chosen (for the report)
    fsig, (cy, cx) = fit_gaussian_sigma(kern)
    c0 = (k - 1) / 2.0
    if kind != "gaussian":
        sig, dy, dx = fsig, cy - c0, cx - c0
    chosen_psf.sigma = sig  # type: ignore[attr-defined]
    # the SRF
    srf_kind = "given"
    eff = srf
    if srf is None:
        eff = _fit_srf(sample, kern)
        srf_kind = "estimated"
        if preset is not None:
            pset = {n: pr for n, _, pr in preset_forward_models(s, c, m)}
            psrf = pset.get(preset)
            if psrf is not None:
                fixed = sample.residual(sample.degrade(kern), psrf)
                cands[f"preset {preset} SRF"] = fixed
                gains = eff.sum(1) / np.maximum(psrf.sum(1), 1e-300)
                if fixed <= tol * res + 1e-6 and np.all(np.abs(gains - 1.0) < 0.03):
                    eff, srf_kind = np.array(psrf), f"preset {preset}"
        if not np.all(eff.sum(1) > 0):
            bad = [i + 1 for i, g in enumerate(eff.sum(1)) if not g > 0]
            raise InputError(f"MSI band(s) {bad} are not explained by any LR band: the pair does not share a "
                             "spectral range, or the MSI is not of the LR's scene")
    if kind == "free kernel":
        warns.append("the PSF is not Gaussian: a free kernel explains the pair better and is used")
    if res > RESIDUAL_POOR:
        warns.append(f"relative residual {res:.2g} > {RESIDUAL_POOR:g}: the pair follows the linear forward model "
                     "only loosely (noise, misregistration, different dates, or a non-linear MSI such as "
                     "gamma-encoded 8-bit RGB)")
    if max(abs(dy), abs(dx)) > 0.5 * s + 0.5:
        warns.append(f"the grids are shifted by ({dy:+.2f}, {dx:+.2f}) HR px, more than half an LR pixel: check "
                     "the co-registration")
    return PairEstimate(
        psf=chosen_psf, psf_kind=kind, sigma=None if sig is None else float(sig),
        centre_offset=(float(dy), float(dx)), srf=np.asarray(eff, dtype=np.float64), srf_kind=srf_kind,
        residual=float(res), gain=np.asarray(eff, dtype=np.float64).sum(1), preset=preset,
        candidates=cands, pixels=sample.n, seconds=time.perf_counter() - t0, warnings=warns)


def _check_signal(lr: np.ndarray, msi: np.ndarray, lr_path=None, msi_path=None) -> None:
    """Constant (or all-NaN) inputs carry no information about the forward model: say so, naming the file."""
    for name, a, path in (("LR cube", lr, lr_path), ("MSI", msi, msi_path)):
        any_valid, varies = False, False
        for band in a:  # band by band, no scene-sized temporaries; a band that varies in space carries signal
            bad = ~np.isfinite(band)
            vals = band[~bad] if bad.any() else band
            if vals.size:
                any_valid = True
                lo, hi = float(vals.min()), float(vals.max())
                varies = varies or hi - lo > 1e-5 * max(abs(hi), abs(lo), 1e-30)  # float32 rounding is not signal
        if not any_valid:
            raise InputError(f"the {name} has no valid pixels (everything is nodata/NaN)", path)
        if not varies:
            raise InputError(f"the {name} is constant: the PSF and SRF are not identifiable from this pair "
                             "(give {psf} and {srf}, or {protocol})", path, options=("psf", "srf", "protocol"))


def _central_window(lr_src, msi_src, scale: int, need: int, window: int | None, cache: dict | None = None):
    """(LR window, MSI window with ``need`` LR pixels of halo, rows, cols); ``cache`` keeps the last read so
    the forward-model and the noise estimates of one pair read the files once."""
    from ..cube import Window
    from ..fusion.tiling import read_mirrored

    s = int(scale)
    window = max(16, WINDOW_HR // s) if window is None else int(window)
    key = (s, need, window)
    if cache is not None and cache.get("key") == key:
        return cache["value"]
    h, w = lr_src.height, lr_src.width
    wy, wx = min(h, window), min(w, window)
    y0, x0 = (h - wy) // 2, (w - wx) // 2
    lr = lr_src.read(Window(y0, x0, wy, wx))
    msi = read_mirrored(msi_src, y0 - need, y0 + wy + need, x0 - need, x0 + wx + need, s)
    if cache is not None:
        cache.update(key=key, value=(lr, msi, wy, wx))
    return lr, msi, wy, wx


def noise_from_sources(lr_src, msi_src, scale: int, cache: dict | None = None):
    """``hsfuse.denoise.estimate_noise`` on the same central window the forward-model estimate reads."""
    from ..denoise import estimate_noise

    s = int(scale)
    _, _, need = estimation_support(s, None, presets=True)
    lr, msi, _, _ = _central_window(lr_src, msi_src, s, need, None, cache)
    if need:
        msi = msi[:, need * s:msi.shape[1] - need * s, need * s:msi.shape[2] - need * s]
    return estimate_noise(lr, msi)


def estimate_from_sources(lr_src, msi_src, scale: int, *, psf: Psf | None = None, srf: np.ndarray | None = None,
                          window: int | None = None, cache: dict | None = None) -> PairEstimate:
    """``estimate_pair`` on a central window of two opened cubes (bounded memory whatever the file size)."""
    s = int(scale)
    _, _, need = estimation_support(s, psf, presets=True)
    side = max(16, WINDOW_HR // s) if window is None else int(window)
    while True:  # a featureless (or masked) centre is not a featureless scene: widen the window first
        lr, msi, wy, wx = _central_window(lr_src, msi_src, s, need, side, cache)
        try:
            _check_signal(lr, msi, lr_src.path, msi_src.path)
            break
        except InputError:
            if wy >= lr_src.height and wx >= lr_src.width:
                raise
            side *= 4
    border = need if min(wy, wx) > 2 * need + 8 else 0  # the true border rule is unknown: leave it out
    try:
        return estimate_pair(lr, msi, s, halo=need, psf=psf, srf=srf, border=border, checked=True)
    except InputError as e:
        if e.path is None:
            raise InputError(e.message, msi_src.path) from None
        raise


# --------------------------------------------------------------------------- shared with blind.py (HySure)


def default_support(scale: int) -> int:
    """Kernel side k = s + 2r: covers ±3σ of a Gaussian with FWHM up to 1.2·s, capped for large scales."""
    s = int(scale)
    r = max(1, math.ceil(0.5 + 1.53 * s - s / 2)) if s <= 8 else max(2, math.ceil(0.5 * s))
    return s + 2 * r


def _project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto {x ≥ 0, Σx = 1} (Duchi et al. 2008)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    ind = np.arange(1, v.size + 1)
    rho = np.nonzero(u - css / ind > 0)[0][-1]
    theta = css[rho] / (rho + 1.0)
    return np.maximum(v - theta, 0.0)


def _diff2d(k: int) -> np.ndarray:
    """Stacked horizontal and vertical first differences on a k×k grid, as a (2k(k−1), k²) matrix."""
    d = np.zeros((k - 1, k))
    d[np.arange(k - 1), np.arange(k - 1)] = -1.0
    d[np.arange(k - 1), np.arange(1, k)] = 1.0
    eye = np.eye(k)
    return np.concatenate([np.kron(eye, d), np.kron(d, eye)])


def simplex_qp(g: np.ndarray, rhs: np.ndarray, x0: np.ndarray, iters: int, tol: float, power_iters: int = 100,
               margin: float = 1.02) -> np.ndarray | None:
    """min ½xᵀGx − rhsᵀx on the simplex {x ≥ 0, Σx = 1} by FISTA from ``x0``; None when G is zero.

    The step is 1/L with L the largest eigenvalue of G by power iteration (times ``margin``): no
    eigensolver on the k²×k² matrix. Stops when no coordinate moves by ``tol``.
    """
    vec = np.full(g.shape[0], 1.0 / math.sqrt(g.shape[0]))
    lip = 0.0
    for _ in range(power_iters):
        nv = g @ vec
        lip = float(np.linalg.norm(nv))
        if lip == 0:
            break
        vec = nv / lip
    lip *= margin
    if not lip > 0:
        return None
    x = _project_simplex(np.asarray(x0, dtype=np.float64))
    yv, t = x.copy(), 1.0
    for _ in range(int(iters)):
        x_new = _project_simplex(yv - (g @ yv - rhs) / lip)
        t_new = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        yv = x_new + ((t - 1.0) / t_new) * (x_new - x)
        if np.max(np.abs(x_new - x)) < tol:
            return x_new
        x, t = x_new, t_new
    return x


def fit_gaussian_sigma(kernel: np.ndarray) -> tuple[float, tuple[float, float]]:
    """(σ, (cy, cx)): centred-Gaussian width fitted to a kernel by least squares with a free amplitude.

    The centre is the kernel's centroid (index units); σ minimises
    ‖K − a·exp(−d²/2σ²)‖² over a grid and a golden-section refinement.
    """
    kern = np.maximum(np.asarray(kernel, dtype=np.float64), 0.0)
    k = kern.shape[0]
    tot = kern.sum()
    ii = np.arange(k, dtype=np.float64)
    cy = float((kern.sum(1) * ii).sum() / tot)
    cx = float((kern.sum(0) * ii).sum() / tot)
    d2 = (ii[:, None] - cy) ** 2 + (ii[None, :] - cx) ** 2

    def cost(sig: float) -> float:
        g = np.exp(-0.5 * d2 / (sig * sig))
        a = float((g * kern).sum() / (g * g).sum())
        return float(((kern - a * g) ** 2).sum())

    return float(golden_min(cost, np.linspace(0.15, max(k / 2.0, 0.5), 60), steps=40)), (cy, cx)
