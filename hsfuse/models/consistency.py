"""LR consistency for a network's estimate: multiplicative back-projection through the known PSF.

A trained network maps (LR-HSI, MSI) to an HR cube from what its training
scenes taught it; on a scene whose spectra none of them had it gets the
low-frequency spectrum of whole regions wrong, and the LR-HSI it was given says
so: ``degrade(Ẑ) ≠ LR``. This step scales each band of Ẑ by the ratio
``LR / degrade(Ẑ)``, bilinearly upsampled (LR pixel centre i ↔ HR s·i + (s−1)/2 + the PSF's sampling
phase, ``degrade.sampling_phase``),
twice. A ratio keeps the network's spatial detail and its band-to-band shape
within an LR pixel and takes the region's spectrum from the measurement, which
the network's output only approximates — a per-scene adaptive step.

Measured on the CAVE validation scenes (docs/fusion.md): ×32 MulSR
46.30 → 46.53 dB, SAM 3.71 → 3.64°; ×8 50.57 → 50.63 dB. It needs the *exact*
PSF: with a Gaussian of half the true width the same step costs 1.4 dB at ×8 and
7 dB at ×32, because the ratio then carries the PSF error into every edge. The
fuser therefore applies it by default only when the PSF is the known forward
model (``FusionProblem.psf_exact``: a protocol, or a ``Psf`` the caller passed).
"""

from __future__ import annotations

from ..forward.psf import Psf

#: bilinear passes; the second catches what the first left (measured: more change nothing)
ITERATIONS = 2
#: a ratio outside this range is a dark or nodata pixel, not a spectrum to trust
RATIO_RANGE = (0.5, 2.0)


def consistency_halo(psf: Psf, iterations: int = ITERATIONS) -> int:
    """LR pixels of context each output pixel needs: per pass, the bilinear neighbour plus the PSF's reach."""
    return iterations * (1 + psf.halo_lr)


def match_lr(y, lr, psf: Psf, iterations: int = ITERATIONS):
    """``y`` (N, C, H, W) scaled band by band so that ``degrade(y, psf)`` approaches ``lr`` (N, C, h, w); torch tensors.

    Pixels where either side is not positive (dark, nodata, signed data) keep a ratio of 1.
    """
    import torch

    from ..forward.psf import sampling_phase
    from ..forward.degrade import spatial_degrade_t
    from .common import bilinear

    phase = sampling_phase(psf)
    lo, hi = RATIO_RANGE
    lr = lr.to(y.dtype)
    for _ in range(iterations):
        low = torch.stack([spatial_degrade_t(a, psf) for a in y])
        ok = (low > 1e-8) & (lr > 0)
        ratio = torch.where(ok, lr / torch.where(ok, low, torch.ones_like(low)), torch.ones_like(low)).clamp(lo, hi)
        y = y * bilinear(ratio, psf.scale, phase)[..., :y.shape[-2], :y.shape[-1]]
    return y
