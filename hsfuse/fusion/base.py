"""The interface every fusion method implements, so one tiling engine runs them all.

A method sees the whole LR cube once (it is small) in ``fit`` to estimate its
global parameters (regression coefficients, SRF, endmembers, ...), then fuses
tile by tile in ``fuse_tile``. Tiles arrive with ``halo_lr`` LR pixels of
context on every side (mirrored at the scene border, identically whether the
scene is tiled or not), so a method whose output at a pixel depends only on
inputs within the halo gives exactly the same result tiled and untiled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..forward.psf import Psf


@dataclass
class FusionProblem:
    """What is known about an LR/MSI pair before fusing."""

    scale: int
    lr_bands: int
    msi_bands: int
    psf: Psf | None = None  # None: the method assumes/estimates one
    #: the PSF is the forward model itself (a protocol, or a Psf object the caller built), not a guess or an
    #: estimate: steps that only pay with the exact PSF (models/consistency.py) are on by default then
    psf_exact: bool = False
    srf: np.ndarray | None = None  # (msi_bands, lr_bands) or None: estimate when needed
    lr_wavelengths: np.ndarray | None = None
    msi_wavelengths: np.ndarray | None = None
    options: dict[str, Any] = field(default_factory=dict)  # method-specific user options


class Fuser:
    """Base class of a fusion method instance (one per scene)."""

    name: str = "?"
    #: LR pixels of context each side of a tile (override per method / PSF)
    halo_lr: int = 0
    #: set by the engine before each ``fuse_tile``: HR (row, col) of the tile input's top-left
    #: corner in the scene (negative inside the mirrored border)
    tile_origin: tuple[int, int] = (0, 0)
    #: set by the engine before each ``fuse_tile``: LR pixels of context the tile input actually has on its
    #: (top, bottom, left, right); ``halo_lr`` on every side except where tiles stop at the scene border
    #: (PSFs whose LR samples sit off the block centres); None: ``halo_lr`` on every side
    tile_halo: tuple[int, int, int, int] | None = None
    #: tiles stop at the scene border instead of reading a mirrored halo there (``engine.stream_tiles``; always so
    #: for a PSF whose LR samples sit off the block centres): for a fuser that handles a border itself
    tiles_stop_at_border: bool = False

    def __init__(self, problem: FusionProblem, device: str = "cpu", precision: str = "fp32"):
        self.problem = problem
        self.device = device
        self.precision = precision

    def fit(self, lr: np.ndarray, msi_lr: np.ndarray) -> None:
        """Estimate global parameters.

        ``lr``: the whole LR cube (C, h, w), float32, NaN at nodata.
        ``msi_lr``: the whole MSI degraded onto the LR grid with ``problem.psf`` (m, h, w).
        """

    def fuse_tile(self, lr: np.ndarray, msi: np.ndarray) -> np.ndarray:
        """Fuse one tile: lr (C, h, w) and msi (m, h·s, w·s), both with halo -> (C, h·s, w·s)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Parameters worth reporting (in --json / --dry-run)."""
        return {"name": self.name, "halo_lr": self.halo_lr}
