"""Small pieces every fusion network shares: input checks, the residual base, precision, bicubic."""

from __future__ import annotations

import contextlib
import functools

import torch


def autocast(device: str, precision: str):
    """bf16/fp16 autocast on CUDA; CPU always runs fp32 (a no-op context)."""
    if str(device).startswith("cuda") and precision in ("bf16", "fp16"):
        return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return contextlib.nullcontext()


def upsample(x: torch.Tensor, s: int, offset: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """Bicubic ×s of (..., C, h, w); LR centre i ↔ HR ``s·i + (s − 1)/2 + offset`` (rows, cols).

    ``offset`` is the PSF's sampling phase (``hsfuse.forward.psf.sampling_phase``): a kernel centred on the
    first pixel of each block (Dian-group ×8: −3.5) puts the LR samples 3.5 HR pixels before the block
    centres, and interpolating them as if they sat on the centres shifts every upsampled residual by that
    much (measured on held-out CAVE scenes, Dian-group ×8: gsa +0.3 to +1.3 dB, bicubic +3 to +5 dB).
    offset 0 is torch's ``interpolate(align_corners=False)``; other offsets use the same Keys kernel
    (a = −0.75) and the same edge clamping, evaluated at the shifted positions.
    """
    dy, dx = offset
    if s == 1 and not (dy or dx):
        return x.clone()
    lead, (c, h, w) = x.shape[:-3], x.shape[-3:]
    if not (dy or dx):
        y = torch.nn.functional.interpolate(x.reshape(-1, c, h, w), size=(h * s, w * s), mode="bicubic",
                                            align_corners=False)
        return y.reshape(*lead, c, h * s, w * s)
    return _cubic_along(_cubic_along(x, s, dy, -2), s, dx, -1)


def bilinear(x: torch.Tensor, s: int, offset: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """Bilinear ×s of (N, C, h, w) with LR centre i ↔ HR ``s·i + (s − 1)/2 + offset``, edges clamped
    (offset 0 is torch's ``interpolate(mode='bilinear', align_corners=False)``)."""
    dy, dx = offset
    if not (dy or dx):
        return torch.nn.functional.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
    return _linear_along(_linear_along(x, s, dy, -2), s, dx, -1)


def _linear_along(x: torch.Tensor, s: int, offset: float, dim: int) -> torch.Tensor:
    n = x.shape[dim]
    pos = ((torch.arange(n * s, dtype=torch.float64, device=x.device) - (s - 1) / 2.0 - float(offset)) / s).clamp(min=0)
    i0 = torch.floor(pos)
    t = (pos - i0).to(x.dtype)
    i0 = i0.long().clamp(max=n - 1)
    shape = [1] * x.dim()
    shape[dim] = n * s
    t = t.reshape(shape)
    a = torch.index_select(x, dim, i0)
    b = torch.index_select(x, dim, (i0 + 1).clamp(max=n - 1))
    return a + (b - a) * t


def _keys(t: torch.Tensor, a: float = -0.75) -> list[torch.Tensor]:
    """Keys cubic weights of the taps at −1, 0, 1, 2 for fractional positions t in [0, 1)."""
    def near(d):
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d):
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def _cubic_along(x: torch.Tensor, s: int, offset: float, dim: int) -> torch.Tensor:
    n = x.shape[dim]
    pos = (torch.arange(n * s, dtype=torch.float64, device=x.device) - (s - 1) / 2.0 - float(offset)) / s
    i0 = torch.floor(pos)
    w = _keys(pos - i0)
    i0 = i0.long()
    shape = [1] * x.dim()
    shape[dim] = n * s
    out = None
    for k, wk in enumerate(w):
        idx = (i0 + (k - 1)).clamp(0, n - 1)
        term = torch.index_select(x, dim, idx) * wk.to(x.dtype).reshape(shape)
        out = term if out is None else out.add_(term)
    return out


def check_inputs(lr: torch.Tensor, msi: torch.Tensor, bands: int, msi_bands: int) -> int:
    """The integer scale of an (lr, msi) pair, or ValueError saying what does not fit."""
    c, h, w = lr.shape[1:]
    H, W = msi.shape[-2:]
    if c != bands or msi.shape[1] != msi_bands:
        raise ValueError(f"network expects {bands}+{msi_bands} bands, got {c}+{msi.shape[1]}")
    if H % h or W % w or H // h != W // w:
        raise ValueError(f"MSI {H}x{W} is not an integer multiple of the LR {h}x{w}")
    return H // h


def residual_base(up: torch.Tensor, prior: torch.Tensor | None, use_prior: bool) -> torch.Tensor:
    """What the network adds its correction to: the classical prior (prior=True networks) or up(lr)."""
    if not use_prior:
        return up
    if prior is None:
        raise ValueError("this network was built with prior=True: pass prior=(B, C, H, W)")
    return prior


def spectral_angle_loss(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Mean spectral angle (radians) between (B, C, H, W) spectra: the SAM metric as a loss.

    Scale-invariant, so dark pixels weigh as much as bright ones (L1 nearly ignores them; SAM
    on CAVE is dominated by them). The clamp keeps acos's gradient finite at 0 and π.
    """
    cos = (x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1) + eps)
    return torch.acos(cos.clamp(-1 + 1e-6, 1 - 1e-6)).mean()


#: glibc mallopt parameters and the size below which freed memory is kept for reuse (see keep_freed_memory)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEEP_FREED_BYTES = 256 << 20


@functools.cache
def keep_freed_memory() -> bool:
    """Let glibc keep up to 256 MiB of freed memory for reuse instead of returning each large tensor to the OS.

    A network's tile allocates and frees tensors of tens of MB; by default each comes from a fresh mmap and
    page-faults again (measured: a third of refine's CPU time at x8 was system time). Keeping them costs
    about 100 MB of peak RSS and saves about 15 % of the CPU time (docs/BENCHMARKS.md). Process-wide, glibc
    only; returns whether it applied.
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, KEEP_FREED_BYTES)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, KEEP_FREED_BYTES))
    except (OSError, AttributeError):
        return False
