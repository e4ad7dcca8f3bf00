"""HyFusion: enhanced-reception-field transformer with a dual-coupled network.

Reimplemented from the paper's description (C.-M. Lee, Y.-F. Lin, Y.-H. Ho,
L.-W. Kang, C.-C. Hsu, "HyFusion: Enhanced Reception Field Transformer for
Hyperspectral Image Fusion", arXiv 2501.04665, 2025). No code was
copied; docs/models/hyfusion.md lists what is built and every deviation.

* **Quasi-fused draft**: ``cat(msi, up(lr))`` on the HR grid (``up`` bicubic;
  with ``prior=True`` the classical estimate replaces ``up(lr)``), plus the
  MSI's high-frequency part ``msi - up(down(msi))``.
* **Enhanced Reception Field Block (ERFB)**: ``layers`` Improved Swin
  Transformer Layers (ISTL) with *dense connections* — layer i sees the 1x1
  compression of the block input and all earlier layer outputs — and a 1x1
  fusion of everything plus a block residual. An ISTL is window multi-head
  self-attention (``window`` x ``window``, relative position bias, the Swin
  shift by window/2 on every other layer, with the Swin mask) followed by a
  feed-forward with a depthwise 3x3 conv ("improved": local mixing the plain
  MLP lacks), both pre-norm and residual.
* **Dual-Coupled Network (DCN)**: a spatial branch (SpaNet) of ERFBs on the HR
  draft and a spectral branch (SpeNet) of ERFBs on the LR grid, fed with
  ``cat(lr, down(msi))`` and the LR-HSI's spectral high frequencies (first
  differences along the bands). After every stage the branches are coupled:
  the HR branch receives the upsampled LR features and the LR branch the
  average-pooled HR features (1x1 convs), so each enhances the other.
* **Cross-domain fusion + head**: ``cat(F_hr, up(F_lr))`` -> conv -> bands,
  added to the base; last conv zero-initialised (untrained = the base exactly).

Compactness is a stated goal: the default (``nf=32``, 2 HR + 2 LR ERFBs of 2
ISTLs) has about 0.3 M parameters at 31+3 bands (docs give the counts).

Windows are padded (replicate) to a multiple of ``window``. Window attention is
equivariant only to shifts by multiples of the window: tiled fusion equals
untiled fusion (with the receptive halo) when every tile origin is a multiple of
``window`` LR pixels (tested); other tilings differ at window seams, so give the
engine a blending overlap (``default_overlap``).

>>> net = HyFusion(bands=31, msi_bands=3, scale=8)
>>> z = net(lr, msi)                       # (B, 31, 8h, 8w)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..common import check_inputs, residual_base, spectral_angle_loss
from .mftn import LayerNorm2d

__all__ = ["HyFusion", "ERFB", "ISTL", "hyfusion_loss", "DEFAULT_LOSS_WEIGHTS"]

#: L1 + SAM + stationary-wavelet (SWT) loss, the paper's task-specific losses (weights ours)
DEFAULT_LOSS_WEIGHTS = {"l1": 1.0, "sam": 0.1, "swt": 0.1}


class WindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping windows (optionally shifted, Swin-style)."""

    def __init__(self, nf: int, heads: int, window: int, shift: bool):
        super().__init__()
        if nf % heads:
            raise ValueError(f"nf={nf} is not divisible by heads={heads}")
        self.heads, self.window, self.shift = heads, window, shift and window > 1
        self.qkv = nn.Linear(nf, 3 * nf)
        self.proj = nn.Linear(nf, nf)
        self.bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        c = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (c[:, :, None] - c[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("rel_index", rel[..., 0] * (2 * window - 1) + rel[..., 1], persistent=False)

    def _mask(self, hp: int, wp: int, device) -> torch.Tensor:
        w, sh = self.window, self.window // 2
        ids = torch.zeros(hp, wp, device=device)
        n = 0
        for hs in (slice(0, -w), slice(-w, -sh), slice(-sh, None)):
            for ws in (slice(0, -w), slice(-w, -sh), slice(-sh, None)):
                ids[hs, ws] = n
                n += 1
        win = ids.view(hp // w, w, wp // w, w).permute(0, 2, 1, 3).reshape(-1, w * w)
        m = win[:, :, None] != win[:, None, :]
        return torch.zeros(m.shape, device=device).masked_fill(m, -100.0)  # (nW, w², w²)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, H, W, C), H and W multiples of window
        b, hp, wp, c = x.shape
        w, nh = self.window, self.heads
        sh = w // 2 if self.shift else 0
        if sh:
            x = torch.roll(x, (-sh, -sh), (1, 2))
        t = x.view(b, hp // w, w, wp // w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, c)
        q, k, v = self.qkv(t).view(t.shape[0], w * w, 3, nh, c // nh).permute(2, 0, 3, 1, 4)
        attn = (q * (c // nh) ** -0.5) @ k.transpose(-2, -1)  # (B*nW, nh, w², w²)
        attn = attn + self.bias_table[self.rel_index.reshape(-1)].view(w * w, w * w, nh).permute(2, 0, 1)
        if sh:
            m = self._mask(hp, wp, x.device)
            nw = m.shape[0]
            attn = (attn.view(b, nw, nh, w * w, w * w) + m[None, :, None]).view(-1, nh, w * w, w * w)
        out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(-1, w * w, c)
        out = self.proj(out).view(b, hp // w, wp // w, w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        if sh:
            out = torch.roll(out, (sh, sh), (1, 2))
        return out


class ISTL(nn.Module):
    """Improved Swin Transformer Layer: pre-norm (shifted) window attention + depthwise-conv feed-forward."""

    def __init__(self, nf: int, heads: int, window: int, shift: bool, mlp_ratio: float = 2.0):
        super().__init__()
        hid = int(nf * mlp_ratio)
        self.n1, self.n2 = nn.LayerNorm(nf), LayerNorm2d(nf)
        self.attn = WindowAttention(nf, heads, window, shift)
        self.ffn = nn.Sequential(nn.Conv2d(nf, hid, 1), nn.Conv2d(hid, hid, 3, 1, 1, groups=hid), nn.GELU(), nn.Conv2d(hid, nf, 1))
        self.window = window

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        H, W = x.shape[-2:]
        w = self.window
        ph, pw = (-H) % w, (-W) % w
        xp = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
        t = xp.permute(0, 2, 3, 1)
        t = t + self.attn(self.n1(t))
        x = t.permute(0, 3, 1, 2)[..., :H, :W]
        return x + self.ffn(self.n2(x))


class ERFB(nn.Module):
    """Enhanced Reception Field Block: densely connected ISTLs (alternating shift), 1x1 fusion, residual."""

    def __init__(self, nf: int, heads: int, window: int, layers: int = 2):
        super().__init__()
        self.compress = nn.ModuleList(nn.Conv2d(nf * (i + 1), nf, 1) for i in range(layers))
        self.layers = nn.ModuleList(ISTL(nf, heads, window, shift=bool(i % 2)) for i in range(layers))
        self.fuse = nn.Conv2d(nf * (layers + 1), nf, 1)
        self.conv = nn.Conv2d(nf, nf, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for comp, layer in zip(self.compress, self.layers):
            feats.append(layer(comp(torch.cat(feats, 1))))
        return x + self.conv(self.fuse(torch.cat(feats, 1)))


class HyFusion(nn.Module):
    """The HyFusion network (dual-coupled ERFB branches at HR and LR).

    ``forward(lr, msi, prior=None)``: lr (B, C, h, w), msi (B, m, h*s, w*s),
    prior (B, C, h*s, w*s) when built with ``prior=True``; returns (B, C, h*s, w*s).
    Any band counts; the scale is read from the shapes.
    """

    architecture = "hyfusion"

    def __init__(self, bands: int, msi_bands: int, scale: int = 8, nf: int = 32, heads: int = 4, window: int = 8,
                 blocks: int = 2, layers: int = 2, prior: bool = False):
        super().__init__()
        self.bands, self.msi_bands, self.scale, self.prior, self.nf = bands, msi_bands, int(scale), bool(prior), nf
        self.window, self.blocks, self.layers = window, blocks, layers
        self.config = dict(bands=bands, msi_bands=msi_bands, scale=int(scale), nf=nf, heads=heads, window=window,
                           blocks=blocks, layers=layers, prior=bool(prior))
        self.hr_in = nn.Conv2d(bands + 2 * msi_bands, nf, 3, 1, 1)  # draft: base, MSI, MSI high-pass
        self.lr_in = nn.Conv2d(bands + msi_bands + max(bands - 1, 1), nf, 3, 1, 1)  # LR, down(MSI), spectral diffs
        self.spa = nn.ModuleList(ERFB(nf, heads, window, layers) for _ in range(blocks))
        self.spe = nn.ModuleList(ERFB(nf, heads, window, layers) for _ in range(blocks))
        self.to_hr = nn.ModuleList(nn.Conv2d(nf, nf, 1) for _ in range(blocks))
        self.to_lr = nn.ModuleList(nn.Conv2d(nf, nf, 1) for _ in range(blocks))
        self.fusion = nn.Sequential(nn.Conv2d(2 * nf, nf, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True))
        self.head = nn.Conv2d(nf, bands, 3, 1, 1)
        nn.init.zeros_(self.head.weight)  # start at the base (prior or bicubic)
        nn.init.zeros_(self.head.bias)

    def receptive_radius_hr(self, scale: int) -> int:
        """HR pixels of context each output pixel depends on (an upper bound, windows taken whole)."""
        s, w = scale, self.window
        per_block = self.layers * (w + 1) + 1  # each ISTL: a window (< w px away) + depthwise conv; block conv
        hr = 3 * s + 1 + self.blocks * (per_block + s)  # inputs (bicubic, MSI high-pass), coupling from LR
        lr = (2 + 1 + self.blocks * (per_block + 1)) * s  # LR branch in LR pixels (+ pooled HR coupling)
        return max(hr, lr) + 2 * s + 2  # bilinear up of LR features, fusion + head convs

    def forward(self, lr: torch.Tensor, msi: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
        s = check_inputs(lr, msi, self.bands, self.msi_bands)
        H, W = msi.shape[-2:]
        h, w = lr.shape[-2:]
        base = residual_base(F.interpolate(lr, size=(H, W), mode="bicubic", align_corners=False), prior, self.prior)
        msi_lr = F.avg_pool2d(msi, s) if s > 1 else msi
        msi_hp = msi - F.interpolate(msi_lr, size=(H, W), mode="bicubic", align_corners=False) if s > 1 else torch.zeros_like(msi)
        spec_hf = lr[:, 1:] - lr[:, :-1] if self.bands > 1 else torch.zeros_like(lr)
        fh = self.hr_in(torch.cat([base, msi, msi_hp], 1))
        fl = self.lr_in(torch.cat([lr, msi_lr, spec_hf], 1))
        for i in range(self.blocks):
            fh, fl = self.spa[i](fh), self.spe[i](fl)
            down = F.avg_pool2d(fh, s) if s > 1 else fh
            upl = F.interpolate(fl, size=(H, W), mode="bilinear", align_corners=False)
            fh, fl = fh + self.to_hr[i](upl), fl + self.to_lr[i](down)
        upl = F.interpolate(fl, size=(H, W), mode="bilinear", align_corners=False)
        return base + self.head(self.fusion(torch.cat([fh, upl], 1)))


# ---------------------------------------------------------------------- loss


def _swt_haar(x: torch.Tensor, levels: int = 2) -> list[torch.Tensor]:
    """Undecimated (stationary) Haar wavelet detail subbands (LH, HL, HH per level; à trous dilation 2^l)."""
    c = x.shape[1]
    lo = torch.tensor([0.5, 0.5], dtype=x.dtype, device=x.device)
    hi = torch.tensor([0.5, -0.5], dtype=x.dtype, device=x.device)
    out, a = [], x
    for lev in range(levels):
        d = 2 ** lev
        if a.shape[-1] <= d or a.shape[-2] <= d:
            break
        k = torch.stack([torch.outer(p, q) for p, q in ((lo, lo), (lo, hi), (hi, lo), (hi, hi))])  # (4, 2, 2)
        k = k.repeat(c, 1, 1).unsqueeze(1)  # (4c, 1, 2, 2)
        y = F.conv2d(F.pad(a, (0, d, 0, d), mode="replicate"), k, dilation=d, groups=c).view(a.shape[0], c, 4, *a.shape[-2:])
        out.append(y[:, :, 1:])
        a = y[:, :, 0]
    return out


def hyfusion_loss(out: torch.Tensor, gt: torch.Tensor, weights: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
    """L1 + SAM (radians) + SWT loss (L1 between stationary Haar wavelet detail subbands); ``"total"`` sums them."""
    w = dict(DEFAULT_LOSS_WEIGHTS)
    w.update(weights or {})
    terms = {"l1": w["l1"] * F.l1_loss(out, gt)}
    if w.get("sam"):
        terms["sam"] = w["sam"] * spectral_angle_loss(out, gt)
    if w.get("swt"):
        terms["swt"] = w["swt"] * sum(F.l1_loss(a, b) for a, b in zip(_swt_haar(out), _swt_haar(gt)))
    terms["total"] = sum(terms.values())
    return terms


def build_hyfusion(bands: int = 31, msi_bands: int = 3, scale: int = 8, prior: bool = False, **kw: Any) -> HyFusion:
    return HyFusion(bands, msi_bands, scale=scale, prior=prior, **kw)
