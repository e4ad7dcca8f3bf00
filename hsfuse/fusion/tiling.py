"""Tile layout, mirrored halo reads and the seam-free blending weights.

All geometry is in LR pixels; HR extents are LR extents times the scale, so
LR and MSI tiles always stay exactly aligned.

Tiles partition the LR grid into *cores*. Each tile is predicted over its core
grown by ``o`` pixels on each interior side (the *extent*) and the neighbouring
predictions are blended in the 2·o-wide bands with linear ramps that sum to
one (a partition of unity), so there are no seams and no renormalisation. The
input of a tile is its extent plus ``halo`` pixels of context, mirrored
(symmetric) at the scene border exactly as the untiled case pads the whole
scene: a method whose receptive field fits in the halo is tile-invariant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..cube import Window
from ..io.base import CubeSource


@dataclass(frozen=True)
class Span:
    """One tile along one axis (LR pixels): core [c0, c1), extent [e0, e1)."""

    c0: int
    c1: int
    e0: int
    e1: int
    first: bool
    last: bool


def spans(length: int, core: int, half_overlap: int) -> list[Span]:
    """Split ``length`` into cores of about ``core`` pixels with extents grown by ``half_overlap``."""
    core = max(1, min(core, length))
    n = -(-length // core)
    # equalise sizes so the last tile is not a sliver
    edges = [round(i * length / n) for i in range(n + 1)]
    o = half_overlap  # the caller keeps 2·o <= the smallest core
    out = []
    for i in range(n):
        c0, c1 = edges[i], edges[i + 1]
        out.append(Span(c0, c1, c0 if i == 0 else c0 - o, c1 if i == n - 1 else c1 + o, i == 0, i == n - 1))
    return out


def ramp(span: Span, o: int, scale: int) -> np.ndarray:
    """1-D blending weights over the HR extent of ``span`` (length (e1−e0)·scale)."""
    n = (span.e1 - span.e0) * scale
    w = np.ones(n, dtype=np.float32)
    band = 2 * o * scale
    if band > 0:
        up = (np.arange(band, dtype=np.float32) + 0.5) / band
        if not span.first:
            w[:band] = up
        if not span.last:
            w[n - band:] = up[::-1]
    return w


def mirror_index(idx: np.ndarray, n: int) -> np.ndarray:
    """Symmetric (half-sample) mirroring of indices into [0, n), as np.pad(mode='symmetric')."""
    period = 2 * n
    m = np.mod(idx, period)
    return np.where(m < n, m, period - 1 - m)


def read_mirrored(src: CubeSource, r0: int, r1: int, c0: int, c1: int, scale: int = 1) -> np.ndarray:
    """Rows [r0, r1) × cols [c0, c1) of the mirror-extended scene (grid units × ``scale``) as float32."""
    r0, r1, c0, c1 = r0 * scale, r1 * scale, c0 * scale, c1 * scale
    h, w = src.height, src.width
    ri, ci = mirror_index(np.arange(r0, r1), h), mirror_index(np.arange(c0, c1), w)
    rlo, rhi, clo, chi = int(ri.min()), int(ri.max()) + 1, int(ci.min()), int(ci.max()) + 1
    block = src.read(Window(rlo, clo, rhi - rlo, chi - clo))
    if r0 >= 0 and r1 <= h and c0 >= 0 and c1 <= w:
        return block
    return block[:, (ri - rlo)[:, None], (ci - clo)[None, :]]
