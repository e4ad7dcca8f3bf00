"""``hsr-diff``: HSR-Diff sampling (``diffusion.py``) with the CDFormer denoiser (``networks/cdformer.py``), per tile
with tile-consistent noise (docs/models/hsr-diff.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ModelError, UsageError
from ..fusion.base import Fuser, FusionProblem
from . import diffusion as D
from .networks.cdformer import CDFormer, count_parameters


def _autocast(device: str, precision: str):
    from .common import autocast

    return autocast(device, precision)


class HSRDiffFuser(Fuser):
    """HSR-Diff sampling per tile with tile-consistent noise.

    Options (``problem.options`` / ``--option``): ``weights`` (stem; the engine sets it),
    ``steps`` (default 8), ``sampler`` ("ddim" η=0, default, or "ancestral" η=1; ancestral
    defaults to all T steps), ``seed`` (default 0), ``halo_lr`` (override the exact bound).

    Tile position: the noise and the attention windows are laid on the scene grid, so the
    fuser needs each tile's scene position. ``fuse_tile(lr, msi, origin=(row, col))`` takes it
    (HR position of the tile's first pixel, halo included) or ``self.tile_origin`` if an engine
    sets it; otherwise the tile is located by exact matching of its LR core in the scene LR given
    to ``fit`` (first match in row-major order after the previous tile: the engine's order).
    """

    name = "hsr-diff"

    def __init__(self, problem: FusionProblem, device: str = "cpu", precision: str = "fp32",
                 weights: str | Path | None = None):
        super().__init__(problem, device, precision)
        if precision not in ("fp32", "bf16", "fp16"):
            raise ModelError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
        self.weights_path = None if (weights or problem.options.get("weights")) is None else Path(weights or problem.options["weights"])
        self.net, self.record = self._load_network()
        self.schedule = D.NoiseSchedule.from_dict(self.record.get("diffusion"))
        opts = problem.options
        self.sampler = str(opts.get("sampler", "ddim")).lower()
        if self.sampler not in D.SAMPLERS:
            raise UsageError(f"sampler must be one of {', '.join(D.SAMPLERS)}, got {self.sampler!r}")
        default_steps = 8 if self.sampler == "ddim" else self.schedule.timesteps
        try:
            self.steps = int(opts.get("steps", default_steps))
            self.seed = int(opts.get("seed", 0))
        except (TypeError, ValueError) as e:
            raise UsageError(f"steps and seed must be integers: {e}") from None
        if not 1 <= self.steps <= self.schedule.timesteps:
            raise UsageError(f"steps must be in 1..{self.schedule.timesteps}, got {self.steps}")
        self.eta = 0.0 if self.sampler == "ddim" else 1.0
        self.net.to(device).eval()
        from .zoo_fuser import prior_for

        self.prior_fuser, prior_halo = prior_for(self.net, problem, device)  # prior=True: refines GSA
        self.halo_bound = self.net.halo_lr(problem.scale, self.steps) + prior_halo
        self.halo_lr = int(opts.get("halo_lr", self.halo_bound))
        self.tile_origin: tuple[int, int] | None = None  # an engine may set this before fuse_tile
        self._scene_lr: np.ndarray | None = None
        self._last: tuple[int, int] | None = None
        self.origin_source = "none yet"

    # -- weights
    def _load_network(self) -> tuple[CDFormer, dict[str, Any]]:
        """(network, record) from ``weights``; tests override this to build an untrained network."""
        from .architectures import build_network
        from .zoo_fuser import load_checked

        if self.weights_path is None:
            raise ModelError("hsr-diff needs trained weights (not yet trained: none are shipped; see docs/models/hsr-diff.md)")
        return load_checked(self.weights_path, self.problem, build_network)

    # -- engine interface
    def fit(self, lr: np.ndarray, msi_lr: np.ndarray) -> None:
        self._scene_lr = np.asarray(lr, np.float32)
        self._last = None
        if self.prior_fuser is not None:
            self.prior_fuser.fit(lr, msi_lr)

    def fuse_tile(self, lr: np.ndarray, msi: np.ndarray, origin: tuple[int, int] | None = None) -> np.ndarray:
        lr = np.nan_to_num(np.asarray(lr, np.float32))
        msi = np.nan_to_num(np.asarray(msi, np.float32))
        origin = self._origin(lr, origin)
        dev = self.device
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a))[None].to(dev)
        c, hh, ww = lr.shape[0], msi.shape[1], msi.shape[2]
        prior = None
        if self.prior_fuser is not None:
            prior = t(np.asarray(self.prior_fuser.fuse_tile(lr, msi), np.float32))
        with torch.no_grad():
            with _autocast(dev, self.precision):
                cond = self.net.encode(t(lr), t(msi), origin, prior)

            def denoise(x, level):
                with _autocast(dev, self.precision):
                    return self.net.denoise(x, level, cond).float()

            noise = D.tile_noise_fn(self.seed, (c, hh, ww), origin[0], origin[1], dev)
            y = self.net.from_latent(D.sample(denoise, self.schedule, steps=self.steps, eta=self.eta, noise=noise), cond)
        return y[0].float().cpu().numpy()

    # -- tile position
    def _origin(self, lr: np.ndarray, origin) -> tuple[int, int]:
        s, halo = self.problem.scale, self.halo_lr
        if origin is not None:
            self.origin_source = "given"
            return int(origin[0]), int(origin[1])
        if self.tile_origin is not None:
            self.origin_source = "engine"
            return int(self.tile_origin[0]), int(self.tile_origin[1])
        core = lr[:, halo:lr.shape[1] - halo, halo:lr.shape[2] - halo]
        pos = self._locate(core)
        if pos is None:  # not found: the noise is still deterministic, but not tile-consistent
            self.origin_source = "unknown (tiles may differ from an untiled run)"
            return -halo * s, -halo * s
        self.origin_source = "located"
        self._last = pos
        return (pos[0] - halo) * s, (pos[1] - halo) * s

    def _locate(self, core: np.ndarray, max_probes: int = 256) -> tuple[int, int] | None:
        """Scene LR position (row, col) of a tile's LR core, by exact comparison (NaN in the scene = wildcard)."""
        scene = self._scene_lr
        if scene is None or core.size == 0:
            return None
        _, th, tw = core.shape
        _, h, w = scene.shape
        if th > h or tw > w:
            return None
        nr, nc = h - th + 1, w - tw + 1
        first = scene[:, :nr, :nc]
        ok = ((first == core[:, :1, :1]) | np.isnan(first)).all(0)
        rr, cc = np.nonzero(ok)
        rng = np.random.default_rng(0)
        probes = [(th - 1, tw - 1), (th // 2, tw // 2)] + [tuple(p) for p in rng.integers(0, [th, tw], (max_probes, 2))]
        for dr, dc in probes:
            if len(rr) <= 1:
                break
            v = scene[:, rr + dr, cc + dc]
            keep = ((v == core[:, dr, dc][:, None]) | np.isnan(v)).all(0)
            rr, cc = rr[keep], cc[keep]
        for r, c in sorted(zip(rr.tolist(), cc.tolist()), key=lambda p: (self._last is not None and p <= self._last, p)):
            win = scene[:, r:r + th, c:c + tw]
            if ((win == core) | np.isnan(win)).all():
                return r, c
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "halo_lr": self.halo_lr, "halo_bound_lr": self.halo_bound,
                "sampler": self.sampler, "steps": self.steps, "seed": self.seed, "eta": self.eta,
                "schedule": self.schedule.to_dict(), "tile_origin": self.origin_source,
                "weights": None if self.weights_path is None else str(self.weights_path),
                "architecture": self.record.get("architecture"), "kwargs": self.record.get("kwargs"),
                "prior": self.net.prior, "parameters": count_parameters(self.net)}
