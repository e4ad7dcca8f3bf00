"""``CSAKDFuser``: a trained CSAKD network behind the ``Fuser`` interface of the tiling engine.

    $ hsfuse fuse lr.hdr msi.tif -o out.hdr --model csakd-s --protocol cave-gauss-x8

The weights (``weights/csakd-s-*.safetensors`` + ``.json``) are chosen by scale
(or given in ``problem.options["weights"]``); their record must match the
inputs (band counts, scale) or a ``ModelError`` says what does not fit. With a
``prior=True`` network, ``fit`` fits the detail-injection (GSA) regression on
the whole scene and ``fuse_tile`` refines that method's tile estimate.

``halo_lr`` defaults to the network's receptive radius plus the prior's halo
(an upper bound: tiled and untiled fusion then agree to float rounding); a
weights record may carry a smaller measured halo (``"halo_lr": {"8": n}``) at
which the tiled/untiled difference stays below 1e-4 with the engine's overlap
blending; ``problem.options["halo_lr"]`` overrides both. docs/models/csakd.md
gives the measurements.
"""

from __future__ import annotations

import math

import numpy as np

from .zoo_fuser import NetworkFuser, _autocast


def run_tiled(net, lr: np.ndarray, msi: np.ndarray, prior: np.ndarray | None, tile_hr: int,
              halo_lr: int | None = None, device: str = "cpu", precision: str = "fp32") -> np.ndarray:
    """Run ``net`` on non-overlapping ``tile_hr`` tiles, each with ``halo_lr`` mirrored LR pixels of context.

    Tiles are cut from the scene padded once by symmetric mirroring, so the
    result equals the untiled result whenever the halo covers the receptive field.
    """
    import torch

    s = msi.shape[-1] // lr.shape[-1]
    h = int(math.ceil(net.receptive_radius_hr(s) / s)) if halo_lr is None else int(halo_lr)
    t = max(1, tile_hr // s)
    C, hl, wl = lr.shape
    lr_p, msi_p = _pad_reflect(lr, h), _pad_reflect(msi, h * s)
    pr_p = None if prior is None else _pad_reflect(prior, h * s)
    out = np.zeros((C, hl * s, wl * s), np.float32)
    net.eval()
    with torch.no_grad():
        for i in range(0, hl, t):
            for j in range(0, wl, t):
                ti, tj = min(t, hl - i), min(t, wl - j)
                sl = lambda a, k: a[:, k * i:k * (i + ti + 2 * h), k * j:k * (j + tj + 2 * h)]
                x = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a))[None].to(device)
                with _autocast(device, precision):
                    y = net(x(sl(lr_p, 1)), x(sl(msi_p, s)), x(None if pr_p is None else sl(pr_p, s)))
                y = y[0].float().cpu().numpy()
                out[:, i * s:(i + ti) * s, j * s:(j + tj) * s] = y[:, h * s:h * s + ti * s, h * s:h * s + tj * s]
    return out


def _pad_reflect(a: np.ndarray, p: int) -> np.ndarray:
    return np.pad(a, ((0, 0), (p, p), (p, p)), mode="symmetric") if p > 0 else a


class CSAKDFuser(NetworkFuser):
    """CSAKD student/teacher network; optionally refining the GSA detail-injection estimate.

    Loading, input checks, halo and tiling are those of every trained network (``NetworkFuser``).
    """

    name = "csakd-s"
