"""The forward model applied: how an LR-HSI and an HR-MSI arise from a high-resolution cube Z.

    LR  = decimate_s(Z ⊛ PSF) (+ noise)        MSI = SRF · Z (+ noise)

Spatial degradation has one exact definition for both sampling forms::

    LR[c, i, j] = Σ_{a,b} K[a, b] · Z[c, s·i + a − p, s·j + b − p]

with K the (k × k) kernel, s the integer scale and p the padding (default
``(k − s) // 2``, which centres the kernel on the s×s block). Indices outside
the image follow ``border`` ('reflect' = symmetric half-sample mirror,
'edge', 'wrap', 'zero'). With k = s and p = 0 this is the *block* form of the
MHF-Net / HSR-Diff CAVE protocol (non-overlapping blocks weighted by K); with a
larger kernel it is convolution + decimation. See docs/protocols.md.
"""

from __future__ import annotations

import numpy as np

from .psf import Psf


def _pad_mode(border: str) -> tuple[str, dict]:
    return {
        "reflect": ("symmetric", {}),
        "edge": ("edge", {}),
        "wrap": ("wrap", {}),
        "zero": ("constant", {"constant_values": 0.0}),
    }[border]


def spatial_degrade(z: np.ndarray, psf: Psf) -> np.ndarray:
    """LR = decimate(Z ⊛ K) exactly as in the module docstring; float32 out (float64 in -> float64).

    numpy only (a sum over the kernel's taps of strided views: k² multiply-adds per LR sample, as a strided
    convolution), so that planning and the classical methods run without importing torch."""
    z = np.asarray(z)
    if z.ndim != 3:
        raise ValueError(f"expected (C, H, W), got {z.shape}")
    c, h, w = z.shape
    s, k, p = psf.scale, psf.size, psf.pad
    if h % s or w % s:
        raise ValueError(f"image size {h}x{w} is not a multiple of the scale {s}")
    ho, wo = h // s, w // s
    # padding needed on each side so that every tap of every output is inside the array
    before = p
    after_h = max(s * (ho - 1) + k - p - h, 0)
    after_w = max(s * (wo - 1) + k - p - w, 0)
    dtype = np.float64 if z.dtype == np.float64 else np.float32
    x = z.astype(dtype, copy=False)
    if before > 0 or after_h > 0 or after_w > 0:
        mode, kw = _pad_mode(psf.border)
        x = np.pad(x, ((0, 0), (max(before, 0), after_h), (max(before, 0), after_w)), mode=mode, **kw)
    off = max(before, 0) - p  # >= 0 (p may be negative: kernel starts inside the block)
    ker = psf.kernel.astype(dtype)
    out = np.zeros((c, ho, wo), dtype=dtype)
    for a in range(k):
        rows = x[:, off + a: off + a + s * (ho - 1) + 1: s]
        for b in range(k):
            if ker[a, b] != 0:
                out += ker[a, b] * rows[:, :, off + b: off + b + s * (wo - 1) + 1: s]
    return out


def _border_index_t(idx, n: int, border: str):
    """Indices into [0, n) for ``border`` (as ``_pad_mode``), and a validity mask for 'zero' (torch)."""
    import torch

    if border == "reflect":  # symmetric half-sample mirror, np.pad(mode='symmetric')
        m = torch.remainder(idx, 2 * n)
        return torch.where(m < n, m, 2 * n - 1 - m), None
    if border == "edge":
        return idx.clamp(0, n - 1), None
    if border == "wrap":
        return torch.remainder(idx, n), None
    if border == "zero":
        return idx.clamp(0, n - 1), (idx >= 0) & (idx < n)
    raise ValueError(f"unknown border {border!r}")


def spatial_degrade_t(z, psf: Psf):
    """The torch twin of ``spatial_degrade`` on (..., C, H, W) tensors: same maths, every border rule,
    differentiable, any device. The one torch degradation of hsfuse (fusers, consistency, training);
    ``tests/forward/test_degrade.py`` checks it against the numpy one for every border and phase.
    H and W that are not multiples of the scale are floor-divided (the trailing pixels are not used).
    """
    import torch
    import torch.nn.functional as F

    *lead, c, h, w = z.shape
    s, k, p = psf.scale, psf.size, psf.pad
    ho, wo = h // s, w // s
    dev = z.device
    ker = torch.as_tensor(psf.kernel, dtype=z.dtype, device=dev).view(1, 1, k, k)
    if p == 0 and s * (ho - 1) + k <= min(h, w):  # every tap inside the image (the block form): no border
        # copy; the strided conv of the whole image starts at the same samples, the surplus is cropped
        out = F.conv2d(z.reshape(-1, 1, h, w), ker, stride=s)[:, 0, :ho, :wo]
        return out.reshape(*lead, c, ho, wo)
    ri, rv = _border_index_t(torch.arange(-p, s * (ho - 1) + k - p, device=dev), h, psf.border)
    ci, cv = _border_index_t(torch.arange(-p, s * (wo - 1) + k - p, device=dev), w, psf.border)
    x = z.reshape(-1, 1, h, w).index_select(2, ri).index_select(3, ci)
    if rv is not None:
        x = x * (rv[:, None] & cv[None, :]).to(x.dtype)
    out = F.conv2d(x, ker, stride=s)[:, 0, :ho, :wo]
    return out.reshape(*lead, c, ho, wo)


def _strided_transpose(v, kernel: np.ndarray, s: int):
    """``conv_transpose2d(v, kernel, stride=s)`` for one channel, as s² small convolutions on the LR grid
    interleaved by ``pixel_shuffle`` (polyphase): the same sums, without the HR-sized 1-channel transposed
    convolution (10× slower on a CPU for a 14-tap kernel at ×4)."""
    import torch
    import torch.nn.functional as F

    k = kernel.shape[0]
    m = -(-k // s)  # taps per phase
    kp = np.zeros((m * s, m * s))
    kp[:k, :k] = kernel
    # weight[φy·s+φx, 0, ty, tx] = K[s·(m-1-ty)+φy, s·(m-1-tx)+φx]: a correlation over v padded by m-1
    sub = kp.reshape(m, s, m, s)[::-1, :, ::-1, :].transpose(1, 3, 0, 2).reshape(s * s, 1, m, m)
    w = torch.as_tensor(np.ascontiguousarray(sub), dtype=v.dtype, device=v.device)
    out = F.pixel_shuffle(F.conv2d(F.pad(v, (m - 1, m - 1, m - 1, m - 1)), w), s)
    ho, wo = v.shape[-2:]
    return out[..., :s * (ho - 1) + k, :s * (wo - 1) + k]


def spatial_adjoint_t(v, psf: Psf, h: int, w: int):
    """The adjoint (transpose) of ``spatial_degrade_t`` for an HR grid of h × w: (..., C, h//s, w//s) → (..., C, h, w).

    ``<spatial_degrade_t(z), v> = <z, spatial_adjoint_t(v)>`` (tested). Differentiable; what the exact LR
    projection (``models.consistency.project_lr``) spreads a residual with.
    """
    import torch
    import torch.nn.functional as F

    *lead, c, ho, wo = v.shape
    s, k, p = psf.scale, psf.size, psf.pad
    g = _strided_transpose(v.reshape(-1, 1, ho, wo), psf.kernel, s)  # (N, 1, s(ho-1)+k, s(wo-1)+k)
    if p == 0 and s * (ho - 1) + k <= min(h, w):
        out = F.pad(g, (0, w - g.shape[-1], 0, h - g.shape[-2]))
        return out.reshape(*lead, c, h, w)
    dev = v.device
    ri, rv = _border_index_t(torch.arange(-p, s * (ho - 1) + k - p, device=dev), h, psf.border)
    ci, cv = _border_index_t(torch.arange(-p, s * (wo - 1) + k - p, device=dev), w, psf.border)
    if rv is not None:
        g = g * (rv[:, None] & cv[None, :]).to(g.dtype)
    rows = g.new_zeros(g.shape[0], 1, h, g.shape[-1]).index_add(2, ri, g)
    out = g.new_zeros(g.shape[0], 1, h, w).index_add(3, ci, rows)
    return out.reshape(*lead, c, h, w)


def lr_supports_disjoint(psf: Psf) -> bool:
    """Whether no HR pixel feeds two LR pixels (kernel no wider than the stride, borders folding back onto the
    pixel's own taps): then ``A Aᵀ`` is diagonal and the projection onto ``A z = LR`` is one exact local step.
    Checked per axis on a 4-LR-pixel line, the border rule applied as ``spatial_degrade_t`` applies it."""
    import torch

    s, p, n = psf.scale, psf.pad, 4
    for marg in (np.abs(psf.kernel).sum(1), np.abs(psf.kernel).sum(0)):
        owner = np.full(n * s, -1)
        taps = np.flatnonzero(marg > 0)
        for i in range(n):
            j, valid = _border_index_t(torch.as_tensor(s * i + taps - p), n * s, psf.border)
            for jj in j[valid].tolist() if valid is not None else j.tolist():
                if owner[jj] not in (-1, i):
                    return False
                owner[jj] = i
    return True


# ---------------------------------------------------------------------------
# Building PSFs from user options, cropping, noise, the whole forward model
# ---------------------------------------------------------------------------

def crop_to_multiple(z: np.ndarray, scale: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Crop (C, H, W) at the bottom/right to multiples of ``scale``; returns (view, (rows_dropped, cols_dropped)).

    The top-left corner (and thus the georeferencing origin) is kept.
    """
    h, w = z.shape[-2:]
    dh, dw = h % scale, w % scale
    if dh or dw:
        z = z[..., : h - dh, : w - dw]
    return z, (dh, dw)


def noise_sigma(x: np.ndarray, snr_db: float) -> np.ndarray:
    """Per-band noise standard deviation for a given SNR (dB).

    Definition: σ_b² = mean(x_b²) / 10^(SNR/10), the mean over the band's
    finite pixels (signal *power*, not variance: a constant band has a finite SNR).
    """
    x = np.asarray(x, dtype=np.float64)
    power = np.nanmean((x * x).reshape(x.shape[0], -1), axis=1)
    return np.sqrt(power / 10.0 ** (float(snr_db) / 10.0))


def add_noise(x: np.ndarray, snr_db: float | None, rng: np.random.Generator) -> np.ndarray:
    """x + zero-mean white Gaussian noise with per-band σ from ``noise_sigma`` (no-op for None)."""
    if snr_db is None:
        return x
    sig = noise_sigma(x, snr_db).astype(x.dtype)
    return x + rng.standard_normal(x.shape, dtype=np.float64).astype(x.dtype) * sig[:, None, None]


def apply_srf(z: np.ndarray, srf) -> np.ndarray:
    """MSI[m] = Σ_c R[m, c] · Z[c]; ``srf`` is an (m, C) matrix or an ``hsfuse.forward.srf.Srf``."""
    r = np.asarray(getattr(srf, "matrix", srf), dtype=np.float64)
    z = np.asarray(z)
    if r.ndim != 2 or r.shape[1] != z.shape[0]:
        raise ValueError(f"SRF matrix {r.shape} does not match a cube with {z.shape[0]} bands")
    dtype = np.float64 if z.dtype == np.float64 else np.float32
    c, h, w = z.shape
    out = r.astype(dtype) @ z.astype(dtype, copy=False).reshape(c, h * w)
    return out.reshape(r.shape[0], h, w)


def degrade_cube(z: np.ndarray, psf: Psf, srf, snr_hsi: float | None = None, snr_msi: float | None = None,
                 seed: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The whole forward model on an array: ``(lr, msi)`` from a (C, H, W) cube.

    ``lr = spatial_degrade(z, psf) + n_hsi``, ``msi = srf · z + n_msi`` (``srf``
    an (m, C) matrix or ``Srf``; None gives ``msi = None``). Noise is white
    Gaussian with per-band σ² = mean(x_b²)/10^(SNR/10) of the noise-free band
    (``noise_sigma``); one ``numpy.random.default_rng(seed)`` draws the LR noise
    first, then the MSI noise. H and W must be multiples of ``psf.scale``
    (see ``crop_to_multiple``). float64 in -> float64 out, else float32.

    >>> lr, msi = degrade_cube(z, Psf.gaussian(8), srf_matrix, snr_hsi=35, seed=0)
    """
    z = np.asarray(z)
    lr = spatial_degrade(z, psf)
    msi = None if srf is None else apply_srf(z, srf)
    if snr_hsi is not None or snr_msi is not None:
        rng = np.random.default_rng(seed)
        lr = add_noise(lr, snr_hsi, rng)
        if msi is not None:
            msi = add_noise(msi, snr_msi, rng)
    return lr, msi
