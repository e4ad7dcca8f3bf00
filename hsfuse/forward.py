"""The forward model of one pair, resolved once: from a preset, flags, a file, or the pair itself.

    LR = decimate_s(Z ⊛ PSF)        MSI = diag(gain) · SRF · Z

``ForwardModel`` is what the engine, every fuser and the model choice read.
``resolve_forward_model`` builds it from the user's options; whatever is not
given (PSF, SRF or both) is estimated from the pair with ``estimate_pair``.

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

1. the named presets at this scale (``hsfuse.protocols``): when one explains
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
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .degrade import Psf, describe_psf, gaussian_kernel
from .errors import InputError, UsageError

__all__ = ["ForwardModel", "PairEstimate", "estimate_pair", "RESIDUAL_POOR", "RESIDUAL_FAIL"]

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


@dataclass
class ForwardModel:
    """PSF and SRF of a pair, where each came from, and whether they are the true model (``exact``).

    ``exact``: the PSF is the forward model itself (a preset, a ``Psf`` the caller built, or a preset the
    estimate recognised), not a guess: steps that only pay with the exact PSF (LR consistency) use it.
    ``protocol``: the preset whose PSF *and* SRF the pair follows (named, or recognised by the estimate);
    the pretrained-network choice treats it as if it had been named.
    """

    psf: Psf
    psf_source: str
    srf: np.ndarray | None
    srf_source: str
    exact: bool = False
    protocol: str | None = None
    estimate: "PairEstimate | None" = None
    noise: Any = None  # hsfuse.denoise.NoiseEstimate, when estimated
    denoise: tuple[bool, bool] = (False, False)  # (LR-HSI, MSI) are denoised before fusion
    wavelengths: np.ndarray | None = None  # band centres (nm) the SRF columns belong to, when known

    @property
    def scale(self) -> int:
        return self.psf.scale

    @property
    def name(self) -> str:
        """The preset's name, else where the PSF came from (what a weights record calls its protocol)."""
        return self.protocol or self.psf_source

    def describe(self) -> dict[str, Any]:
        return {
            "psf": {**describe_psf(self.psf), "source": self.psf_source},
            "srf": {"source": self.srf_source, "shape": None if self.srf is None else list(self.srf.shape)},
            "exact": self.exact, "protocol": self.protocol,
            "estimate": None if self.estimate is None else self.estimate.describe(),
            "noise": None if self.noise is None else self.noise.describe(),
            "denoise": {"lr": bool(self.denoise[0]), "msi": bool(self.denoise[1])},
        }


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

    def to_blind(self):
        """As a ``hsfuse.blind.BlindEstimate`` (for ``save_estimate``: the JSON ``--psf F --srf F`` reads)."""
        from .blind import BlindEstimate

        gain = np.asarray(self.gain, dtype=np.float64)
        safe = np.where(gain > 0, gain, 1.0)
        return BlindEstimate(psf=self.psf, sigma=float(self.sigma or 0.0), srf=self.srf / safe[:, None],
                             residual=self.residual, iterations=0, gain=gain, centre_offset=self.centre_offset,
                             warnings=list(self.warnings),
                             options={"method": "hsfuse.forward.estimate_pair", "psf_kind": self.psf_kind,
                                      "srf_kind": self.srf_kind, "preset": self.preset})


# --------------------------------------------------------------------------- the sample


def support_for(scale: int) -> int:
    """Kernel support k = s + 2r (same parity as s) covering a Gaussian of FWHM up to ~1.2 s (σ ≈ 0.5 s).

    Up to ×8 the HySure estimate's support; above, 2.5 s (that one's 2 s cannot hold σ > 0.4 s: a ×16
    Gaussian of σ 7.2 was 5.5 dB behind the truth).
    """
    from .blind import default_support

    s = int(scale)
    return default_support(s) if s <= 8 else s + 2 * math.ceil(0.75 * s)


#: presets whose kernels are wider than this (taps) are not tried (bicubic ×10 and up: too costly to fit)
MAX_PRESET_SUPPORT = 40


def estimation_support(scale: int, psf: Psf | None = None, presets: bool = False) -> tuple[int, int, int]:
    """(k, r, halo): kernel support side, its pad, and the LR pixels of MSI context a window needs.

    The support holds a given kernel, or (``presets``) every preset kernel up to ``MAX_PRESET_SUPPORT``.
    """
    s = int(scale)
    k = support_for(s)
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
    from .estimate import golden_section

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
    state["sig"] = min(s / 3.0, sig_max)
    res = float("inf")
    # the phase first, at a moderate width (fitted first, σ would absorb a shift as extra blur), then σ,
    # then both again on finer grids
    for rnd, (half, ns) in enumerate(((lim, 9), (0.75, 5), (0.25, 5))):
        for ax in ("dy", "dx"):
            g = np.linspace(-half, half, ns) + (0.0 if rnd == 0 else state[ax])
            state[ax], res = _line_search(lambda v, a=ax: cost(**{a: v}), np.clip(g, -reach, reach), 8)
        if rnd == 0:
            grid = np.geomspace(0.25, sig_max, 12)
        else:
            grid = np.clip(state["sig"] * np.array([0.85, 0.93, 1.0, 1.08, 1.18]), 0.2, sig_max)
        state["sig"], res = _line_search(lambda v: cost(sig=v), grid, 10)
    return state["sig"], state["dy"], state["dx"], res


def _fit_free_kernel(sample: _Sample, init: np.ndarray, srf: np.ndarray, rows: np.ndarray,
                     smooth: float = 1e-4, iters: int = 400) -> np.ndarray:
    """Non-negative kernel summing to 1 minimising ‖degrade(MSI) − g·SRF·LR‖² + λ‖∇K‖² on ``rows`` (FISTA)."""
    from .blind import _diff2d, simplex_qp

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
    from .estimate import estimate_srf

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
        from .fusion.tiling import mirror_index

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
        # a free kernel, kept only if it explains held-out pixels clearly better than the Gaussian
        if s <= 16 and sample.n >= 64:
            fit_rows, test_rows = np.arange(0, sample.n, 2), np.arange(1, sample.n, 2)
            r_g = _fit_srf(sample, gkern) if srf is None else srf
            fkern = _fit_free_kernel(sample, gkern, r_g, fit_rows)
            held_f = sample.residual(sample.degrade(fkern), srf, rows=test_rows)
            held_g = sample.residual(sample.degrade(gkern), srf, rows=test_rows)
            cands["free kernel (held-out)"] = held_f
            cands["gaussian (held-out)"] = held_g
            if held_f < FREE_KERNEL_GAIN * held_g and held_g - held_f > 2e-3:
                best = ("free kernel", None, sample.residual(sample.degrade(fkern), srf), fkern)
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
                if pres <= tol * best[2] + 1e-6 and (best[0] in ("gaussian", "free kernel")
                                                               or pres < best[2]):
                    best = (f"preset {name}", ppsf, pres, pk)
    kind, chosen_psf, res, kern = best
    preset = kind.split(" ", 1)[1] if kind.startswith("preset") else None
    if chosen_psf is None:
        chosen_psf = Psf(kern, s, pad=r, border="reflect", name=f"estimated {kind}")
    # sigma and centre of what was chosen (for the report)
    from .blind import fit_gaussian_sigma

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
                             "(give --psf and --srf, or --protocol)", path)


def _central_window(lr_src, msi_src, scale: int, need: int, window: int | None, cache: dict | None = None):
    """(LR window, MSI window with ``need`` LR pixels of halo, rows, cols); ``cache`` keeps the last read so
    the forward-model and the noise estimates of one pair read the files once."""
    from .cube import Window
    from .fusion.tiling import read_mirrored

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
    from .denoise import estimate_noise

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


def _json_doc(spec: str) -> dict:
    from .blind import _read_json

    path = spec.rsplit(":", 1)[0] if spec.lower().endswith((":gaussian", ":kernel")) else spec
    try:
        return _read_json(path)
    except InputError:
        return {}


def _json_preset(spec: str, psf: Psf | None, scale: int) -> str | None:
    """The preset a saved estimate recognised, when the PSF read back from it is still exactly that preset."""
    name = ((_json_doc(spec).get("estimate") or {}).get("preset")) if psf is not None else None
    if not name:
        return None
    for n, p, _ in preset_forward_models(scale, 0, 0):
        if n == name and psf_distance(psf, p) < 1e-9:
            return name
    return None


def _json_srf_kind(spec: str) -> str | None:
    return (_json_doc(spec).get("estimate") or {}).get("srf_kind")


def _is_json_spec(spec: str) -> bool:
    """An estimate written by `hsfuse estimate` or `fuse --save-estimate`: FILE.json[:gaussian|:kernel]."""
    return spec.lower().endswith(".json") or ".json:" in spec.lower()


def resolve_forward_model(cfg, scale: int, lr_src, msi_src, notify=None) -> ForwardModel:
    """The pair's ``ForwardModel`` from ``cfg`` (a ``FuseConfig``): preset < --psf/--srf < estimate of the rest.

    ``cfg.estimate``: ``"auto"`` estimates whatever is not given from the pair; ``"off"`` keeps the old
    assumptions (Gaussian PSF with FWHM = scale, SRF fitted by the method); a ``PairEstimate`` is reused
    as it is (one estimate for a batch of pairs from the same two sensors).
    """
    psf = srf = None
    psf_source, srf_source = "", "not given"
    exact, protocol, json_preset = False, None, None
    windows: dict = {}  # the central window, read once for the estimate and the noise
    if cfg.protocol:
        from .protocols import get_protocol

        proto = get_protocol(cfg.protocol)
        if proto.scale is not None and proto.scale != scale:
            raise InputError(f"protocol '{cfg.protocol}' is for x{proto.scale} but the inputs are x{scale}", msi_src.path)
        psf, srf = proto.build(scale=scale)
        psf_source, exact, protocol = f"protocol {proto.name}", True, proto.name
        if srf is not None:
            srf_source = f"protocol {proto.name}"
    if isinstance(cfg.psf, Psf):
        psf, psf_source, exact = cfg.psf, "given", True
    elif isinstance(cfg.psf, str) and _is_json_spec(cfg.psf):
        from .blind import psf_from_json

        psf, psf_source, exact = psf_from_json(cfg.psf, scale), f"--psf {cfg.psf}", False
        json_preset = _json_preset(cfg.psf, psf, scale)  # read once: the SRF below may come from the same file
        if json_preset is not None:  # a saved estimate that had recognised a preset: exact, as it was then
            exact = True
            psf_source += f" (preset {json_preset})"
    elif isinstance(cfg.psf, str):
        from .degrade import make_psf

        psf, psf_source, exact = make_psf(cfg.psf, scale, sigma=cfg.sigma, form=cfg.psf_form), f"--psf {cfg.psf}", False
    if cfg.psf is not None:
        protocol = None  # the PSF is no longer the preset's
    if psf is not None and psf.scale != scale:
        raise UsageError(f"the PSF is for scale {psf.scale} but the inputs are x{scale}")
    if isinstance(cfg.srf, str) and _is_json_spec(cfg.srf):
        from .blind import srf_from_json

        srf, srf_source = srf_from_json(cfg.srf), f"--srf {cfg.srf} (estimated, gain applied)"
        if json_preset is not None and _json_srf_kind(cfg.srf) == f"preset {json_preset}":
            protocol = json_preset  # both from a saved estimate that followed a preset
    elif isinstance(cfg.srf, str):
        from .srf import load_srf

        srf, srf_source = load_srf(cfg.srf, lr_src.meta.wavelengths, lr_src.bands).matrix, f"--srf {cfg.srf}"
    elif cfg.srf is not None:
        srf, srf_source = cfg.srf, "given"
    if cfg.srf is not None and cfg.protocol:
        protocol = None
    if srf is not None:
        srf = np.asarray(srf, dtype=np.float64)
        if srf.shape != (msi_src.bands, lr_src.bands):
            raise InputError(f"SRF has shape {srf.shape}, expected (MSI bands, LR bands) = ({msi_src.bands}, "
                             f"{lr_src.bands})", msi_src.path)
    est = None
    mode = cfg.estimate
    estimable = msi_src.bands <= lr_src.bands  # more MSI than LR bands: swapped inputs, the model says so
    if (psf is None or srf is None) and estimable and not (isinstance(mode, str) and mode == "off"):
        if isinstance(mode, PairEstimate):
            est = mode
            if est.psf.scale != scale or est.srf.shape != (msi_src.bands, lr_src.bands):
                raise InputError(f"the reused estimate is for x{est.psf.scale} and SRF {est.srf.shape}; this pair is "
                                 f"x{scale} with ({msi_src.bands}, {lr_src.bands})", msi_src.path)
        elif isinstance(mode, str) and mode == "auto":
            try:
                est = estimate_from_sources(lr_src, msi_src, scale, psf=psf, srf=srf, cache=windows)
            except InputError as e:
                if "too few valid LR pixels" not in e.message:
                    raise
                est = None  # a tiny pair: nothing to estimate from; the old assumptions, said aloud
                if notify:
                    notify(f"warning: {e.message}; assuming a Gaussian PSF with FWHM = scale (give --psf/--srf)")
        else:
            raise UsageError(f"estimate must be auto or off, got {mode!r}")
    if est is not None:
        if est.residual > RESIDUAL_FAIL and not cfg.force:
            raise InputError(f"the MSI does not match the LR cube (relative residual {est.residual:.2f} of the "
                             "forward-model fit, > " f"{RESIDUAL_FAIL:g}): another scene or date, grossly misregistered "
                             "grids, or swapped files; give --psf and --srf (or --protocol) and --force to fuse anyway",
                             msi_src.path)
        if notify:
            notify(est.summary())
            for wmsg in est.warnings:
                notify(f"warning: {wmsg}")
        if psf is None:
            psf = est.psf
            exact = est.preset is not None
            psf_source = f"estimated from the pair ({est.psf_kind}, residual {est.residual:.2g})"
        if srf is None:
            srf = np.asarray(est.srf, dtype=np.float64)
            srf_source = f"estimated from the pair ({est.srf_kind})"
            if est.preset is not None and est.srf_kind == f"preset {est.preset}" and est.psf_kind == est.srf_kind:
                protocol = est.preset  # the pair follows this preset: as if --protocol had been given
    if psf is None:
        from .degrade import Psf as _Psf

        psf, psf_source = _Psf.gaussian(scale), "assumed: Gaussian with FWHM = scale (not estimated)"
    noise, denoise = None, (False, False)
    dmode = str(getattr(cfg, "denoise", "auto")).lower()
    if dmode not in ("auto", "on", "off"):
        raise UsageError(f"denoise must be auto, on or off, got {dmode!r}")
    if dmode != "off":
        noise = noise_from_sources(lr_src, msi_src, scale, cache=windows)
        denoise = (True, True) if dmode == "on" else noise.noisy()
        if dmode == "auto" and any(denoise):
            # noise of the *observations* makes the two inputs disagree through the forward model; "noise"
            # that both inputs share (fine texture, or a simulated pair whose reference is itself noisy) does
            # not, and filtering it would remove scene content: then nothing is denoised
            res = est.residual if est is not None else _model_residual(lr_src, msi_src, scale, psf, srf)
            if res is not None and res < RESIDUAL_NOISY:
                denoise = (False, False)
                if notify:
                    notify(f"the inputs look noisy (estimated SNR: LR {noise.lr_snr_db:.0f} dB, MSI "
                           f"{noise.msi_snr_db:.0f} dB) but agree with each other to {res:.2g}: that is scene "
                           "content, not observation noise; not denoised (--denoise on forces it)")
        if notify and any(denoise):
            what = " and ".join(n for n, d in zip(("LR-HSI", "MSI"), denoise) if d)
            notify(f"noisy inputs (estimated SNR: LR {noise.lr_snr_db:.0f} dB, MSI {noise.msi_snr_db:.0f} dB): "
                   f"denoising the {what} first (--denoise off skips it)")
    return ForwardModel(psf=psf, psf_source=psf_source, srf=srf, srf_source=srf_source, exact=exact,
                        protocol=protocol, estimate=est, noise=noise, denoise=denoise)


def _model_residual(lr_src, msi_src, scale: int, psf: Psf | None, srf: np.ndarray | None) -> float | None:
    """The forward-model residual of a pair under a given PSF and SRF (None when either is unknown)."""
    if psf is None or srf is None:
        return None
    try:
        return estimate_from_sources(lr_src, msi_src, scale, psf=psf, srf=srf).residual
    except (InputError, UsageError):
        return None


def psf_distance(a: Psf, b: Psf) -> float:
    """Relative L2 distance of two PSFs' kernels placed on the HR grid by their pads (0: the same model)."""
    if a.scale != b.scale:
        return float("inf")
    lo = min(-int(a.pad), -int(b.pad))
    hi = max(a.size - int(a.pad), b.size - int(b.pad))
    grid = []
    for p in (a, b):
        g = np.zeros((hi - lo, hi - lo))
        o = -int(p.pad) - lo
        g[o:o + p.size, o:o + p.size] = p.kernel
        grid.append(g)
    return float(np.linalg.norm(grid[0] - grid[1]) / max(np.linalg.norm(grid[1]), 1e-300))
