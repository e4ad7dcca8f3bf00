"""HSR-Diff: CDFormer shapes, locality, weights loading, a training smoke test, tiled == untiled via the engine."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import smooth_cube  # noqa: E402
from hsfuse.forward.psf import Psf  # noqa: E402
from hsfuse.forward.degrade import apply_srf, spatial_degrade, spatial_degrade_t  # noqa: E402
from hsfuse.errors import ModelError, UsageError  # noqa: E402
from hsfuse.fusion.base import FusionProblem  # noqa: E402
from hsfuse.fusion.engine import FuseConfig, fuse_arrays  # noqa: E402
from hsfuse.models import diffusion as D  # noqa: E402
from hsfuse.models import registry  # noqa: E402
from hsfuse.models.hsrdiff import HSRDiffFuser  # noqa: E402
from hsfuse.models.networks.cdformer import CDFormer, build_cdformer, count_parameters  # noqa: E402
from hsfuse.weights import save_weights  # noqa: E402
from hsfuse.models.architectures import build_network as build_from_record  # noqa: E402

TINY = dict(bands=5, msi_bands=3, width=8, depth=2, heads=2, window=3, ffn_expansion=1.5, emb_dim=16)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_net(seed: int = 0, **over) -> CDFormer:
    """A tiny random CDFormer whose zero-initialised output conv is randomised (so outputs depend on x_t)."""
    torch.manual_seed(seed)
    net = CDFormer(**{**TINY, **over})
    with torch.no_grad():
        net.recon.weight.normal_(0, 0.1)
        for layer in net.dn_layers:
            layer.film.weight.normal_(0, 0.1)
    return net.eval()


# ----------------------------------------------------------------------------- the network


@pytest.mark.parametrize("scale,h", [(8, 3), (32, 1)])
def test_forward_shapes_default_width_31_3(scale, h):
    torch.manual_seed(0)
    net = build_cdformer(31, 3).eval()
    lr, msi = torch.rand(1, 31, h, h + 1), torch.rand(1, 3, h * scale, (h + 1) * scale)
    x = torch.randn(1, 31, h * scale, (h + 1) * scale)
    with torch.no_grad():
        out = net(lr, msi, x, torch.tensor([0.3]), origin=(-5, 11))
    assert out.shape == x.shape and torch.isfinite(out).all()
    # untrained (zero-initialised reconstruction conv): exactly the bicubic base
    base = torch.nn.functional.interpolate(lr, size=x.shape[-2:], mode="bicubic", align_corners=False)
    assert torch.equal(out, base)


def test_parameter_count_and_record_round_trip():
    net = build_cdformer(31, 3)
    assert 400_000 < count_parameters(net) < 1_000_000  # width 64, depth 4 (docs/models/hsr-diff.md)
    again = build_from_record("hsrdiff-cdformer", net.config)
    assert count_parameters(again) == count_parameters(net)
    with pytest.raises(ValueError, match="architecture"):
        build_from_record("hsrdiff-nonesuch", net.config)


def test_residual_space_diffusion_maps_back_and_starts_at_the_base():
    """residual_scale r: the diffusion variable is (x - base)/r; untrained, x̂0 is the base; the record keeps r."""
    torch.manual_seed(0)
    net = CDFormer(**{**TINY, "residual_scale": 0.01}).eval()
    lr, msi = torch.rand(2, 5, 4, 4), torch.rand(2, 3, 16, 16)
    x = torch.rand(2, 5, 16, 16)
    with torch.no_grad():
        cond = net.encode(lr, msi)
        z = net.to_latent(x, cond)
        np.testing.assert_allclose(net.from_latent(z, cond).numpy(), x.numpy(), atol=1e-6)
        np.testing.assert_allclose(z.numpy(), ((x - cond.base) / 0.01).numpy(), rtol=1e-5, atol=1e-4)
        out = net(lr, msi, torch.randn_like(x), torch.tensor([0.3, 0.9]))
    assert torch.equal(out, cond.base)  # zero reconstruction conv: the base, whatever x_t is
    assert build_from_record("hsrdiff-cdformer", net.config).residual_scale == 0.01
    assert "residual_scale" not in CDFormer(**TINY).config  # image-space records stay as they were
    with pytest.raises(ValueError, match="residual_scale"):
        CDFormer(**{**TINY, "residual_scale": -1.0})


def test_residual_space_loss_is_zero_for_a_perfect_denoiser():
    torch.manual_seed(0)
    net = CDFormer(**{**TINY, "residual_scale": 0.01})
    hr = torch.rand(2, 5, 16, 16)
    psf = Psf.gaussian(4)
    srf = np.random.default_rng(0).random((3, 5)) / 5
    lr, msi = spatial_degrade_t(hr, psf), D.torch_apply_srf(hr, srf)
    cond = net.encode(lr, msi)
    latent = (lambda x: net.to_latent(x, cond), lambda z: net.from_latent(z, cond))
    seen = {}

    def oracle(z_t, g):  # the exact clean latent: x̂0 maps back to hr
        seen["z_t"] = z_t
        return net.to_latent(hr, cond)

    total, _ = D.diffusion_loss(oracle, hr, lr, msi, D.NoiseSchedule(), psf=psf, srf=srf, latent=latent,
                                loss_scale=100.0, generator=torch.Generator().manual_seed(0))
    assert float(total) < 1e-3
    # the noised variable lives in residual space (unit scale), not image space
    assert 0.3 < float(seen["z_t"].std()) < 200
    total, parts = D.diffusion_loss(lambda z, g: torch.zeros_like(z), hr, lr, msi, D.NoiseSchedule(), latent=latent,
                                    loss_scale=100.0, generator=torch.Generator().manual_seed(0))
    expected = 100.0 * float((cond.base - hr).abs().mean())  # zero residual = the base's error, scaled
    assert float(parts["l1"]) == pytest.approx(expected, rel=1e-4)


def test_bad_inputs_are_explained():
    net = tiny_net()
    with pytest.raises(ValueError, match="bands"):
        net(torch.rand(1, 4, 2, 2), torch.rand(1, 3, 8, 8), torch.rand(1, 4, 8, 8), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="multiple"):
        net(torch.rand(1, 5, 2, 2), torch.rand(1, 3, 8, 9), torch.rand(1, 5, 8, 9), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="divisible"):
        CDFormer(5, 3, width=10, heads=4)


@pytest.mark.parametrize("sr_skip,lr_context", [(False, 0), (True, 0), (False, 2)])
def test_output_is_local_and_windows_sit_on_the_scene_grid(sr_skip, lr_context):
    """A crop given its scene origin reproduces the full-image output beyond the receptive radius (one call)."""
    net = tiny_net(1, depth=1, sr_skip=sr_skip, lr_context=lr_context)
    s, bands = 2, 5
    lr, msi = torch.rand(1, bands, 40, 40), torch.rand(1, 3, 80, 80)
    x, lvl = torch.randn(1, bands, 80, 80), torch.tensor([0.4])
    r0, c0, n = 6, 4, 64  # HR origin of the crop (multiples of s, not of the window 3) and its size
    sl = (..., slice(r0, r0 + n), slice(c0, c0 + n))
    sl_lr = (..., slice(r0 // s, (r0 + n) // s), slice(c0 // s, (c0 + n) // s))
    with torch.no_grad():
        full = net(lr, msi, x, lvl)
        crop = net(lr[sl_lr], msi[sl], x[sl], lvl, origin=(r0, c0))
        misaligned = net(lr[sl_lr], msi[sl], x[sl], lvl, origin=(0, 0))
    m = net.radius_cond_hr(s) + 2 * s + 1  # + the bicubic upsampling's reach
    assert n - 2 * m > 0
    inner = (..., slice(m, n - m), slice(m, n - m))
    np.testing.assert_allclose(crop[inner].numpy(), full[sl][inner].numpy(), atol=1e-5)
    assert float((misaligned[inner] - full[sl][inner]).abs().max()) > 1e-3


def test_sr_skip_carries_the_conditions_to_the_output_and_is_recorded():
    """With the skip, the conditions change x̂0 even when the denoising stream's cross-attention is cut."""
    lr, msi = torch.rand(1, 5, 6, 6), torch.rand(1, 3, 12, 12)
    x, lvl = torch.randn(1, 5, 12, 12), torch.tensor([0.01])
    outs = {}
    for skip in (False, True):
        net = tiny_net(2, sr_skip=skip)
        with torch.no_grad():
            for layer in net.dn_layers:
                layer.cross.proj.weight.zero_()  # no path from the SR stream but the skip
                layer.cross.proj.bias.zero_()
            a = net(lr, msi, x, lvl) - net.encode(lr, msi).base
            b = net(lr, msi * 2 + 0.3, x, lvl) - net.encode(lr, msi * 2 + 0.3).base
        outs[skip] = float((a - b).abs().max())
        assert ("sr_skip" in net.config) == skip
        assert build_from_record("hsrdiff-cdformer", net.config).sr_skip == skip
    assert outs[False] < 1e-6 < 1e-3 < outs[True]


def test_lr_context_sees_beyond_the_windows_and_is_recorded():
    """The LR-grid path lets an output pixel depend on conditions farther away than the windows reach."""
    s = 4
    lr, msi, x, lvl = torch.rand(1, 5, 12, 12), torch.rand(1, 3, 48, 48), torch.randn(1, 5, 48, 48), torch.tensor([0.5])
    far = lr.clone()
    far[..., 0, 0] += 10.0  # LR pixel (0, 0): 6 LR pixels from the output pixel checked, HR (25, 25)
    deltas = {}
    for k in (0, 2, 8):
        net = tiny_net(3, depth=1, lr_context=k)
        with torch.no_grad():
            deltas[k] = float((net(lr, msi, x, lvl) - net(far, msi, x, lvl))[..., 25, 25].abs().max())
        assert ("lr_context" in net.config) == bool(k) and build_from_record("hsrdiff-cdformer", net.config).lr_context == k
    assert 25 > tiny_net(3, depth=1).radius_cond_hr(s) + 2 * s + 1  # beyond the plain network's reach
    assert deltas[0] == 0.0 and deltas[2] == 0.0  # 2 LR convs + bilinear reach 3 LR pixels, not 6
    assert deltas[8] > 1e-4 and tiny_net(3, depth=1, lr_context=8).radius_cond_hr(s) >= 10 * s
    with pytest.raises(ValueError, match="lr_context"):
        CDFormer(**TINY, lr_context=-1)


def test_recon_init_starts_off_the_base_and_is_recorded():
    lr, msi, x, lvl = torch.rand(1, 5, 6, 6), torch.rand(1, 3, 12, 12), torch.randn(1, 5, 12, 12), torch.tensor([0.5])
    for init in (0.0, 0.05):
        torch.manual_seed(0)
        net = CDFormer(**TINY, recon_init=init).eval()
        with torch.no_grad():
            off = float((net(lr, msi, x, lvl) - net.encode(lr, msi).base).abs().max())
        assert (off > 1e-3) == bool(init) and ("recon_init" in net.config) == bool(init)
    with pytest.raises(ValueError, match="recon_init"):
        CDFormer(**TINY, recon_init=-1.0)


# ----------------------------------------------------------------------------- training smoke test


def test_training_smoke_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    s = 4
    hr = torch.rand(2, 5, 16, 16)  # white texture: the bicubic base is far from it, there is a lot to learn
    psf = Psf.gaussian(s)
    srf = np.random.default_rng(0).random((3, 5)) / 5
    lr = spatial_degrade_t(hr, psf)
    msi = D.torch_apply_srf(hr, srf)
    net = CDFormer(**TINY).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = D.NoiseSchedule()
    losses = []
    for _ in range(10):
        gen = torch.Generator().manual_seed(123)  # same levels and noise each step: a fixed batch
        loss, parts = D.diffusion_loss(lambda x, g: net(lr, msi, x, g), hr, lr, msi, sched, psf=psf, srf=srf,
                                       generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        assert all(torch.isfinite(v) for v in parts.values())
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.98 * losses[0], losses  # measured: 0.281 -> 0.269
    assert all(b < a for a, b in zip(losses[2:], losses[3:])), losses


# ----------------------------------------------------------------------------- the Fuser


class TinyFuser(HSRDiffFuser):
    """HSR-Diff with a tiny randomly initialised CDFormer instead of trained weights."""

    name = "hsr-diff-tiny"
    residual_scale = 0.0

    def _load_network(self):
        p = self.problem
        net = tiny_net(7, bands=p.lr_bands, msi_bands=p.msi_bands, residual_scale=self.residual_scale)
        return net, {"architecture": "hsrdiff-cdformer"}


class TinyResidualFuser(TinyFuser):
    residual_scale = 0.05


class TinyContextFuser(TinyFuser):
    """Residual space, the LR-grid context path and the skip: every option that changes the halo."""

    residual_scale = 0.05

    def _load_network(self):
        p = self.problem
        net = tiny_net(7, bands=p.lr_bands, msi_bands=p.msi_bands, residual_scale=self.residual_scale,
                       lr_context=2, sr_skip=True)
        return net, {"architecture": "hsrdiff-cdformer"}


@pytest.fixture(params=["image", "residual", "context"])
def tiny_model(monkeypatch, request):
    cls = {"image": "TinyFuser", "residual": "TinyResidualFuser", "context": "TinyContextFuser"}[request.param]
    entry = registry.ModelEntry("hsr-diff-tiny", "zero-shot", "test", f"test_hsrdiff:{cls}", "any")
    monkeypatch.setitem(registry.REGISTRY, entry.name, entry)
    return entry.name


def _scene(bands=5, s=4, h=8, seed=0):
    hr = smooth_cube(bands, h * s, h * s, seed=seed)
    srf = np.random.default_rng(seed).random((3, bands)).astype(np.float32) / bands
    lr = spatial_degrade(hr, Psf.gaussian(s)).astype(np.float32)
    msi = apply_srf(hr, srf).astype(np.float32)
    return lr, msi


@pytest.mark.parametrize("sampler", ["ddim", "ancestral"])
def test_engine_tiled_equals_untiled_and_seed_determinism(tiny_model, sampler):
    """2x2 tiles (located in the scene by the fuser) with blended overlap == one untiled run."""
    lr, msi = _scene()
    opts = {"steps": 2, "seed": 3, "sampler": sampler}
    untiled = fuse_arrays(lr, msi, FuseConfig(model=tiny_model, tile=512, options=opts))
    tiled = fuse_arrays(lr, msi, FuseConfig(model=tiny_model, tile=16, overlap=8, options=opts))
    assert untiled.shape == (5, 32, 32) and np.isfinite(untiled).all()
    np.testing.assert_allclose(tiled, untiled, atol=1e-4)  # measured: 2.4e-7
    again = fuse_arrays(lr, msi, FuseConfig(model=tiny_model, tile=16, overlap=8, options=opts))
    assert np.array_equal(again, tiled)
    other = fuse_arrays(lr, msi, FuseConfig(model=tiny_model, tile=512, options={**opts, "seed": 4}))
    assert np.abs(other - untiled).max() > 1e-3
    # the invariant is not trivial: a halo below the receptive field breaks it (measured: 2.5e-3)
    short = fuse_arrays(lr, msi, FuseConfig(model=tiny_model, tile=16, overlap=8, options={**opts, "halo_lr": 1}))
    assert np.abs(short - untiled).max() > 1e-3


def _problem(**opts):
    return FusionProblem(scale=4, lr_bands=5, msi_bands=3, psf=Psf.gaussian(4), options=opts)


def test_fuser_origin_given_equals_located():
    lr, msi = _scene()
    f = TinyFuser(_problem(steps=2, seed=1))
    f.fit(lr, msi)
    hl, s = f.halo_lr, 4
    lr_p = np.pad(lr, ((0, 0), (hl, hl), (hl, hl)), mode="symmetric")
    msi_p = np.pad(msi, ((0, 0), (hl * s, hl * s), (hl * s, hl * s)), mode="symmetric")
    # the tile with LR core rows 2..6, cols 3..8
    lt = lr_p[:, 2:6 + 2 * hl, 3:8 + 2 * hl]
    mt = msi_p[:, 2 * s:(6 + 2 * hl) * s, 3 * s:(8 + 2 * hl) * s]
    located = f.fuse_tile(lt, mt)
    assert f.origin_source == "located"
    given = f.fuse_tile(lt, mt, origin=((2 - hl) * s, (3 - hl) * s))
    assert f.origin_source == "given" and np.array_equal(located, given)
    wrong = f.fuse_tile(lt, mt, origin=(0, 0))
    assert np.abs(wrong - given).max() > 1e-3
    d = f.describe()
    assert d["steps"] == 2 and d["sampler"] == "ddim" and d["halo_lr"] == f.halo_bound


def test_fuser_options_are_checked():
    with pytest.raises(UsageError, match="sampler"):
        TinyFuser(_problem(sampler="euler"))
    with pytest.raises(UsageError, match="steps"):
        TinyFuser(_problem(steps=0))
    f = TinyFuser(_problem(sampler="ancestral"))
    assert f.steps == 100 and f.eta == 1.0
    assert TinyFuser(_problem(steps=100)).halo_lr > TinyFuser(_problem(steps=1)).halo_lr
    with pytest.raises(ModelError, match="not yet trained"):
        HSRDiffFuser(_problem())


@pytest.fixture
def saved_weights(tmp_path):
    net = CDFormer(**TINY)
    rec = {"architecture": "hsrdiff-cdformer", "kwargs": net.config, "bands": 5, "msi_bands": 3, "scales": [4],
           "protocol": "test", "training_data": "none", "steps": 0, "validation_metrics": {},
           "diffusion": D.NoiseSchedule(timesteps=50).to_dict()}
    save_weights(tmp_path / "hsr-diff-test", net.state_dict(), rec)
    return tmp_path / "hsr-diff-test"


def test_fuser_loads_weights_and_checks_them(saved_weights):
    lr, msi = _scene()
    f = HSRDiffFuser(_problem(weights=saved_weights, steps=1))
    assert f.schedule.timesteps == 50
    f.fit(lr, msi)
    hl = f.halo_lr
    out = f.fuse_tile(np.pad(lr, ((0, 0), (hl, hl), (hl, hl)), mode="symmetric"),
                      np.pad(msi, ((0, 0), (4 * hl, 4 * hl), (4 * hl, 4 * hl)), mode="symmetric"))
    assert out.shape == (5, 4 * (8 + 2 * hl), 4 * (8 + 2 * hl)) and np.isfinite(out).all()
    with pytest.raises(ModelError, match="bands"):
        HSRDiffFuser(FusionProblem(scale=4, lr_bands=6, msi_bands=3, options={"weights": saved_weights}))
    with pytest.raises(ModelError, match="MSI"):
        HSRDiffFuser(FusionProblem(scale=4, lr_bands=5, msi_bands=4, options={"weights": saved_weights}))
    with pytest.raises(ModelError, match="scale"):
        HSRDiffFuser(FusionProblem(scale=8, lr_bands=5, msi_bands=3, options={"weights": saved_weights}))
