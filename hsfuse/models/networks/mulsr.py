"""MulSR: multi-scale-factor joint learning, adapted to LR-HSI + HR-MSI fusion.

Reimplemented from the paper's description (Q. Li, Y. Yuan, Q. Wang,
"Multiscale Factor Joint Learning for Hyperspectral Image Super-Resolution",
IEEE Trans. Geosci. Remote Sens., article 5523110; HSI SR guided by an
auxiliary RGB image). No code was copied; docs/models/mulsr.md lists what is built and every deviation.

One network serves two scale factors, ``small_scale`` (default ``scale // 2``)
and ``scale`` (the large one):

* **Two branches** of the same design (separate weights): the small-factor
  branch takes an LR-HSI at ``small_scale``, the large-factor branch one at
  ``scale``; both take the same HR-MSI (the paper's RGB) and produce the HR
  cube. Each branch is a **symmetrical guided encoder (SGE)**: an HSI stream on
  the bicubic-upsampled LR-HSI and an MSI stream, ``blocks`` guided residual
  blocks in which each stream is updated from the concatenation of both
  (3x3 convs, ``nf`` = 64 channels by default).
* **Multiscale information interaction (MII)** after every SGE block: a
  **direction-aware spatial context aggregation (DSCA)** module reads both
  branches' HSI features, aggregates context along the four directions (left,
  right, up, down) and weighs the directions with per-pixel attention, and
  feeds the result back into both branches. Deviation: the paper's DSC follows
  the spatial-RNN (IRNN) design, which propagates over the whole image; here
  each direction is a one-sided depthwise convolution of length ``context``
  (bounded receptive field: tiled = untiled with a halo, no sequential scan).
* **Learnable feedback compensation correction (LFCC)**: the difference of the
  two branches' HR estimates is encoded (convs, learnable per-channel gain)
  and added to the large-factor branch's features, which are decoded again:
  the corrected large-factor estimate.

``forward(lr, msi, prior=None, lr_small=None)`` returns
``MulSROutput(small, large)``, both (B, C, H, W). The scale of the given pair
decides what the other branch sees: at ``x scale`` the small-factor input is
``lr_small`` if given (training: the HR cube degraded by ``small_scale``) else
the LR bicubic-upsampled to the ``small_scale`` grid; at ``x small_scale`` the
large-factor input is the LR box-averaged by ``scale // small_scale``.
:meth:`MulSR.predict` (and :class:`SelectOutput`, a module wrapper for code
that expects one tensor) returns the output matching the inputs' scale.

Heads are zero-initialised: untrained, both outputs equal their branch's base
(bicubic up of that branch's input, or the classical prior with ``prior=True``).

Training recipe of the paper (kept in :data:`RECIPE`): Adam (beta 0.9/0.99),
learning rate 1e-4 halved every 30 epochs; L1 on both outputs (:func:`mulsr_loss`).

>>> net = MulSR(bands=31, msi_bands=3, scale=8)        # serves x4 and x8
>>> small, large = net(lr_x8, msi)
>>> z = net.predict(lr_x8, msi)                         # == large
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..common import check_inputs, spectral_angle_loss

__all__ = ["MulSR", "MulSROutput", "SelectOutput", "DSCA", "mulsr_loss", "RECIPE"]

#: the paper's optimisation recipe (docs/models/mulsr.md)
RECIPE = {"optimizer": "Adam", "betas": (0.9, 0.99), "lr": 1e-4, "lr_halve_every_epochs": 30, "loss": "L1 on both outputs"}


class MulSROutput(NamedTuple):
    small: torch.Tensor  # HR estimate of the small-scale-factor branch
    large: torch.Tensor  # HR estimate of the large-scale-factor branch after feedback correction


class GuidedBlock(nn.Module):
    """Symmetrical guidance: each stream is updated from both (conv-act-conv, residual)."""

    def __init__(self, nf: int):
        super().__init__()
        act = lambda: nn.LeakyReLU(0.2, inplace=True)  # noqa: E731
        self.h = nn.Sequential(nn.Conv2d(2 * nf, nf, 3, 1, 1), act(), nn.Conv2d(nf, nf, 3, 1, 1))
        self.r = nn.Sequential(nn.Conv2d(2 * nf, nf, 3, 1, 1), act(), nn.Conv2d(nf, nf, 3, 1, 1))

    def forward(self, h: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return h + self.h(torch.cat([h, r], 1)), r + self.r(torch.cat([r, h], 1))


class DSCA(nn.Module):
    """Direction-aware spatial context aggregation between two feature maps.

    Context along each of the four directions is a one-sided depthwise
    convolution of length ``context``; a 3x3 conv predicts per-pixel softmax
    weights over the directions; a 1x1 conv returns one update per input.
    """

    def __init__(self, nf: int, context: int = 9):
        super().__init__()
        self.context = context
        self.inp = nn.Sequential(nn.Conv2d(2 * nf, nf, 1), nn.LeakyReLU(0.2, inplace=True))
        self.horiz = nn.ModuleList(nn.Conv2d(nf, nf, (1, context), groups=nf) for _ in range(2))  # from left, from right
        self.vert = nn.ModuleList(nn.Conv2d(nf, nf, (context, 1), groups=nf) for _ in range(2))  # from above, from below
        self.att = nn.Conv2d(nf, 4, 3, 1, 1)
        self.out = nn.Conv2d(2 * nf, 2 * nf, 1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.inp(torch.cat([a, b], 1))
        L = self.context - 1
        ctx = torch.stack([
            self.horiz[0](F.pad(x, (L, 0, 0, 0), mode="replicate")),
            self.horiz[1](F.pad(x, (0, L, 0, 0), mode="replicate")),
            self.vert[0](F.pad(x, (0, 0, L, 0), mode="replicate")),
            self.vert[1](F.pad(x, (0, 0, 0, L), mode="replicate")),
        ], 1)  # (B, 4, nf, H, W)
        w = torch.softmax(self.att(x), 1).unsqueeze(2)
        o = self.out(torch.cat([x, (w * ctx).sum(1)], 1))
        return o.chunk(2, 1)


class Branch(nn.Module):
    """One scale factor's symmetrical guided encoder and decoder."""

    def __init__(self, bands: int, msi_bands: int, nf: int, blocks: int):
        super().__init__()
        self.h_in = nn.Conv2d(bands, nf, 3, 1, 1)
        self.r_in = nn.Conv2d(msi_bands, nf, 3, 1, 1)
        self.blocks = nn.ModuleList(GuidedBlock(nf) for _ in range(blocks))
        self.dec = nn.Sequential(nn.Conv2d(2 * nf, nf, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(nf, bands, 3, 1, 1))
        nn.init.zeros_(self.dec[-1].weight)
        nn.init.zeros_(self.dec[-1].bias)

    def decode(self, h: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return self.dec(torch.cat([h, r], 1))


class MulSR(nn.Module):
    """The MulSR network: two guided-encoder branches (small and large factor), MII and LFCC."""

    architecture = "mulsr"

    def __init__(self, bands: int, msi_bands: int, scale: int = 8, small_scale: int | None = None, nf: int = 64,
                 blocks: int = 3, context: int = 9, prior: bool = False):
        super().__init__()
        small_scale = int(small_scale) if small_scale else max(1, int(scale) // 2)
        if small_scale >= scale or scale % small_scale:
            raise ValueError(f"small_scale={small_scale} must divide scale={scale} and be smaller")
        self.bands, self.msi_bands, self.prior, self.nf = bands, msi_bands, bool(prior), nf
        self.scale, self.small_scale, self.blocks_n, self.context = int(scale), small_scale, blocks, context
        self.config = dict(bands=bands, msi_bands=msi_bands, scale=int(scale), small_scale=small_scale, nf=nf,
                           blocks=blocks, context=context, prior=bool(prior))
        self.small = Branch(bands, msi_bands, nf, blocks)
        self.large = Branch(bands, msi_bands, nf, blocks)
        self.mii = nn.ModuleList(DSCA(nf, context) for _ in range(blocks))
        self.fb = nn.Sequential(nn.Conv2d(bands, nf, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(nf, nf, 3, 1, 1))
        self.fb_gain = nn.Parameter(torch.ones(1, nf, 1, 1))  # learnable compensation gain
        self.prior_in = nn.Conv2d(bands, nf, 3, 1, 1) if prior else None

    @property
    def scales(self) -> tuple[int, int]:
        return (self.small_scale, self.scale)

    def receptive_radius_hr(self, scale: int) -> int:
        """HR pixels of context each output pixel depends on (an upper bound; the tiling halo)."""
        L = self.context - 1
        inputs = 2 * self.scale + self.scale  # bicubic of the (possibly box-averaged) coarsest branch input
        enc = 1 + self.blocks_n * (2 + L + 1)  # in conv, per block 2 convs + DSCA (context + 3x3 attention)
        return inputs + 2 * enc + 2 + 2  # twice: LFCC re-decodes after the feedback convs; decoder convs

    def _inputs(self, lr: torch.Tensor, s: int, lr_small: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = lr.shape[-2:]
        r = self.scale // self.small_scale
        if s == self.scale:
            if lr_small is None:
                lr_small = F.interpolate(lr, size=(h * r, w * r), mode="bicubic", align_corners=False)
            return lr_small, lr
        if s == self.small_scale:
            return lr, F.interpolate(lr, size=(math.ceil(h / r), math.ceil(w / r)), mode="area")
        raise ValueError(f"this MulSR serves x{self.small_scale} and x{self.scale}, the inputs are x{s}")

    def forward(self, lr: torch.Tensor, msi: torch.Tensor, prior: torch.Tensor | None = None,
                lr_small: torch.Tensor | None = None) -> MulSROutput:
        s = check_inputs(lr, msi, self.bands, self.msi_bands)
        H, W = msi.shape[-2:]
        if self.prior and prior is None:
            raise ValueError("this network was built with prior=True: pass prior=(B, C, H, W)")
        x_s, x_l = self._inputs(lr, s, lr_small)
        up_s = F.interpolate(x_s, size=(H, W), mode="bicubic", align_corners=False)
        up_l = F.interpolate(x_l, size=(H, W), mode="bicubic", align_corners=False)
        base_s, base_l = (prior, prior) if self.prior else (up_s, up_l)
        hs, rs = self.small.h_in(up_s), self.small.r_in(msi)
        hl, rl = self.large.h_in(up_l), self.large.r_in(msi)
        if self.prior_in is not None:  # both branches also see the classical estimate they refine
            pe = self.prior_in(prior)
            hs, hl = hs + pe, hl + pe
        for i in range(self.blocks_n):
            hs, rs = self.small.blocks[i](hs, rs)
            hl, rl = self.large.blocks[i](hl, rl)
            ds, dl = self.mii[i](hs, hl)
            hs, hl = hs + ds, hl + dl
        y_s = base_s + self.small.decode(hs, rs)
        y_l = base_l + self.large.decode(hl, rl)
        hl = hl + self.fb_gain * self.fb(y_s - y_l)  # feedback compensation into the large-factor branch
        y_l = base_l + self.large.decode(hl, rl)
        return MulSROutput(y_s, y_l)

    def predict(self, lr: torch.Tensor, msi: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
        """The HR estimate for the inputs' own scale (the Fuser-facing call)."""
        s = msi.shape[-1] // lr.shape[-1]
        out = self(lr, msi, prior)
        return out.large if s == self.scale else out.small


class SelectOutput(nn.Module):
    """Wraps a MulSR so that ``forward(lr, msi, prior)`` returns one tensor (for code written for CSAKD-like nets)."""

    def __init__(self, net: MulSR):
        super().__init__()
        self.net = net
        self.prior = net.prior
        self.scale, self.small_scale = net.scale, net.small_scale  # the tiler aligns tiles at the small scale

    def forward(self, lr: torch.Tensor, msi: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
        return self.net.predict(lr, msi, prior)

    def receptive_radius_hr(self, scale: int) -> int:
        return self.net.receptive_radius_hr(scale)


def mulsr_loss(out: MulSROutput, gt: torch.Tensor, w_small: float = 1.0, w_large: float = 1.0,
               w_sam: float = 0.0) -> dict[str, torch.Tensor]:
    """L1 of both outputs against the same HR ground truth; ``"total"`` is the weighted sum.

    ``w_sam`` > 0 adds the spectral angle (radians) of the large-scale output, which the paper
    does not use: our addition, to trade a little PSNR for SAM (docs/models/mulsr.md).
    """
    terms = {"small": w_small * F.l1_loss(out.small, gt), "large": w_large * F.l1_loss(out.large, gt)}
    if w_sam:
        terms["sam"] = w_sam * spectral_angle_loss(out.large, gt)
    terms["total"] = sum(terms.values())
    return terms


def build_mulsr(bands: int = 31, msi_bands: int = 3, scale: int = 8, prior: bool = False, **kw: Any) -> MulSR:
    return MulSR(bands, msi_bands, scale=scale, prior=prior, **kw)
