"""Blind estimation of the forward model (PSF and SRF) from an LR-HSI / HR-MSI pair.

Most real pairs come without a trustworthy point spread function or spectral
response. Both are identifiable from the pair itself because the two
observations of the same scene must agree once each is degraded to the other's
resolution (HySure, Simões, Bioucas-Dias, Almeida, Chanussot, IEEE TGRS 53(6)
2015, section III-C)::

    R · LR  ≈  degrade(MSI, B)          (an (m, h, w) image on the LR grid)

``R`` (m × C) is the SRF, ``B`` the spatial kernel. Note which side is
degraded: the *MSI* is blurred and decimated with the PSF (the LR already is),
the *LR* is mixed spectrally with the SRF (the MSI already is). The problem is
bilinear, so we alternate (``estimate_blind``):

1. **SRF given PSF**: ``R ← estimate_srf(LR, degrade(MSI, B))`` (the project's
   non-negative, optionally smooth least squares; ``hsfuse.forward.estimate``).
2. **PSF given SRF**: ``B ← argmin ‖A b − vec(R · LR)‖² + λ‖∇b‖²`` subject to
   ``b ≥ 0, Σb = 1``, with ``A`` the MSI patches seen by each LR pixel: a small
   quadratic programme on a k×k support (k = s + 2r, centred on the s×s block),
   solved by accelerated projected gradient on the simplex
   (``estimate_psf_kernel``). λ is a quadratic (Tikhonov) smoothness penalty on
   horizontal and vertical differences, relative to the data term's trace.

The alternation starts from the best *centred Gaussian* (a 1-D profile search
over σ with the SRF re-fitted at each σ): started from a too-wide kernel it
converges slowly, because extra blur and extra spectral mixing partly trade
off. A few alternations then suffice (the best iterate is kept). Two
ambiguities and how they are fixed:

* **Gain**: ``degrade(MSI, c·B) = c·degrade(MSI, B)`` trades a factor between
  ``B`` and ``R``. The kernel is constrained to sum to 1 (a PSF preserves the
  mean), so any radiometric gain between the sensors (radiance vs reflectance,
  8-bit RGB vs reflectance) ends up in ``R``'s row sums. By default
  (``normalise=True``) the returned ``srf`` has rows summing to 1 (the shape of
  each band's response, comparable with published SRFs) and the row sums are
  kept separately as ``gain`` (m,): ``MSI ≈ diag(gain) · srf · Z``. Fusion needs
  the *effective* matrix ``diag(gain) · srf`` (what the data obey), which is what
  ``BlindEstimate.srf_effective`` and ``srf_from_json`` return by default.
* **Shift**: the kernel is free on its support, so a sub-pixel misregistration
  shows up as an off-centre kernel; ``centre_offset`` reports it (HR pixels).

``sigma`` is a centred-Gaussian summary of the kernel (least-squares fit with a
free amplitude around the kernel's centroid), for reporting and for users who
want ``--psf gaussian --sigma σ``; the full kernel is what gets saved and used.

    >>> from hsfuse.forward.blind import estimate_blind, save_estimate
    >>> est = estimate_blind(lr, msi)          # (C, h, w), (m, H, W); scale inferred
    >>> est.sigma, est.srf.shape, est.residual
    >>> save_estimate("est.json", est)

    $ hsfuse estimate lr.tif msi.tif -o est.json --plot est.png
    $ hsfuse fuse lr.tif msi.tif --model umsft --psf est.json --srf est.json -o fused.tif
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InputError, UsageError
from .degrade import spatial_degrade
from .estimate import (
    _diff2d,
    default_support,
    fit_gaussian_sigma,
    golden_min,
    simplex_qp,
)
from .psf import Psf, gaussian_kernel

__all__ = [
    "BlindEstimate", "estimate_blind", "estimate_psf_kernel", "fit_gaussian_sigma", "save_estimate",
    "load_estimate", "psf_from_json", "srf_from_json", "plot_estimate", "default_support",
]

#: at most this many (band, LR pixel) equations enter the PSF least squares (regular subsample beyond)
MAX_PSF_EQUATIONS = 400_000
#: above this relative residual the pair does not follow the linear forward model: the estimate gets a warning
RESIDUAL_WARN = 0.05
JSON_KIND = "hsfuse-blind-estimate"
JSON_VERSION = 1


@dataclass
class BlindEstimate:
    """Result of ``estimate_blind``.

    ``psf``: the estimated kernel (k×k, sums to 1, pad r so it is centred on the
    s×s block, border 'reflect'). ``sigma``: centred-Gaussian fit of it (HR
    pixels). ``srf``: (m, C), rows sum to 1 when normalised (see module
    docstring), ``gain``: (m,) row sums of the fitted matrix, so that
    ``srf_effective = diag(gain)·srf`` is what the data obey. ``residual``:
    relative RMS misfit ‖R·LR − degrade(MSI, B)‖/‖R·LR‖ over the fit pixels.
    """

    psf: Psf
    sigma: float
    srf: np.ndarray
    residual: float
    iterations: int
    gain: np.ndarray | None = None
    centre_offset: tuple[float, float] = (0.0, 0.0)
    history: list[float] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def srf_effective(self) -> np.ndarray:
        """The (m, C) matrix the data obey: ``diag(gain) · srf`` (``srf`` itself when not normalised)."""
        if self.gain is None:
            return np.asarray(self.srf)
        return np.asarray(self.gain)[:, None] * np.asarray(self.srf)

    def describe(self) -> dict[str, Any]:
        return {
            "scale": self.psf.scale, "kernel_size": self.psf.size, "pad": self.psf.pad, "sigma": self.sigma,
            "fwhm": self.sigma * 2.0 * math.sqrt(2.0 * math.log(2.0)), "centre_offset_hr": list(self.centre_offset),
            "srf_shape": list(self.srf.shape), "gain": None if self.gain is None else [float(g) for g in self.gain],
            "residual": self.residual, "iterations": self.iterations, "history": list(self.history),
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_pair(cls, pair) -> "BlindEstimate":
        """A ``PairEstimate`` of ``estimate_pair`` in this form (for ``save_estimate``: the JSON ``--psf F --srf F`` reads)."""
        gain = np.asarray(pair.gain, dtype=np.float64)
        safe = np.where(gain > 0, gain, 1.0)
        return cls(psf=pair.psf, sigma=float(pair.sigma or 0.0), srf=pair.srf / safe[:, None],
                   residual=pair.residual, iterations=0, gain=gain, centre_offset=pair.centre_offset,
                   warnings=list(pair.warnings),
                   options={"method": "hsfuse.forward.estimate_pair", "psf_kind": pair.psf_kind,
                            "srf_kind": pair.srf_kind, "preset": pair.preset})


# --------------------------------------------------------------------------- helpers


def _check_pair(lr: np.ndarray, msi: np.ndarray, scale: int | None) -> int:
    if lr.ndim != 3 or msi.ndim != 3:
        raise InputError(f"expected (C, h, w) LR and (m, H, W) MSI, got {lr.shape} and {msi.shape}")
    (_, h, w), (_, H, W) = lr.shape, msi.shape
    if scale is None:
        if H % h or W % w or H // h != W // w or H == h:
            raise InputError(f"cannot infer an integer scale from LR {h}x{w} and MSI {H}x{W}")
        scale = H // h
    scale = int(scale)
    if scale < 1 or (H, W) != (h * scale, w * scale):
        raise InputError(f"MSI {H}x{W} is not LR {h}x{w} times the scale {scale}")
    return scale


def _psf_on_support(psf: Psf, k: int) -> np.ndarray:
    """Embed ``psf``'s kernel in a k×k support whose pad is (k − s)//2 (same taps, same alignment)."""
    s = psf.scale
    r = (k - s) // 2
    out = np.zeros((k, k))
    off = r - int(psf.pad)  # kernel tap a sits at support index a + off
    ks = psf.size
    a0, a1 = max(0, -off), min(ks, k - off)
    if a1 <= a0:
        raise ValueError("initial PSF does not fit in the support")
    out[a0 + off:a1 + off, a0 + off:a1 + off] = psf.kernel[a0:a1, a0:a1]
    return out / out.sum()


def _patches(msi: np.ndarray, scale: int, k: int, border: str = "reflect") -> np.ndarray:
    """View (m, h, w, k, k): the MSI taps each LR pixel sees with a k×k kernel, pad (k − s)//2."""
    from numpy.lib.stride_tricks import sliding_window_view

    m, H, W = msi.shape
    s, r = scale, (k - scale) // 2
    mode = {"reflect": "symmetric", "edge": "edge", "wrap": "wrap", "zero": "constant"}[border]
    xp = np.pad(msi, ((0, 0), (r, r), (r, r)), mode=mode)
    v = sliding_window_view(xp, (k, k), axis=(1, 2))[:, ::s, ::s]
    return v[:, : H // s, : W // s]


def _fit_mask(lr: np.ndarray, msi: np.ndarray, scale: int, k: int, border_lr: int) -> np.ndarray:
    """LR pixels usable in the fit: finite LR, no NaN in their MSI window, away from the border."""
    c, h, w = lr.shape
    ok = np.isfinite(lr).all(0)
    bad_hr = ~np.isfinite(msi).all(0)
    if bad_hr.any():
        win = _patches(bad_hr[None].astype(np.float32), scale, k)[0]
        ok &= ~(win.reshape(h, w, -1).max(-1) > 0)
    b = int(border_lr)
    if b and min(h, w) > 2 * b + 2:
        ok[:b], ok[-b:], ok[:, :b], ok[:, -b:] = False, False, False, False
    return ok


# --------------------------------------------------------------------------- the two sub-problems


def estimate_psf_kernel(lr: np.ndarray, msi: np.ndarray, srf: np.ndarray, scale: int, support: int | None = None,
                        smooth: float = 1e-3, init: np.ndarray | None = None, iters: int = 3000,
                        border_lr: int | None = None, max_equations: int = MAX_PSF_EQUATIONS) -> np.ndarray:
    """PSF kernel b (k×k, ≥ 0, Σ = 1) minimising ‖degrade(MSI, b) − R·LR‖² + λ‖∇b‖² (see module docstring).

    ``support`` k (same parity as s; default ``default_support``); the kernel's
    pad is (k − s)//2 so it is centred on the s×s block. ``smooth`` λ is
    relative: the penalty is λ · tr(AᵀA)/k² · ‖D b‖². ``border_lr`` LR pixels
    at the image border are left out (the true border rule is unknown; default
    ⌈r/s⌉ + 1).
    """
    lr = np.asarray(lr, dtype=np.float64)
    msi = np.asarray(msi, dtype=np.float64)
    srf = np.asarray(srf, dtype=np.float64)
    s = int(scale)
    k = default_support(s) if support is None else int(support)
    if k < s or (k - s) % 2:
        raise UsageError(f"PSF support {k} must be >= the scale {s} and have the same parity")
    r = (k - s) // 2
    c, h, w = lr.shape
    b = math.ceil(r / s) + 1 if border_lr is None else int(border_lr)
    mask = _fit_mask(lr, msi, s, k, b)
    target = np.einsum("mc,chw->mhw", srf, np.where(np.isfinite(lr), lr, 0.0))
    m = msi.shape[0]
    idx = np.flatnonzero(mask.ravel())
    cap = max(1, max_equations // m)
    if idx.size > cap:
        idx = idx[:: math.ceil(idx.size / cap)]
    if idx.size == 0:
        raise InputError("no valid LR pixels to estimate the PSF from")
    pat = _patches(np.where(np.isfinite(msi), msi, 0.0), s, k)  # (m, h, w, k, k) view
    g = np.zeros((k * k, k * k))
    rhs = np.zeros(k * k)
    for i in range(m):  # band by band keeps the copied patch matrix small
        a = pat[i].reshape(h * w, k * k)[idx]
        y = target[i].reshape(-1)[idx]
        g += a.T @ a
        rhs += a.T @ y
    if smooth > 0:
        dd = _diff2d(k)
        g = g + float(smooth) * np.trace(g) / (k * k) * (dd.T @ dd)
    x0 = gaussian_kernel(k, s / 2.3548) if init is None else np.asarray(init, dtype=np.float64)
    x = simplex_qp(g, rhs, x0.ravel(), iters=int(iters), tol=1e-10, power_iters=100, margin=1.02)
    if x is None:
        raise InputError("the MSI has no signal to estimate the PSF from")
    return x.reshape(k, k)


def _residual(lr: np.ndarray, msi_lr: np.ndarray, srf: np.ndarray, mask: np.ndarray) -> float:
    t = np.einsum("mc,chw->mhw", srf, np.where(np.isfinite(lr), lr, 0.0))[:, mask]
    d = msi_lr[:, mask] - t
    return float(np.sqrt(np.mean(d * d)) / max(np.sqrt(np.mean(t * t)), 1e-300))


# --------------------------------------------------------------------------- the alternation


def estimate_blind(lr: np.ndarray, msi: np.ndarray, scale: int | None = None, *, iters: int = 5,
                   support: int | None = None, psf_smooth: float = 1e-5, srf_smooth: float = 0.0,
                   nonneg: bool = True, normalise: bool = True, init_psf: Psf | None = None,
                   srf: np.ndarray | None = None, tol: float = 1e-4,
                   progress: Callable[[str, int, int], None] | None = None) -> BlindEstimate:
    """Estimate the PSF kernel and the SRF of a pair by HySure-style alternation (module docstring).

    ``lr`` (C, h, w) and ``msi`` (m, H, W) float arrays, NaN at nodata; ``scale``
    inferred from the grids when None. ``iters``: at most this many
    (SRF, PSF) alternations, stopping early when the relative residual improves
    by less than ``tol``. ``support``: kernel side (default ``default_support``).
    ``psf_smooth``: relative smoothness weight of the kernel; ``srf_smooth``
    and ``nonneg``: passed to ``hsfuse.forward.estimate.estimate_srf``. ``srf``: a known
    SRF (m, C) to keep fixed (only the PSF is estimated). ``init_psf``: start of
    the alternation (default: the centred Gaussian whose σ minimises the joint
    residual, found by a 1-D profile search with the SRF re-fitted at each σ). ``normalise``: rows of the returned SRF
    sum to 1, the row sums go to ``gain``.
    """
    from .estimate import estimate_srf

    lr = np.asarray(lr, dtype=np.float64)
    msi = np.asarray(msi, dtype=np.float64)
    s = _check_pair(lr, msi, scale)
    c, m = lr.shape[0], msi.shape[0]
    if m > c:
        raise InputError(f"the MSI has more bands ({m}) than the LR cube ({c}): are the inputs swapped?")
    k = default_support(s) if support is None else int(support)
    if k < s or (k - s) % 2:
        raise UsageError(f"PSF support {k} must be >= the scale {s} and have the same parity")
    r = (k - s) // 2
    msi_f = np.where(np.isfinite(msi), msi, 0.0)
    mask = _fit_mask(lr, msi, s, k, math.ceil(r / s) + 1)
    if not mask.any():
        raise InputError("no LR pixels usable for the estimate (all nodata, or the image is too small)")
    fixed_srf = srf is not None
    if fixed_srf:
        R = np.asarray(srf, dtype=np.float64)
        if R.shape != (m, c):
            raise InputError(f"SRF has shape {R.shape}, expected ({m}, {c})")

    def joint_cost(psf_try: Psf) -> tuple[float, np.ndarray]:
        low = spatial_degrade(msi_f, psf_try)
        low[:, ~mask] = np.nan
        rr = R if fixed_srf else estimate_srf(lr, low, nonneg=nonneg, smooth=srf_smooth)
        return _residual(lr, low, rr, mask), rr

    if init_psf is not None:
        if init_psf.scale != s:
            raise UsageError(f"initial PSF is for scale {init_psf.scale}, the inputs are x{s}")
        if init_psf.size > k:
            raise UsageError(f"initial PSF ({init_psf.size}x{init_psf.size}) is larger than the support {k}")
        kern = _psf_on_support(init_psf, k)
    else:
        # start from the best centred Gaussian: a 1-D profile search over σ with the SRF re-fitted at each σ
        # (alternation from a too-wide start converges slowly: blur and spectral mixing partly trade off)
        def gcost(sig: float) -> float:
            return joint_cost(Psf(gaussian_kernel(k, sig), s, pad=r))[0]

        sig0 = golden_min(gcost, s * np.linspace(0.1, 1.2, 10), steps=8)
        kern = gaussian_kernel(k, sig0)
    history: list[float] = []
    res, R = joint_cost(Psf(kern, s, pad=r))
    history.append(res)
    best = (res, kern, R)
    n_done = 0
    for it in range(max(1, int(iters))):
        kern = estimate_psf_kernel(lr, msi, R, s, k, smooth=psf_smooth, init=kern)
        res, R = joint_cost(Psf(kern, s, pad=r))  # SRF re-fitted for the new kernel
        history.append(res)
        n_done = it + 1
        if progress:
            progress("estimate PSF/SRF", n_done, int(iters))
        improved = best[0] - res
        if res < best[0]:
            best = (res, kern, R)
        if improved < tol * best[0]:
            break
    res, kern, R = best
    sigma, (cy, cx) = fit_gaussian_sigma(kern)
    centre = (k - 1) / 2.0
    gain = None
    out_srf = R
    if normalise:
        gain = R.sum(1)
        if np.any(gain <= 0):
            raise InputError("an estimated SRF row is all zero: that MSI band is not explained by the LR bands")
        out_srf = R / gain[:, None]
    warns = []
    if res > RESIDUAL_WARN:
        warns.append(f"relative residual {res:.3g} > {RESIDUAL_WARN:g}: the pair does not follow R·LR = degrade(MSI) "
                     "well (misregistration, different dates, or a non-linear MSI such as gamma-encoded 8-bit RGB); "
                     "the estimate is unreliable")
    if sigma > 0.45 * k or max(abs(cy - centre), abs(cx - centre)) > 0.25 * k:
        warns.append(f"the kernel reaches the edge of its {k}x{k} support (Gaussian fit sigma {sigma:.3g}, centre offset "
                     f"{cy - centre:+.2f}, {cx - centre:+.2f}): the blur is not identifiable from this pair, or --support is too small")
    psf = Psf(kern, s, pad=r, border="reflect", name=f"blind(k={k},sigma~{sigma:.3g})")
    psf.sigma = sigma  # type: ignore[attr-defined]
    return BlindEstimate(
        psf=psf, sigma=sigma, srf=out_srf, residual=res, iterations=n_done, gain=gain,
        centre_offset=(cy - centre, cx - centre), history=history,
        warnings=warns,
        options={"support": k, "psf_smooth": psf_smooth, "srf_smooth": srf_smooth, "nonneg": nonneg,
                 "normalise": normalise, "max_iters": int(iters), "srf_fixed": fixed_srf},
    )


# --------------------------------------------------------------------------- JSON round trip


def save_estimate(path: str | Path, est: BlindEstimate, *, lr_wavelengths: np.ndarray | None = None,
                  msi_band_names: list[str] | None = None, extra: dict | None = None) -> Path:
    """Write ``est`` as JSON (kernel, scale, pad, σ, SRF, gain, band info); readable by ``load_estimate``."""
    path = Path(path)
    psf = est.psf
    doc = {
        "kind": JSON_KIND, "version": JSON_VERSION,
        "scale": psf.scale,
        "psf": {"kernel": np.asarray(psf.kernel).tolist(), "size": psf.size, "pad": psf.pad, "border": psf.border,
                "sigma": est.sigma, "centre_offset_hr": list(est.centre_offset),
                "note": "LR[i,j] = sum_ab K[a,b] HR[s*i+a-pad, s*j+b-pad] (hsfuse.forward.degrade); K sums to 1"},
        "srf": {"matrix": np.asarray(est.srf).tolist(), "normalised": est.gain is not None,
                "gain": None if est.gain is None else np.asarray(est.gain).tolist(),
                "effective": est.srf_effective.tolist(),
                "msi_bands": int(est.srf.shape[0]), "lr_bands": int(est.srf.shape[1]),
                "lr_wavelengths": None if lr_wavelengths is None else np.asarray(lr_wavelengths, float).tolist(),
                "msi_band_names": None if msi_band_names is None else list(msi_band_names),
                "note": "MSI = diag(gain) . matrix . Z = effective . Z; rows of matrix sum to 1 when normalised"},
        "residual": est.residual, "iterations": est.iterations, "history": list(est.history),
        "warnings": list(est.warnings), "options": est.options,
    }
    if extra:
        doc.update(extra)
    text = json.dumps(doc, indent=1, allow_nan=False)
    from ..io.base import atomic_write

    atomic_write(path, lambda tmp: tmp.write_text(text))  # a full disk or an interruption leaves nothing
    return path


def _read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError("estimate file not found", path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read estimate JSON: {e}", path) from e
    if not isinstance(doc, dict) or doc.get("kind") != JSON_KIND:
        raise InputError(f"not an hsfuse estimate file (expected \"kind\": \"{JSON_KIND}\")", path)
    return doc


def psf_from_json(path: str | Path, scale: int | None = None, model: str = "kernel") -> Psf:
    """The PSF of an estimate file; ``scale`` (the inputs' scale) must match the stored one.

    ``model='kernel'`` (default): the free k×k kernel as estimated. ``model='gaussian'``: a centred
    Gaussian with the fitted σ (``Psf.gaussian(scale, sigma)``, conv form): more robust when the pair
    is noisy or not exactly co-registered (measured on the Paris Hyperion/ALI pair: +0.55 dB for
    gsa), worse when the true PSF is not Gaussian (CAVE ×8 block kernel: −1.5 dB). A path written
    ``est.json:gaussian`` selects the Gaussian too (for a CLI ``--psf est.json:gaussian``).
    """
    spath = str(path)
    if spath.lower().endswith((":gaussian", ":kernel")):
        spath, model = spath.rsplit(":", 1)
    if model not in ("kernel", "gaussian"):
        raise UsageError(f"PSF model must be 'kernel' or 'gaussian', got {model!r}")
    doc = _read_json(spath)
    try:
        p = doc["psf"]
        s = int(doc["scale"])
        if scale is not None and int(scale) != s:
            raise InputError(f"the estimate is for x{s} but the inputs are x{scale}", spath)
        if model == "gaussian":
            psf = Psf.gaussian(s, float(p["sigma"]), border=p.get("border", "reflect"))
            psf.name = f"estimate-gaussian({Path(spath).name}, sigma={float(p['sigma']):.4g})"
        else:
            kern = np.asarray(p["kernel"], dtype=np.float64)
            psf = Psf(kern, s, pad=int(p["pad"]), border=p.get("border", "reflect"), name=f"estimate({Path(spath).name})")
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"malformed PSF in estimate file: {e}", spath) from e
    psf.sigma = p.get("sigma")  # type: ignore[attr-defined]
    return psf


def srf_from_json(path: str | Path, effective: bool = True) -> np.ndarray:
    """The (m, C) SRF of an estimate file: with the gain applied (what fusion needs) unless ``effective=False``."""
    doc = _read_json(path)
    try:
        sd = doc["srf"]
        mat = np.asarray(sd["matrix"], dtype=np.float64)
        if effective and sd.get("gain") is not None:
            mat = np.asarray(sd["gain"], dtype=np.float64)[:, None] * mat
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"malformed SRF in estimate file: {e}", path) from e
    if mat.ndim != 2:
        raise InputError(f"SRF in estimate file must be 2-D, got shape {mat.shape}", path)
    return mat


def load_estimate(path: str | Path) -> tuple[Psf, np.ndarray]:
    """(Psf, effective SRF (m, C)) from a file written by ``save_estimate``."""
    return psf_from_json(path), srf_from_json(path)


def plot_estimate(path: str | Path, est: BlindEstimate, lr_wavelengths: np.ndarray | None = None,
                  msi_band_names: list[str] | None = None) -> Path:
    """PNG with the kernel image (and its Gaussian fit σ) and the SRF curves (matplotlib Agg)."""
    try:
        import matplotlib
    except ImportError:
        raise UsageError("{plot} needs matplotlib: pip install 'hsfuse[plot]' (or matplotlib)", options=("plot",)) from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(10, 4))
    im = a0.imshow(est.psf.kernel, cmap="magma")
    a0.set_title(f"PSF x{est.psf.scale}, k={est.psf.size}, Gaussian fit sigma={est.sigma:.3g} px")
    fig.colorbar(im, ax=a0, fraction=0.046)
    x = np.arange(est.srf.shape[1]) if lr_wavelengths is None else np.asarray(lr_wavelengths, float)
    names = msi_band_names or [f"band {i + 1}" for i in range(est.srf.shape[0])]
    for i, row in enumerate(est.srf):
        a1.plot(x, row, label=names[i] if i < len(names) else f"band {i + 1}")
    a1.set_xlabel("wavelength (nm)" if lr_wavelengths is not None else "LR band index")
    a1.set_title("SRF (rows sum to 1)" if est.gain is not None else "SRF")
    if est.srf.shape[0] <= 12:
        a1.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
