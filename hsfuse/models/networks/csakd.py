"""CSAKD: dual two-streamed fusion network with cross self-attention, teacher and student.

Reimplemented from the paper's description (C.-C. Hsu, C.-C. Ni, C.-M. Lee,
L.-W. Kang, "CSAKD: Knowledge Distillation with Cross Self-Attention for
Hyperspectral and Multispectral Image Fusion", arXiv 2406.19666, 2024; the
S3RNet paper by the same group describes the same network, hence the alias
``S3RNet``). No code was copied; docs/models/csakd.md lists the deviations.

Four parallel streams, each ``conv3x3 -> n x MSFA``:

* (a) HR joint: concat(up(LR) [or the prior], MSI) at HR resolution
* (b) LR joint: concat(LR, down(MSI)) at LR resolution, upsampled after
* (c) LR-HSI alone at LR resolution, upsampled after
* (d) MSI alone at HR resolution

An MSFA (multi-scale feature aggregation, the paper's cross-layer residual
aggregation) block is three RRDB-style dense blocks (five 3x3 convs, growth
``gc``, LeakyReLU 0.2, residual scaled by 0.2) with an outer scaled residual.
The streams meet in a channel-wise multi-head cross attention (Q from a, K from
b, V from c; transposed attention over channels as in Restormer) added to d,
then a sigmoid gate weighs the four streams, and a head maps to the bands.

Deviations (on purpose): the cross attention runs on the LR grid (queries from
stream (a) average-pooled onto it; keys and values from the LR-native streams b
and c before their upsampling; the result is upsampled bilinearly), which costs
s^2 times less than at HR; and its channel-affinity statistics are taken over a
local ``attn_window`` x ``attn_window`` LR window around each pixel instead of
over the whole image, so the output depends only on a bounded neighbourhood and
tiled fusion equals untiled fusion (``receptive_radius_hr``).

``prior=True`` adds the per-scene adaptive path: the network also takes the
classical detail-injection estimate (C, H, W), feeds it to stream (a) in place
of the upsampled LR and outputs ``prior + residual`` with a zero-initialised
last conv, so an untrained network returns the prior exactly.

>>> net = build_csakd("student", bands=31, msi_bands=3, prior=True)
>>> z = net(lr, msi, prior=gsa)            # (B, 31, H, W)
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..common import check_inputs, residual_base

def _round_up(x: float, m: int) -> int:
    return int(max(m, math.ceil(x / m) * m))


def default_widths(kind: str, bands: int) -> dict[str, int]:
    """Widths scaling with the band count (teacher ~2x bands, student ~1x, grouped)."""
    if kind == "teacher":
        nf = _round_up(2 * bands, 16)
        return {"nf": nf, "gc": nf // 2, "groups": 1, "blocks_hr": 2, "blocks_lr": 2, "heads": max(1, nf // 8)}
    if kind == "student":
        nf = _round_up(bands, 8)
        # groups=2: on CPU (mkldnn) groups=4 was slower than 2 per step despite fewer FLOPs (measured)
        return {"nf": nf, "gc": nf // 2, "groups": 2, "blocks_hr": 1, "blocks_lr": 1, "heads": max(1, nf // 4)}
    raise ValueError(f"kind must be 'teacher' or 'student', got {kind!r}")


class DenseBlock(nn.Module):
    """Five 3x3 convs with dense connections (growth ``gc``), LeakyReLU 0.2, residual x 0.2.

    ``groups`` > 1 (student): the first four convs are grouped; the fifth is
    full so information still mixes across groups.
    """

    def __init__(self, nf: int, gc: int, groups: int = 1):
        super().__init__()
        g = groups
        self.convs = nn.ModuleList(nn.Conv2d(nf + i * gc, gc, 3, 1, 1, groups=g) for i in range(4))
        self.conv5 = nn.Conv2d(nf + 4 * gc, nf, 3, 1, 1)
        self.act = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in self.convs:
            feats.append(self.act(conv(torch.cat(feats, 1))))
        return x + 0.2 * self.conv5(torch.cat(feats, 1))


class MSFA(nn.Module):
    """Multi-scale feature aggregation: three dense blocks and an outer residual (x 0.2)."""

    def __init__(self, nf: int, gc: int, groups: int = 1):
        super().__init__()
        self.body = nn.Sequential(*(DenseBlock(nf, gc, groups) for _ in range(3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.2 * self.body(x)


class Stream(nn.Module):
    def __init__(self, cin: int, nf: int, gc: int, blocks: int, groups: int):
        super().__init__()
        self.first = nn.Conv2d(cin, nf, 3, 1, 1)
        self.blocks = nn.Sequential(*(MSFA(nf, gc, groups) for _ in range(blocks)))
        self.depth = blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.first(x))

    @property
    def radius(self) -> int:
        """Receptive radius in pixels of the stream's own grid."""
        return 1 + 15 * self.depth


class CrossSelfAttention(nn.Module):
    """Channel-wise multi-head cross attention: Q from a, K from b, V from c (Restormer-style).

    For each head the (d x d) channel affinity is the cosine similarity of the
    query and key channels over a local ``window`` of the LR grid (see the module docstring),
    scaled by a learned temperature and softmax-normalised over key channels.
    """

    def __init__(self, nf: int, heads: int, window: int = 3):
        super().__init__()
        if nf % heads:
            raise ValueError(f"nf={nf} is not divisible by heads={heads}")
        if window % 2 == 0:
            raise ValueError("attn_window must be odd")
        self.heads, self.window = heads, window
        self.q = nn.Sequential(nn.Conv2d(nf, nf, 1), nn.Conv2d(nf, nf, 3, 1, 1, groups=nf))
        self.k = nn.Sequential(nn.Conv2d(nf, nf, 1), nn.Conv2d(nf, nf, 3, 1, 1, groups=nf))
        self.v = nn.Sequential(nn.Conv2d(nf, nf, 1), nn.Conv2d(nf, nf, 3, 1, 1, groups=nf))
        self.temperature = nn.Parameter(torch.ones(1, heads, 1, 1, 1, 1))
        self.proj = nn.Conv2d(nf, nf, 1)

    def _pool(self, t: torch.Tensor) -> torch.Tensor:
        w = self.window
        return F.avg_pool2d(t, w, 1, w // 2, count_include_pad=False)

    def forward(self, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        bsz, nf, h, w = a.shape
        nh, d = self.heads, nf // self.heads
        q = self.q(a).view(bsz, nh, d, 1, h, w)
        k = self.k(b).view(bsz, nh, 1, d, h, w)
        v = self.v(c).view(bsz, nh, 1, d, h, w)
        qk = self._pool((q * k).reshape(bsz, nh * d * d, h, w)).view(bsz, nh, d, d, h, w)
        qq = self._pool((q * q).reshape(bsz, nh * d, h, w)).view(bsz, nh, d, 1, h, w)
        kk = self._pool((k * k).reshape(bsz, nh * d, h, w)).view(bsz, nh, 1, d, h, w)
        sim = qk * torch.rsqrt(qq * kk + 1e-6)
        attn = torch.softmax(sim * self.temperature, dim=3)
        out = (attn * v).sum(3).reshape(bsz, nf, h, w)
        return self.proj(out)


class CSAKDNet(nn.Module):
    """The CSAKD fusion network (teacher or student are the same class with different widths).

    ``forward(lr, msi, prior=None)``: lr (B, C, h, w), msi (B, m, h*s, w*s),
    prior (B, C, h*s, w*s) when built with ``prior=True``; returns (B, C, h*s, w*s).
    Any integer scale s (read from the shapes) and any band counts.
    """

    def __init__(self, bands: int, msi_bands: int, nf: int = 32, gc: int = 16, groups: int = 1,
                 blocks_hr: int = 1, blocks_lr: int = 1, heads: int = 4, attn_window: int = 3,
                 prior: bool = False, kind: str = "custom"):
        super().__init__()
        if nf % groups or gc % groups:
            raise ValueError(f"nf={nf} and gc={gc} must be multiples of groups={groups}")
        self.bands, self.msi_bands, self.prior, self.kind = bands, msi_bands, prior, kind
        self.config = dict(bands=bands, msi_bands=msi_bands, nf=nf, gc=gc, groups=groups, blocks_hr=blocks_hr,
                           blocks_lr=blocks_lr, heads=heads, attn_window=attn_window, prior=prior, kind=kind)
        self.s_hr = Stream(bands + msi_bands, nf, gc, blocks_hr, groups)  # (a)
        self.s_lr = Stream(bands + msi_bands, nf, gc, blocks_lr, groups)  # (b)
        self.s_hsi = Stream(bands, nf, gc, blocks_lr, groups)  # (c)
        self.s_msi = Stream(msi_bands, nf, gc, blocks_hr, groups)  # (d)
        self.csa = CrossSelfAttention(nf, heads, attn_window)
        self.gate = nn.Conv2d(4 * nf, 4 * nf, 1)
        self.head = nn.Sequential(nn.Conv2d(nf, nf, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(nf, bands, 3, 1, 1))
        nn.init.zeros_(self.head[-1].weight)  # start at the base (prior or bicubic)
        nn.init.zeros_(self.head[-1].bias)
        self.nf = nf

    def receptive_radius_hr(self, scale: int) -> int:
        """HR pixels of context each output pixel depends on (an upper bound; the tiling halo)."""
        s = scale
        base = 0 if self.prior else 2 * s  # bicubic up(LR) reaches 2 LR pixels
        hr = self.s_hr.radius + base + s  # stream (a), pooled onto the LR grid for the queries
        lr = (self.s_lr.radius + 1) * s  # LR streams (their MSI input is pooled over s x s blocks)
        csa = (1 + self.csa.window // 2 + 1) * s  # depthwise conv + attention window on the LR grid, bilinear up
        return max(hr, lr) + csa + 2  # + head convs

    def forward(self, lr: torch.Tensor, msi: torch.Tensor, prior: torch.Tensor | None = None,
                return_features: bool = False):
        s = check_inputs(lr, msi, self.bands, self.msi_bands)
        H, W = msi.shape[-2:]
        up = F.interpolate(lr, size=(H, W), mode="bicubic", align_corners=False)
        base = residual_base(up, prior, self.prior)
        msi_lr = F.avg_pool2d(msi, s) if s > 1 else msi
        fa = self.s_hr(torch.cat([base, msi], 1))
        fb = self.s_lr(torch.cat([lr, msi_lr], 1))
        fc = self.s_hsi(lr)
        fd = self.s_msi(msi)
        # cross attention on the LR grid: Q from stream (a) pooled onto it, K/V from the LR-native streams
        qa = F.avg_pool2d(fa, s) if s > 1 else fa
        att = self.csa(qa, fb, fc)
        if s > 1:
            fb = F.interpolate(fb, size=(H, W), mode="bilinear", align_corners=False)
            fc = F.interpolate(fc, size=(H, W), mode="bilinear", align_corners=False)
            att = F.interpolate(att, size=(H, W), mode="bilinear", align_corners=False)
        fused = fd + att
        streams = torch.stack([fa, fb, fc, fused], 1)  # (B, 4, nf, H, W)
        g = torch.sigmoid(self.gate(streams.flatten(1, 2))).view_as(streams)
        feat = (g * streams).sum(1)
        out = base + self.head(feat)
        return (out, feat) if return_features else out


def build_csakd(kind: str = "student", bands: int = 31, msi_bands: int = 3, prior: bool = False, **overrides: Any) -> CSAKDNet:
    """A teacher or student with widths scaled to ``bands`` (``overrides`` replace any width)."""
    cfg = default_widths(kind, bands)
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return CSAKDNet(bands, msi_bands, prior=prior, kind=kind, **cfg)


def student_from_record(**kwargs: Any) -> CSAKDNet:
    """The student a weights record describes (``architectures.py``: "csakd-student")."""
    return CSAKDNet(kind="student", **{k: v for k, v in kwargs.items() if k != "kind"})


def teacher_from_record(**kwargs: Any) -> CSAKDNet:
    """The teacher a weights record describes (``architectures.py``: "csakd-teacher")."""
    return CSAKDNet(kind="teacher", **{k: v for k, v in kwargs.items() if k != "kind"})


def CSAKDTeacher(bands: int = 31, msi_bands: int = 3, prior: bool = False, **kw: Any) -> CSAKDNet:
    return build_csakd("teacher", bands, msi_bands, prior, **kw)


def CSAKDStudent(bands: int = 31, msi_bands: int = 3, prior: bool = False, **kw: Any) -> CSAKDNet:
    return build_csakd("student", bands, msi_bands, prior, **kw)


#: S3RNet (same authors) describes the same network.
S3RNet = CSAKDNet
S3RNetTeacher, S3RNetStudent = CSAKDTeacher, CSAKDStudent
