"""UMSFT: zero-shot fusion by per-scene optimisation of a multi-level spatio-spectral fusion transformer.

After Cao et al., "Unsupervised Multi-level Spatio-spectral Fusion Transformer
for Hyperspectral Image Super-resolution": a network is optimised on the one
pair to fuse, with no training data. What is implemented (details and the
deviations in docs/models/umsft.md):

* **Inputs**: the LR-HSI brought to the MSI grid (the *base*: by default,
  ``base='gsa'``, the registry's detail-injection Fuser
  ``hsfuse.models.classical.DetailInjection`` run on the same tile — options
  ``base_<name>`` are passed to it; or plain bicubic, ``base='bicubic'``,
  measured 16 dB worse on CAVE ×8) and the HR-MSI, each normalised with
  scene-wide band statistics taken in ``fit``. The base has no parameters, so
  at reduced scale it is computed once before the optimisation.
* **Hierarchical features** of both inputs at ``levels`` (default 3) levels.
  Levels are *undecimated* (dilation 2^l instead of stride-2 pooling) so that
  every operation is a translation-equivariant local filter: a tile with enough
  halo gives exactly the untiled result, for any scale (a strided pyramid
  changes phase with the tile origin when s is not a multiple of 2^levels).
* **Spatio-spectral fusion attention (SSFA) block** per level: a spatial fusion
  module (convolutions over both feature maps) supplies the values; spectral
  cross-attention takes queries from the HSI features and keys from the MSI
  features and attends along the channel dimension (Restormer-style transposed
  attention, per head a d×d matrix). Deviation: Restormer sums qᵢkⱼ over the
  whole image, which makes the output depend on the tile; here the sums run
  over a local window (box of (2·w+1)·2^l pixels), so the attention matrix is
  per-pixel and the block stays local. A gated depthwise feed-forward follows.
  Levels are fused one after the other, from the finest receptive field to the
  widest: level l takes its own encoder features plus the fused features of
  level l−1.
* **Decoder** to C bands, added to the base (residual learning). By default
  (``correction='relative'``) the correction is scaled by the base's magnitude,
  Ẑ = base + f(·)·(|base| + 0.05·μ), which keeps the spectral angle of dark
  pixels (CAVE peppers ×8 with a global-regression base: 47.8 dB / SAM 3.5° against 47.6 dB / 4.2° for the plain
  additive ``correction='add'``, Ẑ = base + f(·)·σ_band).
* **Loss**: the re-degradation loss of the paper ‖LR − degrade(Ẑ, PSF)‖₁ +
  λ‖MSI − SRF·Ẑ‖₁, plus a SAM term (substitute for the paper's regularisers)
  and, in the reduced-resolution setting below, the Wald supervision ‖Ẑ − LR‖₁.
  The SRF is ``problem.srf`` (given or estimated by the engine's caller) or
  estimated here by non-negative least squares; with ``learn_srf=True`` it is
  refined jointly as a parameter initialised from that estimate.

**Where the optimisation happens (tile invariance).** The engine calls
``fit(lr, msi_lr)`` once with the whole LR cube and the MSI degraded onto the
LR grid, then ``fuse_tile`` per tile. The network is optimised once, in
``fit``, in the *reduced-resolution* (Wald / ZSL) setting: inputs
``(degrade(LR), msi_lr)``, target ``LR``, i.e. the same fusion problem one
scale down where the LR is the ground truth; the trained network is then
applied at full scale tile by tile (scale-invariance assumption). ``fuse_tile``
only runs the network, so tiling does not change the result. When the LR is too
small for a reduced pair at the full factor (h/s < ``min_train_lr``, e.g. ×32 on
a 512² scene), training uses the largest factor s' < s that leaves enough
pixels, with a Gaussian PSF whose width is scaled by s'/s (documented
limitation: the network then sees less blur in training than at test time).

Options (``problem.options`` / ``--opt``): ``iters`` (default 2000 on CUDA, 300
on CPU), ``seed`` (0), ``lr_rate`` (2e-3), ``features`` (32), ``levels`` (3),
``heads`` (8), ``window`` (3), ``base`` ('gsa' | 'bicubic'), ``correction`` ('relative' | 'add'), ``lambda_msi``
(1.0), ``w_sup`` (1.0), ``w_sam`` (0.1), ``learn_srf`` (False),
``min_train_lr`` (8), ``train_crop`` (128: LR-grid pixels per random training crop,
bounding the cost per iteration on large scenes).

Progress: if the engine sets ``fuser.progress = callback(stage, done, total)``
the training loop reports ``("umsft optimise", it, iters)``.

    $ hsfuse fuse lr.tif msi.tif --model umsft --psf est.json --srf est.json -o fused.tif

    >>> f = UMSFT(FusionProblem(8, 31, 3, psf=psf, srf=R, options={"iters": 300}))
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import numpy as np

from ..errors import ModelError
from ..forward.degrade import spatial_degrade_t
from ..forward.psf import Psf
from ..fusion.base import Fuser, FusionProblem

__all__ = ["UMSFT", "build_net", "torch_upsample"]


# --------------------------------------------------------------------------- torch forward model


def torch_upsample(x, s: int):
    """``hsfuse.models.common.upsample`` for (B, C, h, w)."""
    from .common import upsample

    return upsample(x, s) if s != 1 else x


# --------------------------------------------------------------------------- the network


def build_net(c: int, m: int, features: int = 32, levels: int = 3, heads: int = 8, window: int = 3):
    """The UMSFT network (torch.nn.Module): forward(base_n (B,C,H,W), msi_n (B,m,H,W)) -> correction (B,C,H,W)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class LayerNorm2d(nn.Module):  # per-pixel LayerNorm over channels (local: tile invariant)
        def __init__(self, ch: int):
            super().__init__()
            self.ln = nn.LayerNorm(ch)

        def forward(self, x):
            return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def conv(ci, co, k=3, d=1, groups=1):
        return nn.Conv2d(ci, co, k, padding=d * (k // 2), dilation=d, groups=groups)

    class ResBlock(nn.Module):
        def __init__(self, ch: int, d: int):
            super().__init__()
            self.c1, self.c2 = conv(ch, ch, 3, d), conv(ch, ch, 3, d)

        def forward(self, x):
            return x + self.c2(F.gelu(self.c1(x)))

    class SSFA(nn.Module):
        """Spatio-spectral fusion attention: spatial fusion -> values; channel cross-attention q(HSI)·k(MSI)."""

        def __init__(self, ch: int, d: int, heads: int, window: int):
            super().__init__()
            self.heads, self.d, self.win = heads, d, window * d
            self.nh, self.nm = LayerNorm2d(ch), LayerNorm2d(ch)
            self.spatial = nn.Sequential(nn.Conv2d(2 * ch, ch, 1), nn.GELU(), conv(ch, ch, 3, d))
            self.q = nn.Sequential(nn.Conv2d(ch, ch, 1), conv(ch, ch, 3, d, groups=ch))
            self.k = nn.Sequential(nn.Conv2d(ch, ch, 1), conv(ch, ch, 3, d, groups=ch))
            self.temp = nn.Parameter(torch.ones(heads, 1, 1, 1, 1))
            self.proj = nn.Conv2d(ch, ch, 1)
            self.nf = LayerNorm2d(ch)
            self.ffn_in = nn.Conv2d(ch, 2 * ch, 1)
            self.ffn_dw = conv(2 * ch, 2 * ch, 3, d, groups=2 * ch)
            self.ffn_out = nn.Conv2d(ch, ch, 1)

        def _box(self, t):  # local mean over a (2·win+1)² window, per channel; zero outside (only halo sees it)
            if self.win < 1:
                return t
            p = self.win  # separable running sums by cumsum: O(1) per pixel whatever the window
            for dim in (2, 3):
                n = t.shape[dim]
                pad = [0, 0, 0, 0]
                pad[2 * (3 - dim)], pad[2 * (3 - dim) + 1] = p + 1, p
                cs = F.pad(t, pad).cumsum(dim)
                t = cs.narrow(dim, 2 * p + 1, n) - cs.narrow(dim, 0, n)
            return t / float((2 * p + 1) ** 2)

        def forward(self, h, m):
            hn, mn = self.nh(h), self.nm(m)
            v = self.spatial(torch.cat([hn, mn], 1))  # (B, ch, H, W): the values
            q, k = self.q(hn), self.k(mn)
            b, ch, H, W = q.shape
            nh, dh = self.heads, ch // self.heads
            q = q.view(b, nh, dh, H, W)
            k = k.view(b, nh, dh, H, W)
            vv = v.view(b, nh, dh, H, W)
            # local transposed attention: S_ij(x) = Σ_window q_i k_j / sqrt(Σ q_i² Σ k_j²)
            qk = self._box((q.unsqueeze(3) * k.unsqueeze(2)).reshape(b, nh * dh * dh, H, W)).view(b, nh, dh, dh, H, W)
            qn = self._box((q * q).reshape(b, nh * dh, H, W)).view(b, nh, dh, 1, H, W)
            kn = self._box((k * k).reshape(b, nh * dh, H, W)).view(b, nh, 1, dh, H, W)
            att = qk / torch.sqrt(qn * kn + 1e-6) * self.temp.view(1, nh, 1, 1, 1, 1)
            att = att.softmax(dim=3)
            out = (att * vv.unsqueeze(2)).sum(3).reshape(b, ch, H, W)
            x = v + self.proj(out)
            g1, g2 = self.ffn_dw(self.ffn_in(self.nf(x))).chunk(2, 1)
            return x + self.ffn_out(F.gelu(g1) * g2)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            f = features
            self.levels = levels
            self.h_in, self.m_in = conv(c, f), conv(m, f)
            self.h_enc = nn.ModuleList([ResBlock(f, 2 ** lv) for lv in range(levels)])
            self.m_enc = nn.ModuleList([ResBlock(f, 2 ** lv) for lv in range(levels)])
            self.fuse = nn.ModuleList([SSFA(f, 2 ** lv, heads, window) for lv in range(levels)])
            self.carry = nn.ModuleList([nn.Conv2d(f, f, 1) for _ in range(levels)])
            self.dec = nn.Sequential(nn.Conv2d(levels * f, f, 1), nn.GELU(), conv(f, f), nn.GELU(), conv(f, c))
            nn.init.zeros_(self.dec[-1].weight)
            nn.init.zeros_(self.dec[-1].bias)

        def forward(self, base, msi):
            h, mm = self.h_in(base), self.m_in(msi)
            fused, prev = [], None
            for lv in range(self.levels):
                h, mm = self.h_enc[lv](h), self.m_enc[lv](mm)
                x = h if prev is None else h + self.carry[lv](prev)
                prev = self.fuse[lv](x, mm)
                fused.append(prev)
            return self.dec(torch.cat(fused, 1))

        def radius(self) -> int:
            """Receptive-field radius in pixels (every conv/pool reach added up)."""
            r = 1 + 1  # h_in / m_in
            for lv in range(levels):
                d = 2 ** lv
                r += 2 * d  # encoder ResBlock
                r += d + d + d * window + d  # spatial conv, q/k dwconv, box window, ffn dwconv
            return r + 2  # decoder convs

    return Net()


# --------------------------------------------------------------------------- the Fuser


def _default_iters(device: str) -> int:
    return 2000 if str(device).startswith("cuda") else 300


def _band_stats(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = a.reshape(a.shape[0], -1).astype(np.float64)
    ok = np.isfinite(x)
    n = np.maximum(ok.sum(1), 1)
    mu = np.where(ok, x, 0).sum(1) / n
    sd = np.sqrt(np.where(ok, (x - mu[:, None]) ** 2, 0).sum(1) / n)
    return mu, np.maximum(sd, 1e-6 * max(float(np.abs(mu).max()), 1e-12))


class UMSFT(Fuser):
    """Zero-shot multi-level spatio-spectral fusion transformer (name "umsft"); see the module docstring."""

    name = "umsft"

    def __init__(self, problem: FusionProblem, device: str = "cpu", precision: str = "fp32"):
        super().__init__(problem, device, precision)
        if problem.msi_bands > problem.lr_bands:
            raise ModelError(f"umsft: the MSI has more bands ({problem.msi_bands}) than the LR cube "
                             f"({problem.lr_bands}): are the inputs swapped?")
        if problem.msi_bands < 1 or problem.lr_bands < 1:
            raise ModelError("umsft: both inputs need at least one band")
        self.scale = int(problem.scale)
        self.psf = problem.psf if problem.psf is not None else Psf.gaussian(self.scale)
        self.psf_assumed = problem.psf is None
        if self.psf.scale != self.scale:
            raise ModelError(f"umsft: PSF scale {self.psf.scale} != inputs scale {self.scale}")
        o = problem.options if problem.options is not None else {}  # read only (the engine tracks which keys)
        self.opts = o
        self.iters = int(o.get("iters", _default_iters(device)))
        self.seed = int(o.get("seed", 0))
        self.features = int(o.get("features", 32))
        self.levels = int(o.get("levels", 3))
        self.heads = int(o.get("heads", 8))
        self.window = int(o.get("window", 3))
        self.base_kind = str(o.get("base", "gsa"))
        self.correction = str(o.get("correction", "relative"))
        if self.correction not in ("add", "relative"):
            raise ModelError(f"umsft: option correction must be 'add' or 'relative', got {self.correction!r}")
        if self.base_kind not in ("gsa", "bicubic"):
            raise ModelError(f"umsft: option base must be 'gsa' or 'bicubic', got {self.base_kind!r}")
        if self.features % self.heads:
            raise ModelError(f"umsft: features ({self.features}) must be a multiple of heads ({self.heads})")
        self.progress: Callable[[str, int, int], None] | None = None
        self.net = None
        self.loss_history: list[float] = []
        self.consistency_history: list[float] = []
        self.train_seconds = 0.0
        # halo: the network's reach + the base (bicubic 2 LR px; gsa also degrades the MSI tile)
        rad = build_net(problem.lr_bands, problem.msi_bands, self.features, self.levels, self.heads, self.window).radius()
        self._base_fuser = self._make_base(self.scale, self.psf) if self.base_kind == "gsa" else None
        base_halo = self._base_fuser.halo_lr if self._base_fuser is not None else 2
        self.halo_lr = math.ceil(rad / self.scale) + base_halo + 1

    # ---- pieces shared by training and inference
    def _t(self, a, dtype=None):
        import torch

        return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype or torch.float32, device=self.device)

    def _make_base(self, s: int, psf: Psf) -> Fuser:
        """The registry's detail-injection Fuser ("gsa") at scale s: the estimate the network corrects."""
        from .classical import DetailInjection

        bo = {k[5:]: v for k, v in self.opts.items() if str(k).startswith("base_")}  # base_local=..., etc.
        return DetailInjection(FusionProblem(s, self.problem.lr_bands, self.problem.msi_bands, psf=psf, options=bo))

    def _base_np(self, fuser: Fuser | None, lr: np.ndarray, msi: np.ndarray, s: int) -> np.ndarray:
        """Base on the MSI grid for numpy (C, h, w) + (m, h·s, w·s) that already carry their context."""
        import torch

        if fuser is None:
            with torch.no_grad():
                return torch_upsample(self._t(lr)[None], s)[0].cpu().numpy()
        return np.asarray(fuser.fuse_tile(lr, msi), dtype=np.float32)

    def _forward(self, base, msi_t):
        bn = (base - self._mu_l) / self._sd_l
        mn = (msi_t - self._mu_m) / self._sd_m
        corr = self.net(bn, mn)
        if self.correction == "relative":  # proportional to the base: keeps dark spectra's angles (SAM)
            return base + corr * (base.abs() + 0.05 * self._mu_l.abs())
        return base + corr * self._sd_l

    # ---- fit: optimise the network once per scene at reduced resolution
    def fit(self, lr: np.ndarray, msi_lr: np.ndarray) -> None:
        import torch

        from ..forward.estimate import estimate_srf, valid_pixels

        t0 = time.perf_counter()
        lr = np.asarray(lr, dtype=np.float32)
        msi_lr = np.asarray(msi_lr, dtype=np.float32)
        c, h, w = lr.shape
        m = msi_lr.shape[0]
        if c != self.problem.lr_bands or m != self.problem.msi_bands:
            raise ModelError(f"umsft: got {c}+{m} bands, the problem says {self.problem.lr_bands}+{self.problem.msi_bands}")
        valid = np.isfinite(lr).all(0) & np.isfinite(msi_lr).all(0)
        if not valid.any():
            raise ModelError("umsft: no valid pixels to optimise on")
        mu_l, sd_l = _band_stats(np.where(valid, lr, np.nan))
        mu_m, sd_m = _band_stats(np.where(valid, msi_lr, np.nan))
        self._lr_fill, self._msi_fill = mu_l.astype(np.float32), mu_m.astype(np.float32)
        lr_f = np.where(valid[None], lr, self._lr_fill[:, None, None])
        msi_f = np.where(valid[None], msi_lr, self._msi_fill[:, None, None])
        # spectral quantities: SRF (given or estimated) and the base's regression
        if self.problem.srf is not None:
            srf = np.asarray(self.problem.srf, dtype=np.float64)
            if srf.shape != (m, c):
                raise ModelError(f"umsft: SRF shape {srf.shape} != (MSI bands {m}, LR bands {c})")
            self.srf_estimated = False
        else:
            self.srf_estimated = True
            if int(valid.sum()) >= c:
                srf = estimate_srf(np.where(valid, lr, np.nan), np.where(valid, msi_lr, np.nan))
            else:  # fewer pixels than bands: NNLS is undetermined; a small ridge solution, clipped at 0
                xs, ys = valid_pixels(np.where(valid, lr, np.nan), np.where(valid, msi_lr, np.nan))
                g = xs @ xs.T
                g += np.eye(c) * 1e-3 * np.trace(g) / c
                srf = np.maximum(np.linalg.solve(g, xs @ ys.T).T, 0.0)
        torch.manual_seed(self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        if self._base_fuser is not None:  # full-scale base: fitted on the whole scene, used per tile
            self._base_fuser.fit(np.where(valid, lr, np.nan).astype(np.float32),
                                 np.where(valid, msi_lr, np.nan).astype(np.float32))
        self._mu_l, self._sd_l = self._t(mu_l)[None, :, None, None], self._t(sd_l)[None, :, None, None]
        self._mu_m, self._sd_m = self._t(mu_m)[None, :, None, None], self._t(sd_m)[None, :, None, None]
        self.net = build_net(c, m, self.features, self.levels, self.heads, self.window).to(self.device)
        # reduced-resolution training pair
        s_tr, psf_tr = self._train_scale(h, w)
        self.train_scale = s_tr
        hh, ww = (h // s_tr) * s_tr, (w // s_tr) * s_tr
        target = self._t(lr_f[:, :hh, :ww])[None]
        msi_in = self._t(msi_f[:, :hh, :ww])[None]
        vmask = self._t(valid[:hh, :ww].astype(np.float32))[None, None]
        with torch.no_grad():
            lr_in = spatial_degrade_t(target, psf_tr)
            vlow = (spatial_degrade_t(1.0 - vmask, psf_tr) < 1e-6).float()
        # reduced-scale base (no parameters: computed once, mirrored context like the engine's)
        bf = self._make_base(s_tr, psf_tr) if self.base_kind == "gsa" else None
        lr_np, msi_np = lr_in[0].cpu().numpy(), msi_in[0].cpu().numpy()
        if bf is not None:
            from ..forward.degrade import spatial_degrade

            try:
                bf.fit(lr_np, spatial_degrade(msi_np, psf_tr))
            except ValueError as e:
                raise ModelError(f"umsft: reduced-scale pair ({lr_np.shape[1]}x{lr_np.shape[2]} LR pixels) too small for "
                                 f"the detail-injection base ({e}); use base='bicubic' or a larger scene") from None
        hb = bf.halo_lr if bf is not None else 2
        lr_p = np.pad(lr_np, ((0, 0), (hb, hb), (hb, hb)), mode="symmetric")
        msi_p = np.pad(msi_np, ((0, 0), (hb * s_tr, hb * s_tr), (hb * s_tr, hb * s_tr)), mode="symmetric")
        base_in = self._t(self._base_np(bf, lr_p, msi_p, s_tr)[:, hb * s_tr:hb * s_tr + hh, hb * s_tr:hb * s_tr + ww])[None]
        srf_t = self._t(srf)
        srf_p = torch.nn.Parameter(srf_t.clone()) if self.opts.get("learn_srf", False) else None
        params = list(self.net.parameters()) + ([srf_p] if srf_p is not None else [])
        opt = torch.optim.Adam(params, lr=float(self.opts.get("lr_rate", 2e-3)))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(self.iters, 1), eta_min=1e-5)
        lam_msi = float(self.opts.get("lambda_msi", 1.0))
        w_sup = float(self.opts.get("w_sup", 1.0))
        w_sam = float(self.opts.get("w_sam", 0.1))
        scl = self._sd_l.mean()  # losses in units of the band spread (scale-free)
        scm = self._sd_m.mean()
        self.net.train()
        crop = max(int(self.opts.get("train_crop", 128)) // s_tr, 2) * s_tr  # LR-grid pixels per training crop
        hi_all = torch.cat([target, msi_in, vmask, base_in], 1)
        lo_all = torch.cat([lr_in, vlow], 1)
        for it in range(self.iters):
            k = int(torch.randint(0, 8, (1,), generator=gen))  # dihedral augmentation (seeded)
            hi_t, lo_t = hi_all, lo_all
            if hh > crop or ww > crop:  # random crop (seeded), aligned to the reduced grid
                ch_, cw_ = min(crop, hh), min(crop, ww)
                y0 = int(torch.randint(0, (hh - ch_) // s_tr + 1, (1,), generator=gen)) * s_tr
                x0 = int(torch.randint(0, (ww - cw_) // s_tr + 1, (1,), generator=gen)) * s_tr
                hi_t = hi_all[:, :, y0:y0 + ch_, x0:x0 + cw_]
                lo_t = lo_all[:, :, y0 // s_tr:(y0 + ch_) // s_tr, x0 // s_tr:(x0 + cw_) // s_tr]
            tr = _dihedral(hi_t, k)
            tgt, mi, vm, bs = tr[:, :c], tr[:, c:c + m], tr[:, c + m:c + m + 1], tr[:, c + m + 1:]
            li = _dihedral(lo_t, k)
            lri, vl = li[:, :c], li[:, c:]
            z = self._forward(bs, mi)
            r = srf_p if srf_p is not None else srf_t
            l_lr = ((spatial_degrade_t(z, psf_tr) - lri).abs() * vl).mean() / scl
            l_msi = ((torch.einsum("mc,bchw->bmhw", r, z) - mi).abs() * vm).mean() / scm
            l_sup = ((z - tgt).abs() * vm).mean() / scl
            cos = (z * tgt).sum(1) / (z.norm(dim=1) * tgt.norm(dim=1) + 1e-8)
            l_sam = (torch.acos(cos.clamp(-1 + 1e-6, 1 - 1e-6)) * vm[:, 0]).mean()
            loss = l_lr + lam_msi * l_msi + w_sup * l_sup + w_sam * l_sam
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if srf_p is not None:
                with torch.no_grad():
                    srf_p.clamp_(min=0)
            self.loss_history.append(float(loss.detach()))
            self.consistency_history.append(float((l_lr + lam_msi * l_msi).detach()))
            if self.progress and (it % 10 == 0 or it == self.iters - 1):
                self.progress("umsft optimise", it + 1, self.iters)
        self.net.eval()
        self.srf = (srf_p if srf_p is not None else srf_t).detach().cpu().numpy()
        self.train_seconds = time.perf_counter() - t0

    def _train_scale(self, h: int, w: int) -> tuple[int, Psf]:
        """Factor and PSF of the reduced-resolution training pair (see module docstring)."""
        s = self.scale
        need = int(self.opts.get("min_train_lr", 8))
        if min(h, w) // s >= need or s == 1:
            return s, self.psf
        for s2 in range(s - 1, 1, -1):
            if min(h, w) // s2 >= need:
                sig = getattr(self.psf, "sigma", None)
                if sig is None:
                    sig = _kernel_sigma(self.psf.kernel)
                sig2 = max(float(sig) * s2 / s, 0.3)
                return s2, Psf.gaussian(s2, sig2)
        raise ModelError(f"umsft: the LR cube ({h}x{w}) is too small to optimise on at any reduced scale")

    def fuse_tile(self, lr: np.ndarray, msi: np.ndarray) -> np.ndarray:
        import torch

        if self.net is None:
            raise ModelError("umsft: fuse_tile called before fit")
        lr = np.asarray(lr, dtype=np.float32)
        msi = np.asarray(msi, dtype=np.float32)
        s = self.scale
        bad_lr = ~np.isfinite(lr).all(0)
        bad_m = ~np.isfinite(msi).all(0)
        if bad_lr.any():
            lr = np.where(np.isfinite(lr), lr, self._lr_fill[:, None, None])
        if bad_m.any():
            msi = np.where(np.isfinite(msi), msi, self._msi_fill[:, None, None])
        base = self._base_np(self._base_fuser, lr, msi, s)
        with torch.no_grad():
            out = self._forward(self._t(base)[None], self._t(msi)[None])[0]
        res = out.cpu().numpy().astype(np.float32)
        bad = np.repeat(np.repeat(bad_lr, s, 0), s, 1) | bad_m
        if bad.any():
            res[:, bad] = np.nan
        return res

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(iters=self.iters, seed=self.seed, base=self.base_kind, features=self.features, levels=self.levels,
                 heads=self.heads, window=self.window, psf=self.psf.name, psf_assumed=self.psf_assumed,
                 train_scale=getattr(self, "train_scale", None), train_seconds=self.train_seconds,
                 srf_estimated=getattr(self, "srf_estimated", None),
                 final_loss=self.loss_history[-1] if self.loss_history else None)
        return d


def _dihedral(x, k: int):
    """One of the 8 flips/rotations of a (B, C, H, W) tensor."""
    import torch

    if k & 4:
        x = x.transpose(2, 3)
    if k & 1:
        x = torch.flip(x, (2,))
    if k & 2:
        x = torch.flip(x, (3,))
    return x


def _kernel_sigma(kernel: np.ndarray) -> float:
    from ..forward.blind import fit_gaussian_sigma

    return fit_gaussian_sigma(kernel)[0]

