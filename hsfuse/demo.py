"""A synthetic scene the project generates itself, for the demo and tests.

Real scenes cannot ship with hsfuse (third-party data), so the demo builds a
31-band (400–700 nm) reflectance cube from smooth material spectra laid out as
shapes with soft edges, shading and fine texture: enough spatial detail and
spectral variety that fusion methods separate clearly (bicubic ≪ detail
injection), while staying deterministic under a seed.
"""

from __future__ import annotations

import numpy as np

WAVELENGTHS = np.arange(400.0, 701.0, 10.0)


def _bump(wl: np.ndarray, centre: float, width: float) -> np.ndarray:
    return np.exp(-0.5 * ((wl - centre) / width) ** 2)


def material_spectra(wl: np.ndarray = WAVELENGTHS) -> np.ndarray:
    """(K, C) reflectance spectra in [0.02, 0.95]: plant, soil, water, paints, greys."""
    s = [
        0.05 + 0.10 * _bump(wl, 550, 30) + 0.45 / (1 + np.exp(-(wl - 690) / 8)),  # vegetation, red edge
        0.10 + 0.30 * (wl - 400) / 300,  # soil
        0.08 * np.exp(-(wl - 400) / 150) + 0.02,  # water
        0.05 + 0.80 * _bump(wl, 460, 25),  # blue paint
        0.05 + 0.75 / (1 + np.exp(-(wl - 600) / 12)),  # red paint
        0.05 + 0.70 * _bump(wl, 530, 35),  # green paint
        0.05 + 0.80 / (1 + np.exp(-(wl - 510) / 15)),  # yellow/orange
        0.05 + 0.50 * _bump(wl, 430, 20) + 0.50 * _bump(wl, 660, 30),  # purple (metameric-ish)
        np.full_like(wl, 0.85),  # white
        np.full_like(wl, 0.30),  # grey
    ]
    return np.clip(np.stack(s), 0.02, 0.95)


def synthetic_scene(size: int = 256, seed: int = 0, wl: np.ndarray = WAVELENGTHS) -> np.ndarray:
    """A (C, size, size) float32 reflectance cube."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    spectra = material_spectra(wl)
    k = len(spectra)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    # background: smooth mixture of soil / vegetation / grey
    abund = np.zeros((k, size, size))
    mix = 0.5 + 0.5 * np.sin(2 * np.pi * (1.3 * xx + 0.7 * yy))
    abund[0], abund[1], abund[9] = mix, 1 - mix, 0.3
    for _ in range(max(12, size // 12)):
        m = rng.integers(k)
        mask = np.zeros((size, size))
        kind = rng.integers(3)
        cy, cx = rng.uniform(0, 1, 2)
        if kind == 0:  # disc
            r = rng.uniform(0.03, 0.15)
            mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(float)
        elif kind == 1:  # rectangle
            h, w = rng.uniform(0.03, 0.2, 2)
            mask = ((abs(yy - cy) < h) & (abs(xx - cx) < w)).astype(float)
        else:  # stripes in a square patch
            h = rng.uniform(0.05, 0.15)
            f = rng.uniform(10, 40)
            mask = ((abs(yy - cy) < h) & (abs(xx - cx) < h) & (np.sin(2 * np.pi * f * (xx + yy)) > 0)).astype(float)
        mask = gaussian_filter(mask, rng.uniform(0.3, 1.2))
        abund *= 1 - mask
        abund[m] += mask
    abund /= abund.sum(0, keepdims=True) + 1e-12
    cube = np.einsum("kc,khw->chw", spectra, abund)
    shading = 0.75 + 0.25 * np.cos(2 * np.pi * (0.4 * xx - 0.3 * yy))
    texture = 1 + 0.03 * gaussian_filter(rng.standard_normal((size, size)), 0.7)
    cube *= (shading * texture)[None]
    return np.clip(cube, 0.0, 1.0).astype(np.float32)
