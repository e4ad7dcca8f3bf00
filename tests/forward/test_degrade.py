"""The forward model: hand-computed cases per sampling form, noise level, protocols."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from hsfuse.forward.psf import Psf, gaussian_kernel, load_kernel, lr_phase_offset, make_psf
from hsfuse.forward.degrade import add_noise, apply_srf, crop_to_multiple, degrade_cube, noise_sigma, spatial_degrade
from hsfuse.errors import InputError, UsageError
from hsfuse.forward.protocols import PROTOCOLS, find_mhf_response, get_protocol

from conftest import smooth_cube

Z44 = np.arange(16, dtype=np.float64).reshape(1, 4, 4)  # z[r, c] = 4r + c


def test_block_form_hand_computed():
    k = np.array([[1.0, 2.0], [3.0, 4.0]]) / 10.0
    lr = spatial_degrade(Z44, Psf.block(k))
    # LR[i,j] = Σ_ab K[a,b] Z[2i+a, 2j+b]
    expected = np.array([[(0 + 2 * 1 + 3 * 4 + 4 * 5) / 10, (2 + 2 * 3 + 3 * 6 + 4 * 7) / 10],
                         [(8 + 2 * 9 + 3 * 12 + 4 * 13) / 10, (10 + 2 * 11 + 3 * 14 + 4 * 15) / 10]])
    np.testing.assert_allclose(lr[0], expected, rtol=0, atol=1e-12)
    assert expected[0, 0] == pytest.approx(3.4)


def test_conv_form_hand_computed_borders_and_pad():
    k = np.ones((3, 3)) / 9.0
    # default pad (3-2)//2 = 0: LR[i,j] = mean Z[2i..2i+2, 2j..2j+2]
    lr = spatial_degrade(Z44, Psf(k, 2, border="reflect"))
    assert lr[0, 0, 0] == pytest.approx(5.0)  # rows/cols 0,1,2
    # rows 2,3,(4->3 symmetric mirror), same for cols: mean r = mean c = 8/3
    assert lr[0, 1, 1] == pytest.approx(4 * 8 / 3 + 8 / 3)
    lz = spatial_degrade(Z44, Psf(k, 2, border="zero"))
    assert lz[0, 1, 1] == pytest.approx((10 + 11 + 14 + 15) / 9)
    le = spatial_degrade(Z44, Psf(k, 2, border="edge"))
    assert le[0, 1, 1] == pytest.approx(lr[0, 1, 1])  # edge == symmetric for a 1-pixel overhang
    # pad 1 with wrap: rows/cols {-1->3, 0, 1}: mean r = mean c = 4/3
    lw = spatial_degrade(Z44, Psf(k, 2, pad=1, border="wrap"))
    assert lw[0, 0, 0] == pytest.approx(4 * 4 / 3 + 4 / 3)
    lz1 = spatial_degrade(Z44, Psf(k, 2, pad=1, border="zero"))
    assert lz1[0, 0, 0] == pytest.approx((0 + 1 + 4 + 5) / 9)


def test_box_equals_block_mean():
    z = smooth_cube(3, 16, 24).astype(np.float64)
    lr = spatial_degrade(z, make_psf("box", 4))
    ref = z.reshape(3, 4, 4, 6, 4).mean(axis=(2, 4))
    np.testing.assert_allclose(lr, ref, atol=1e-12)
    # block and conv forms agree for a box
    np.testing.assert_allclose(spatial_degrade(z, make_psf("box", 4, form="block")), ref, atol=1e-12)


def test_make_psf_gaussian_forms():
    p = make_psf("gaussian", 8, sigma=2.0, form="block")
    assert p.size == 8 and p.pad == 0
    np.testing.assert_allclose(p.kernel, gaussian_kernel(8, 2.0))
    c = make_psf("gaussian", 4)  # FWHM = s
    assert c.sigma == pytest.approx(4 / 2.354820045)
    assert (c.size - 4) % 2 == 0 and c.pad == (c.size - 4) // 2
    assert lr_phase_offset(c) == 0.0
    assert lr_phase_offset(Psf(c.kernel, 4, pad=c.pad - 1)) == 1.0
    assert c.kernel.sum() == pytest.approx(1.0)
    with pytest.raises(UsageError):
        make_psf("gaussian", 2.5)
    with pytest.raises(UsageError):
        make_psf("gaussian", 4, form="blocks")
    with pytest.raises(UsageError):
        make_psf("box", 4, sigma=1.0)


def test_kernel_files(tmp_path):
    k = gaussian_kernel(5, 1.0)
    np.save(tmp_path / "k.npy", k)
    np.savetxt(tmp_path / "k.csv", k, delimiter=",")
    scipy.io.savemat(tmp_path / "k.mat", {"K": k, "other": np.ones((2, 2))})
    for spec in ("k.npy", "k.csv", "k.mat:K"):
        np.testing.assert_allclose(load_kernel(str(tmp_path / spec)), k, atol=1e-15)
    with pytest.raises(InputError):
        load_kernel(str(tmp_path / "k.mat"))  # ambiguous: two variables
    with pytest.raises(InputError):
        load_kernel(str(tmp_path / "missing.npy"))
    p = make_psf(str(tmp_path / "k.npy"), 3)
    assert p.pad == 1
    with pytest.raises(UsageError):
        make_psf(str(tmp_path / "k.npy"), 3, form="block")  # block needs size == scale


def test_crop_to_multiple():
    z = np.zeros((2, 10, 13))
    c, (dh, dw) = crop_to_multiple(z, 4)
    assert c.shape == (2, 8, 12) and (dh, dw) == (2, 1)


def test_noise_hits_requested_snr():
    z = smooth_cube(6, 512, 512, seed=3)
    srf = np.random.default_rng(0).uniform(0, 1, (3, 6))
    srf /= srf.sum(1, keepdims=True)
    clean_lr, clean_msi = degrade_cube(z, Psf.box(2), srf)
    lr, msi = degrade_cube(z, Psf.box(2), srf, snr_hsi=25.0, snr_msi=40.0, seed=7)
    for clean, noisy, target in ((clean_lr, lr, 25.0), (clean_msi, msi, 40.0)):
        n = (noisy - clean).astype(np.float64)
        snr = 10 * np.log10((clean.astype(np.float64) ** 2).mean(axis=(1, 2)) / (n ** 2).mean(axis=(1, 2)))
        assert np.all(np.abs(snr - target) < 0.2), snr
        assert np.all(np.abs(n.mean(axis=(1, 2))) < 0.05 * n.std(axis=(1, 2)))
    lr2, msi2 = degrade_cube(z, Psf.box(2), srf, snr_hsi=25.0, snr_msi=40.0, seed=7)
    np.testing.assert_array_equal(lr, lr2)
    np.testing.assert_array_equal(msi, msi2)
    assert lr.dtype == np.float32


def test_noise_sigma_definition():
    x = np.full((1, 10, 10), 2.0)
    assert noise_sigma(x, 20.0)[0] == pytest.approx(np.sqrt(4.0 / 100.0))
    assert add_noise(x, None, np.random.default_rng(0)) is x


def test_degrade_cube_srf_and_dtypes():
    z = smooth_cube(5, 8, 8).astype(np.float64)
    r = np.array([[1, 0, 0, 0, 0], [0, 0.5, 0.5, 0, 0]], dtype=float)
    lr, msi = degrade_cube(z, Psf.box(2), r)
    assert lr.dtype == np.float64 and lr.shape == (5, 4, 4)
    np.testing.assert_allclose(msi[0], z[0])
    np.testing.assert_allclose(msi[1], (z[1] + z[2]) / 2)
    assert degrade_cube(z, Psf.box(2), None)[1] is None
    with pytest.raises(ValueError):
        apply_srf(z, np.ones((2, 4)))


def test_protocol_registry():
    assert {"cave-mhf-x32", "cave-gauss-x4", "cave-gauss-x8", "cave-gauss-x16", "wald-gauss"} <= set(PROTOCOLS)
    with pytest.raises(UsageError):
        get_protocol("nope")
    p = PROTOCOLS["cave-gauss-x8"]
    psf = p.build_psf()
    assert psf.scale == 8 and psf.size == 8 and psf.pad == 0
    yy, xx = np.mgrid[0:8, 0:8]
    g = np.exp(-((yy - 3.5) ** 2 + (xx - 3.5) ** 2) / (2 * 2.0 ** 2))
    np.testing.assert_allclose(psf.kernel, g / g.sum(), atol=1e-15)
    assert PROTOCOLS["cave-gauss-x16"].build_psf().kernel.shape == (16, 16)
    w = PROTOCOLS["wald-gauss"]
    with pytest.raises(UsageError):
        w.build(None)
    wp, wr = w.build(4)
    assert wr is None and wp.kernel.sum() == pytest.approx(1.0) and lr_phase_offset(wp) == 0
    with pytest.raises(UsageError):
        p.build_psf(scale=4)  # the preset fixes s = 8


def test_mhf_lookup_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HSFUSE_MHF_RESPONSE", str(tmp_path / "nope.mat"))
    with pytest.raises(InputError):
        find_mhf_response()
    fake = tmp_path / "response_coefficient.mat"
    rng = np.random.default_rng(0)
    c = rng.uniform(size=(32, 32))
    r = rng.uniform(size=(31, 3))
    scipy.io.savemat(fake, {"C": c / c.sum(), "R": r / r.sum(0)})
    monkeypatch.setenv("HSFUSE_MHF_RESPONSE", str(fake))
    psf, srf = PROTOCOLS["cave-mhf-x32"].build()
    np.testing.assert_allclose(psf.kernel, c / c.sum())
    np.testing.assert_allclose(srf, (r / r.sum(0)).T)
    psf8, srf8 = PROTOCOLS["cave-gauss-x8"].build(srf_path=fake)
    assert srf8.shape == (3, 31)


def test_mhf_kernel_without_the_file_is_the_gaussian_it_equals(tmp_path, monkeypatch):
    """An installed hsfuse has no ../shared: cave-mhf-x32's PSF is built without the file (its SRF is not)."""
    import hsfuse.forward.protocols as protocols
    from hsfuse.forward.psf import gaussian_kernel

    monkeypatch.delenv("HSFUSE_MHF_RESPONSE", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(protocols, "REPO", tmp_path)
    psf = PROTOCOLS["cave-mhf-x32"].build_psf()
    assert psf.size == 32 and psf.pad == 0
    np.testing.assert_allclose(psf.kernel, gaussian_kernel(32, 10.0), atol=0)
    with pytest.raises(InputError):
        PROTOCOLS["cave-mhf-x32"].build()  # the SRF needs the file


@pytest.mark.shared
def test_mhf_file_kernel_is_the_gaussian(shared_data):
    from hsfuse.forward.psf import gaussian_kernel
    from hsfuse.forward.protocols import load_mhf_response

    c, _, _ = load_mhf_response()
    assert np.abs(c - gaussian_kernel(32, 10.0)).max() < 1e-15


@pytest.mark.shared
def test_cave_protocols_on_real_scene(shared_data):
    """cave-gauss-x8 / cave-mhf-x32 on beads: LR 31×64×64 / 31×16×16, MSI 3×512×512, exact block sums."""
    from PIL import Image

    folder = shared_data / "cave" / "beads_ms"
    hr = np.stack([np.asarray(Image.open(folder / f"beads_ms_{i:02d}.png"), dtype=np.uint16) for i in range(1, 32)])
    z = hr.astype(np.float64) / 65535.0
    mat = shared_data / "srf" / "nikon_d700_mhfnet" / "response_coefficient.mat"
    m = scipy.io.loadmat(mat)
    psf, srf = PROTOCOLS["cave-gauss-x8"].build(srf_path=mat)
    lr, msi = degrade_cube(z, psf, srf)
    assert lr.shape == (31, 64, 64) and msi.shape == (3, 512, 512)
    np.testing.assert_allclose(msi, np.einsum("chw,cm->mhw", z, m["R"]), atol=1e-12)
    psf32, _ = PROTOCOLS["cave-mhf-x32"].build(srf_path=mat)
    lr32 = spatial_degrade(z, psf32)
    assert lr32.shape == (31, 16, 16)
    i, j = 5, 11
    expected = np.einsum("ab,cab->c", m["C"], z[:, 32 * i:32 * i + 32, 32 * j:32 * j + 32])
    np.testing.assert_allclose(lr32[:, i, j], expected, atol=1e-12)


def test_psf_rescaled_bins_the_kernel_to_the_smaller_footprint():
    import pytest

    from hsfuse.forward.psf import Psf, box_kernel, gaussian_kernel

    box = Psf.box(8).rescaled(4)
    np.testing.assert_allclose(box.kernel, box_kernel(4))
    assert (box.scale, box.pad) == (4, 0)
    g = Psf.block(gaussian_kernel(8, 2.0)).rescaled(4)
    x = np.arange(4) - 1.5
    marg = g.kernel.sum(1)
    assert g.kernel.shape == (4, 4) and abs(g.kernel.sum() - 1) < 1e-12
    assert abs(float(marg @ x)) < 1e-12 and 0.85 < float(np.sqrt(marg @ x ** 2)) < 1.1  # σ 2 at x8 -> about 1 at x4
    conv = Psf.gaussian(4)  # 14x14 kernel, pad 5: padded by one zero so the offset is whole new pixels
    half = conv.rescaled(2)
    assert (half.size, half.pad) == (8, 3) and half.size - 2 * half.pad == 2
    assert Psf.box(8).rescaled(8) is not None
    with pytest.raises(ValueError, match="divide"):
        Psf.box(8).rescaled(3)


@pytest.mark.parametrize("border", ["reflect", "edge", "wrap", "zero"])
@pytest.mark.parametrize("pad", [None, 0, 5, -1])
def test_the_torch_degradation_equals_the_numpy_one(border, pad):
    """One torch degradation (fusers, LR consistency, training) and one numpy one: equal for every border
    and sampling phase, on batched inputs too."""
    import torch

    from hsfuse.forward.psf import gaussian_kernel
    from hsfuse.forward.degrade import spatial_degrade, spatial_degrade_t

    rng = np.random.default_rng(1)
    z = rng.random((2, 3, 24, 20))
    psf = Psf(gaussian_kernel(9, 1.5), 4, pad=pad, border=border)
    want = np.stack([spatial_degrade(b, psf) for b in z])
    got = spatial_degrade_t(torch.from_numpy(z), psf).numpy()
    np.testing.assert_allclose(got, want, atol=1e-12)
    np.testing.assert_allclose(spatial_degrade_t(torch.from_numpy(z[0]), psf).numpy(), want[0], atol=1e-12)


@pytest.mark.parametrize("k,shape", [(4, (26, 21)), (3, (24, 20)), (4, (24, 20))])
def test_the_torch_degradation_without_a_border_equals_the_numpy_one(k, shape):
    """Kernels whose taps all fall inside the image (the block form, a first-pixel kernel narrower than the
    block) take a copy-free path in torch; sizes that are not multiples of the scale drop the surplus."""
    import torch

    from hsfuse.forward.degrade import spatial_degrade, spatial_degrade_t

    rng = np.random.default_rng(2)
    z = rng.random((3, *shape))
    psf = Psf(rng.random((k, k)) / (k * k / 2), 4, pad=0)
    want = spatial_degrade(z[:, :shape[0] // 4 * 4, :shape[1] // 4 * 4], psf)
    np.testing.assert_allclose(spatial_degrade_t(torch.from_numpy(z), psf).numpy(), want, atol=1e-12)


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
@pytest.mark.parametrize("name,mode", [("imresize-bicubic", "bicubic"), ("imresize-bilinear", "bilinear")])
def test_resize_presets_equal_torch_antialiased_interpolate(scale, name, mode):
    """The antialiased shrink presets against an independent implementation (torch, PIL-compatible), away
    from the border (torch renormalises truncated kernels there; the presets mirror, as MATLAB does)."""
    import torch

    rng = np.random.default_rng(0)
    z = rng.random((2, 12 * scale, 10 * scale))
    ref = torch.nn.functional.interpolate(torch.from_numpy(z)[None], scale_factor=1 / scale, mode=mode,
                                          antialias=True, align_corners=False)[0].numpy()
    got = spatial_degrade(z, PROTOCOLS[name].build_psf(scale))
    np.testing.assert_allclose(got[:, 2:-2, 2:-2], ref[:, 2:-2, 2:-2], atol=1e-12)
    box = spatial_degrade(z, PROTOCOLS["block-mean"].build_psf(scale))
    np.testing.assert_allclose(box, z.reshape(2, 12, scale, 10, scale).mean(axis=(2, 4)), atol=1e-12)
