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
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError
from ..fusion.base import Fuser, FusionProblem


def _weights_for_scale(scale: int) -> Path:
    from .registry import get_model, weights_dir

    entry = get_model("csakd-s")
    from ..weights import read_record

    tried = []
    for stem in entry.weights:
        p = weights_dir() / stem
        if not p.with_suffix(".json").exists():
            continue
        rec = read_record(p)
        tried.append(f"{stem} (x{','.join(map(str, rec.get('scales', [])))})")
        if scale in rec.get("scales", []):
            return p
    have = "; installed: " + ", ".join(tried) if tried else "; no csakd-s weights are installed"
    raise ModelError(f"no csakd-s weights trained for scale x{scale}{have}", weights_dir())


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


def _autocast(device: str, precision: str):
    import contextlib

    import torch

    if str(device).startswith("cuda") and precision in ("bf16", "fp16"):
        return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return contextlib.nullcontext()


class CSAKDFuser(Fuser):
    """CSAKD student/teacher network; optionally refining the GSA detail-injection estimate."""

    name = "csakd-s"

    def __init__(self, problem: FusionProblem, device: str = "cpu", precision: str = "fp32",
                 weights: str | Path | None = None):
        super().__init__(problem, device, precision)

        from ..weights import load_weights
        from .csakd import build_from_record

        if precision not in ("fp32", "bf16", "fp16"):
            raise ModelError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
        stem = weights or problem.options.get("weights") or _weights_for_scale(problem.scale)
        self.weights_path = Path(stem)
        state, rec = load_weights(self.weights_path)
        self.record = rec
        bands, msi_bands = rec.get("bands"), rec.get("msi_bands")
        scales = list(rec.get("scales", []))
        where = self.weights_path.with_suffix(".json")
        if bands is not None and problem.lr_bands != bands:
            raise ModelError(f"weights were trained for {bands} hyperspectral bands, the LR cube has {problem.lr_bands}", where)
        if msi_bands is not None and problem.msi_bands != msi_bands:
            raise ModelError(f"weights were trained for a {msi_bands}-band MSI, the MSI has {problem.msi_bands} bands", where)
        if problem.scale not in scales:
            raise ModelError(f"weights were trained for scale x{', x'.join(map(str, scales))}, the inputs are x{problem.scale}", where)
        if problem.srf is not None and rec.get("srf") is not None:
            if np.asarray(rec["srf"]).shape != np.asarray(problem.srf).shape:
                raise ModelError(f"SRF shape {np.asarray(problem.srf).shape} differs from the trained one {np.asarray(rec['srf']).shape}", where)
        try:
            self.net = build_from_record(rec["architecture"], rec["kwargs"])
            self.net.load_state_dict(state, strict=True)
        except (ValueError, TypeError, RuntimeError) as e:
            raise ModelError(f"weights do not fit the recorded architecture: {' '.join(str(e).split())[:300]}", where) from None
        self.net.to(device).eval()
        self.prior_fuser = None
        net_halo = int(math.ceil(self.net.receptive_radius_hr(problem.scale) / problem.scale))
        prior_halo = 0
        if self.net.prior:
            self.prior_fuser = self._make_prior()
            prior_halo = int(getattr(self.prior_fuser, "halo_lr", 0))
        #: the exact receptive radius is a safe upper bound; a record may carry a smaller measured halo
        #: (tiled vs untiled max difference < 1e-4 with the engine's blending, docs/models/csakd.md)
        self.halo_bound = net_halo + prior_halo
        measured = rec.get("halo_lr", {}).get(str(problem.scale)) if isinstance(rec.get("halo_lr"), dict) else None
        self.halo_lr = int(problem.options.get("halo_lr", measured if measured is not None else self.halo_bound))

    def _make_prior(self):
        from ..train.data import RegressionDetailInjection

        p = self.problem
        try:
            from .classical import DetailInjection

            return DetailInjection(p, self.device, "fp32") if _takes_device(DetailInjection) else DetailInjection(p)
        except ImportError:
            from ..degrade import Psf

            psf = p.psf or Psf.gaussian(p.scale)
            return RegressionDetailInjection(psf)

    def fit(self, lr: np.ndarray, msi_lr: np.ndarray) -> None:
        if self.prior_fuser is not None:
            self.prior_fuser.fit(lr, msi_lr)

    def fuse_tile(self, lr: np.ndarray, msi: np.ndarray) -> np.ndarray:
        import torch

        lr = np.nan_to_num(np.asarray(lr, np.float32))
        msi = np.nan_to_num(np.asarray(msi, np.float32))
        prior = None
        if self.prior_fuser is not None:
            prior = np.asarray(self.prior_fuser.fuse_tile(lr, msi), np.float32)
        x = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a))[None].to(self.device)
        with torch.no_grad(), _autocast(self.device, self.precision):
            y = self.net(x(lr), x(msi), x(prior))
        return y[0].float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "halo_lr": self.halo_lr, "halo_bound_lr": self.halo_bound, "weights": str(self.weights_path),
                "architecture": self.record.get("architecture"), "prior": bool(self.net.prior),
                "scales": self.record.get("scales"), "protocol": self.record.get("protocol"),
                "parameters": self.record.get("parameters")}


def _takes_device(cls) -> bool:
    import inspect

    try:
        return "device" in inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return False
