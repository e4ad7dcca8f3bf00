"""Classical fusers (hsfuse/models/classical.py): shapes, quality, tiling invariance, nodata, CAVE check."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import smooth_cube
from hsfuse.forward.psf import Psf, gaussian_kernel
from hsfuse.forward.degrade import spatial_degrade
from hsfuse.fusion.base import FusionProblem
from hsfuse.models.classical import CNMF, GLPHS, Bicubic, DetailInjection, fuse_arrays, vca
from hsfuse.forward.degrade import spatial_degrade_t
from hsfuse.models.registry import classical_fusers

# small iteration counts keep CNMF fast in tests; quality is checked with its defaults elsewhere
FAST = {"cnmf": {"inner": 30, "outer": 1, "lr_iters": 60, "hr_iters": 60}}


def _srf(m: int, c: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    r = rng.random((m, c)) ** 2
    return r / r.sum(1, keepdims=True)


def _pair(bands=8, msi_bands=3, size=32, scale=4, psf=None, seed=0, texture=0.0):
    z = smooth_cube(bands, size, size, seed=seed).astype(np.float64)
    if texture:
        rng = np.random.default_rng(seed + 100)
        z = z * (1 + texture * rng.standard_normal((1, size, size)))  # shared HR detail the MSI sees
    psf = Psf.gaussian(scale) if psf is None else psf
    srf = _srf(msi_bands, bands, seed)
    lr = spatial_degrade(z, psf).astype(np.float32)
    msi = np.einsum("mc,chw->mhw", srf, z).astype(np.float32)
    return z.astype(np.float32), lr, msi, psf, srf


def _problem(name, lr, msi, psf, srf, **opts):
    o = dict(FAST.get(name, {}))
    o.update(opts)
    return FusionProblem(psf.scale, lr.shape[0], msi.shape[0], psf=psf, srf=srf, options=o)


def _psnr(a, b):
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


def _tiled(method_cls, lr, msi, problem, tiles=(2, 2)):
    """What the engine does: fit once, mirror-pad the whole scene by the halo, cut tiles with halo, crop."""
    s = problem.scale
    psf = problem.psf
    m = method_cls(problem)
    m.fit(lr, spatial_degrade(msi, psf))
    hl = m.halo_lr
    lrp = np.pad(lr, ((0, 0), (hl, hl), (hl, hl)), mode="symmetric")
    msip = np.pad(msi, ((0, 0), (hl * s, hl * s), (hl * s, hl * s)), mode="symmetric")
    c, h, w = lr.shape
    out = np.full((c, h * s, w * s), np.nan, dtype=np.float32)
    rows = np.linspace(0, h, tiles[0] + 1).astype(int)
    cols = np.linspace(0, w, tiles[1] + 1).astype(int)
    for r0, r1 in zip(rows[:-1], rows[1:]):
        for c0, c1 in zip(cols[:-1], cols[1:]):
            t_lr = lrp[:, r0: r1 + 2 * hl, c0: c1 + 2 * hl]
            t_msi = msip[:, r0 * s: (r1 + 2 * hl) * s, c0 * s: (c1 + 2 * hl) * s]
            res = m.fuse_tile(t_lr, t_msi)
            assert res.shape == (c, t_lr.shape[1] * s, t_lr.shape[2] * s)
            out[:, r0 * s: r1 * s, c0 * s: c1 * s] = res[:, hl * s: hl * s + (r1 - r0) * s, hl * s: hl * s + (c1 - c0) * s]
    return out


@pytest.mark.parametrize("name", sorted(classical_fusers()))
@pytest.mark.parametrize("bands,msi_bands", [(7, 3), (48, 9)])
def test_every_method_shape_dtype_finite(name, bands, msi_bands):
    z, lr, msi, psf, srf = _pair(bands, msi_bands, size=32, scale=4)
    out = fuse_arrays(classical_fusers()[name], lr, msi, _problem(name, lr, msi, psf, srf))
    assert out.shape == z.shape
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    m = classical_fusers()[name](_problem(name, lr, msi, psf, srf))
    d = m.describe()
    assert d["name"] == name and d["halo_lr"] == m.halo_lr >= 2


@pytest.mark.parametrize("name", ["gsa", "glp-hs", "cnmf"])
def test_fusion_beats_bicubic(name):
    z, lr, msi, psf, srf = _pair(16, 4, size=64, scale=4, texture=0.1, seed=2)
    opts = {} if name != "cnmf" else {"inner": 100, "outer": 2, "lr_iters": 200, "hr_iters": 200}
    prob = _problem(name, lr, msi, psf, srf, **opts)
    base = _psnr(z, fuse_arrays(Bicubic, lr, msi, prob))
    fused = _psnr(z, fuse_arrays(classical_fusers()[name], lr, msi, prob))
    assert fused > base + 3.0, (name, fused, base)


@pytest.mark.parametrize("name,opts", [
    ("bicubic", {}), ("gsa", {}), ("gsa", {"local": 0}), ("gsa", {"local": 1, "upsampler": "bp", "bp_iters": 2}),
    ("glp-hs", {}), ("glp-hs", {"synth": "select", "gain": "hpm"}), ("cnmf", {}), ("cnmf", {"correct": True}),
])
@pytest.mark.parametrize("psf", [Psf.gaussian(4, 2.0), Psf.block(gaussian_kernel(4, 1.0))], ids=["gauss", "block"])
def test_tiled_equals_untiled(name, opts, psf):
    z, lr, msi, psf, srf = _pair(9, 3, size=64, scale=4, psf=psf, texture=0.05, seed=3)
    prob = _problem(name, lr, msi, psf, srf, **opts)
    whole = fuse_arrays(classical_fusers()[name], lr, msi, prob)
    tiled = _tiled(classical_fusers()[name], lr, msi, prob, tiles=(2, 2))
    np.testing.assert_allclose(tiled, whole, atol=1e-4, rtol=0)


def test_halo_covers_psf():
    big = Psf.gaussian(4, 4.0)  # 26x26 kernel: reaches beyond its block
    assert big.halo_lr >= 2
    prob = FusionProblem(4, 8, 3, psf=big)
    assert DetailInjection(prob).halo_lr >= big.halo_lr + 2
    assert GLPHS(prob).halo_lr >= big.halo_lr + 2
    assert Bicubic(prob).halo_lr == 2


def test_default_psf_is_reported():
    m = DetailInjection(FusionProblem(4, 8, 3))
    d = m.describe()
    assert d["psf_assumed"] is True and "gaussian" in d["psf"] and "assumed" in d["note"]


@pytest.mark.parametrize("name", sorted(classical_fusers()))
def test_nodata_gives_nan_there_and_finite_elsewhere(name):
    z, lr, msi, psf, srf = _pair(7, 3, size=32, scale=4)
    lr = lr.copy()
    msi = msi.copy()
    lr[:, 2, 3] = np.nan  # one LR pixel nodata
    msi[:, 20, 25] = np.nan  # one MSI pixel nodata
    prob = _problem(name, lr, msi, psf, srf)
    m = classical_fusers()[name](prob)
    m.fit(lr, spatial_degrade(msi, psf))  # msi_lr has NaN around (5, 6): fit ignores it
    hl = m.halo_lr
    s = psf.scale
    out = m.fuse_tile(np.pad(lr, ((0, 0), (hl, hl), (hl, hl)), mode="symmetric"),
                      np.pad(msi, ((0, 0), (hl * s, hl * s), (hl * s, hl * s)), mode="symmetric"))
    out = out[:, hl * s: -hl * s, hl * s: -hl * s]
    bad = np.zeros(out.shape[1:], bool)
    bad[8:12, 12:16] = True
    bad[20, 25] = True
    assert np.isnan(out[:, bad]).all()
    assert np.isfinite(out[:, ~bad]).all()


def test_cnmf_estimates_srf_when_missing():
    z, lr, msi, psf, srf = _pair(12, 3, size=32, scale=4, texture=0.05)
    prob = _problem("cnmf", lr, msi, psf, None)
    m = CNMF(prob)
    out = fuse_arrays(m, lr, msi, prob)
    assert m.describe()["srf_estimated"] is True
    assert m.srf.shape == (3, 12) and np.isfinite(out).all()


def test_vca_finds_pure_pixels():
    rng = np.random.default_rng(0)
    e = rng.random((20, 4)) + 0.1
    a = rng.dirichlet(np.ones(4) * 0.5, size=500).T
    a[:, :4] = np.eye(4)  # pure pixels present
    x = e @ a
    est, idx = vca(x, 4, seed=1)
    assert sorted(idx.tolist()) == [0, 1, 2, 3]
    np.testing.assert_allclose(np.sort(est.sum(0)), np.sort(e.sum(0)))


@pytest.mark.parametrize("psf", [Psf.gaussian(4), Psf.gaussian(3, 2.0, border="edge"), Psf.gaussian(2, 1.5, border="zero"),
                                 Psf.gaussian(4, 1.0, border="wrap"), Psf.block(gaussian_kernel(4, 1.0)), Psf.box(3)])
def test_degrade_t_matches_spatial_degrade(psf):
    import torch

    x = np.random.default_rng(0).random((3, 24, 36)).astype(np.float32)
    np.testing.assert_allclose(spatial_degrade_t(torch.from_numpy(x), psf).numpy(), spatial_degrade(x, psf), atol=1e-6)


def test_bad_options_raise():
    z, lr, msi, psf, srf = _pair(7, 3)
    with pytest.raises(ValueError):
        DetailInjection(_problem("gsa", lr, msi, psf, srf, upsampler="lanczos"))
    with pytest.raises(ValueError):
        GLPHS(_problem("glp-hs", lr, msi, psf, srf, gain="nope"))


# --------------------------------------------------------------------------- real data


def _read_cave(root, scene):
    from PIL import Image

    files = sorted((root / "cave" / f"{scene}_ms").glob("*.png"))
    return np.stack([np.asarray(Image.open(f), dtype=np.float64) / 65535.0 for f in files]).astype(np.float32)


@pytest.mark.shared
@pytest.mark.slow
def test_cave_gsa_beats_bicubic_by_10db(shared_data):
    from scipy.io import loadmat

    rc = loadmat(shared_data / "srf" / "nikon_d700_mhfnet" / "response_coefficient.mat")
    srf = np.asarray(rc["R"], dtype=np.float64).T  # (3, 31)
    gt = _read_cave(shared_data, "face")
    assert gt.shape == (31, 512, 512)
    psf = Psf.block(gaussian_kernel(8, 2.0))  # cave-gauss-x8
    lr = spatial_degrade(gt.astype(np.float64), psf).astype(np.float32)
    msi = np.einsum("mc,chw->mhw", srf, gt.astype(np.float64)).astype(np.float32)
    prob = FusionProblem(8, 31, 3, psf=psf, srf=srf)
    p_bic = _psnr(gt, fuse_arrays(Bicubic, lr, msi, prob))
    p_gsa = _psnr(gt, fuse_arrays(DetailInjection, lr, msi, prob))
    assert p_gsa > p_bic + 10.0, (p_gsa, p_bic)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(classical_fusers()))
def test_cuda_matches_cpu(name):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    z, lr, msi, psf, srf = _pair(9, 3, size=64, scale=4, texture=0.05, seed=3)
    prob = _problem(name, lr, msi, psf, srf)
    cpu = fuse_arrays(classical_fusers()[name], lr, msi, prob, device="cpu")
    gpu = fuse_arrays(classical_fusers()[name], lr, msi, prob, device="cuda")
    assert gpu.dtype == np.float32 and gpu.shape == cpu.shape
    np.testing.assert_allclose(gpu, cpu, atol=2e-3)


@pytest.mark.parametrize("name", sorted(classical_fusers()))
def test_streaming_engine_matches_fuse_arrays(name):
    """The real tiling engine (small tiles, nodata in both inputs) gives what fuse_arrays gives."""
    engine = pytest.importorskip("hsfuse.fusion.engine")
    z, lr, msi, psf, srf = _pair(9, 3, size=128, scale=4, psf=Psf.gaussian(4, 2.0), texture=0.05, seed=1)
    lr, msi = lr.copy(), msi.copy()
    lr[:, 5, 7] = np.nan
    msi[:, 100, 50] = np.nan
    opts = FAST.get(name, {})
    streamed = engine.fuse_arrays(lr, msi, engine.FuseConfig(model=name, tile=48, overlap=0, device="cpu",
                                                             psf=psf, srf=srf, options=opts, denoise="off"))
    whole = fuse_arrays(classical_fusers()[name], lr, msi, _problem(name, lr, msi, psf, srf))  # the texture reads as noise
    assert np.array_equal(np.isnan(streamed), np.isnan(whole))
    ok = np.isfinite(whole)
    np.testing.assert_allclose(streamed[ok], whole[ok], atol=1e-4, rtol=0)


# ---------------------------------------------------------------- PSFs whose LR samples sit off the block centres


def _first_pixel_psf(scale=8):
    """The Dian-group ×8 kernel: 7×7 Gaussian σ 3 centred on the first pixel of each block (phase −3.5)."""
    return Psf(gaussian_kernel(7, 3.0), scale, pad=3)


@pytest.mark.parametrize("offset", [(0.0, 0.0), (-3.5, -3.5), (1.25, -2.0)])
def test_upsample_puts_lr_samples_at_their_phase(offset):
    """A ramp sampled at LR centres s·i + (s−1)/2 + offset comes back as the same ramp at HR, not shifted.

    torch's Keys kernel (a = −0.75) does not reproduce a ramp exactly (a small periodic ripple, zero on
    average), so the check is on the mean error (a sampling-phase error would shift the whole ramp by
    slope × offset: 1 to 2.6 here) and on the ripple staying as small as at offset 0.
    """
    import torch

    from hsfuse.models.common import upsample

    s, n = 8, 12
    centres = [s * np.arange(n) + (s - 1) / 2 + o for o in offset]
    lr = (0.3 * centres[0][:, None] + 0.7 * centres[1][None, :])[None].astype(np.float64)
    hr = upsample(torch.from_numpy(lr), s, offset)[0].numpy()
    y, x = np.mgrid[: n * s, : n * s].astype(np.float64)
    inner = slice(2 * s, (n - 2) * s)  # away from the clamped borders
    err = (hr - (0.3 * y + 0.7 * x))[inner, inner]
    assert abs(err.mean()) < 0.02
    assert np.abs(err).max() < 0.4  # the ripple of a = −0.75 on a slope of 1 per HR pixel


@pytest.mark.parametrize("offset", [(-3.5, -3.5), (0.089, -1.25)])
def test_bilinear_puts_lr_samples_at_their_phase(offset):
    """LR consistency's ratio upsampling: a ramp sampled at s·i + (s−1)/2 + offset comes back exactly inside the
    sampled span; offset 0 is torch's bilinear."""
    import torch

    from hsfuse.models.common import bilinear

    s, n = 8, 6
    dy, dx = offset
    i = torch.arange(n, dtype=torch.float64)
    lr = (0.3 * (s * i + (s - 1) / 2 + dy))[:, None] + (0.7 * (s * i + (s - 1) / 2 + dx))[None, :]
    up = bilinear(lr[None, None], s, offset)[0, 0]
    y = torch.arange(n * s, dtype=torch.float64)
    want = 0.3 * y[:, None] + 0.7 * y[None, :]
    inside = lambda d: slice(int(np.ceil((s - 1) / 2 + d)), int(np.floor(s * (n - 1) + (s - 1) / 2 + d)) + 1)  # noqa: E731
    torch.testing.assert_close(up[inside(dy), inside(dx)], want[inside(dy), inside(dx)], atol=1e-9, rtol=0)
    x = torch.rand(2, 3, 5, 4, dtype=torch.float64)
    torch.testing.assert_close(bilinear(x, 4), torch.nn.functional.interpolate(x, scale_factor=4, mode="bilinear",
                                                                               align_corners=False))


def test_upsample_offset_zero_is_torch_bicubic():
    import torch

    from hsfuse.models.common import _cubic_along, upsample

    x = torch.rand(2, 3, 7, 9, dtype=torch.float64)
    for s in (2, 3, 8):
        generic = _cubic_along(_cubic_along(x, s, 0.0, -2), s, 0.0, -1)
        torch.testing.assert_close(generic, upsample(x, s), atol=1e-12, rtol=0)


def test_sampling_phase_of_presets_and_shifted_kernels():
    from hsfuse.forward.psf import sampling_phase

    assert sampling_phase(_first_pixel_psf()) == (-3.5, -3.5)
    assert sampling_phase(Psf.block(gaussian_kernel(8, 2.0))) == (0.0, 0.0)
    assert sampling_phase(Psf.gaussian(4, 2.0)) == (0.0, 0.0)
    off = Psf(gaussian_kernel(13, 1.0, center=5.0), 4, pad=4)  # Gaussian 1 px before its grid's centre
    assert sampling_phase(off) == pytest.approx((-0.5, -0.5), abs=1e-6)


@pytest.mark.parametrize("name", ["bicubic", "gsa"])
def test_phase_aware_interpolation_beats_block_centred(name, monkeypatch):
    """On a first-pixel kernel, putting LR samples where they were taken is worth decibels (CAVE: docs/fusion.md)."""
    import hsfuse.models.classical as classical

    from hsfuse.demo import synthetic_scene

    psf = _first_pixel_psf()
    z = synthetic_scene(128, seed=3).astype(np.float64)
    srf = _srf(3, z.shape[0], 4)
    lr, msi = spatial_degrade(z, psf).astype(np.float32), np.einsum("mc,chw->mhw", srf, z).astype(np.float32)
    prob = _problem(name, lr, msi, psf, srf)
    aware = _psnr(z, fuse_arrays(classical_fusers()[name], lr, msi, prob))
    monkeypatch.setattr(classical, "sampling_phase", lambda p: (0.0, 0.0))
    centred = _psnr(z, fuse_arrays(classical_fusers()[name], lr, msi, prob))
    assert aware > centred + 1.0, (aware, centred)


@pytest.mark.parametrize("psf", [Psf.gaussian(4), Psf(gaussian_kernel(7, 1.5), 4, pad=0),  # centred; first-pixel phase
                                 Psf.box(4)], ids=["gauss", "phase", "box"])
def test_gsa_numpy_path_equals_the_torch_path(psf):
    """On a CPU gsa runs in numpy (no torch import); the torch path (GPU, network priors) gives the same output."""
    z, lr, msi, _, _ = _pair(bands=6, size=48, scale=4, psf=psf, texture=0.3)
    lr = lr.copy()
    lr[:, 3, 5] = np.nan  # nodata is filled and marked alike
    outs = {}
    for backend in ("numpy", "torch"):
        problem = FusionProblem(scale=4, lr_bands=6, msi_bands=3, psf=psf, options={"backend": backend})
        outs[backend] = fuse_arrays(DetailInjection(problem), lr, msi, problem)
    a, b = outs["numpy"], outs["torch"]
    assert np.array_equal(np.isnan(a), np.isnan(b)) and np.isnan(a).any()
    ok = np.isfinite(a)
    assert np.abs(a[ok] - b[ok]).max() < 1e-5 * np.abs(b[ok]).max()


def test_gsa_and_planning_run_without_importing_torch(tmp_path):
    """`hsfuse fuse --model gsa` in a batch loop pays no torch start-up (issue 23): the whole engine run, files
    included, leaves torch unimported."""
    import subprocess
    import sys

    from hsfuse.io import write_cube

    z, lr, msi, _, _ = _pair(bands=6, size=48, scale=4, psf=Psf.gaussian(4), texture=0.3)
    write_cube(tmp_path / "lr.tif", lr)
    write_cube(tmp_path / "msi.tif", msi)
    code = ("import sys; from hsfuse.fusion.engine import fuse_files, FuseConfig; "
            f"fuse_files({str(tmp_path / 'lr.tif')!r}, {str(tmp_path / 'msi.tif')!r}, {str(tmp_path / 'out.tif')!r}, "
            "FuseConfig(model='gsa')); print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False", r.stderr
    assert (tmp_path / "out.tif").exists()


def test_bicubic_runs_in_numpy_on_a_cpu_and_equals_the_torch_bicubic():
    import torch

    from hsfuse.models.common import upsample

    psf = Psf(gaussian_kernel(7, 1.5), 4, pad=0)  # LR samples off the block centres: the phase is used too
    z, lr, msi, _, _ = _pair(bands=5, size=40, scale=4, psf=psf)
    problem = FusionProblem(scale=4, lr_bands=5, msi_bands=3, psf=psf)
    got = fuse_arrays(Bicubic(problem), lr, msi, problem)
    from hsfuse.forward.psf import sampling_phase

    ref = upsample(torch.from_numpy(lr), 4, sampling_phase(psf)).numpy()
    assert np.abs(got - ref).max() < 1e-5 * np.abs(ref).max()
