"""LR consistency for a network's estimate: the exact projection (``project_lr``) or the older
multiplicative back-projection (``match_lr``) through the known PSF.

``project_lr`` is what networks trained through it (``hsfuse train --lr-projection``; their record says
``"lr_consistency": "project"``) get: the nearest cube whose degradation is the LR-HSI, one exact step for
the block forms. ``match_lr`` (below) is what older weights get with the exact PSF.

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


def project_lr(y, lr, psf: Psf, iterations: int = 1):
    """``y`` (N, C, H, W) moved towards the cubes whose degradation is ``lr``: ``y + Aᵀ D⁻¹ (LR − A y)`` with
    ``D = A Aᵀ 1``, then ≥ 0. Torch tensors; differentiable, so a network can be trained through it.

    For a PSF whose LR pixels draw on disjoint HR pixels (``forward.degrade.lr_supports_disjoint``: the block
    forms) ``A Aᵀ`` is diagonal and one step is the exact orthogonal projection; the projection and the clamp
    are projections onto convex sets that hold the true cube (noise-free LR, exact PSF), so neither moves the
    estimate away from it. For overlapping kernels each step is a SIRT iteration (convergent: D bounds A Aᵀ's rows).
    LR pixels that are not positive (dark, nodata) are left alone.
    """
    import torch

    from ..forward.degrade import spatial_adjoint_t, spatial_degrade_t

    h, w = y.shape[-2:]
    s = psf.scale
    lr = lr.to(y.dtype)[..., :h // s, :w // s]
    norm = spatial_degrade_t(spatial_adjoint_t(torch.ones_like(lr[:1, :1]), psf, h, w), psf)  # diag(A Aᵀ)
    ok = (lr > 0) & (norm > 1e-12)
    norm = norm.clamp_min(1e-12)
    for _ in range(iterations):
        r = torch.where(ok, (lr - spatial_degrade_t(y, psf)) / norm, torch.zeros_like(lr))
        if torch.is_grad_enabled():  # training: autograd needs fresh tensors
            y = (y + spatial_adjoint_t(r, psf, h, w)).clamp_min(0)
        else:  # inference: no second full-size buffer (the caller hands its estimate over)
            y = y.add_(spatial_adjoint_t(r, psf, h, w)).clamp_(min=0)
    return y


def projection_halo(psf: Psf, iterations: int = 1) -> int:
    """LR pixels of context the projection needs: per step, the PSF's reach twice (A then Aᵀ) and one more."""
    return iterations * (2 * psf.halo_lr + 1)
