"""Diffusion machinery: schedule, torch forward model, loss, samplers with oracle denoisers, scene noise."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hsfuse.forward.psf import Psf, gaussian_kernel, make_psf  # noqa: E402
from hsfuse.forward.degrade import apply_srf, spatial_degrade, spatial_degrade_t  # noqa: E402
from hsfuse.models import diffusion as D  # noqa: E402

F = torch.nn.functional


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- schedule


def test_schedule_properties():
    s = D.NoiseSchedule()
    b, g = s.betas, s.gammas
    assert s.timesteps == 100 and len(b) == 100 and len(g) == 101
    assert np.all(np.diff(b) > 0) and b[0] == pytest.approx(1e-4) and b[-1] == pytest.approx(0.2)
    assert g[0] == 1.0 and np.all(np.diff(g) < 0)
    assert np.all((g[1:] > 0) & (g[1:] < 1))
    assert g[-1] < 1e-4  # x_T is pure noise in practice
    with pytest.raises(ValueError):
        D.NoiseSchedule(beta_start=0.3, beta_end=0.2)
    assert D.NoiseSchedule.from_dict(s.to_dict()) == s


@pytest.mark.parametrize("steps", [1, 4, 8, 16, 100])
def test_sampling_timesteps(steps):
    ts = D.NoiseSchedule().sampling_timesteps(steps)
    assert len(ts) == steps and ts[0] == 100 and min(ts) >= 1
    assert all(a > b for a, b in zip(ts, ts[1:]))
    if steps == 100:
        assert ts == list(range(100, 0, -1))
    if steps == 4:
        assert ts == [100, 75, 50, 25]


@pytest.mark.parametrize("bad", [0, 101, 2.5])
def test_sampling_timesteps_rejects(bad):
    with pytest.raises(ValueError):
        D.NoiseSchedule().sampling_timesteps(bad)


def test_training_levels_lie_between_neighbouring_gammas():
    s = D.NoiseSchedule()
    gen = torch.Generator().manual_seed(0)
    t, gamma = s.sample_training_levels(4000, gen)
    g = torch.from_numpy(s.gammas)
    assert t.min() >= 1 and t.max() <= 100 and len(t.unique()) == 100
    assert torch.all(gamma >= g[t].float() - 1e-7) and torch.all(gamma <= g[t - 1].float() + 1e-7)
    assert torch.all((gamma > 0) & (gamma < 1))
    t2, gamma2 = s.sample_training_levels(4000, torch.Generator().manual_seed(0))
    assert torch.equal(t, t2) and torch.equal(gamma, gamma2)


def test_top_fraction_trains_the_first_sampling_level_more():
    s = D.NoiseSchedule()
    t, gamma = s.sample_training_levels(8000, torch.Generator().manual_seed(1), top_fraction=0.5)
    g = torch.from_numpy(s.gammas)
    share = (t == 100).float().mean().item()
    assert 0.48 < share < 0.53  # 0.5 + 0.5/100
    assert torch.all(gamma >= g[t].float() - 1e-7) and torch.all(gamma <= g[t - 1].float() + 1e-7)
    # without it the random stream (hence older runs) is unchanged
    a, _ = s.sample_training_levels(64, torch.Generator().manual_seed(2))
    b, _ = s.sample_training_levels(64, torch.Generator().manual_seed(2), top_fraction=0.0)
    assert torch.equal(a, b)
    with pytest.raises(ValueError):
        s.sample_training_levels(4, top_fraction=1.5)


def test_progressive_patch_size():
    sch = ((0, 64), (100, 128), (200, 256, 2))
    assert [D.progressive_patch_size(k, sch) for k in (0, 99, 100, 199, 200, 10**6)] == [64, 64, 128, 128, 256, 256]
    assert D.progressive_patch_size(0, D.DEFAULT_PROGRESSIVE) == 64
    with pytest.raises(ValueError):
        D.progressive_patch_size(0, ((10, 64),))
    with pytest.raises(ValueError):
        D.progressive_patch_size(0, ((0, 64), (0, 128)))


# ----------------------------------------------------------------------------- forward model in torch


@pytest.mark.parametrize("psf", [
    Psf.block(gaussian_kernel(4, 1.0, center=1.5)),  # block form (MHF-Net / HSR-Diff CAVE protocol)
    Psf.box(4),
    Psf.gaussian(4),  # conv form, reflect
    Psf.gaussian(4, border="edge"),
    Psf.gaussian(4, border="wrap"),
    Psf.gaussian(4, border="zero"),
    make_psf("gaussian", 4, sigma=2.5, pad=5),  # pad larger than the centring pad
    Psf(gaussian_kernel(3, 0.8), 4, pad=-1),  # kernel starting inside the block
    Psf.gaussian(2, sigma=3.0),  # kernel (and mirrored padding) larger than a tiny image
], ids=lambda p: f"{p.name}-{p.border}-pad{p.pad}")
def test_torch_degrade_equals_numpy(psf):
    rng = np.random.default_rng(1)
    z = rng.random((3, 8, 12))
    ref = spatial_degrade(z, psf)
    got = spatial_degrade_t(torch.from_numpy(z), psf).numpy()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
    # batched float32, differentiable
    zt = torch.from_numpy(np.stack([z, z[:, ::-1].copy()])).float().requires_grad_()
    out = spatial_degrade_t(zt, psf)
    np.testing.assert_allclose(out[0].detach().numpy(), spatial_degrade(z.astype(np.float32), psf), atol=1e-6)
    out.sum().backward()
    assert zt.grad is not None and torch.isfinite(zt.grad).all()


def test_torch_srf_equals_numpy():
    rng = np.random.default_rng(2)
    z, r = rng.random((6, 5, 4)), rng.random((3, 6))
    np.testing.assert_allclose(D.torch_apply_srf(torch.from_numpy(z), r).numpy(), apply_srf(z, r), atol=1e-12)


# ----------------------------------------------------------------------------- loss


def _pair(seed=0, c=6, hw=16, s=4):
    rng = np.random.default_rng(seed)
    x0 = torch.from_numpy(rng.random((2, c, hw, hw))).float()
    psf = Psf.gaussian(s)
    srf = rng.random((3, c)) / c
    lr = spatial_degrade_t(x0, psf)
    msi = D.torch_apply_srf(x0, srf)
    return x0, lr, msi, psf, srf


def test_loss_is_zero_for_a_perfect_denoiser_and_positive_otherwise():
    x0, lr, msi, psf, srf = _pair()
    sched = D.NoiseSchedule()
    total, parts = D.diffusion_loss(lambda x, g: x0, x0, lr, msi, sched, psf=psf, srf=srf,
                                    generator=torch.Generator().manual_seed(0))
    assert set(parts) == {"l1", "spatial", "spectral"}
    assert float(total) < 1e-6
    seen = {}

    def noisy(x, g):
        seen["level"] = g
        return x

    total, parts = D.diffusion_loss(noisy, x0, lr, msi, sched, psf=psf, srf=srf, generator=torch.Generator().manual_seed(0))
    assert float(total) > 0 and all(float(v) > 0 for v in parts.values())
    assert seen["level"].shape == (2,) and torch.all((seen["level"] > 0) & (seen["level"] < 1))
    _, parts = D.diffusion_loss(noisy, x0, lr, msi, sched)  # no operators: L1 only
    assert set(parts) == {"l1"}


# ----------------------------------------------------------------------------- samplers


def _gen_noise(seed, shape):
    return lambda key: D.scene_noise(seed, shape, 0, 0, key)[None]


@pytest.mark.parametrize("steps", [1, 4, 8, 16, 100])
def test_ddim_with_oracle_returns_the_clean_image_exactly(steps):
    x0 = torch.rand(1, 4, 8, 8)
    calls = []

    def oracle(x, level):
        calls.append(float(level[0]))
        return x0

    out = D.sample_ddim(oracle, D.NoiseSchedule(), steps=steps, noise=_gen_noise(0, (4, 8, 8)))
    assert torch.equal(out, x0)
    assert len(calls) == steps and calls == sorted(calls)  # noise levels √γ rise as noise is removed


def test_ancestral_with_oracle_returns_the_clean_image():
    x0 = torch.rand(1, 4, 8, 8)
    out = D.sample_ancestral(lambda x, g: x0, D.NoiseSchedule(), noise=_gen_noise(0, (4, 8, 8)))
    np.testing.assert_allclose(out.numpy(), x0.numpy(), atol=1e-6)


def test_ancestral_oracle_trajectory_stays_on_the_forward_marginals():
    """With an oracle, x_t of the ancestral sampler is distributed as √γ_t x0 + √(1−γ_t) ε (checked at t = 50)."""
    sched = D.NoiseSchedule()
    g = sched.gammas
    x0 = torch.full((1, 1, 64, 64), 0.7)
    seen = {}

    def oracle(x, level):
        if abs(float(level[0]) - math.sqrt(g[50])) < 1e-6:
            seen["x"] = x.clone()
        return x0

    D.sample_ancestral(oracle, sched, noise=_gen_noise(3, (1, 64, 64)))
    z = (seen["x"] - math.sqrt(g[50]) * 0.7) / math.sqrt(1 - g[50])
    assert abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1) < 0.05


def test_eta_one_step_is_the_ddpm_posterior():
    """One η=1 step from t to t−1 equals the textbook posterior q(x_{t−1} | x_t, x̂0)."""
    sched = D.NoiseSchedule(timesteps=2)
    g, b = sched.gammas, sched.betas
    x0 = torch.rand(1, 2, 4, 4)
    xT = D.scene_noise(5, (2, 4, 4), 0, 0, 2)[None]
    z1 = D.scene_noise(5, (2, 4, 4), 0, 0, 1)[None]
    seen = []
    D.sample(lambda x, lv: (seen.append(x.clone()), x0)[1], sched, steps=2, eta=1.0,
             noise=_gen_noise(5, (2, 4, 4)))
    t = 2
    mean = (math.sqrt(g[t - 1]) * b[t - 1] / (1 - g[t])) * x0 + (math.sqrt(1 - b[t - 1]) * (1 - g[t - 1]) / (1 - g[t])) * xT
    var = (1 - g[t - 1]) / (1 - g[t]) * b[t - 1]
    np.testing.assert_allclose(seen[1].numpy(), (mean + math.sqrt(var) * z1).numpy(), atol=1e-5)


def _bayes(mu, sd):
    """The exact posterior-mean x0 predictor for data x0 ~ N(mu, sd^2) per pixel."""

    def den(x, level):
        a = level.view(-1, 1, 1, 1).double() ** 2
        return (mu + (a.sqrt() * sd ** 2 / (a * sd ** 2 + 1 - a)) * (x.double() - a.sqrt() * mu)).float()

    return den


def test_samplers_recover_a_gaussian_data_distribution():
    """Data x0 ~ N(mu, sd^2): with the exact posterior-mean denoiser the 100-step samplers reproduce that law.

    Ancestral sampling with the posterior variance (DDPM's lower-bound choice) is slightly
    under-dispersed on this coarse 100-step schedule (measured: std 0.462 for 0.5); DDIM on all
    levels follows the probability-flow ODE closely (0.490). With fewer DDIM steps an MMSE
    denoiser pulls the samples towards the posterior mean (std shrinks monotonically; 1 step
    returns the mean itself): fine for PSNR, see docs/models/hsr-diff.md.
    """
    mu, sd = 0.3, 0.5
    den = _bayes(mu, sd)
    noise = _gen_noise(11, (1, 96, 96))
    sched = D.NoiseSchedule()
    anc = D.sample(den, sched, steps=100, eta=1.0, noise=noise)
    assert abs(float(anc.mean()) - mu) < 0.03 and abs(float(anc.std()) / sd - 1) < 0.1
    stds = []
    for steps in (1, 4, 16, 100):
        out = D.sample(den, sched, steps=steps, eta=0.0, noise=noise)
        assert abs(float(out.mean()) - mu) < 0.03
        stds.append(float(out.std()))
    assert abs(stds[-1] / sd - 1) < 0.05
    assert stds[0] < 0.01 and all(a < b for a, b in zip(stds, stds[1:]))


def test_samplers_are_deterministic_in_the_seed():
    den = lambda x, g: 0.5 * x + 0.1  # noqa: E731 - any deterministic denoiser
    sched = D.NoiseSchedule()
    a = D.sample_ancestral(den, sched, noise=_gen_noise(1, (2, 6, 6)))
    b = D.sample_ancestral(den, sched, noise=_gen_noise(1, (2, 6, 6)))
    c = D.sample_ancestral(den, sched, noise=_gen_noise(2, (2, 6, 6)))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_tiled_sampling_sees_the_scene_noise():
    """Two overlapping crops sampled separately agree where a local denoiser's context is inside both."""
    H, W, r = 24, 24, 1  # 3x3 blur denoiser: radius 1 per step
    ker = torch.full((2, 1, 3, 3), 1 / 9)
    den = lambda x, g: F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), ker, groups=2) * 0.9  # noqa: E731
    sched = D.NoiseSchedule()
    steps = 4
    full = D.sample_ddim(den, sched, steps=steps, noise=D.tile_noise_fn(7, (2, H, W), 0, 0))
    r0, c0, h, w = 5, 9, 14, 12
    crop = D.sample_ddim(den, sched, steps=steps, noise=D.tile_noise_fn(7, (2, h, w), r0, c0))
    m = steps * r  # the border a crop gets wrong
    np.testing.assert_allclose(crop[..., m:h - m, m:w - m].numpy(),
                               full[..., r0 + m:r0 + h - m, c0 + m:c0 + w - m].numpy(), atol=1e-6)



# ----------------------------------------------------------------------------- scene noise


def test_scene_noise_is_a_crop_of_one_field():
    big = D.scene_noise(42, (3, 20, 30), -4, -7, 5)
    part = D.scene_noise(42, (3, 6, 9), 2, 10, 5)
    assert torch.equal(part, big[:, 6:12, 17:26])
    assert big.dtype == torch.float32 and big.shape == (3, 20, 30)
    assert torch.equal(D.scene_noise(42, (3, 20, 30), -4, -7, 5), big)  # deterministic


def test_scene_noise_statistics_and_independence():
    n = D.scene_noise(0, (4, 128, 128), 0, 0, 1).double()
    assert abs(float(n.mean())) < 0.01 and abs(float(n.std()) - 1) < 0.01
    # Gaussian quantiles
    q = torch.quantile(n.flatten()[:200000], torch.tensor([0.025, 0.5, 0.975], dtype=torch.float64))
    np.testing.assert_allclose(q.numpy(), [-1.96, 0.0, 1.96], atol=0.04)
    corr = lambda a, b: float(((a - a.mean()) * (b - b.mean())).mean() / (a.std() * b.std()))  # noqa: E731
    assert abs(corr(n[:, 1:], n[:, :-1])) < 0.01  # rows
    assert abs(corr(n[:, :, 1:], n[:, :, :-1])) < 0.01  # cols
    assert abs(corr(n[1:], n[:-1])) < 0.01  # bands
    other_step = D.scene_noise(0, (4, 128, 128), 0, 0, 2).double()
    other_seed = D.scene_noise(1, (4, 128, 128), 0, 0, 1).double()
    big_seed = D.scene_noise(1 + 2**32, (4, 128, 128), 0, 0, 1).double()
    assert abs(corr(n, other_step)) < 0.01 and abs(corr(n, other_seed)) < 0.01 and abs(corr(other_seed, big_seed)) < 0.01
