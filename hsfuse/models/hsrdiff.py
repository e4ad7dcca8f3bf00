"""``hsr-diff``: HSR-Diff sampling (``diffusion.py``) with the CDFormer denoiser (``networks/cdformer.py``), per tile
with tile-consistent noise (docs/models/hsr-diff.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ModelError, UsageError
from ..fusion.base import FusionProblem
from . import diffusion as D
from .networks.cdformer import CDFormer, count_parameters
from .zoo_fuser import NetworkFuser


def _autocast(device: str, precision: str):
    from .common import autocast

    return autocast(device, precision)


class HSRDiffFuser(NetworkFuser):
    """HSR-Diff sampling per tile with tile-consistent noise: a ``NetworkFuser`` whose prediction is DDIM/ancestral
    sampling (loading, record checks, the GSA prior, halo, tiling and LR consistency are those of every network).

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
                 weights: str | Path | None = None, network: Any = None):
        self._given_origin: tuple[int, int] | None = None
        self._scene_lr: np.ndarray | None = None
        self._last: tuple[int, int] | None = None
        self.origin_source = "none yet"
        super().__init__(problem, device, precision, weights, network)
        self.tile_origin: tuple[int, int] | None = None  # an engine may set this before fuse_tile

    # -- NetworkFuser hooks

    def _load_network(self) -> tuple[CDFormer, dict[str, Any]]:
        """(network, record) from ``weights``; tests override this to build an untrained network."""
        if not (self._weights or self.problem.options.get("weights")):
            raise ModelError("hsr-diff needs trained weights (not yet trained: none are shipped; see docs/models/hsr-diff.md)")
        return super()._load_network()

    def _configure(self) -> None:
        self.schedule = D.NoiseSchedule.from_dict(self.record.get("diffusion"))
        opts = self.problem.options
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
        if int(opts.get("tta", 1)) != 1:
            raise UsageError("hsr-diff samples on the scene grid: option tta (flipped passes) does not apply")
        self.eta = 0.0 if self.sampler == "ddim" else 1.0

    def _network_halo(self) -> int:
        return self.net.halo_lr(self.problem.scale, self.steps)

    def _input_origin(self, lr: np.ndarray) -> tuple[int, int]:
        return self._origin(lr, self._given_origin)

    def _predict(self, lr_t, msi_t, prior_t, origin: tuple[int, int]):
        c, hh, ww = lr_t.shape[1], msi_t.shape[2], msi_t.shape[3]
        with torch.no_grad():
            with _autocast(self.device, self.precision):
                cond = self.net.encode(lr_t, msi_t, origin, prior_t)

            def denoise(x, level):
                with _autocast(self.device, self.precision):
                    return self.net.denoise(x, level, cond).float()

            noise = D.tile_noise_fn(self.seed, (c, hh, ww), origin[0], origin[1], self.device)
            y = self.net.from_latent(D.sample(denoise, self.schedule, steps=self.steps, eta=self.eta, noise=noise), cond)
        return y.float()

    # -- engine interface

    def fit(self, lr: np.ndarray, msi_lr: np.ndarray) -> None:
        self._scene_lr = np.asarray(lr, np.float32)
        self._last = None
        super().fit(lr, msi_lr)

    def fuse_tile(self, lr: np.ndarray, msi: np.ndarray, origin: tuple[int, int] | None = None) -> np.ndarray:
        self._given_origin = origin
        try:
            return super().fuse_tile(lr, msi)
        finally:
            self._given_origin = None

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
                "prior": self.net.prior, "parameters": count_parameters(self.net), "lr_consistency": self.lr_consistency}
