"""The forward model: how an LR-HSI and an HR-MSI arise from a high-resolution cube Z.

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

import math
from dataclasses import dataclass

import numpy as np

BORDERS = ("reflect", "edge", "wrap", "zero")


def gaussian_kernel(size: int, sigma: float, center: float | None = None) -> np.ndarray:
    """Normalised 2-D Gaussian on a size×size grid centred at ``center`` (default (size−1)/2)."""
    c = (size - 1) / 2.0 if center is None else float(center)
    ax = np.arange(size, dtype=np.float64) - c
    g = np.exp(-0.5 * (ax / sigma) ** 2)
    k = np.outer(g, g)
    return k / k.sum()


def box_kernel(size: int) -> np.ndarray:
    return np.full((size, size), 1.0 / (size * size))


def default_gaussian_size(scale: int, sigma: float) -> int:
    """Smallest size with the same parity as ``scale`` covering ±3σ (so the kernel centres on the block)."""
    k = max(scale, 2 * math.ceil(3 * sigma) + 1)
    if (k - scale) % 2:
        k += 1
    return k


@dataclass
class Psf:
    """A spatial degradation: kernel, integer scale, padding and border rule."""

    kernel: np.ndarray
    scale: int
    pad: int | None = None
    border: str = "reflect"
    name: str = "custom"

    def __post_init__(self) -> None:
        self.kernel = np.asarray(self.kernel, dtype=np.float64)
        if self.kernel.ndim != 2 or self.kernel.shape[0] != self.kernel.shape[1]:
            raise ValueError(f"PSF kernel must be square 2-D, got shape {self.kernel.shape}")
        if int(self.scale) != self.scale or self.scale < 1:
            raise ValueError(f"scale must be a positive integer, got {self.scale}")
        self.scale = int(self.scale)
        if self.pad is None:
            self.pad = (self.kernel.shape[0] - self.scale) // 2
        if self.border not in BORDERS:
            raise ValueError(f"border must be one of {BORDERS}, got {self.border!r}")

    @property
    def size(self) -> int:
        return self.kernel.shape[0]

    @property
    def halo_lr(self) -> int:
        """LR pixels of context a tile needs so its degraded values equal the whole-image ones."""
        reach = max(self.pad, self.size - self.scale - self.pad, 0)
        return math.ceil(reach / self.scale)

    @classmethod
    def gaussian(cls, scale: int, sigma: float | None = None, size: int | None = None, border: str = "reflect") -> "Psf":
        """Gaussian PSF; default σ gives FWHM = scale (σ = s / 2.3548)."""
        sigma = scale / (2 * math.sqrt(2 * math.log(2))) if sigma is None else float(sigma)
        size = default_gaussian_size(scale, sigma) if size is None else int(size)
        return cls(gaussian_kernel(size, sigma), scale, border=border, name=f"gaussian(sigma={sigma:g},size={size})")

    @classmethod
    def box(cls, scale: int) -> "Psf":
        return cls(box_kernel(scale), scale, pad=0, name="box")

    @classmethod
    def block(cls, kernel: np.ndarray) -> "Psf":
        """Non-overlapping blocks weighted by ``kernel`` (its size is the scale)."""
        kernel = np.asarray(kernel, dtype=np.float64)
        return cls(kernel, kernel.shape[0], pad=0, name="block")

    def apply(self, z: np.ndarray) -> np.ndarray:
        """Degrade a (C, H, W) array; H and W must be multiples of the scale."""
        return spatial_degrade(z, self)


def _pad_mode(border: str) -> tuple[str, dict]:
    return {
        "reflect": ("symmetric", {}),
        "edge": ("edge", {}),
        "wrap": ("wrap", {}),
        "zero": ("constant", {"constant_values": 0.0}),
    }[border]


def spatial_degrade(z: np.ndarray, psf: Psf) -> np.ndarray:
    """LR = decimate(Z ⊛ K) exactly as in the module docstring; float32 out (float64 in -> float64)."""
    import torch

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
    t = torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(1)  # (C, 1, H', W')
    ker = torch.from_numpy(psf.kernel.astype(dtype)).view(1, 1, k, k)
    t = t[:, :, off:, off:]
    out = torch.nn.functional.conv2d(t, ker, stride=s)[:, 0, :ho, :wo]
    return out.numpy()
