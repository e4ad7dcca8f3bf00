"""MFTN: multi-scale feature transfer network (IMatchFormer matching + deformable aggregation).

Reimplemented from the paper's description (Huang et al., "MFTN:
A Multi-scale Feature Transfer Network Based on IMatchFormer for Hyperspectral
Image Super-Resolution", ICML 2024). No code was copied; docs/models/mftn.md
lists what is built and every deviation.

Inputs on the HR grid (H = h*s): the HR-MSI ``msi``, the *degraded* HR-MSI
``msi_deg = up_s(down_s(msi))`` (s x s box mean, bicubic back up: the MSI
blurred as much as the LR-HSI is) and the bicubic-upsampled LR-HSI ``up(lr)``.

* **Three multi-scale feature extractors** (one per input, not shared): conv +
  residual block at HR, then two stride-2 stages (HR/2, HR/4).
* **Multi-scale feature transfer module (MFTM)**: one IMatchFormer per scale.
  Queries from the LR-HSI features, keys from the degraded-MSI features (both
  blurred alike, so they can be matched across modalities), values from the
  sharp HR-MSI features: each LR-HSI pixel finds where its content is in the
  degraded MSI and takes the corresponding *sharp* MSI detail. 8 heads; the
  matching is *neighbourhood* attention over a k x k window (k = 3/5/7 from fine
  to coarse) instead of global attention over the image: memory O(HW k^2), the
  block is translation-equivariant (tile = untiled with a halo) and, since the
  images are co-registered, the correspondences are local anyway. "Improved":
  learned relative-position bias per head, the TTSR-style soft confidence
  (maximum attention weight) scaling the transferred features, and a
  depthwise-conv feed-forward.
* **Multi-scale dynamic aggregation module (MDAM)**: three spectral-aware
  aggregation modules (SAAMs), coarse (HR/4) to fine (HR), each a *modulated
  deformable 3x3 convolution* whose sampling offsets and modulation masks, plus
  a per-pixel spectral (channel) gate, are predicted from shallow LR-HSI
  features at that scale. ``torchvision.ops.deform_conv2d`` is not available
  here, so :func:`modulated_deform_conv2d` implements DCNv2 with
  ``F.grid_sample`` (bilinear, zeros outside). Offsets are bounded by
  ``max_offset * tanh`` (coarse-level pixels) so the receptive field stays
  bounded; offsets start at 0 and masks at 1, i.e. as a plain convolution.
* **Head**: conv to the bands added to the base (``up(lr)``, or the classical
  prior with ``prior=True``); the last conv is zero-initialised, so an untrained
  network returns its base exactly.

>>> net = MFTN(bands=31, msi_bands=3, scale=8)
>>> z = net(lr, msi)                       # (B, 31, 8h, 8w)
>>> loss = mftn_loss(z, gt, net=net, aux=net(lr, msi, return_aux=True)[1])["total"]
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ..common import check_inputs, residual_base, spectral_angle_loss
from torch import nn

__all__ = ["MFTN", "IMatchFormer", "SAAM", "modulated_deform_conv2d", "mftn_loss", "DEFAULT_LOSS_WEIGHTS"]

#: loss weights of :func:`mftn_loss` (docs/models/mftn.md says what each term substitutes)
DEFAULT_LOSS_WEIGHTS = {"l1": 1.0, "grad": 0.1, "sam": 0.05, "transfer": 0.01}


def _pad_to(x: torch.Tensor, m: int) -> tuple[torch.Tensor, int, int]:
    """Replicate-pad H and W up to multiples of ``m`` (bottom/right); returns (x, H, W) of the original."""
    H, W = x.shape[-2:]
    ph, pw = (-H) % m, (-W) % m
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, H, W


class LayerNorm2d(nn.Module):
    """LayerNorm over channels at each pixel (local, unlike GroupNorm: keeps tiling exact)."""

    def __init__(self, ch: int):
        super().__init__()
        self.ln = nn.LayerNorm(ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ResBlock(nn.Module):
    def __init__(self, nf: int):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(nf, nf, 3, 1, 1), nn.Conv2d(nf, nf, 3, 1, 1)
        self.act = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.c2(self.act(self.c1(x)))


class MultiScaleExtractor(nn.Module):
    """Features at HR, HR/2 and HR/4 (conv + residual block per scale, stride-2 convs between)."""

    def __init__(self, cin: int, nf: int):
        super().__init__()
        act = lambda: nn.LeakyReLU(0.2, inplace=True)  # noqa: E731
        self.s1 = nn.Sequential(nn.Conv2d(cin, nf, 3, 1, 1), act(), ResBlock(nf))
        self.s2 = nn.Sequential(nn.Conv2d(nf, nf, 3, 2, 1), act(), ResBlock(nf))
        self.s3 = nn.Sequential(nn.Conv2d(nf, nf, 3, 2, 1), act(), ResBlock(nf))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f1 = self.s1(x)
        f2 = self.s2(f1)
        return [f1, f2, self.s3(f2)]


class IMatchFormer(nn.Module):
    """Improved feature-matching transformer: local multi-head cross attention Q<-LR, K<-degraded MSI, V<-MSI.

    For every query pixel the keys/values are the k x k neighbourhood around
    the same position (``F.unfold``), so memory is O(HW k^2), never O((HW)^2).
    Returns (fused LR-HSI features, transferred MSI detail features).
    """

    def __init__(self, nf: int, heads: int = 8, window: int = 3):
        super().__init__()
        if nf % heads:
            raise ValueError(f"nf={nf} is not divisible by heads={heads}")
        if window % 2 == 0:
            raise ValueError("match window must be odd")
        self.heads, self.window = heads, window
        self.nq, self.nk, self.nv = LayerNorm2d(nf), LayerNorm2d(nf), LayerNorm2d(nf)
        self.q, self.k, self.v = nn.Conv2d(nf, nf, 1), nn.Conv2d(nf, nf, 1), nn.Conv2d(nf, nf, 1)
        self.rel_bias = nn.Parameter(torch.zeros(1, heads, window * window, 1))
        self.proj = nn.Conv2d(nf, nf, 1)
        self.merge = nn.Conv2d(2 * nf, nf, 3, 1, 1)
        self.n_ffn = LayerNorm2d(nf)
        self.ffn = nn.Sequential(nn.Conv2d(nf, 2 * nf, 1), nn.Conv2d(2 * nf, 2 * nf, 3, 1, 1, groups=2 * nf), nn.GELU(),
                                 nn.Conv2d(2 * nf, nf, 1))

    def forward(self, f_lr: torch.Tensor, f_deg: torch.Tensor, f_msi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, nf, h, w = f_lr.shape
        nh, d, k = self.heads, nf // self.heads, self.window
        q = self.q(self.nq(f_lr)).view(b, nh, d, 1, h * w)
        kn = F.unfold(self.k(self.nk(f_deg)), k, padding=k // 2).view(b, nh, d, k * k, h * w)
        vn = F.unfold(self.v(self.nv(f_msi)), k, padding=k // 2).view(b, nh, d, k * k, h * w)
        logits = (q * kn).sum(2) * d ** -0.5 + self.rel_bias  # (b, nh, k^2, hw)
        attn = torch.softmax(logits, dim=2)
        out = (attn.unsqueeze(2) * vn).sum(3).reshape(b, nf, h, w)
        transfer = self.proj(out)
        conf = attn.amax(2).mean(1, keepdim=True).view(b, 1, h, w)  # soft matching confidence
        x = f_lr + self.merge(torch.cat([f_lr, transfer * conf], 1))
        return x + self.ffn(self.n_ffn(x)), transfer

    @property
    def radius(self) -> int:
        """Receptive radius in pixels of its own grid."""
        return self.window // 2 + 1 + 1  # neighbourhood, merge conv, FFN depthwise conv


def modulated_deform_conv2d(x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
                            bias: torch.Tensor | None = None, dilation: int = 1) -> torch.Tensor:
    """Modulated deformable convolution (DCNv2), stride 1, 'same' padding, one offset group.

    ``x`` (B, C, H, W); ``weight`` (O, C, kh, kw); ``offset`` (B, 2*K, H, W) as
    (dy, dx) pairs per kernel point in row-major kernel order, in pixels;
    ``mask`` (B, K, H, W) multiplies each sample. Each of the K = kh*kw kernel
    points is sampled at ``p + p_k*dilation + offset_k(p)`` with bilinear
    ``grid_sample`` (zeros outside the image), multiplied by its mask, and the
    K sampled maps are contracted with the kernel: the torchvision
    ``deform_conv2d`` semantics, written with plain torch ops (torchvision is
    not a dependency). Memory: K copies of x.
    """
    b, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    kk = kh * kw
    dev, dt = x.device, x.dtype
    ky, kx = torch.meshgrid(torch.arange(kh, device=dev, dtype=dt) - kh // 2,
                            torch.arange(kw, device=dev, dtype=dt) - kw // 2, indexing="ij")
    ys = torch.arange(h, device=dev, dtype=dt).view(1, 1, h, 1)
    xs = torch.arange(w, device=dev, dtype=dt).view(1, 1, 1, w)
    off = offset.view(b, kk, 2, h, w)
    py = ys + ky.reshape(1, kk, 1, 1) * dilation + off[:, :, 0]
    px = xs + kx.reshape(1, kk, 1, 1) * dilation + off[:, :, 1]
    # normalised coordinates for align_corners=False: pixel centre i -> (2i+1)/n - 1
    grid = torch.stack([(2 * px + 1) / w - 1, (2 * py + 1) / h - 1], -1)  # (b, kk, h, w, 2)
    sampled = F.grid_sample(x, grid.view(b, kk * h, w, 2), mode="bilinear", padding_mode="zeros", align_corners=False)
    sampled = sampled.view(b, c, kk, h, w) * mask.unsqueeze(1)
    out = torch.einsum("bckhw,ock->bohw", sampled, weight.reshape(o, c, kk))
    return out if bias is None else out + bias.view(1, o, 1, 1)


class SAAM(nn.Module):
    """Spectral-aware aggregation module: modulated deformable conv steered by shallow LR-HSI features.

    From ``cat(x, shallow)`` a zero-initialised conv predicts 2*9 offsets
    (bounded by ``max_offset * tanh``), 9 modulation masks (``2*sigmoid``: 1 at
    init) and a per-pixel spectral gate over the output channels (``2*sigmoid``).
    """

    def __init__(self, nf: int, max_offset: float = 4.0):
        super().__init__()
        self.max_offset = float(max_offset)
        self.pred = nn.Conv2d(2 * nf, 3 * 9, 3, 1, 1)
        nn.init.zeros_(self.pred.weight)
        nn.init.zeros_(self.pred.bias)
        self.gate = nn.Conv2d(nf, nf, 1)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)
        self.weight = nn.Parameter(torch.empty(nf, nf, 3, 3))
        self.bias = nn.Parameter(torch.zeros(nf))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.act = nn.LeakyReLU(0.2, inplace=True)
        self.out = nn.Conv2d(nf, nf, 3, 1, 1)

    def forward(self, x: torch.Tensor, shallow: torch.Tensor) -> torch.Tensor:
        p = self.pred(torch.cat([x, shallow], 1))
        offset = self.max_offset * torch.tanh(p[:, :18])
        mask = 2 * torch.sigmoid(p[:, 18:])
        y = modulated_deform_conv2d(x, offset, mask, self.weight, self.bias)
        y = y * (2 * torch.sigmoid(self.gate(shallow)))
        return x + self.out(self.act(y))

    @property
    def radius(self) -> int:
        return 1 + 1 + int(math.ceil(self.max_offset)) + 1  # predictor, kernel + offset, output conv


class _Up2(nn.Module):
    def __init__(self, nf: int):
        super().__init__()
        self.conv = nn.Conv2d(nf, 4 * nf, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.conv(x), 2)


class MFTN(nn.Module):
    """The MFTN fusion network.

    ``forward(lr, msi, prior=None, return_aux=False)``: lr (B, C, h, w), msi
    (B, m, h*s, w*s), prior (B, C, h*s, w*s) when built with ``prior=True``;
    returns (B, C, h*s, w*s) (and a dict of intermediate features with
    ``return_aux``, used by :func:`mftn_loss`). Any band counts; the scale is
    read from the shapes (``scale`` is the one it is built/trained for, kept in
    ``config``). Internally the HR grid is replicate-padded to a multiple of 4
    for the two stride-2 stages and cropped back.
    """

    architecture = "mftn"

    def __init__(self, bands: int, msi_bands: int, scale: int = 8, nf: int = 32, heads: int = 8,
                 match_windows: tuple[int, int, int] | list[int] = (3, 5, 7), max_offset: float = 4.0,
                 prior: bool = False):
        super().__init__()
        self.bands, self.msi_bands, self.scale, self.prior, self.nf = bands, msi_bands, int(scale), bool(prior), nf
        self.config = dict(bands=bands, msi_bands=msi_bands, scale=int(scale), nf=nf, heads=heads,
                           match_windows=list(match_windows), max_offset=float(max_offset), prior=bool(prior))
        self.e_msi = MultiScaleExtractor(msi_bands, nf)
        self.e_deg = MultiScaleExtractor(msi_bands, nf)
        self.e_lr = MultiScaleExtractor(bands, nf)
        self.match = nn.ModuleList(IMatchFormer(nf, heads, k) for k in match_windows)
        self.shallow = nn.ModuleList(nn.Conv2d(bands, nf, 3, 1, 1) for _ in range(3))
        self.saam = nn.ModuleList(SAAM(nf, max_offset) for _ in range(3))
        self.up = nn.ModuleList(_Up2(nf) for _ in range(2))  # HR/4 -> HR/2 -> HR
        self.reduce = nn.ModuleList(nn.Conv2d(2 * nf, nf, 1) for _ in range(2))
        self.prior_embed = nn.Conv2d(bands, nf, 3, 1, 1) if prior else None
        self.head = nn.Sequential(nn.Conv2d(nf, nf, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(nf, bands, 3, 1, 1))
        nn.init.zeros_(self.head[-1].weight)  # start at the base (prior or bicubic)
        nn.init.zeros_(self.head[-1].bias)

    # ------------------------------------------------------------------ geometry
    def receptive_radius_hr(self, scale: int) -> int:
        """HR pixels of context each output pixel depends on (an upper bound; the tiling halo)."""
        s = scale
        inputs = 3 * s  # degraded MSI: s-box mean then bicubic (2 LR px); up(lr): 2 LR px
        ext = [3, 3 + 1 + 2 * 2, 3 + 1 + 2 * 2 + 2 + 2 * 4]  # extractor depth at HR, HR/2, HR/4 (HR px)
        unit = [1, 2, 4]
        r3 = ext[2] + self.match[2].radius * 4 + self.saam[2].radius * 4
        r2 = max(r3 + 4, ext[1] + self.match[1].radius * 2) + self.saam[1].radius * 2  # up conv at HR/4
        r1 = max(r2 + 2, ext[0] + self.match[0].radius * unit[0]) + self.saam[0].radius
        return inputs + r1 + 2 + 3  # head convs; +3 for the stride-2 phase / padding to a multiple of 4

    # ------------------------------------------------------------------ forward
    def forward(self, lr: torch.Tensor, msi: torch.Tensor, prior: torch.Tensor | None = None,
                return_aux: bool = False):
        s = check_inputs(lr, msi, self.bands, self.msi_bands)
        H, W = msi.shape[-2:]
        up = F.interpolate(lr, size=(H, W), mode="bicubic", align_corners=False)
        base = residual_base(up, prior, self.prior)
        deg = F.interpolate(F.avg_pool2d(msi, s), size=(H, W), mode="bicubic", align_corners=False) if s > 1 else msi
        x_up, _, _ = _pad_to(up, 4)
        x_msi, _, _ = _pad_to(msi, 4)
        x_deg, _, _ = _pad_to(deg, 4)
        f_lr, f_deg, f_msi = self.e_lr(x_up), self.e_deg(x_deg), self.e_msi(x_msi)
        fused, transferred = [], []
        for i in range(3):
            f, t = self.match[i](f_lr[i], f_deg[i], f_msi[i])
            fused.append(f)
            transferred.append(t)
        shallow = [self.shallow[0](x_up), self.shallow[1](F.avg_pool2d(x_up, 2)), self.shallow[2](F.avg_pool2d(x_up, 4))]
        a = self.saam[2](fused[2], shallow[2])
        a = self.saam[1](self.reduce[1](torch.cat([fused[1], self.up[1](a)], 1)), shallow[1])
        a = self.saam[0](self.reduce[0](torch.cat([fused[0], self.up[0](a)], 1)), shallow[0])
        a = a[..., :H, :W]
        if self.prior_embed is not None:
            a = a + self.prior_embed(base)
        out = base + self.head(a)
        if return_aux:
            return out, {"fused": fused, "transferred": transferred, "lr_features": f_lr}
        return out


# ---------------------------------------------------------------------- loss


def _grad_loss(x: torch.Tensor, y: torch.Tensor, levels: int = 3) -> torch.Tensor:
    """L1 between horizontal/vertical finite differences of x and y at 1, 1/2, 1/4 resolution."""
    total = x.new_zeros(())
    for i in range(levels):
        if i:
            if min(x.shape[-2:]) < 4:
                break
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        dx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
        dy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
        total = total + F.l1_loss(dx(x), dx(y)) + F.l1_loss(dy(x), dy(y))
    return total


def mftn_loss(out: torch.Tensor, gt: torch.Tensor, net: MFTN | None = None, aux: dict | None = None,
              weights: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
    """The MFTN training loss; returns each weighted term and their sum under ``"total"``.

    * ``l1``: L1 to the ground truth (the paper's reconstruction loss).
    * ``grad``: substitute for the paper's VGG perceptual loss (no downloaded
      network here): L1 between multi-scale finite-difference gradients of the
      output and the ground truth (a fixed, parameter-free "structure" feature).
    * ``sam``: spectral angle (radians), a spectral-fidelity term.
    * ``transfer``: substitute for the transferal perceptual loss of
      reference-based SR (TTSR), computable when ``net`` and ``aux`` (from
      ``net(..., return_aux=True)``) are given: the output is passed through the
      network's own LR-HSI extractor with its weights *frozen for this term*,
      and its multi-scale features are pulled (L1) towards the detached fused
      features the IMatchFormers produced, so the output carries the
      transferred MSI detail. Omitted (0) otherwise.
    """
    w = dict(DEFAULT_LOSS_WEIGHTS)
    w.update(weights or {})
    terms = {"l1": w["l1"] * F.l1_loss(out, gt)}
    if w.get("grad"):
        terms["grad"] = w["grad"] * _grad_loss(out, gt)
    if w.get("sam"):
        terms["sam"] = w["sam"] * spectral_angle_loss(out, gt)
    if w.get("transfer") and net is not None and aux is not None:
        from torch.func import functional_call

        params = {k: v.detach() for k, v in net.e_lr.named_parameters()}
        x, H, W = _pad_to(out, 4)
        feats = functional_call(net.e_lr, params, (x,))
        t = sum(F.l1_loss(f, g.detach()) for f, g in zip(feats, aux["fused"]))
        terms["transfer"] = w["transfer"] * t / len(feats)
    terms["total"] = sum(terms.values())
    return terms


def build_mftn(bands: int = 31, msi_bands: int = 3, scale: int = 8, prior: bool = False, **kw: Any) -> MFTN:
    return MFTN(bands, msi_bands, scale=scale, prior=prior, **kw)
