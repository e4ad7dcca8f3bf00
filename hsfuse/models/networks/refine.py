"""``refine``: a small CNN that corrects the GSA estimate, built to cost about what GSA costs on a CPU.

Ours, not a paper's (issue 20): the published networks run every layer at the HR
resolution, which on a 2-core CPU costs 10-20x the classical fusion they refine. Here
only the first and last 3x3 convolutions see the full grid (32 channels); the body runs
on the grid halved by a lossless pixel-unshuffle (each position holds a 2x2 block's
features), where a 3x3 convolution costs a quarter per HR pixel and sees twice as far.

    y = prior + tail(act(head + up(body(down(head)))))
    head = act(conv3x3([prior, msi]))           full grid, ``hr_nf`` channels
    down = conv1x1(pixel_unshuffle(head, 2))    half grid, ``nf`` channels
    body = ``blocks`` residual blocks (conv3x3-act-conv3x3)
    up   = pixel_shuffle(conv1x1(body), 2)      back to the full grid

The tail is zero-initialised: untrained, the output is the prior. Odd sizes are
mirror-padded to even and cropped back; the unshuffle grid follows the tile's HR origin
(``NetworkFuser`` keeps tile origins even), so tiled output equals untiled output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..common import check_inputs, residual_base, upsample

__all__ = ["RefineNet"]


def _add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a + b; in inference into ``a`` (one fewer full-size buffer: on a CPU, fresh pages cost system time)."""
    return a.add_(b) if not torch.is_grad_enabled() else a + b


class _Block(nn.Module):
    def __init__(self, nf: int, bias: bool = True):
        super().__init__()
        self.c1 = nn.Conv2d(nf, nf, 3, 1, 1, bias=bias)
        self.c2 = nn.Conv2d(nf, nf, 3, 1, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _add(self.c2(F.leaky_relu(self.c1(x), 0.2, inplace=True)), x)


class RefineNet(nn.Module):
    """GSA-residual CNN with a half-resolution body (``prior=False``: a residual on bicubic up(LR) instead)."""

    architecture = "refine"
    grid_hr = 2  # 2**levels (set per instance): tile origins must be multiples of it in HR pixels
    channels_last_cpu = True  # NetworkFuser runs it channels-last on a CPU: about 35 % less time per pass (measured)

    def __init__(self, bands: int, msi_bands: int, scale: int = 8, nf: int = 64, hr_nf: int = 32, blocks: int = 2,
                 prior: bool = False, levels: int = 1, bias: bool = True):
        super().__init__()
        self.bands, self.msi_bands, self.scale, self.nf, self.hr_nf, self.blocks_n = bands, msi_bands, int(scale), nf, hr_nf, blocks
        if int(levels) < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        self.prior, self.levels = bool(prior), int(levels)
        self.grid_hr = 2 ** self.levels  # tile origins and padded sizes are multiples of this many HR pixels
        self.config = dict(bands=bands, msi_bands=msi_bands, scale=int(scale), nf=nf, hr_nf=hr_nf, blocks=blocks,
                           prior=self.prior)
        if self.levels > 1:
            self.config["levels"] = self.levels
        # bias=False: every layer is linear or leaky-ReLU, both positively homogeneous, and so are the GSA prior and
        # the LR projection: scaling both inputs by g scales the output by g exactly (any exposure, any units)
        self.bias = bool(bias)
        if not self.bias:
            self.config["bias"] = False
        self.head = nn.Conv2d(bands + msi_bands, hr_nf, 3, 1, 1, bias=bias)
        self.down = nn.Conv2d(4 * hr_nf, nf, 1, bias=bias)
        self.body = nn.Sequential(*[_Block(nf, bias) for _ in range(blocks)])
        self.up = nn.Conv2d(nf, 4 * hr_nf, 1, bias=bias)
        self.tail = nn.Conv2d(hr_nf, bands, 3, 1, 1, bias=bias)
        # coarser levels (each a further 2x2 unshuffle): context of whole LR pixels at large scales, at little cost;
        # their up-projections start at zero, so adding a level to a trained network leaves its output unchanged
        self.down_k = nn.ModuleList(nn.Conv2d(4 * nf, nf, 1, bias=bias) for _ in range(self.levels - 1))
        self.body_k = nn.ModuleList(nn.Sequential(*[_Block(nf, bias) for _ in range(blocks)]) for _ in range(self.levels - 1))
        self.up_k = nn.ModuleList(nn.Conv2d(nf, 4 * nf, 1, bias=bias) for _ in range(self.levels - 1))
        for m in [self.tail, *self.up_k]:
            nn.init.zeros_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def receptive_radius_hr(self, scale: int) -> int:
        """HR pixels of context per output pixel (an upper bound; the tiling halo)."""
        base = 0 if self.prior else 2 * scale  # bicubic up(LR): 2 LR pixels each side
        # head and tail 1 each; at level k (2^k HR pixels per position) 2 convs per block, plus the unshuffle
        # block's extent on the way down and up
        return base + 2 + sum(2 ** k * (2 * self.blocks_n + 2) for k in range(1, self.levels + 1))

    def forward(self, lr: torch.Tensor, msi: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
        s = check_inputs(lr, msi, self.bands, self.msi_bands)
        prior = residual_base(upsample(lr, s) if not self.prior else None, prior, self.prior)
        H, W = msi.shape[-2:]
        g = self.grid_hr
        ph, pw = -H % g, -W % g
        x = torch.cat([prior, msi], 1)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        h = F.leaky_relu(self.head(x), 0.2, inplace=True)
        del x
        z = self.down(F.pixel_unshuffle(h, 2))
        zs = [z]
        for down in self.down_k:  # encoder: ever coarser grids
            zs.append(down(F.pixel_unshuffle(zs[-1], 2)))
        z = zs.pop()
        for k in range(self.levels - 1, 0, -1):  # decoder: each coarse level's body, added to the finer one
            z = F.pixel_shuffle(self.up_k[k - 1](self.body_k[k - 1](z)), 2)
            z = _add(z, zs.pop())
        z = self.body(z)
        u = F.pixel_shuffle(self.up(z), 2)
        del z
        h = _add(u, h)
        y = self.tail(F.leaky_relu(h, 0.2, inplace=True))[..., :H, :W]
        return _add(y, prior)
