"""Classical fusion methods: any band counts, any integer scale, no training.

All methods follow the ``Fuser`` contract (hsfuse/fusion/base.py): global
parameters are estimated once in ``fit`` from the whole LR cube and the MSI
degraded onto the LR grid; ``fuse_tile`` only does local work (pixelwise maths,
convolutions and interpolation reaching at most ``halo_lr`` LR pixels), so a
tiled run equals an untiled one. Tile maths run in torch on ``self.device``
(CUDA when asked), the small global fits in float64.

Methods (see docs/models/classical.md for derivations and measured quality):

* ``Bicubic``          upsample the LR (ignores the MSI)
* ``DetailInjection``  "gsa": per-band regression of LR on the degraded MSI,
                        HR detail injected, residual upsampled PSF-consistently
* ``GLPHS``            "glp-hs": MTF-GLP hypersharpening (Selva et al. 2015)
* ``CNMF``             "cnmf": coupled NMF unmixing (Yokoya et al. 2012)

Sampling convention: LR pixel i is centred on HR coordinate s·i + (s−1)/2,
which is ``torch.nn.functional.interpolate(..., align_corners=False)`` and the
centred PSFs of hsfuse.forward.degrade.

Example::

    $ hsfuse fuse --lr lr.hdr --msi rgb.tif --model gsa --protocol cave-gauss-x8 -o fused.hdr

    >>> from hsfuse.models.classical import DetailInjection, fuse_arrays
    >>> hr = fuse_arrays(DetailInjection, lr, msi, FusionProblem(8, 31, 3, psf=psf))
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import InputError, UsageError
from ..forward.degrade import spatial_degrade, spatial_degrade_t
from ..forward.psf import Psf, sampling_phase
from ..fusion.base import Fuser, FusionProblem

__all__ = ["Bicubic", "DetailInjection", "GLPHS", "CNMF", "fuse_arrays", "vca"]


# --------------------------------------------------------------------------- torch helpers


def _torch():
    import torch

    return torch


def _dtype(precision: str):
    torch = _torch()
    # classical maths is cheap and sensitive to cancellation: fp16/bf16 requests run in fp32
    return torch.float64 if precision in ("fp64", "float64") else torch.float32


def upsample_t(x, s: int, offset: tuple[float, float] = (0.0, 0.0)):
    """``hsfuse.models.common.upsample`` (the one bicubic of the fusers), kept under its old name here."""
    from .common import upsample

    return upsample(x, s, offset)


# --------------------------------------------------------------------------- shared pieces


def _psf_of(problem: FusionProblem) -> tuple[Psf, bool]:
    if problem.psf is not None:
        return problem.psf, False
    return Psf.gaussian(problem.scale), True


def _band_means(a: np.ndarray) -> np.ndarray:
    """Mean of each band over its finite values (0 for an all-NaN band)."""
    a = a.reshape(a.shape[0], -1)
    ok = np.isfinite(a)
    return np.where(ok, a, 0.0).sum(1) / np.maximum(ok.sum(1), 1)


def _valid_2d(a: np.ndarray) -> np.ndarray:
    return np.isfinite(a).all(axis=0)


class _ClassicalBase(Fuser):
    """Common plumbing: PSF default, NaN handling, tensors on the device."""

    #: extra LR halo beyond what the PSF needs
    _halo_extra = 2

    def __init__(self, problem: FusionProblem, device: str = "cpu", precision: str = "fp32"):
        super().__init__(problem, device, precision)
        self.psf, self.psf_assumed = _psf_of(problem)
        if self.psf.scale != problem.scale:
            raise UsageError(f"PSF scale {self.psf.scale} != problem scale {problem.scale}")
        self.scale = problem.scale
        # where the LR samples sit relative to the block centres: every LR -> HR interpolation below uses it
        self.offset = sampling_phase(self.psf)
        # read, not copied: the engine's options remember which keys a model reads (unused ones are reported)
        self.opts: dict[str, Any] = problem.options if problem.options is not None else {}
        self.halo_lr = self._compute_halo() + math.ceil(max(map(abs, self.offset)) / self.scale)
        self._lr_fill: np.ndarray | None = None
        self._msi_fill: np.ndarray | None = None

    def _compute_halo(self) -> int:
        return self.psf.halo_lr + self._halo_extra

    # NaN handling: fill with the global band means (a pixelwise rule, so tiling-invariant), compute,
    # then mark as NaN every HR pixel whose MSI pixel or LR pixel (any band) is nodata.
    def _store_fill(self, lr: np.ndarray, msi_lr: np.ndarray | None) -> None:
        self._lr_fill = _band_means(lr)
        if msi_lr is not None:
            self._msi_fill = _band_means(msi_lr)

    def _tensors(self, lr: np.ndarray, msi: np.ndarray | None):
        """``_arrays_np`` on the device, in the precision's dtype."""
        torch = _torch()
        dt = _dtype(self.precision)
        lr, msi, bad = self._arrays_np(lr, msi, np.float64 if dt == torch.float64 else np.float32)
        lr_t = torch.as_tensor(lr, device=self.device).to(dt)
        msi_t = None if msi is None else torch.as_tensor(msi, device=self.device).to(dt)
        return lr_t, msi_t, bad

    def _arrays_np(self, lr: np.ndarray, msi: np.ndarray | None,
                   fill_dtype=np.float32) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Float32 tiles (``fill_dtype`` where nodata was filled with the band means) and the HR nodata mask."""
        s = self.scale
        lr = np.asarray(lr, dtype=np.float32)
        c, h, w = lr.shape
        bad_lr = ~_valid_2d(lr)
        bad = np.repeat(np.repeat(bad_lr, s, 0), s, 1)
        if bad_lr.any():
            fill = self._lr_fill if self._lr_fill is not None else np.zeros(c)
            lr = np.where(np.isfinite(lr), lr.astype(fill_dtype), np.asarray(fill, fill_dtype)[:, None, None])
        if msi is not None:
            msi = np.asarray(msi, dtype=np.float32)
            if msi.shape[1:] != (h * s, w * s):
                raise InputError(f"MSI tile {msi.shape} does not match LR tile {lr.shape} at scale {s}")
            bad_m = ~_valid_2d(msi)
            bad = bad | bad_m
            if bad_m.any():
                fill = self._msi_fill if self._msi_fill is not None else np.zeros(msi.shape[0])
                msi = np.where(np.isfinite(msi), msi.astype(fill_dtype), np.asarray(fill, fill_dtype)[:, None, None])
        return lr, msi, bad

    @staticmethod
    def _finish_np(out: np.ndarray, bad: np.ndarray) -> np.ndarray:
        if bad.any():
            out[:, bad] = np.nan
        return np.ascontiguousarray(out, dtype=np.float32)

    @staticmethod
    def _finish(out, bad: np.ndarray) -> np.ndarray:
        res = out.detach().to("cpu").float().numpy()
        if bad.any():
            res[:, bad] = np.nan
        return np.ascontiguousarray(res, dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(psf=self.psf.name, psf_assumed=self.psf_assumed, scale=self.scale)
        if self.psf_assumed:
            d["note"] = f"no PSF given: assumed Psf.gaussian({self.scale}) (FWHM = scale)"
        return d


def _regress(lr: np.ndarray, msi_lr: np.ndarray, intercept: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per HSI band c: LR_c ≈ Σ_m α_cm MSI_lr_m + β_c by least squares over pixels valid in both."""
    from ..forward.estimate import valid_pixels

    x, y = valid_pixels(msi_lr, lr)  # (m, N), (C, N)
    m, n = x.shape
    if n < m + 1:
        raise InputError(f"only {n} valid LR pixels: cannot regress {lr.shape[0]} bands on {m} MSI bands")
    a = np.concatenate([x, np.ones((1, n))]) if intercept else x
    coef, *_ = np.linalg.lstsq(a.T, y.T, rcond=None)  # (m+1, C)
    alpha = coef[:m].T
    beta = coef[m] if intercept else np.zeros(lr.shape[0])
    return alpha, beta


# --------------------------------------------------------------------------- methods


class Bicubic(_ClassicalBase):
    """Bicubic upsampling of the LR cube (ignores the MSI): the floor every fusion method must beat."""

    name = "bicubic"

    def _compute_halo(self) -> int:
        return 2

    def fit(self, lr: np.ndarray, msi_lr: np.ndarray | None = None) -> None:
        self._store_fill(np.asarray(lr, dtype=np.float64), None)

    def fuse_tile(self, lr: np.ndarray, msi: np.ndarray | None = None) -> np.ndarray:
        # the MSI is only used for its nodata mask (the output lives on the MSI grid, as in the engine)
        if self.device == "cpu":  # numpy on a CPU, as gsa: no torch import
            lr, _, bad = self._arrays_np(lr, msi)
            return self._finish_np(upsample_np(lr, self.scale, self.offset), bad)
        lr_t, _, bad = self._tensors(lr, msi)
        return self._finish(upsample_t(lr_t, self.scale, self.offset), bad)


class _Upsampler:
    """LR residual -> HR: bicubic, or bicubic after back-projection so that degrade(up(r)) = r.

    Back-projection (Irani & Peleg) ``R ← R + up(r − degrade(R))`` started from
    ``R = up(r)`` equals ``up(x_K)`` with ``x ← x + (r − H x)`` on the LR grid,
    H = degrade∘up; each iteration reaches ``psf.halo_lr + 2`` more LR pixels.
    """

    def __init__(self, psf: Psf, kind: str = "bp", iters: int = 4):
        if kind not in ("bicubic", "bp"):
            raise UsageError(f"gsa upsampler must be 'bicubic' or 'bp', got {kind!r}")
        self.psf, self.kind, self.iters = psf, kind, int(iters) if kind == "bp" else 0
        self.offset = sampling_phase(psf)

    @property
    def halo(self) -> int:
        return 2 + self.iters * (self.psf.halo_lr + 2)

    def __call__(self, r):
        s = self.psf.scale
        x = r
        for _ in range(self.iters):
            x = x + (r - spatial_degrade_t(upsample_t(x, s, self.offset), self.psf))
        return upsample_t(x, s, self.offset)


# --------------------------------------------------------------------------- numpy twins (gsa on a CPU without torch)


def _keys_np(t: np.ndarray, a: float = -0.75) -> list[np.ndarray]:
    near = lambda d: ((a + 2) * d - (a + 3)) * d * d + 1  # noqa: E731
    far = lambda d: ((a * d - 5 * a) * d + 8 * a) * d - 4 * a  # noqa: E731
    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def upsample_np(x: np.ndarray, s: int, offset: tuple[float, float] = (0.0, 0.0),
                add_to: np.ndarray | None = None) -> np.ndarray:
    """``models.common.upsample`` in numpy: the same Keys bicubic (a = −0.75), edge clamping and sampling phase.

    Computed in channel chunks of about 1 MB of output, so the temporaries stay small next to the result;
    ``add_to``: accumulate into this array (same shape as the result) instead of allocating one."""
    h, w = x.shape[-2:]
    flat = x.reshape(-1, h, w)
    shape = (*x.shape[:-2], h * s, w * s)
    out = np.empty((flat.shape[0], h * s, w * s), dtype=x.dtype) if add_to is None else add_to.reshape(-1, h * s, w * s)
    step = max(1, 2**18 // (h * s * w * s))
    for c0 in range(0, flat.shape[0], step):
        block = _upsample_block_np(flat[c0:c0 + step], s, offset)
        if add_to is None:
            out[c0:c0 + step] = block
        else:
            out[c0:c0 + step] += block
    return out.reshape(shape)


def _upsample_block_np(x: np.ndarray, s: int, offset: tuple[float, float]) -> np.ndarray:
    for axis, off in ((-2, offset[0]), (-1, offset[1])):
        n = x.shape[axis]
        pos = (np.arange(n * s, dtype=np.float64) - (s - 1) / 2.0 - float(off)) / s
        i0 = np.floor(pos)
        w = _keys_np(pos - i0)
        i0 = i0.astype(np.int64)
        shape = [1] * x.ndim
        shape[axis] = n * s
        out = None
        for k, wk in enumerate(w):
            term = np.take(x, np.clip(i0 + (k - 1), 0, n - 1), axis=axis) * wk.astype(x.dtype).reshape(shape)
            out = term if out is None else np.add(out, term, out=out)
        x = out
    return x


def _boxmean_np(x: np.ndarray, r: int) -> np.ndarray:
    """``_boxmean`` in numpy: mean over (2r+1)² windows of the last two axes, edges replicated."""
    if r <= 0:
        return x
    k = 2 * r + 1
    y = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(r, r), (r, r)], mode="edge")
    for axis in (-2, -1):
        c = np.cumsum(y, axis=axis)
        zero = np.zeros_like(np.take(c, [0], axis=axis))
        c = np.concatenate([zero, c], axis=axis)
        n = c.shape[axis]
        y = np.take(c, np.arange(k, n), axis=axis) - np.take(c, np.arange(0, n - k), axis=axis)
    return y / (k * k)


def _boxmean(x, r: int):
    """Mean over a (2r+1)² window of the last two axes (edge-replicated; only the halo sees the edge)."""
    torch = _torch()
    if r <= 0:
        return x
    sh = x.shape
    y = x.reshape(-1, 1, sh[-2], sh[-1])
    y = torch.nn.functional.pad(y, (r, r, r, r), mode="replicate")
    k = 2 * r + 1
    y = torch.nn.functional.avg_pool2d(y, k, stride=1)
    return y.reshape(sh)


class DetailInjection(_ClassicalBase):
    """GSA-style regression detail injection (name "gsa").

    fit: LR_c ≈ Σ_m α_cm MSI_lr_m + β_c (least squares over valid LR pixels).

    fuse (``local=0``): Z = α·MSI + β + up(LR − α·MSI_lr − β), MSI_lr = the MSI
    tile degraded with the PSF. The MSI explains what it can of each band at
    full resolution; what it cannot (the residual) is only known at LR and is
    interpolated.

    fuse (``local=r`` > 0, the default r=2): the coefficients are re-estimated
    per LR pixel over a (2r+1)² window of (LR, MSI_lr) pairs — a multi-channel
    guided filter — shrunk towards the global ones with weight ``eps`` (×
    mean MSI_lr variance), box-smoothed, bicubic-upsampled to HR:
    q = α(x)·MSI + β(x), Z = q + up(LR − degrade(q)). Measured on CAVE
    (docs/models/classical.md): +1.5 dB at ×8, +0.4 dB at ×32 over global.

    ``up``: bicubic (``upsampler='bicubic'``, default) or bicubic after
    ``bp_iters`` back-projection steps (``upsampler='bp'``, makes degrade(Z)=LR;
    measured no better on CAVE, larger halo).
    """

    name = "gsa"

    def __init__(self, problem: FusionProblem, device: str = "cpu", precision: str = "fp32"):
        self.up = None
        super().__init__(problem, device, precision)

    def _compute_halo(self) -> int:
        self.local = int(self.opts.get("local", 2))
        self.eps = float(self.opts.get("eps", 1e-4))
        self.up = _Upsampler(self.psf, self.opts.get("upsampler", "bicubic"), self.opts.get("bp_iters", 4))
        if self.local <= 0:
            return self.psf.halo_lr + self.up.halo
        # MSI_lr (psf) -> window stats (r) -> smoothing (r) -> bicubic coefs (2) -> degrade(q) (psf + 1) -> up
        return 2 * self.psf.halo_lr + 2 * self.local + 3 + self.up.halo

    def fit(self, lr: np.ndarray, msi_lr: np.ndarray) -> None:
        lr = np.asarray(lr, dtype=np.float64)
        msi_lr = np.asarray(msi_lr, dtype=np.float64)
        self._store_fill(lr, msi_lr)
        self.alpha, self.beta = _regress(lr, msi_lr)
        ok = np.isfinite(msi_lr).all(0) & np.isfinite(lr).all(0)
        v = float(np.mean([np.var(b[ok]) for b in msi_lr])) if ok.any() else 1.0
        self.eps_abs = self.eps * max(v, 1e-30)

    def _coef(self, ref):
        torch = _torch()
        a = torch.as_tensor(self.alpha, dtype=ref.dtype, device=ref.device)
        b = torch.as_tensor(self.beta, dtype=ref.dtype, device=ref.device)[:, None, None]
        return a, b

    def _local_coefs(self, lr_t, msi_lr_t):
        """Per-LR-pixel ridge regression over (2r+1)² windows, shrunk to the global α (float64)."""
        torch = _torch()
        r = self.local
        f64 = torch.float64
        x = msi_lr_t.to(f64)
        y = lr_t.to(f64)
        # centre on the global means (fit) for accuracy
        x = x - torch.as_tensor(self._msi_fill, dtype=f64, device=x.device)[:, None, None]
        y = y - torch.as_tensor(self._lr_fill, dtype=f64, device=y.device)[:, None, None]
        m = x.shape[0]
        mx, my = _boxmean(x, r), _boxmean(y, r)
        cxx = _boxmean(x[:, None] * x[None], r) - mx[:, None] * mx[None]  # (m, m, h, w)
        cyx = _boxmean(y[:, None] * x[None], r) - my[:, None] * mx[None]  # (C, m, h, w)
        ag = torch.as_tensor(self.alpha, dtype=f64, device=x.device)  # (C, m)
        eye = torch.eye(m, dtype=f64, device=x.device)
        lhs = cxx.permute(2, 3, 0, 1) + self.eps_abs * eye  # (h, w, m, m)
        rhs = cyx.permute(2, 3, 1, 0) + self.eps_abs * ag.T  # (h, w, m, C)
        # batched small SPD systems: inv() is ~50x faster than solve() on CPU (torch 2.x) and exact enough
        # in float64 (the ridge bounds the condition number by ~1/eps)
        al = (torch.linalg.inv(lhs) @ rhs).permute(3, 2, 0, 1)  # (C, m, h, w)
        be = my - (al * mx[None]).sum(1)
        # undo the centring: y + μy = α (x + μx) ... -> β' = β + μy − α μx
        mux = torch.as_tensor(self._msi_fill, dtype=f64, device=x.device)
        muy = torch.as_tensor(self._lr_fill, dtype=f64, device=x.device)
        be = be + muy[:, None, None] - torch.einsum("cmhw,m->chw", al, mux)
        return _boxmean(al, r), _boxmean(be, r)

    #: "auto": numpy on a CPU for the default (local, bicubic) form, torch otherwise (a network's prior too)
    backend = "auto"

    def _numpy_path(self) -> bool:
        """On a CPU the default gsa runs in numpy: a `--model gsa` run never imports torch (1-2 s of start-up
        in a batch loop) and takes about 0.6x the CPU time; outputs equal the torch path's to float rounding
        (tested). Option ``backend`` = auto | numpy | torch overrides."""
        choice = str(self.opts.get("backend", self.backend)).lower()
        if choice not in ("auto", "numpy", "torch"):
            raise UsageError(f"gsa backend must be auto, numpy or torch, got {choice!r}")
        if choice == "torch" or self.local <= 0 or self.up.kind != "bicubic":
            return False
        return choice == "numpy" or self.device == "cpu"

    def _local_coefs_np(self, lr: np.ndarray, msi_lr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``_local_coefs`` in numpy (float64)."""
        r = self.local
        x = msi_lr.astype(np.float64) - np.asarray(self._msi_fill, np.float64)[:, None, None]
        y = lr.astype(np.float64) - np.asarray(self._lr_fill, np.float64)[:, None, None]
        m = x.shape[0]
        mx, my = _boxmean_np(x, r), _boxmean_np(y, r)
        cxx = _boxmean_np(x[:, None] * x[None], r) - mx[:, None] * mx[None]
        cyx = _boxmean_np(y[:, None] * x[None], r) - my[:, None] * mx[None]
        ag = np.asarray(self.alpha, np.float64)
        lhs = cxx.transpose(2, 3, 0, 1) + self.eps_abs * np.eye(m)
        rhs = cyx.transpose(2, 3, 1, 0) + self.eps_abs * ag.T
        al = (np.linalg.inv(lhs) @ rhs).transpose(3, 2, 0, 1)
        be = my - (al * mx[None]).sum(1)
        mux, muy = np.asarray(self._msi_fill, np.float64), np.asarray(self._lr_fill, np.float64)
        be = be + muy[:, None, None] - np.einsum("cmhw,m->chw", al, mux)
        return _boxmean_np(al, r), _boxmean_np(be, r)

    def _fuse_tile_np(self, lr: np.ndarray, msi: np.ndarray) -> np.ndarray:
        s = self.scale
        lr, msi, bad = self._arrays_np(lr, msi)
        c, h, w = lr.shape
        al, be = self._local_coefs_np(lr, spatial_degrade(msi, self.psf))
        al, be = al.astype(np.float32), be.astype(np.float32)
        m = al.shape[1]
        q = upsample_np(be, s, self.offset)
        step = max(1, int(2**21 // max(m * h * w * s * s, 1)))  # bounded chunks (8 MB of upsampled coefficients)
        for c0 in range(0, c, step):
            ah = upsample_np(al[c0:c0 + step].reshape(-1, h, w), s, self.offset).reshape(-1, m, h * s, w * s)
            qc = q[c0:c0 + step]
            for k in range(m):
                ah[:, k] *= msi[k]
                qc += ah[:, k]
            del ah
        upsample_np(lr - spatial_degrade(q, self.psf), s, self.offset, add_to=q)
        return self._finish_np(q, bad)

    def fuse_tile(self, lr: np.ndarray, msi: np.ndarray) -> np.ndarray:
        if self._numpy_path():
            return self._fuse_tile_np(lr, msi)
        torch = _torch()
        lr_t, msi_t, bad = self._tensors(lr, msi)
        msi_lr_t = spatial_degrade_t(msi_t, self.psf)
        s = self.scale
        if self.local <= 0:
            a, b = self._coef(lr_t)
            resid = lr_t - torch.einsum("cm,mhw->chw", a, msi_lr_t) - b
            out = torch.einsum("cm,mhw->chw", a, msi_t) + b + self.up(resid)
            return self._finish(out, bad)
        al, be = self._local_coefs(lr_t, msi_lr_t)
        al, be = al.to(lr_t.dtype), be.to(lr_t.dtype)
        c, m, h, w = al.shape
        q = upsample_t(be, s, self.offset)
        # band chunks bound the (chunk, m, H, W) upsampled coefficients (about 32 MB in float32), and the
        # products are accumulated in place: at x32 the tile with gsa's halo is ~1200² HR pixels, where a
        # (chunk, m, H, W) product per chunk cost 250 MB of peak memory (issue 20)
        step = max(1, int(2**23 // max(m * h * w * s * s, 1)))
        for c0 in range(0, c, step):
            ah = upsample_t(al[c0:c0 + step].reshape(-1, h, w), s, self.offset).reshape(-1, m, h * s, w * s)
            qc = q[c0:c0 + step]
            for k in range(m):
                qc.addcmul_(ah[:, k], msi_t[k])
            del ah
        q += self.up(lr_t - spatial_degrade_t(q, self.psf))
        return self._finish(q, bad)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(local=self.local, eps=self.eps, upsampler=self.up.kind, bp_iters=self.up.iters)
        return d


class GLPHS(_ClassicalBase):
    """MTF-GLP hypersharpening (name "glp-hs"; Selva, Aiazzi, Butera, Chiarantini, Baronti 2015).

    For each HS band c a synthetic HR band is regressed from the MSI bands
    (``synth='regress'``, hypersharpening) or is the single most correlated MSI
    band (``synth='select'``). Detail = synth − up(degrade(synth)) with the PSF
    as the MTF-matched lowpass and bicubic ``up``; injection gain per band
    ``g_c = cov(LR_c, synth_lr_c) / var(synth_lr_c)`` (global, from fit), or
    ``gain='hpm'`` for high-pass modulation ``g = up(LR_c) / up(synth_lr_c)``.
    Z_c = up(LR_c) + g_c · detail_c.

    Note: with regression synthesis (least squares with intercept) the
    covariance gain is exactly 1 and this equals DetailInjection with the
    bicubic upsampler; the two differ with ``synth='select'``, ``gain='hpm'`` or
    DetailInjection's back-projection upsampler.
    """

    name = "glp-hs"

    def _compute_halo(self) -> int:
        self.synth = self.opts.get("synth", "regress")
        self.gain_kind = self.opts.get("gain", "regression")
        if self.synth not in ("regress", "select"):
            raise UsageError(f"glp-hs synth must be 'regress' or 'select', got {self.synth!r}")
        if self.gain_kind not in ("regression", "hpm"):
            raise UsageError(f"glp-hs gain must be 'regression' or 'hpm', got {self.gain_kind!r}")
        return self.psf.halo_lr + 2

    def fit(self, lr: np.ndarray, msi_lr: np.ndarray) -> None:
        lr = np.asarray(lr, dtype=np.float64)
        msi_lr = np.asarray(msi_lr, dtype=np.float64)
        self._store_fill(lr, msi_lr)
        from ..forward.estimate import valid_pixels

        if self.synth == "regress":
            self.alpha, self.beta = _regress(lr, msi_lr)
        else:
            x, y = valid_pixels(msi_lr, lr)
            xc = x - x.mean(1, keepdims=True)
            yc = y - y.mean(1, keepdims=True)
            corr = (yc @ xc.T) / np.sqrt(np.outer((yc**2).sum(1), (xc**2).sum(1)) + 1e-300)  # (C, m)
            pick = np.argmax(corr, axis=1)
            self.alpha = np.zeros((lr.shape[0], msi_lr.shape[0]))
            self.alpha[np.arange(lr.shape[0]), pick] = 1.0
            self.beta = np.zeros(lr.shape[0])
        x, y = valid_pixels(msi_lr, lr)
        syn = self.alpha @ x + self.beta[:, None]
        sc = syn - syn.mean(1, keepdims=True)
        yc = y - y.mean(1, keepdims=True)
        self.gain = (sc * yc).sum(1) / np.maximum((sc * sc).sum(1), 1e-300)
        self.hpm_eps = float(self.opts.get("hpm_eps", 0.05)) * np.abs(y.mean(1))

    def fuse_tile(self, lr: np.ndarray, msi: np.ndarray) -> np.ndarray:
        torch = _torch()
        lr_t, msi_t, bad = self._tensors(lr, msi)
        s = self.scale
        a = torch.as_tensor(self.alpha, dtype=lr_t.dtype, device=lr_t.device)
        b = torch.as_tensor(self.beta, dtype=lr_t.dtype, device=lr_t.device)[:, None, None]
        synth = torch.einsum("cm,mhw->chw", a, msi_t) + b
        # degrade is linear and the kernel sums to 1, so degrade(α·MSI + β) = α·degrade(MSI) + β
        low = upsample_t(torch.einsum("cm,mhw->chw", a, spatial_degrade_t(msi_t, self.psf)) + b, s, self.offset)
        up_lr = upsample_t(lr_t, s, self.offset)
        if self.gain_kind == "hpm":
            # ε (a fraction of the band mean, from fit) keeps dark regions (CAVE backgrounds) from dividing by ~0
            eps = torch.as_tensor(self.hpm_eps, dtype=lr_t.dtype, device=lr_t.device)[:, None, None]
            out = up_lr * (synth.clamp_min(0) + eps) / (low.clamp_min(0) + eps).clamp_min(1e-12)
        else:
            g = torch.as_tensor(self.gain, dtype=lr_t.dtype, device=lr_t.device)[:, None, None]
            out = up_lr + g * (synth - low)
        return self._finish(out, bad)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(synth=self.opts.get("synth", "regress"), gain=self.opts.get("gain", "regression"))
        return d


# --------------------------------------------------------------------------- VCA + CNMF


def _estimate_snr(r: np.ndarray, r_m: np.ndarray, x: np.ndarray) -> float:
    l, n = r.shape
    p = x.shape[0]
    p_y = np.sum(r**2) / n
    p_x = np.sum(x**2) / n + float(r_m @ r_m)
    denom = p_y - p_x
    if denom <= 0:
        return 100.0
    return float(10 * np.log10(max((p_x - p / l * p_y) / denom, 1e-12)))


def vca(r: np.ndarray, p: int, seed: int = 0, snr: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Vertex Component Analysis (Nascimento & Bioucas-Dias, IEEE TGRS 43(4) 2005).

    ``r``: (L bands, N pixels). Returns (endmembers (L, p), pixel indices (p,)).
    Deterministic for a given ``seed``.
    """
    r = np.asarray(r, dtype=np.float64)
    l, n = r.shape
    if not 1 <= p <= min(l, n):
        raise ValueError(f"VCA: p={p} must be in [1, min(bands={l}, pixels={n})]")
    rng = np.random.default_rng(seed)
    r_m = r.mean(axis=1)
    r_o = r - r_m[:, None]
    if snr is None:
        u, _, _ = np.linalg.svd(r_o @ r_o.T / n)
        x_p = u[:, :p].T @ r_o
        snr = _estimate_snr(r, r_m, x_p)
    snr_th = 15 + 10 * np.log10(p)
    if snr > snr_th:
        d = p
        u, _, _ = np.linalg.svd(r @ r.T / n)
        ud = u[:, :d]
        x = ud.T @ r
        u_mean = x.mean(axis=1)
        denom = u_mean @ x
        denom = np.where(np.abs(denom) < 1e-300, 1e-300, denom)
        y = x / denom[None, :]
    else:
        d = p - 1
        u, _, _ = np.linalg.svd(r_o @ r_o.T / n)
        ud = u[:, :d]
        x = ud.T @ r_o
        c = np.sqrt(np.max(np.sum(x**2, axis=0)))
        y = np.vstack([x, c * np.ones((1, n))])
    idx = np.zeros(p, dtype=int)
    a = np.zeros((p, p))
    a[p - 1, 0] = 1.0
    for i in range(p):
        w = rng.random(p)
        f = w - a @ np.linalg.pinv(a) @ w
        f /= max(np.linalg.norm(f), 1e-300)
        v = f @ y
        idx[i] = int(np.argmax(np.abs(v)))
        a[:, i] = y[:, idx[i]]
    return r[:, idx], idx


_FLOOR = 1e-30  # smallest abundance / endmember value in the multiplicative updates (float32-normal)


class CNMF(_ClassicalBase):
    """Coupled NMF unmixing (name "cnmf"; Yokoya, Yairi, Iwasaki, IEEE TGRS 50(2) 2012).

    fit (whole scene, LR grid): endmembers E (C × p) by VCA on the LR, then the
    coupled alternation of the paper — HSI unmixing LR ≈ E·A_h and MSI
    unmixing MSI_lr ≈ (R·E)·A_m with A_h ← A_m (the MSI abundances degraded with
    the PSF, which on the LR grid are A_m itself) — by multiplicative updates
    with the paper's soft sum-to-one row (weight ``delta``). E is then fixed.
    fuse_tile: per pixel, LR abundances by multiplicative NNLS with E fixed,
    bicubic-upsampled as the initial HR abundances, refined by multiplicative
    NNLS on the HR MSI with W = R·E; output E·A_hr. Everything in fuse_tile is
    pixelwise except the bicubic initialisation (2 LR pixels), so halo_lr = 2.
    ``correct=True`` (not in the paper) adds the LR residual back,
    Z += up(LR − degrade(Z)) (halo + PSF reach + 2): +2.3 dB on CAVE ×8.
    Options: ``endmembers`` (default min(C, 30)), ``delta`` (1.0, × the mean LR value unless ``delta_relative=False``), ``outer`` (3),
    ``inner`` (200), ``lr_iters`` (300), ``hr_iters`` (100), ``seed`` (0), ``correct`` (False).
    The SRF is ``problem.srf``, estimated with ``estimate_srf`` when None.
    """

    name = "cnmf"

    def _compute_halo(self) -> int:
        self.correct = bool(self.opts.get("correct", False))
        return 2 + (self.psf.halo_lr + 2 if self.correct else 0)

    # ---- multiplicative updates (torch, float64 in fit) ----
    @staticmethod
    def _upd_a(y, e, a, delta: float, iters: int):
        torch = _torch()
        if delta > 0:
            y = torch.cat([y, torch.full((1, y.shape[1]), delta, dtype=y.dtype, device=y.device)])
            e = torch.cat([e, torch.full((1, e.shape[1]), delta, dtype=e.dtype, device=e.device)])
        ety = e.T @ y
        tiny = torch.finfo(y.dtype).tiny * 1e3
        if e.shape[0] < e.shape[1] // 2:
            # W = R·E has rank ≤ m+1 << p: Wᵀ(W A) costs 2(m+1)p per pixel instead of p²
            et = e.T.contiguous()
            for _ in range(iters):
                a = (a * ety / (et @ (e @ a) + tiny)).clamp_(min=_FLOOR)
            return a
        ete = e.T @ e
        for _ in range(iters):
            a = (a * ety / (ete @ a + tiny)).clamp_(min=_FLOOR)
        return a

    @staticmethod
    def _upd_e(y, e, a, iters: int):
        tiny = _torch().finfo(y.dtype).tiny * 1e3
        yat = y @ a.T
        aat = a @ a.T
        for _ in range(iters):
            e = (e * yat / (e @ aat + tiny)).clamp_(min=_FLOOR)
        return e

    @staticmethod
    def _upd_both(y, e, a, delta: float, iters: int, fix_e: bool = False):
        for _ in range(iters // 10 if iters >= 10 else 1):
            if not fix_e:
                e = CNMF._upd_e(y, e, a, 10 if iters >= 10 else iters)
            a = CNMF._upd_a(y, e, a, delta, 10 if iters >= 10 else iters)
        return e, a

    def fit(self, lr: np.ndarray, msi_lr: np.ndarray) -> None:
        torch = _torch()
        from ..forward.estimate import estimate_srf, valid_pixels

        lr = np.asarray(lr, dtype=np.float64)
        msi_lr = np.asarray(msi_lr, dtype=np.float64)
        self._store_fill(lr, msi_lr)
        c = lr.shape[0]
        if self.problem.srf is not None:
            self.srf = np.asarray(self.problem.srf, dtype=np.float64)
            self.srf_estimated = False
        else:
            self.srf = estimate_srf(lr, msi_lr)
            self.srf_estimated = True
        if self.srf.shape != (msi_lr.shape[0], c):
            raise InputError(f"SRF shape {self.srf.shape} != (msi bands {msi_lr.shape[0]}, lr bands {c})")
        o = self.opts
        self.delta = float(o.get("delta", 1.0))
        self.delta_relative = bool(o.get("delta_relative", True))
        inner = int(o.get("inner", 200))
        outer = int(o.get("outer", 3))
        self.lr_iters = int(o.get("lr_iters", 300))
        self.hr_iters = int(o.get("hr_iters", 100))
        x, y = valid_pixels(lr, msi_lr)
        x = np.maximum(x, 0.0)
        y = np.maximum(y, 0.0)
        n = x.shape[1]
        # the sum-to-one row is weighted relative to the data level (mean LR value), so that the
        # constraint means the same for reflectance in [0, 1] and for raw 16-bit counts
        self.delta = self.delta * max(float(x.mean()), 1e-30) if self.delta_relative else self.delta
        p = int(o.get("endmembers", min(c, 30)))
        p = max(1, min(p, c, n))
        self.p = p
        e0, _ = vca(x, p, seed=int(o.get("seed", 0)))
        dev = self.device
        f64 = torch.float64
        X = torch.as_tensor(x, dtype=f64, device=dev)
        Y = torch.as_tensor(y, dtype=f64, device=dev)
        R = torch.as_tensor(self.srf, dtype=f64, device=dev)
        scale_e = max(float(X.max()), 1e-12)
        E = torch.as_tensor(np.maximum(e0, 1e-6 * scale_e), dtype=f64, device=dev)
        A = torch.full((p, n), 1.0 / p, dtype=f64, device=dev)
        d = self.delta
        # 1. HSI unmixing: abundances with E fixed, then both
        A = self._upd_a(X, E, A, d, inner)
        E, A = self._upd_both(X, E, A, d, inner)
        # 2. MSI unmixing with E_m = R E, initialised from the HSI abundances
        Em = R @ E
        Am = self._upd_a(Y, Em, A.clone(), d, inner)
        Em, Am = self._upd_both(Y, Em, Am, d, inner)
        for _ in range(outer):
            # 3. HSI unmixing with A_h = degraded A_m (same LR grid): E first, then both
            A = Am.clone()
            E = self._upd_e(X, E, A, inner)
            E, A = self._upd_both(X, E, A, d, inner)
            # 4. MSI unmixing with E_m = R E
            Em = R @ E
            Am = self._upd_a(Y, Em, Am, d, inner)
            Em, Am = self._upd_both(Y, Em, Am, d, inner)
        self.E = E.cpu().numpy()

    def _unmix_px(self, data, w, a0, iters: int):
        """Pixelwise multiplicative NNLS (in place; pixel chunks bound the temporaries on CPU)."""
        torch = _torch()
        y = data.reshape(data.shape[0], -1)
        a = a0.reshape(a0.shape[0], -1).clone()
        d = self.delta
        if d > 0:
            w = torch.cat([w, torch.full((1, w.shape[1]), d, dtype=w.dtype, device=w.device)])
        wt = w.T.contiguous()
        low_rank = w.shape[0] < w.shape[1] // 2
        wtw = wt @ w
        tiny = torch.finfo(y.dtype).tiny * 1e3
        n = y.shape[1]
        chunk = n if y.device.type == "cuda" else 1 << 18  # bounds the temporaries on CPU
        for i0 in range(0, n, chunk):
            yc = y[:, i0:i0 + chunk]
            ac = a[:, i0:i0 + chunk].contiguous()
            num = wt[:, : yc.shape[0]] @ yc
            if d > 0:
                num += wt[:, -1:] * d
            den = torch.empty_like(ac)
            tmp = torch.empty((w.shape[0], ac.shape[1]), dtype=ac.dtype, device=ac.device)
            for _ in range(iters):
                if low_rank:
                    torch.matmul(w, ac, out=tmp)
                    torch.matmul(wt, tmp, out=den)
                else:
                    torch.matmul(wtw, ac, out=den)
                den.add_(tiny)
                # the floor keeps vanishing abundances out of subnormal range (100x slower on x86 CPUs)
                ac.mul_(num).div_(den).clamp_(min=_FLOOR)
            a[:, i0:i0 + chunk] = ac
        return a

    def fuse_tile(self, lr: np.ndarray, msi: np.ndarray) -> np.ndarray:
        torch = _torch()
        lr_t, msi_t, bad = self._tensors(lr, msi)
        dt = lr_t.dtype
        c, h, w = lr_t.shape
        s = self.scale
        E = torch.as_tensor(self.E, dtype=dt, device=lr_t.device)
        W = torch.as_tensor(self.srf, dtype=dt, device=lr_t.device) @ E
        a0 = torch.full((self.p, h * w), 1.0 / self.p, dtype=dt, device=lr_t.device)
        a_lr = self._unmix_px(lr_t.clamp_min(0), E, a0, self.lr_iters).reshape(self.p, h, w)
        a_hr = upsample_t(a_lr, s, self.offset).clamp_min(1e-6 / self.p)
        a_hr = self._unmix_px(msi_t.clamp_min(0), W, a_hr, self.hr_iters)
        out = (E @ a_hr).reshape(c, h * s, w * s)
        if self.correct:
            out = out + upsample_t(lr_t - spatial_degrade_t(out, self.psf), s, self.offset)
        return self._finish(out, bad)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(endmembers=getattr(self, "p", None), delta=self.opts.get("delta", 1.0),
                 srf_estimated=getattr(self, "srf_estimated", None))
        return d




def fuse_arrays(method_cls: type[Fuser] | Fuser, lr: np.ndarray, msi: np.ndarray, problem: FusionProblem,
                device: str = "cpu", precision: str = "fp32") -> np.ndarray:
    """Fuse a whole scene untiled, padding exactly as the tiling engine does.

    msi_lr = spatial_degrade(msi, psf); fit on the pixels valid in both; LR mirror-padded by
    ``halo_lr`` and the MSI by ``halo_lr·s`` (np.pad 'symmetric'), except for a PSF whose LR samples
    sit off the block centres (the engine's tiles stop at the scene border then: see
    ``engine.stream_tiles``); fuse_tile; crop. ``method_cls`` may also be an already constructed
    (unfitted) Fuser.
    """
    m = method_cls if isinstance(method_cls, Fuser) else method_cls(problem, device, precision)
    psf, _ = _psf_of(problem)
    s = problem.scale
    lr = np.asarray(lr, dtype=np.float32)
    msi = np.asarray(msi, dtype=np.float32)
    msi_lr = spatial_degrade(msi, psf)
    # like the engine: fit only where both are valid (an MSI nodata pixel spoils its whole LR footprint)
    ok = np.isfinite(lr).all(0) & np.isfinite(msi_lr).all(0)
    m.fit(np.where(ok, lr, np.nan).astype(np.float32), np.where(ok, msi_lr, np.nan).astype(np.float32))
    hl = 0 if any(sampling_phase(psf)) else int(m.halo_lr)
    m.tile_origin, m.tile_halo = (-hl * s, -hl * s), (hl, hl, hl, hl)
    lrp = np.pad(lr, ((0, 0), (hl, hl), (hl, hl)), mode="symmetric")
    msip = np.pad(msi, ((0, 0), (hl * s, hl * s), (hl * s, hl * s)), mode="symmetric")
    out = m.fuse_tile(lrp, msip)
    hh, ww = msi.shape[1:]
    return out[:, hl * s: hl * s + hh, hl * s: hl * s + ww]
