"""UMSFT zero-shot fusion (hsfuse.models.umsft): optimisation, any band counts, tiling, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hsfuse.forward.psf import Psf
from hsfuse.forward.degrade import degrade_cube
from hsfuse.demo import synthetic_scene
from hsfuse.errors import InputError, ModelError
from hsfuse.fusion.base import FusionProblem
from hsfuse.fusion.engine import FuseConfig, fuse_arrays
from hsfuse.metrics import compute_metrics
from hsfuse.models import registry
from hsfuse.models.classical import Bicubic
from hsfuse.models.classical import fuse_arrays as fuse_untiled
from hsfuse.models.umsft import UMSFT

WL = np.arange(400.0, 701.0, 10.0)
TINY = {"features": 8, "heads": 2, "levels": 2, "window": 1}


def _srf(c: int, m: int) -> np.ndarray:
    lam = np.linspace(0, 1, c)
    r = np.exp(-0.5 * ((lam[None] - np.linspace(0.1, 0.9, m)[:, None]) / 0.15) ** 2)
    return r / r.sum(1, keepdims=True)


@pytest.fixture
def umsft_model(monkeypatch):
    """Register 'umsft' for the engine only inside a test (the real entry is added to the registry table)."""
    entry = registry.ModelEntry("umsft", "zero-shot", "test", "hsfuse.models.umsft:UMSFT", "any", needs_psf=True)
    monkeypatch.setitem(registry.REGISTRY, "umsft", entry)
    return "umsft"


def test_optimises_and_beats_bicubic():
    torch.set_num_threads(1)
    z = synthetic_scene(64, seed=2)
    s = 4
    psf, R = Psf.gaussian(s), _srf(31, 3)
    lr, msi = degrade_cube(z, psf, R)
    prob = FusionProblem(s, 31, 3, psf=psf, srf=R,
                         options={"iters": 60, "features": 16, "heads": 4, "levels": 2, "min_train_lr": 4})
    f = UMSFT(prob)
    calls = []
    f.progress = lambda stage, done, total: calls.append((stage, done, total))
    out = fuse_untiled(f, lr, msi, prob)
    assert out.shape == z.shape and np.isfinite(out).all()
    h = f.consistency_history
    assert len(h) == 60 and np.mean(h[-5:]) < 0.8 * np.mean(h[:5])
    assert calls and calls[-1] == ("umsft optimise", 60, 60)
    bic = fuse_untiled(Bicubic, lr, msi, prob)
    p_u = compute_metrics(z, out, scale=s, ssim=False, uiqi=False, maps=False).summary["psnr"]
    p_b = compute_metrics(z, bic, scale=s, ssim=False, uiqi=False, maps=False).summary["psnr"]
    assert p_u > p_b + 3.0
    assert f.describe()["train_scale"] == 4


@pytest.mark.parametrize("c,m", [(31, 3), (48, 3), (128, 9), (102, 4)])
def test_any_band_counts(c, m):
    rng = np.random.default_rng(c)
    s = 4
    z = np.clip(0.5 + 0.1 * rng.standard_normal((c, 64, 64)), 0, 1).astype(np.float32)
    psf = Psf.gaussian(s)
    lr, msi = degrade_cube(z, psf, _srf(c, m))
    prob = FusionProblem(s, c, m, psf=psf, options={"iters": 2, **TINY, "min_train_lr": 4})  # SRF estimated
    f = UMSFT(prob)
    out = fuse_untiled(f, lr, msi, prob)
    assert out.shape == (c, 64, 64) and out.dtype == np.float32 and np.isfinite(out).all()
    assert f.srf.shape == (m, c) and f.srf_estimated


def test_tiled_equals_untiled_and_seeded(umsft_model):
    z = synthetic_scene(48, seed=3)[:8]
    s = 4
    psf = Psf.gaussian(s)
    lr, msi = degrade_cube(z, psf, _srf(8, 3))
    opts = {"iters": 3, **TINY, "min_train_lr": 2, "base": "gsa"}
    ref = fuse_arrays(lr, msi, FuseConfig(model=umsft_model, psf=psf, tile=10**6, options=opts))
    out = fuse_arrays(lr, msi, FuseConfig(model=umsft_model, psf=psf, tile=16, options=opts))
    assert np.isfinite(ref).all()
    np.testing.assert_allclose(out, ref, atol=1e-5)
    other = fuse_arrays(lr, msi, FuseConfig(model=umsft_model, psf=psf, tile=10**6, options={**opts, "seed": 1}))
    assert np.abs(other - ref).max() > 1e-6


def test_reduced_scale_fallback():
    """×8 with an 8×8 LR: no reduced pair at ×8, so training runs at a smaller factor."""
    z = synthetic_scene(64, seed=4)[:6]
    psf = Psf.gaussian(8)
    lr, msi = degrade_cube(z, psf, _srf(6, 2))
    prob = FusionProblem(8, 6, 2, psf=psf, options={"iters": 2, **TINY, "min_train_lr": 4})
    f = UMSFT(prob)
    out = fuse_untiled(f, lr, msi, prob)
    assert np.isfinite(out).all() and f.train_scale == 2


def test_bad_inputs(umsft_model):
    with pytest.raises(ModelError, match="more bands"):
        UMSFT(FusionProblem(4, 3, 5, psf=Psf.gaussian(4)))
    z = synthetic_scene(32, seed=0)[:6]
    lr, msi = degrade_cube(z, Psf.gaussian(4), _srf(6, 3))
    cfg = FuseConfig(model=umsft_model, options={"iters": 1, **TINY})
    with pytest.raises(ModelError, match="more bands"):  # through the engine: inputs swapped
        fuse_arrays(np.repeat(lr[:2], 1, 0), np.concatenate([msi, msi]), cfg)
    with pytest.raises(InputError, match="integer ratio"):
        fuse_arrays(lr, msi[:, :30, :30], cfg)
    with pytest.raises(InputError, match="no valid pixels"):
        fuse_arrays(np.full_like(lr, np.nan), msi, cfg)


def test_learn_srf_option_keeps_srf_nonnegative():
    z = synthetic_scene(64, seed=5)[:10]
    psf = Psf.gaussian(4)
    R = _srf(10, 3)
    lr, msi = degrade_cube(z, psf, R)
    prob = FusionProblem(4, 10, 3, psf=psf, srf=R, options={"iters": 5, **TINY, "min_train_lr": 4, "learn_srf": True})
    f = UMSFT(prob)
    out = fuse_untiled(f, lr, msi, prob)
    assert np.isfinite(out).all() and f.srf.shape == (3, 10) and (f.srf >= 0).all()
    assert not f.srf_estimated and np.abs(f.srf - R).max() > 0  # refined from the given SRF
