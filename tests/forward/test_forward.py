"""The forward model estimated from the pair: recovery, preset recognition, the engine's use of it, bad pairs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from hsfuse.cli import app
from hsfuse.cube import CubeMeta
from hsfuse.forward.psf import Psf, gaussian_kernel
from hsfuse.forward.degrade import spatial_degrade
from hsfuse.demo import WAVELENGTHS, synthetic_scene
from hsfuse.errors import InputError
from hsfuse.forward.estimate import RESIDUAL_FAIL, estimate_pair
from hsfuse.forward.psf import psf_distance
from hsfuse.fusion.engine import FuseConfig, fuse_arrays, make_plan
from hsfuse.io import write_cube
from hsfuse.io.memory import ArraySource
from hsfuse.forward.protocols import get_protocol
from hsfuse.forward.srf import load_srf
from hsfuse.weights import WeightsRecord, read_record

runner = CliRunner()


def _psnr(ref: np.ndarray, x: np.ndarray) -> float:
    mse = ((ref.astype(np.float64) - x) ** 2).reshape(ref.shape[0], -1).mean(1)
    return float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-20))))


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    return synthetic_scene(128, seed=3)


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return load_srf("nikon-5100", WAVELENGTHS, len(WAVELENGTHS)).matrix


def _pair(z, psf, srf):
    return spatial_degrade(z, psf).astype(np.float32), np.einsum("mc,chw->mhw", srf, z).astype(np.float32)


def test_recovers_gaussian_width_phase_and_srf(scene, rgb):
    # conv Gaussian σ = 1.7 whose LR samples sit 1.5 HR px off the block centre (a sampling phase)
    k = 15
    psf = Psf(gaussian_kernel(k, 1.7), 4, pad=(k - 4) // 2 + 1)  # the kernel starts one pixel later: offset -1.5+...
    true_offset = (k - 4) / 2.0 - psf.pad  # hsfuse.forward.psf.lr_phase_offset
    srf = rgb * np.array([1.0, 0.8, 1.3])[:, None]  # a gain per band, as between real sensors
    lr, msi = _pair(scene, psf, srf)
    est = estimate_pair(lr, msi, 4, presets=False)
    assert est.psf_kind in ("gaussian", "free kernel")
    assert est.sigma == pytest.approx(1.7, rel=0.05)
    assert est.centre_offset[0] == pytest.approx(true_offset, abs=0.2)
    assert est.centre_offset[1] == pytest.approx(true_offset, abs=0.2)
    # a scene of ten materials does not pin every SRF weight, only what the SRF does to its spectra
    pred, true = np.einsum("mc,chw->mhw", est.srf, scene), np.einsum("mc,chw->mhw", srf, scene)
    assert np.linalg.norm(pred - true) < 0.01 * np.linalg.norm(true)
    assert est.gain == pytest.approx(srf.sum(1), rel=0.05)
    assert est.residual < 0.01 and est.status == "good"
    assert psf_distance(est.psf, psf) < 0.1


def test_a_preset_is_recognised_and_taken_as_exact(scene, rgb):
    psf = get_protocol("wald-gauss").build_psf(4)
    lr, msi = _pair(scene, psf, rgb)
    est = estimate_pair(lr, msi, 4)
    assert est.preset == "wald-gauss" and est.psf_kind == "preset wald-gauss"
    plan = make_plan(ArraySource(lr, CubeMeta(wavelengths=WAVELENGTHS)), ArraySource(msi), FuseConfig(model="gsa"))
    assert plan.forward.exact and psf_distance(plan.psf, psf) == 0.0
    assert plan.forward.protocol is None  # wald-gauss names no SRF: the estimated one is used
    assert plan.forward.psf_preset == "wald-gauss"  # its PSF is the preset's: measured weights may take it
    told = make_plan(ArraySource(lr, CubeMeta(wavelengths=WAVELENGTHS)), ArraySource(msi),
                     FuseConfig(model="gsa", psf=psf, srf=rgb))
    assert told.forward.psf_preset is None  # a PSF given as a kernel names no preset


def test_no_flag_fusion_matches_the_truth(scene, rgb):
    """gsa with the estimated forward model is within 1 dB of gsa told the truth (a shifted conv PSF).

    Told the truth, gsa reaches 60 dB on this pair (41 dB before LR samples were interpolated at their
    sampling phase and tiles stopped at the scene border for such PSFs), so what separates the two is
    the estimate's last fraction of a pixel in σ and phase: 1 dB at 60 dB is a 12 % RMSE difference.
    """
    psf = Psf(gaussian_kernel(13, 2.2), 8, pad=6)  # LR samples centred on the first pixel of each block
    lr, msi = _pair(np.concatenate([scene, scene[:, ::-1]], 2)[:, :, :128], psf, rgb)
    z = np.concatenate([scene, scene[:, ::-1]], 2)[:, :, :128]
    told = fuse_arrays(lr, msi, FuseConfig(model="gsa", psf=psf, srf=rgb))
    blind = fuse_arrays(lr, msi, FuseConfig(model="gsa"))
    assumed = fuse_arrays(lr, msi, FuseConfig(model="gsa", estimate="off"))
    assert _psnr(z, told) > 55.0
    assert _psnr(z, blind) > _psnr(z, told) - 1.0
    assert _psnr(z, blind) > _psnr(z, assumed) + 1.0  # what estimating is for


def test_given_psf_with_estimated_srf(scene, rgb):
    psf = Psf.block(gaussian_kernel(4, 1.0))
    lr, msi = _pair(scene, psf, rgb)
    plan = make_plan(ArraySource(lr), ArraySource(msi), FuseConfig(model="gsa", psf=psf))
    est = plan.forward.estimate
    assert est.psf_kind == "given" and est.srf_kind == "estimated"
    assert plan.psf is psf and "estimated" in plan.srf_source
    pred, true = np.einsum("mc,chw->mhw", plan.srf, scene), np.einsum("mc,chw->mhw", rgb, scene)
    assert np.linalg.norm(pred - true) < 0.01 * np.linalg.norm(true)
    # and a given SRF with an estimated PSF
    plan = make_plan(ArraySource(lr), ArraySource(msi), FuseConfig(model="gsa", srf=rgb))
    assert plan.forward.estimate.srf_kind == "given" and plan.srf is not None
    assert psf_distance(plan.psf, psf) < 0.15


def test_bad_pairs_are_refused(scene, rgb):
    psf = Psf.block(gaussian_kernel(4, 1.0))
    lr, msi = _pair(scene, psf, rgb)
    rng = np.random.default_rng(0)
    noise = rng.random(msi.shape).astype(np.float32)
    with pytest.raises(InputError, match="does not match"):
        make_plan(ArraySource(lr), ArraySource(noise), FuseConfig(model="gsa"))
    other = _pair(synthetic_scene(128, seed=11), psf, rgb)[1]  # another scene of the same kind
    with pytest.raises(InputError, match="does not match"):
        make_plan(ArraySource(lr), ArraySource(other), FuseConfig(model="gsa"))
    with pytest.raises(InputError, match="constant"):
        make_plan(ArraySource(lr), ArraySource(np.full_like(msi, 0.5)), FuseConfig(model="gsa"))
    # --force fuses anyway, told what it does
    plan = make_plan(ArraySource(lr), ArraySource(noise), FuseConfig(model="gsa", force=True))
    assert plan.forward.estimate.residual > RESIDUAL_FAIL


def _write_pair(tmp_path, scene, psf, srf, tag=""):
    lr, msi = _pair(scene, psf, srf)
    lp, mp = tmp_path / f"lr{tag}.hdr", tmp_path / f"msi{tag}.tif"
    write_cube(lp, lr, CubeMeta(wavelengths=WAVELENGTHS))
    write_cube(mp, msi, CubeMeta())
    return lp, mp


def test_cli_no_flags_reports_saves_and_reuses_the_estimate(tmp_path, scene, rgb):
    psf = Psf(gaussian_kernel(11, 1.6), 4, pad=4)
    lp, mp = _write_pair(tmp_path, scene, psf, rgb)
    r = runner.invoke(app, ["fuse", str(lp), str(mp), "-o", str(tmp_path / "a.tif"), "--model", "gsa",
                            "--save-estimate", str(tmp_path / "est.json"), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    fm = doc["plan"]["forward_model"]
    assert fm["estimate"]["status"] == "good" and fm["estimate"]["sigma"] == pytest.approx(1.6, rel=0.06)
    assert "estimated from the pair" in r.stderr
    saved = json.loads((tmp_path / "est.json").read_text())
    assert saved["kind"] == "hsfuse-blind-estimate" and saved["scale"] == 4
    # the saved file is read back by --psf/--srf and gives the same output
    r2 = runner.invoke(app, ["fuse", str(lp), str(mp), "-o", str(tmp_path / "b.tif"), "--model", "gsa",
                             "--psf", str(tmp_path / "est.json"), "--srf", str(tmp_path / "est.json"), "-q"])
    assert r2.exit_code == 0, r2.output
    from hsfuse.io import read_cube

    a, b = read_cube(tmp_path / "a.tif").data, read_cube(tmp_path / "b.tif").data
    assert np.allclose(a, b, atol=1e-4)
    # an existing --save-estimate file is not overwritten
    r3 = runner.invoke(app, ["fuse", str(lp), str(mp), "-o", str(tmp_path / "c.tif"), "--save-estimate",
                             str(tmp_path / "est.json")])
    assert r3.exit_code == 1 and "exists" in r3.stderr


def test_cli_batch_estimates_once_and_reuses(tmp_path, scene, rgb):
    psf = Psf.block(gaussian_kernel(4, 1.0))
    p1 = _write_pair(tmp_path, scene, psf, rgb, "1")
    p2 = _write_pair(tmp_path, scene[:, ::-1].copy(), psf, rgb, "2")
    r = runner.invoke(app, ["fuse", *map(str, p1), *map(str, p2), "--out-dir", str(tmp_path / "o"), "--model", "gsa",
                            "--estimate", "once", "--json"])
    assert r.exit_code == 0, r.output
    pairs = json.loads(r.stdout)["pairs"]
    e1, e2 = (p["plan"]["forward_model"]["estimate"] for p in pairs)
    assert e1 == e2  # the second pair reused the first pair's estimate
    r = runner.invoke(app, ["fuse", *map(str, p1), "-o", str(tmp_path / "x.tif"), "--estimate", "sometimes"])
    assert r.exit_code == 2


def test_cli_bad_pair_is_one_line_and_exit_1(tmp_path, scene, rgb):
    psf = Psf.block(gaussian_kernel(4, 1.0))
    lp, _ = _write_pair(tmp_path, scene, psf, rgb)
    rng = np.random.default_rng(1)
    mp = tmp_path / "random.tif"
    write_cube(mp, rng.random((3, 128, 128)).astype(np.float32), CubeMeta())
    r = runner.invoke(app, ["fuse", str(lp), str(mp), "-o", str(tmp_path / "out.tif")])
    assert r.exit_code == 1
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("hsfuse: error:") and "does not match" in lines[-1] and "random.tif" in lines[-1]
    assert not (tmp_path / "out.tif").exists()


def test_dian_preset_matches_the_published_code_path():
    """dian-gauss-x8 against a plain scipy reimplementation of the papers' degradation."""
    from scipy.signal import convolve2d

    rng = np.random.default_rng(0)
    z = rng.random((3, 64, 48))
    x = np.arange(7) - 3
    g = np.exp(-(x[:, None] ** 2 + x[None] ** 2) / (2 * 3.0 ** 2))
    g /= g.sum()  # MATLAB fspecial('gaussian', 7, 3)
    ref = np.stack([convolve2d(b, g, boundary="symm", mode="same")[0::8, 0::8] for b in z])
    psf = get_protocol("dian-gauss-x8").build_psf()
    assert np.abs(spatial_degrade(z, psf) - ref).max() < 1e-12


def test_hiftool_preset_matches_the_published_code_path():
    """hiftool-gauss-x32 against HIFtool's own recipe written with torch (Conv2d, kernel sf, stride sf)."""
    import torch

    sf = 32
    x = torch.arange(-(sf - 1) // 2, (sf - 1) // 2 + 1, dtype=torch.float64)  # their getGaussiankernel
    k = torch.exp(-1 / 2 * torch.pow(x / (sf // 1.5), 2))
    k = (k / k.sum()).view(-1, 1)
    k2 = k @ k.T
    z = np.random.default_rng(1).random((3, 96, 64))
    ref = torch.nn.functional.conv2d(torch.from_numpy(z)[:, None], k2[None, None], stride=sf)[:, 0].numpy()
    psf = get_protocol("hiftool-gauss-x32").build_psf()
    assert psf.size == 32 and psf.scale == 32
    assert np.abs(spatial_degrade(z, psf) - ref).max() < 1e-12
    from hsfuse.forward.psf import sampling_phase

    assert 0 < sampling_phase(psf)[0] < 0.5  # the peak after the centre, flattened by σ 21


def _mhf_available() -> bool:
    try:
        get_protocol("cave-gauss-x8").build()
        return True
    except Exception:  # noqa: BLE001
        return False


@pytest.mark.skipif(not _mhf_available(), reason="MHF-Net response file (../shared) not available")
def test_network_choice_follows_the_estimate():
    """A pair that follows a preset some network was trained under (cave-gauss-x8, dian-gauss-x8) gets the
    weights `--protocol NAME` would get, trained under that preset; a pair with a PSF no network was trained
    under falls back to gsa and says why."""
    z = np.concatenate([synthetic_scene(128, seed=s) for s in (1, 2)], 2)[:, :, :128]
    for name in ("cave-gauss-x8", "dian-gauss-x8"):
        psf, srf = get_protocol(name).build()
        lr, msi = _pair(z, psf, srf)
        src = lambda: (ArraySource(lr, CubeMeta(wavelengths=WAVELENGTHS)), ArraySource(msi))  # noqa: E731
        blind = make_plan(*src(), FuseConfig())
        named = make_plan(*src(), FuseConfig(protocol=name))
        assert blind.forward.protocol == name and blind.forward.exact
        assert blind.model.name == named.model.name and blind.weights == named.weights
        if named.model.name != "gsa":
            assert blind.weights is not None and WeightsRecord.of(read_record(blind.weights)).protocol == name
    psf = Psf.block(gaussian_kernel(8, 0.8))  # far narrower than any training PSF at x8
    lr, msi = _pair(z, psf, srf)
    blind = make_plan(ArraySource(lr, CubeMeta(wavelengths=WAVELENGTHS)), ArraySource(msi), FuseConfig())
    assert blind.model.name == "gsa" and "PSF differs" in blind.model_reason


def test_noise_is_estimated_and_noisy_inputs_are_denoised(scene, rgb):
    """At 30 dB per-band SNR the default denoises both inputs and beats fusing them as they are; a clean pair
    is left alone."""
    from hsfuse.forward.degrade import add_noise
    from hsfuse.denoise import estimate_noise

    z = np.concatenate([synthetic_scene(128, seed=s) for s in (4, 5)], 2)
    psf = Psf.block(gaussian_kernel(4, 1.0))
    lr0, msi0 = _pair(z, psf, rgb)
    rng = np.random.default_rng(0)
    lr, msi = add_noise(lr0, 30.0, rng), add_noise(msi0, 30.0, rng)
    n = estimate_noise(lr, msi)
    true_lr = np.std((lr - lr0).reshape(lr.shape[0], -1), 1)
    true_msi = np.std((msi - msi0).reshape(3, -1), 1)
    assert np.median(n.lr_sigma / true_lr) == pytest.approx(1.0, abs=0.35)
    assert n.msi_sigma == pytest.approx(true_msi, rel=0.35)
    assert n.noisy() == (True, True)
    plain = fuse_arrays(lr, msi, FuseConfig(model="gsa", psf=psf, srf=rgb, denoise="off"))
    auto = fuse_arrays(lr, msi, FuseConfig(model="gsa", psf=psf, srf=rgb))
    assert _psnr(z, auto) > _psnr(z, plain) + 1.0
    plan = make_plan(ArraySource(lr0), ArraySource(msi0), FuseConfig(model="gsa", psf=psf, srf=rgb))
    assert plan.forward.denoise == (False, False) and plan.forward.noise.lr_snr_db > 40


def test_denoised_msi_tiles_exactly():
    from hsfuse.cube import Window
    from hsfuse.denoise import WienerSource, wiener_band

    rng = np.random.default_rng(2)
    msi = rng.random((2, 37, 41)).astype(np.float32)
    src = WienerSource(ArraySource(msi), np.array([0.1, 0.2]))
    whole = np.stack([wiener_band(b, s * s) for b, s in zip(msi, (0.1, 0.2))])
    np.testing.assert_allclose(src.read(), whole, atol=1e-6)
    np.testing.assert_allclose(src.read(Window(0, 5, 10, 20)), whole[:, 0:10, 5:25], atol=1e-6)
    np.testing.assert_allclose(src.read(Window(30, 30, 7, 11)), whole[:, 30:37, 30:41], atol=1e-6)


@pytest.mark.parametrize("name", ["imresize-bicubic", "block-mean"])
def test_resize_degradations_are_recognised(scene, rgb, name):
    """'LR = imresize(HR, 1/s)' and average pooling, the most common simulations, are found exactly."""
    psf = get_protocol(name).build_psf(4)
    lr, msi = _pair(scene, psf, rgb)
    est = estimate_pair(lr, msi, 4)
    assert est.preset == name and psf_distance(est.psf, psf) == 0.0
    told = fuse_arrays(lr, msi, FuseConfig(model="gsa", psf=psf, srf=rgb))
    blind = fuse_arrays(lr, msi, FuseConfig(model="gsa"))
    assert _psnr(scene, blind) > _psnr(scene, told) - 0.05


def test_a_featureless_centre_widens_the_window(rgb):
    """A large scene whose centre is uniform (a lake, a masked area) is still estimated, from a wider window."""
    from hsfuse.forward.estimate import estimate_from_sources

    z = np.concatenate([synthetic_scene(128, seed=s) for s in (6, 7)], 2)
    z = np.concatenate([z, z[:, ::-1]], 1)  # 256 x 256
    z[:, 64:192, 64:192] = z[:, 64:192, 64:192].mean(axis=(1, 2), keepdims=True)  # a flat centre
    psf = Psf.block(gaussian_kernel(4, 1.0))
    lr, msi = _pair(z, psf, rgb)
    est = estimate_from_sources(ArraySource(lr), ArraySource(msi), 4, window=24)
    assert est.status == "good" and est.pixels > 24 * 24


def test_a_tiny_pair_falls_back_to_the_assumption_and_says_so(rgb):
    z = synthetic_scene(16, seed=2)
    psf = Psf.block(gaussian_kernel(8, 2.0))
    lr, msi = _pair(z, psf, rgb)  # 2 x 2 LR pixels: nothing to estimate from
    said = []
    plan = make_plan(ArraySource(lr), ArraySource(msi), FuseConfig(model="gsa"), said.append)
    assert plan.forward.estimate is None and plan.psf_source.startswith("assumed")
    assert any("too few valid LR pixels" in m for m in said)


@pytest.mark.skipif(not _mhf_available(), reason="MHF-Net response file (../shared) not available")
def test_an_msi_in_other_units_does_not_get_a_network():
    """An 8-bit-like MSI (×255) follows cave-gauss-x8's PSF, but its gain is not the training one: gsa."""
    z = np.concatenate([synthetic_scene(128, seed=s) for s in (1, 2)], 2)[:, :, :128]
    psf, srf = get_protocol("cave-gauss-x8").build()
    lr, msi = _pair(z, psf, srf)
    plan = make_plan(ArraySource(lr, CubeMeta(wavelengths=WAVELENGTHS)), ArraySource(255 * msi), FuseConfig())
    assert plan.model.name == "gsa" and "gain" in plan.model_reason


def test_a_wide_psf_at_x16_is_within_reach(rgb):
    """×16 with σ = 0.45 s: the estimate's support must hold it (it was 5.5 dB behind the truth)."""
    z = synthetic_scene(256, seed=16)
    psf = Psf.gaussian(16, 7.2)
    lr, msi = _pair(z, psf, rgb)
    est = estimate_pair(lr, msi, 16)
    assert est.sigma == pytest.approx(7.2, rel=0.1)
    told = fuse_arrays(lr, msi, FuseConfig(model="gsa", psf=psf, srf=rgb))
    blind = fuse_arrays(lr, msi, FuseConfig(model="gsa"))
    assert _psnr(z, blind) > _psnr(z, told) - 0.3


def test_a_wide_psf_at_x32_is_found_with_its_phase(rgb):
    """×32 with σ = 0.63 s (FWHM 1.5 LR pixels): the Gaussian fit's support must hold it, and the search must not
    settle on a phase several HR pixels off (σ 16 capped, or phase +6.7 px: gsa 9-12 dB behind the truth)."""
    z = synthetic_scene(512, seed=32)
    psf = Psf.gaussian(32, 20.0)
    lr, msi = _pair(z, psf, rgb)
    est = estimate_pair(lr, msi, 32)
    assert est.sigma == pytest.approx(20.0, rel=0.05)
    assert max(abs(v) for v in est.centre_offset) < 1.0
    told = fuse_arrays(lr, msi, FuseConfig(model="gsa", psf=psf, srf=rgb))
    blind = fuse_arrays(lr, msi, FuseConfig(model="gsa"))
    assert _psnr(z, blind) > _psnr(z, told) - 0.3


def test_a_gaussian_block_at_x32_is_fitted_as_one(rgb):
    """×32 has no free kernel: a Gaussian *block* (32×32 taps, pad 0, σ 8; not a preset) is a candidate of its own."""
    z = synthetic_scene(512, seed=33)
    psf = Psf.block(gaussian_kernel(32, 8.0))
    lr, msi = _pair(z, psf, rgb)
    est = estimate_pair(lr, msi, 32)
    assert est.psf_kind == "gaussian block" and psf_distance(est.psf, psf) < 0.05
    told = fuse_arrays(lr, msi, FuseConfig(model="gsa", psf=psf, srf=rgb))
    blind = fuse_arrays(lr, msi, FuseConfig(model="gsa"))
    assert _psnr(z, blind) > _psnr(z, told) - 0.1


def test_a_saved_estimate_keeps_the_preset_it_recognised(tmp_path, scene, rgb):
    """--save-estimate then --psf F --srf F fuses exactly as the no-flag run did (the PSF stays exact)."""
    psf = get_protocol("wald-gauss").build_psf(4)
    lp, mp = _write_pair(tmp_path, scene, psf, rgb)
    r = runner.invoke(app, ["fuse", str(lp), str(mp), "-o", str(tmp_path / "a.tif"), "--model", "gsa",
                            "--save-estimate", str(tmp_path / "e.json"), "-q"])
    assert r.exit_code == 0, r.output
    from hsfuse.io import open_cube

    spec = str(tmp_path / "e.json")
    with open_cube(lp) as lr, open_cube(mp) as msi:
        plan = make_plan(lr, msi, FuseConfig(model="gsa", psf=spec, srf=spec))
    assert plan.forward.exact and "preset wald-gauss" in plan.psf_source
    assert psf_distance(plan.psf, psf) < 1e-9
