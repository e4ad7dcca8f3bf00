"""Small pieces every fusion network shares: input checks, the residual base, precision, bicubic."""

from __future__ import annotations

import contextlib

import torch


def autocast(device: str, precision: str):
    """bf16/fp16 autocast on CUDA; CPU always runs fp32 (a no-op context)."""
    if str(device).startswith("cuda") and precision in ("bf16", "fp16"):
        return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return contextlib.nullcontext()


def upsample(x: torch.Tensor, s: int) -> torch.Tensor:
    """Bicubic ×s of (..., C, h, w), align_corners=False (LR centre i ↔ HR s·i + (s − 1)/2)."""
    if s == 1:
        return x.clone()
    lead, (c, h, w) = x.shape[:-3], x.shape[-3:]
    y = torch.nn.functional.interpolate(x.reshape(-1, c, h, w), size=(h * s, w * s), mode="bicubic",
                                        align_corners=False)
    return y.reshape(*lead, c, h * s, w * s)


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
