"""Conditional diffusion machinery, independent of the denoiser: schedule, training loss, samplers, noise.

SR3 / WaveGrad style (Saharia et al. 2021; Chen et al. 2021), as HSR-Diff uses it:

* a linear β schedule over T = 100 steps (``NoiseSchedule``), α_t = 1 − β_t,
  γ_t = Π_{i≤t} α_i (γ_0 = 1), so x_t = √γ_t · x_0 + √(1 − γ_t) · ε;
* **continuous noise-level conditioning**: in training t ~ U{1..T} and then
  γ ~ U(γ_t, γ_{t−1}); the denoiser is told √γ (not t), so any sub-sequence of
  levels can be used at sampling time;
* **x0-prediction**: ``denoise(x_t, noise_level) -> x̂_0`` with ``noise_level = √γ``
  of shape (B,);
* samplers: the paper's ancestral sampler (all T steps, η = 1) and a
  deterministic DDIM sampler (η = 0) on ``steps`` levels (1, 4, 8, 16 or 100; any
  1 ≤ steps ≤ T works). Both are ``sample(..., eta=)``: DDIM's η = 1 on consecutive
  levels *is* the DDPM posterior q(x_{t−1} | x_t, x̂_0) (tested).

All sampling noise comes from ``scene_noise``: a counter-based hash of
(seed, key, band, row, col) turned into Gaussians by Box–Muller, so the noise at an
HR pixel depends only on its position in the scene. A tile sees exactly the crop
of the scene-wide field, and tiled sampling equals untiled sampling.

>>> sched = NoiseSchedule()                                   # T=100, β 1e-4 .. 0.2
>>> loss, parts = diffusion_loss(lambda x, g: net(lr, msi, x, g), hr, lr, msi, sched,
...                              psf=psf, srf=srf, generator=gen)
>>> noise = lambda key: scene_noise(seed, hr.shape[1:], 0, 0, key)[None]
>>> x0 = sample(lambda x, g: net(lr, msi, x, g), sched, steps=8, eta=0.0, noise=noise)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..forward.degrade import spatial_degrade_t
from ..forward.psf import Psf

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t (B,C,H,W), √γ (B,)) -> x̂0
NoiseFn = Callable[[int], torch.Tensor]  # key -> N(0, I) tensor of the sample's shape

SAMPLERS = ("ddim", "ancestral")


# ----------------------------------------------------------------------------- schedule


@dataclass(frozen=True)
class NoiseSchedule:
    """Linear β schedule. Defaults: T = 100, β from 1e-4 to 0.2 (γ_T ≈ 2.3e-5, pure noise in practice).

    Why this β range: with 100 steps the end β must be large enough that x_T carries
    no signal (√γ_T ≈ 0.005); SR3's 1e-6..1e-2 is meant for 2000 steps and would leave
    γ_100 ≈ 0.6. The paper's exact range was not available to us (docs/models/hsr-diff.md).
    """

    timesteps: int = 100
    beta_start: float = 1e-4
    beta_end: float = 0.2

    def __post_init__(self) -> None:
        if self.timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {self.timesteps}")
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}")

    @property
    def betas(self) -> np.ndarray:
        """β_1..β_T (float64, length T)."""
        return np.linspace(self.beta_start, self.beta_end, self.timesteps, dtype=np.float64)

    @property
    def gammas(self) -> np.ndarray:
        """γ_0..γ_T (float64, length T + 1), γ_0 = 1, strictly decreasing."""
        return np.concatenate([[1.0], np.cumprod(1.0 - self.betas)])

    def to_dict(self) -> dict:
        return {"timesteps": self.timesteps, "beta_start": self.beta_start, "beta_end": self.beta_end,
                "schedule": "linear", "prediction": "x0", "conditioning": "sqrt(gamma)"}

    @classmethod
    def from_dict(cls, d: dict | None) -> "NoiseSchedule":
        d = d or {}
        return cls(int(d.get("timesteps", 100)), float(d.get("beta_start", 1e-4)), float(d.get("beta_end", 0.2)))

    def sample_training_levels(self, batch: int, generator: torch.Generator | None = None,
                               device: str | torch.device = "cpu",
                               top_fraction: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, γ) for a batch: t ~ U{1..T}, γ ~ U(γ_t, γ_{t−1}) (float32 on ``device``).

        ``top_fraction`` of the samples (on average) get t = T instead: the level every sampler
        starts from, where predicting x̂0 is plain regression from the conditions. Uniform levels
        give it 1/T of the training; a model that must be good in few steps needs more.
        """
        if not 0.0 <= top_fraction <= 1.0:
            raise ValueError(f"top_fraction must be in [0, 1], got {top_fraction}")
        gdev = generator.device if generator is not None else "cpu"
        t = torch.randint(1, self.timesteps + 1, (batch,), generator=generator, device=gdev)
        u = torch.rand(batch, generator=generator, device=gdev, dtype=torch.float64)
        if top_fraction > 0:  # drawn only then, so runs without it keep their random stream
            top = torch.rand(batch, generator=generator, device=gdev) < top_fraction
            t = torch.where(top, torch.full_like(t, self.timesteps), t)
        g = torch.from_numpy(self.gammas).to(gdev)
        gamma = g[t] + u * (g[t - 1] - g[t])
        return t.to(device), gamma.to(device=device, dtype=torch.float32)

    def sampling_timesteps(self, steps: int) -> list[int]:
        """The ``steps`` levels a sampler visits, descending from T ("trailing" spacing): 4 -> [100, 75, 50, 25]."""
        T = self.timesteps
        if int(steps) != steps or not 1 <= steps <= T:
            raise ValueError(f"steps must be an integer in 1..{T}, got {steps}")
        steps = int(steps)
        return [(T * i + steps // 2) // steps for i in range(steps, 0, -1)]


def progressive_patch_size(step: int, schedule: Sequence[Sequence[int]]) -> int:
    """HR patch side for training ``step`` under a progressive schedule ((start_step, patch), ...).

    HSR-Diff's progressive learning trains on small patches first and larger ones later
    (so the transformer sees more global context); the training loop asks this each step.
    Entries may carry a third value (e.g. a batch size) that is ignored here.

    >>> progressive_patch_size(150_000, ((0, 64), (100_000, 128), (200_000, 256)))
    128
    """
    if not schedule:
        raise ValueError("empty progressive schedule")
    starts = [int(e[0]) for e in schedule]
    if starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])):
        raise ValueError(f"schedule start steps must begin at 0 and increase, got {starts}")
    patch = int(schedule[0][1])
    for e in schedule:
        if step >= int(e[0]):
            patch = int(e[1])
    return patch


#: a default progressive schedule (HR patch side by step); our choice, see docs/models/hsr-diff.md
DEFAULT_PROGRESSIVE = ((0, 64), (100_000, 96), (200_000, 128))


# ----------------------------------------------------------------------------- forward model in torch


def torch_apply_srf(z: torch.Tensor, srf) -> torch.Tensor:
    """MSI[m] = Σ_c R[m, c] · Z[c] on (..., C, H, W); ``srf`` an (m, C) array/tensor or ``hsfuse.forward.srf.Srf``."""
    r = torch.as_tensor(np.asarray(getattr(srf, "matrix", srf)) if not torch.is_tensor(srf) else srf,
                        dtype=z.dtype, device=z.device)
    return torch.einsum("mc,...chw->...mhw", r, z)


# ----------------------------------------------------------------------------- training loss

DEFAULT_LOSS_WEIGHTS = {"l1": 1.0, "spatial": 0.5, "spectral": 0.5}


def diffusion_loss(denoise: Denoiser, x0: torch.Tensor, lr: torch.Tensor, msi: torch.Tensor, schedule: NoiseSchedule,
                   *, psf: Psf | None = None, srf=None, generator: torch.Generator | None = None,
                   weights: dict[str, float] | None = None, detach_parts: bool = True,
                   latent: tuple[Callable, Callable] | None = None,
                   loss_scale: float = 1.0, top_fraction: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One training loss: noise ``x0`` to a random level, predict x̂0, compare.

    ``denoise(x_t, √γ) -> x̂0`` (close over the conditions, e.g. ``lambda x, g: net(lr, msi, x, g)``).
    Loss = l1·‖x̂0 − x0‖₁ + spatial·‖LR − degrade_PSF(x̂0)‖₁ + spectral·‖MSI − SRF·x̂0‖₁ (means), each
    consistency term skipped when its operator (psf / srf) is None or its weight is 0. The spatial
    term leaves out ``psf.halo_lr`` LR pixels at each patch border, where a conv-form PSF would
    see the patch's mirrored padding instead of the scene (the block form has halo 0).
    Levels and noise are drawn from ``generator`` (its device; moved to x0's). Returns (total, parts);
    ``detach_parts=False`` keeps the parts in the graph (the training loop sums them itself).
    ``latent=(to, from)``: diffusion runs on ``to(x0)`` and the denoiser's output is mapped back with
    ``from`` before the loss (e.g. CDFormer's residual space); ``loss_scale`` multiplies every term.
    ``top_fraction``: share of the batch trained at the top noise level (``sample_training_levels``).
    """
    w = {**DEFAULT_LOSS_WEIGHTS, **(weights or {})}
    b = x0.shape[0]
    _, gamma = schedule.sample_training_levels(b, generator, x0.device, top_fraction)
    gdev = generator.device if generator is not None else x0.device
    eps = torch.randn(x0.shape, generator=generator, device=gdev, dtype=x0.dtype).to(x0.device)
    g = gamma.to(x0.dtype).view(b, *([1] * (x0.dim() - 1)))
    z0 = x0 if latent is None else latent[0](x0)
    x_t = g.sqrt() * z0 + (1 - g).sqrt() * eps
    x0_hat = denoise(x_t, gamma.sqrt())
    if latent is not None:
        x0_hat = latent[1](x0_hat)
    w = {k: v * loss_scale for k, v in w.items()}
    parts = {"l1": w["l1"] * F.l1_loss(x0_hat, x0)}
    if psf is not None and w.get("spatial", 0):
        low = spatial_degrade_t(x0_hat, psf)
        m = psf.halo_lr
        if m and min(low.shape[-2:]) > 2 * m:
            low, lr = low[..., m:-m, m:-m], lr[..., m:-m, m:-m]
        parts["spatial"] = w["spatial"] * F.l1_loss(low, lr)
    if srf is not None and w.get("spectral", 0):
        parts["spectral"] = w["spectral"] * F.l1_loss(torch_apply_srf(x0_hat, srf), msi)
    total = sum(parts.values())
    return total, ({k: v.detach() for k, v in parts.items()} if detach_parts else parts)


# ----------------------------------------------------------------------------- samplers


@torch.no_grad()
def sample(denoise: Denoiser, schedule: NoiseSchedule, *, steps: int, eta: float, noise: NoiseFn) -> torch.Tensor:
    """Generalised DDIM with x0-prediction over ``schedule.sampling_timesteps(steps)``.

    x_T = noise(T); for consecutive levels t > s: x̂0 = denoise(x_t, √γ_t),
    ε̂ = (x_t − √γ_t x̂0)/√(1 − γ_t), σ = η·√((1 − γ_s)/(1 − γ_t)·(1 − γ_t/γ_s)),
    x_s = √γ_s x̂0 + √(1 − γ_s − σ²) ε̂ + σ·noise(s); the last step returns x̂0 (γ_0 = 1).
    η = 0: deterministic DDIM; η = 1 on all T levels: the DDPM ancestral sampler.
    Noise keys: T for x_T, s for the noise injected into x_s (never reused).
    """
    g = schedule.gammas
    ts = schedule.sampling_timesteps(steps)
    x = noise(schedule.timesteps).float()
    b = x.shape[0]
    x0 = x
    for i, t in enumerate(ts):
        level = torch.full((b,), math.sqrt(g[t]), dtype=torch.float32, device=x.device)
        x0 = denoise(x, level).float()
        s = ts[i + 1] if i + 1 < len(ts) else 0
        if s == 0:
            return x0
        gt, gs = g[t], g[s]
        eps = (x - math.sqrt(gt) * x0) / math.sqrt(1.0 - gt)
        sigma = eta * math.sqrt(max((1.0 - gs) / (1.0 - gt) * (1.0 - gt / gs), 0.0))
        x = math.sqrt(gs) * x0 + math.sqrt(max(1.0 - gs - sigma ** 2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * noise(s).float()
    return x0


def sample_ddim(denoise: Denoiser, schedule: NoiseSchedule, *, steps: int = 8, noise: NoiseFn) -> torch.Tensor:
    """Deterministic DDIM (η = 0) in ``steps`` denoiser calls."""
    return sample(denoise, schedule, steps=steps, eta=0.0, noise=noise)


def sample_ancestral(denoise: Denoiser, schedule: NoiseSchedule, *, steps: int | None = None,
                     noise: NoiseFn) -> torch.Tensor:
    """The paper's ancestral sampler: all T levels (or a respaced subset), η = 1."""
    return sample(denoise, schedule, steps=schedule.timesteps if steps is None else steps, eta=1.0, noise=noise)


# ----------------------------------------------------------------------------- tile-consistent noise

_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x · c) mod 2^32 for int64 x in [0, 2^32) without int64 overflow (c split in 16-bit halves)."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser on int64 tensors holding uint32 values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


def _mix32_int(x: int) -> int:
    x &= _M32
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & _M32
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & _M32
    return x ^ (x >> 16)


def scene_noise(seed: int, shape_chw: Sequence[int], row0: int, col0: int, step: int,
                device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """N(0, 1) noise (C, H, W) at scene rows row0..row0+H−1, cols col0..col0+W−1 (HR pixels; may be negative).

    Each value is a pure function of (seed, step, band, row, col): a chain of MurmurHash3
    finalisers gives two uniform 32-bit words per value, Box–Muller makes a Gaussian. So the
    noise of a tile is exactly the crop of the scene-wide field, on CPU and GPU alike.
    """
    c, h, w = (int(v) for v in shape_chw)
    k = _mix32_int(_mix32_int(_mix32_int(0x3C6EF372 ^ (seed & _M32)) ^ ((seed >> 32) & _M32)) ^ (step & _M32))
    hb = torch.tensor([_mix32_int(k ^ _mix32_int(b + 0x9E3779B9)) for b in range(c)], dtype=torch.int64,
                      device=device).view(c, 1, 1)
    rows = torch.arange(row0, row0 + h, dtype=torch.int64, device=device) & _M32
    cols = torch.arange(col0, col0 + w, dtype=torch.int64, device=device) & _M32
    hr = _mix32(hb ^ _mix32(rows ^ 0x7F4A7C15).view(1, h, 1))  # (C, H, 1)
    h1 = _mix32(hr ^ _mix32(cols ^ 0x1B873593).view(1, 1, w))
    h2 = _mix32(hr ^ _mix32(cols ^ 0x2545F491).view(1, 1, w))
    # float64 on every device: the same noise on CPU and GPU (to the last ulp of log/cos)
    u1 = (h1.to(torch.float64) + 0.5) * (1.0 / 4294967296.0)  # in (0, 1)
    u2 = h2.to(torch.float64) * (1.0 / 4294967296.0)
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)).to(dtype)


def tile_noise_fn(seed: int, shape_chw: Sequence[int], row0: int, col0: int,
                  device: str | torch.device = "cpu") -> NoiseFn:
    """A sampler ``noise`` callback giving the (1, C, H, W) crop of the scene field at (row0, col0)."""
    return lambda key: scene_noise(seed, shape_chw, row0, col0, key, device=device)[None]
