"""Shared fixtures. Test data are generated here (seeded), never copied from ../shared."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the repository; tests using it skip when it is absent."""
    if not (SHARED / "cave").is_dir():
        pytest.skip("../shared/data not present")
    return SHARED


def smooth_cube(bands: int = 8, height: int = 32, width: int = 32, seed: int = 0) -> np.ndarray:
    """A deterministic, spatially smooth, spectrally correlated float32 cube in [0.05, 0.95] (C, H, W)."""
    rng = np.random.default_rng(seed)
    k = 4  # a few "materials" mixed with smooth abundances
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    abund = []
    for i in range(k):
        fx, fy, ph = rng.uniform(1, 4), rng.uniform(1, 4), rng.uniform(0, 2 * np.pi)
        abund.append(1.2 + np.sin(2 * np.pi * fx * xx + ph) * np.cos(2 * np.pi * fy * yy + ph / 2))
    abund = np.stack(abund)
    abund /= abund.sum(0, keepdims=True)
    lam = np.linspace(0, 1, bands)
    spectra = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (lam * rng.uniform(0.5, 2) + rng.uniform(0, 1))) for _ in range(k)])
    cube = np.einsum("kc,khw->chw", spectra, abund)
    return np.clip(cube, 0.05, 0.95).astype(np.float32)


@pytest.fixture
def cube_small() -> np.ndarray:
    return smooth_cube()


@pytest.fixture
def one_torch_thread():
    """Run a test with one torch thread (small networks: faster and deterministic on shared CI cores)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
