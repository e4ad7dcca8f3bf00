"""CDFormer: the conditional denoising transformer of HSR-Diff (its sampler and ``Fuser``: ``models/hsrdiff.py``).

Reimplemented from the paper's description (C. Wu, D. Wang, H. Mao, Y. Li, "HSR-Diff:
Hyperspectral Image Super-Resolution via Conditional Diffusion Models", ICCV 2023,
arXiv 2306.12085). No code was copied; docs/models/hsr-diff.md lists the deviations.

CDFormer (conditional denoising transformer), two streams at full HR resolution, no downsampling:

* **SR stream** (conditions only): conv3x3 of concat(bicubic-up(LR-HSI), HR-MSI), then ``depth``
  spatio-spectral layers: windowed spatial multi-head self-attention (Swin-style, relative
  position bias, windows shifted by half a window every other layer), transposed (channel)
  spectral attention computed inside the same windows, gated depthwise feed-forward (GDFN).
  It does not see x_t nor the noise level, so it runs **once per sample** and its features are
  reused at every sampling step (``encode`` / ``denoise``).
* **Denoising stream**: conv3x3 of x_t, then ``depth`` noise-aware conditional layers: the
  sinusoidal embedding of the noise level √γ modulates the layer norms (FiLM / AdaLN, zero-init),
  windowed multi-head cross-attention with queries from x_t's features and keys/values from the
  SR stream's features of the same layer, gated feed-forward.
* reconstruction: conv3x3(features + x_t embedding) + bicubic-up(LR): x̂0 (x0-prediction).

Every operation is local (windows, 3x3 convs, per-pixel norms), so the output depends on a
bounded neighbourhood (``receptive_radius_hr``) and windows are laid on the **scene's** grid
(``origin``), so tiled and untiled fusion agree (given tile-consistent noise, see
``diffusion.scene_noise``).

>>> net = CDFormer(31, 3)                               # width 64 (the paper uses 256)
>>> x0_hat = net(lr, msi, x_t, noise_level)             # (B,31,H,W), noise_level = √γ (B,)
>>> fused = HSRDiffFuser(problem).fuse_tile(lr_tile, msi_tile)     # via ``hsfuse fuse --model hsr-diff``
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..common import check_inputs, residual_base

DEFAULT_KWARGS = {"width": 64, "depth": 4, "heads": 4, "window": 8, "ffn_expansion": 2.0, "emb_dim": 128}

Origin = tuple[int, int]


# ----------------------------------------------------------------------------- windows on the scene grid


@dataclass
class _Geom:
    b: int
    h: int
    w: int
    pt: int
    pl: int
    nh: int
    nw: int


def _partition(x: torch.Tensor, ws: int, origin: Origin, shift: int) -> tuple[torch.Tensor, _Geom]:
    """(B, H, W, C) -> (B·nW, ws², C) windows aligned to the absolute grid (rows k·ws + shift).

    ``origin`` is the scene position (HR row, col) of x[:, 0, 0]; the tile is zero-padded so that
    window boundaries fall on the same scene positions whatever the tile. Padded tokens are zeros
    (after the norm, bias-free projections): they only touch pixels within ws−1 of the tile edge.
    """
    b, h, w, c = x.shape
    pt, pl = (origin[0] - shift) % ws, (origin[1] - shift) % ws
    hp, wp = -(-(h + pt) // ws) * ws, -(-(w + pl) // ws) * ws
    if pt or pl or hp != h or wp != w:
        x = F.pad(x, (0, 0, pl, wp - w - pl, pt, hp - h - pt))
    nh, nw = hp // ws, wp // ws
    win = x.view(b, nh, ws, nw, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b * nh * nw, ws * ws, c)
    return win, _Geom(b, h, w, pt, pl, nh, nw)


def _merge(win: torch.Tensor, g: _Geom, ws: int) -> torch.Tensor:
    c = win.shape[-1]
    x = win.view(g.b, g.nh, g.nw, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(g.b, g.nh * ws, g.nw * ws, c)
    return x[:, g.pt:g.pt + g.h, g.pl:g.pl + g.w]


class WindowAttention(nn.Module):
    """Multi-head attention inside ws×ws windows with a learned relative position bias (self or cross)."""

    def __init__(self, dim: int, heads: int, ws: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by heads {heads}")
        self.heads, self.ws = heads, ws
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        yy, xx = torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")
        pos = torch.stack([yy.flatten(), xx.flatten()])  # (2, N)
        rel = (pos[:, :, None] - pos[:, None, :]) + (ws - 1)
        self.register_buffer("bias_index", rel[0] * (2 * ws - 1) + rel[1], persistent=False)

    def forward(self, xq: torch.Tensor, xkv: torch.Tensor) -> torch.Tensor:
        n_win, n, c = xq.shape
        h, d = self.heads, c // self.heads
        q = self.q(xq).view(n_win, n, h, d).transpose(1, 2)
        k, v = self.kv(xkv).view(n_win, n, 2, h, d).permute(2, 0, 3, 1, 4)
        bias = self.bias_table[self.bias_index.view(-1)].view(n, n, h).permute(2, 0, 1)[None].to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(n_win, n, c))


class WindowSpectralAttention(nn.Module):
    """Transposed (channel) attention, Restormer-style, with the channel affinity taken over one window.

    Per head: A = softmax(τ · norm(Q)ᵀ norm(K)) over the d channels (L2-normalised over the window's
    tokens), out = A·V. Whole-image statistics (Restormer) would make the result depend on the tile.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)  # bias-free: zero padding tokens add nothing
        self.temperature = nn.Parameter(torch.ones(1, heads, 1, 1))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_win, n, c = x.shape
        h, d = self.heads, c // self.heads
        q, k, v = self.qkv(x).view(n_win, n, 3, h, d).permute(2, 0, 3, 4, 1)  # (nW, h, d, N)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.temperature, dim=-1)  # (nW, h, d, d)
        out = (attn @ v).permute(0, 3, 1, 2).reshape(n_win, n, c)
        return self.proj(out)


class GatedFFN(nn.Module):
    """GDFN: 1x1 up to 2·hidden, depthwise 3x3, GELU(a)·b, 1x1 down (channels-last in and out)."""

    def __init__(self, dim: int, expansion: float):
        super().__init__()
        hid = max(1, int(round(dim * expansion)))
        self.up = nn.Linear(dim, 2 * hid)
        self.dw = nn.Conv2d(2 * hid, 2 * hid, 3, 1, 1, groups=2 * hid)
        self.down = nn.Linear(hid, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(self.up(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        a, b = y.chunk(2, dim=-1)
        return self.down(F.gelu(a) * b)


class SpatioSpectralLayer(nn.Module):
    """SR-stream layer: x += WSA(LN x); x += spectral(LN x); x += GDFN(LN x)."""

    def __init__(self, dim: int, heads: int, ws: int, shift: int, expansion: float):
        super().__init__()
        self.ws, self.shift = ws, shift
        self.n1, self.n2, self.n3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.spatial = WindowAttention(dim, heads, ws)
        self.spectral = WindowSpectralAttention(dim, heads)
        self.ffn = GatedFFN(dim, expansion)

    def forward(self, x: torch.Tensor, origin: Origin) -> torch.Tensor:
        win, g = _partition(self.n1(x), self.ws, origin, self.shift)
        x = x + _merge(self.spatial(win, win), g, self.ws)
        win, g = _partition(self.n2(x), self.ws, origin, self.shift)
        x = x + _merge(self.spectral(win), g, self.ws)
        return x + self.ffn(self.n3(x))


class NoiseConditionalLayer(nn.Module):
    """Denoising-stream layer: FiLM(LN h; level) -> window cross-attention to the SR features; FiLM -> GDFN."""

    def __init__(self, dim: int, heads: int, ws: int, shift: int, expansion: float, emb_dim: int):
        super().__init__()
        self.ws, self.shift = ws, shift
        self.n1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.n2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.nkv = nn.LayerNorm(dim)
        self.film = nn.Linear(emb_dim, 4 * dim)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.cross = WindowAttention(dim, heads, ws)
        self.ffn = GatedFFN(dim, expansion)

    def forward(self, h: torch.Tensor, feat: torch.Tensor, emb: torch.Tensor, origin: Origin) -> torch.Tensor:
        s1, b1, s2, b2 = self.film(emb)[:, None, None, :].chunk(4, dim=-1)
        q, g = _partition(self.n1(h) * (1 + s1) + b1, self.ws, origin, self.shift)
        kv, _ = _partition(self.nkv(feat), self.ws, origin, self.shift)
        h = h + _merge(self.cross(q, kv), g, self.ws)
        return h + self.ffn(self.n2(h) * (1 + s2) + b2)


def level_embedding(level: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Sinusoidal embedding of the continuous noise level √γ ∈ [0, 1] (WaveGrad: scaled by ``scale``)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=level.device, dtype=torch.float32) / half)
    arg = scale * level.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


@dataclass
class Conditions:
    """The SR stream's output for one (LR, MSI) pair: per-layer features and the bicubic base."""

    feats: list[torch.Tensor]  # each (B, H, W, width), channels-last
    base: torch.Tensor  # (B, C, H, W): bicubic-up(LR), or the classical prior for prior=True networks
    origin: Origin


class CDFormer(nn.Module):
    """Conditional denoising transformer (x0-prediction).

    ``forward(lr, msi, x_t, noise_level, origin=(0, 0))``: lr (B, C, h, w), msi (B, m, h·s, w·s),
    x_t (B, C, h·s, w·s), noise_level = √γ (B,) -> x̂0 (B, C, h·s, w·s). ``origin`` = scene position
    (HR row, col) of the first pixel, so windows sit on the scene grid when tiling.

    ``lr_context`` k (ours, not in the paper: it has no downsampling): k 3x3 convs on the LR grid
    (LR-HSI, block-averaged MSI and prior), bilinearly upsampled and added to the SR stream's
    embedding. Why: at ×32 an 8-pixel window sees a quarter of one LR pixel; the one-shot
    networks that beat the prior all see context at the LR scale.

    ``sr_skip`` (ours, not in the paper): the SR stream's last features are added before the
    reconstruction. Why: at the top noise level x_t is pure noise and the conditions reach the
    output only through cross-attention queried by noise; measured on CAVE ×32, such a network
    trained at that level alone stayed at its prior (docs/models/hsr-diff.md).
    """

    def __init__(self, bands: int, msi_bands: int, width: int = 64, depth: int = 4, heads: int = 4,
                 window: int = 8, ffn_expansion: float = 2.0, emb_dim: int = 128, prior: bool = False,
                 residual_scale: float = 0.0, sr_skip: bool = False, recon_init: float = 0.0,
                 lr_context: int = 0):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.bands, self.msi_bands, self.width, self.depth, self.window = bands, msi_bands, width, depth, window
        self.prior = bool(prior)
        if residual_scale < 0:
            raise ValueError(f"residual_scale must be >= 0, got {residual_scale}")
        self.residual_scale = float(residual_scale)
        self.config = dict(bands=bands, msi_bands=msi_bands, width=width, depth=depth, heads=heads, window=window,
                           ffn_expansion=ffn_expansion, emb_dim=emb_dim, prior=self.prior)
        if self.residual_scale:
            self.config["residual_scale"] = self.residual_scale
        self.sr_skip = bool(sr_skip)
        if self.sr_skip:
            self.config["sr_skip"] = True
        if recon_init < 0:
            raise ValueError(f"recon_init must be >= 0, got {recon_init}")
        if recon_init:
            self.config["recon_init"] = float(recon_init)
        if int(lr_context) != lr_context or lr_context < 0:
            raise ValueError(f"lr_context must be an integer >= 0, got {lr_context}")
        self.lr_context = int(lr_context)
        if self.lr_context:
            self.config["lr_context"] = self.lr_context
        shifts = [0 if i % 2 == 0 else window // 2 for i in range(depth)]
        # SR stream (prior=True: the classical detail-injection estimate is a third condition and the base)
        cin = bands * (2 if prior else 1) + msi_bands
        self.cond_embed = nn.Conv2d(cin, width, 3, 1, 1)
        if self.lr_context:  # ours: context at the LR grid (see the class doc)
            convs: list[nn.Module] = []
            for i in range(self.lr_context):
                convs += [nn.Conv2d(cin if i == 0 else width, width, 3, 1, 1), nn.LeakyReLU(0.2)]
            self.lr_net = nn.Sequential(*convs[:-1])
        self.sr_layers = nn.ModuleList(SpatioSpectralLayer(width, heads, window, sh, ffn_expansion) for sh in shifts)
        # denoising stream
        self.emb_dim = emb_dim
        self.level_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.x_embed = nn.Conv2d(bands, width, 3, 1, 1)
        self.dn_layers = nn.ModuleList(NoiseConditionalLayer(width, heads, window, sh, ffn_expansion, emb_dim)
                                       for sh in shifts)
        self.out_norm = nn.LayerNorm(width)
        self.recon = nn.Conv2d(width, bands, 3, 1, 1)
        nn.init.zeros_(self.recon.bias)
        if recon_init:  # a small random start: with a zero conv no gradient reaches the layers below it
            nn.init.normal_(self.recon.weight, 0.0, float(recon_init))
        else:
            nn.init.zeros_(self.recon.weight)  # an untrained network returns the bicubic base

    # -- receptive field (tiling halo)
    def radius_x_hr(self) -> int:
        """HR pixels of x_t that one x̂0 pixel depends on: embed conv + one 3x3 dw conv per layer + recon conv."""
        return self.depth + 2

    def radius_cond_hr(self, scale: int = 1) -> int:
        """HR pixels of the (upsampled) conditions one x̂0 pixel depends on, in one denoiser call.

        With ``lr_context`` k the LR-grid path reaches k LR pixels, +1 for its bilinear upsampling,
        +1 for the block an HR pixel sits in: (k + 2)·scale HR pixels before the SR layers.
        """
        ws = self.window
        sr = 1 + self.depth * (2 * (ws - 1) + 1)  # embed; per layer spatial + spectral window, dw conv
        if self.lr_context:
            sr = max(sr, self.depth * (2 * (ws - 1) + 1) + (self.lr_context + 2) * int(scale))
        return sr + (ws - 1) + self.depth + 1  # cross-attention window, later dw convs, recon

    def receptive_radius_hr(self, steps: int, scale: int = 1) -> int:
        """Upper bound on the HR context an output pixel depends on after ``steps`` sampler steps."""
        return (steps - 1) * self.radius_x_hr() + max(self.radius_cond_hr(scale), self.radius_x_hr())

    def halo_lr(self, scale: int, steps: int) -> int:
        """LR pixels of tile context making tiled == untiled (+2 for the bicubic upsampling of the LR)."""
        return int(math.ceil(self.receptive_radius_hr(steps, scale) / scale)) + 2

    # -- the two streams
    def encode(self, lr: torch.Tensor, msi: torch.Tensor, origin: Origin = (0, 0),
               prior: torch.Tensor | None = None) -> Conditions:
        check_inputs(lr, msi, self.bands, self.msi_bands)
        H, W = msi.shape[-2:]
        up = F.interpolate(lr, size=(H, W), mode="bicubic", align_corners=False)
        base = residual_base(up, prior, self.prior)
        conds = [up, msi, prior] if self.prior else [up, msi]
        f = self.cond_embed(torch.cat(conds, 1))
        if self.lr_context:
            s = H // lr.shape[-2]
            low = [lr, F.avg_pool2d(msi, s)] + ([F.avg_pool2d(prior, s)] if self.prior else [])
            ctx = self.lr_net(torch.cat(low, 1))
            f = f + F.interpolate(ctx, size=(H, W), mode="bilinear", align_corners=False)
        f = f.permute(0, 2, 3, 1)
        feats = []
        for layer in self.sr_layers:
            f = layer(f, origin)
            feats.append(f)
        return Conditions(feats, base, tuple(int(v) for v in origin))

    # -- the space diffusion runs in
    def to_latent(self, x: torch.Tensor, cond: Conditions) -> torch.Tensor:
        """Image -> diffusion variable: the image itself, or with ``residual_scale`` r > 0 the residual
        (x − base)/r. Why: the residual over the base (≈ 0.005 RMS at ×32) is what must be learned; in image
        space it is buried under the image content of x_t and the noise, in residual space it has unit scale."""
        return (x - cond.base) / self.residual_scale if self.residual_scale else x

    def from_latent(self, z: torch.Tensor, cond: Conditions) -> torch.Tensor:
        return cond.base + self.residual_scale * z if self.residual_scale else z

    def denoise(self, x_t: torch.Tensor, noise_level: torch.Tensor, cond: Conditions) -> torch.Tensor:
        """x̂0 from x_t, both in the diffusion variable's space (see ``to_latent``)."""
        if x_t.shape != cond.base.shape:
            raise ValueError(f"x_t has shape {tuple(x_t.shape)}, the conditions {tuple(cond.base.shape)}")
        level = noise_level.reshape(-1).to(x_t.device)
        if level.numel() == 1 and x_t.shape[0] > 1:
            level = level.expand(x_t.shape[0])
        emb = self.level_mlp(level_embedding(level, self.emb_dim).to(x_t.dtype))
        h0 = self.x_embed(x_t).permute(0, 2, 3, 1)
        h = h0
        for layer, feat in zip(self.dn_layers, cond.feats):
            h = layer(h, feat, emb, cond.origin)
        if self.sr_skip:  # the SR stream's last features reach the output directly (ours; see the class doc)
            h = h + cond.feats[-1]
        y = self.recon(self.out_norm(h + h0).permute(0, 3, 1, 2))
        return y if self.residual_scale else cond.base + y

    def forward(self, lr: torch.Tensor, msi: torch.Tensor, x_t: torch.Tensor, noise_level: torch.Tensor,
                origin: Origin = (0, 0), prior: torch.Tensor | None = None) -> torch.Tensor:
        """x̂0 (image space) from x_t given in the diffusion variable's space."""
        cond = self.encode(lr, msi, origin, prior)
        return self.from_latent(self.denoise(x_t, noise_level, cond), cond)


def build_cdformer(bands: int = 31, msi_bands: int = 3, **overrides: Any) -> CDFormer:
    """CDFormer with the default (small) widths; ``overrides`` replace any of DEFAULT_KWARGS."""
    kw = {**DEFAULT_KWARGS, **{k: v for k, v in overrides.items() if v is not None}}
    return CDFormer(bands, msi_bands, **kw)


def count_parameters(net: nn.Module) -> int:
    return int(sum(p.numel() for p in net.parameters()))


# ----------------------------------------------------------------------------- the Fuser
