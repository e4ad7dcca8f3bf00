"""MFTN, HyFusion, MulSR (hsfuse.models.{mftn,hyfusion,mulsr}) and their NetworkFuser: shapes, prior, init, training.

Tiny spatial sizes and, for training, tiny widths: the whole file runs in a few
seconds on one CPU thread. No weights are shipped; the fuser is tested with
untrained weights written to a temporary folder.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from hsfuse.errors import ModelError  # noqa: E402
from hsfuse.fusion.base import FusionProblem  # noqa: E402
from hsfuse.models.networks.hyfusion import hyfusion_loss  # noqa: E402
from hsfuse.models.networks.mftn import mftn_loss, modulated_deform_conv2d  # noqa: E402
from hsfuse.models.networks.mulsr import MulSR, SelectOutput, mulsr_loss  # noqa: E402
from hsfuse.models.architectures import ARCHITECTURES, build_network  # noqa: E402
from hsfuse.models.zoo_fuser import NetworkFuser  # noqa: E402

TINY = {
    "mftn": {"nf": 8, "heads": 8},
    "hyfusion": {"nf": 8, "heads": 2, "window": 4, "blocks": 1},
    "mulsr": {"nf": 8, "blocks": 2},
    "refine": {"nf": 8, "hr_nf": 4, "blocks": 1},
}


def test_tiny_covers_every_network_fuser_architecture():
    """Every architecture a zoo_fuser Fuser runs is in TINY, so the tests below reach it."""
    from hsfuse.models.registry import get_model

    zoo = {a.name for a in ARCHITECTURES.values() if get_model(a.registry).builder.startswith("hsfuse.models.zoo_fuser:")}
    assert zoo == set(TINY)


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # far faster than 2 on a shared, oversubscribed CPU
    yield
    torch.set_num_threads(n)


def _run(net, lr, msi, prior=None):
    return net.predict(lr, msi, prior) if isinstance(net, MulSR) else net(lr, msi, prior)


# --------------------------------------------------------------------- shapes, default widths

# (LR h, w) per scale: x32 is a 1x2 LR tile (HR 32x64)
LR_SIZE = {3: (3, 5), 4: (4, 5), 8: (2, 3), 16: (2, 3), 32: (1, 2)}


@pytest.mark.parametrize("bands,msi_bands", [(31, 3), (48, 4)])
@pytest.mark.parametrize("arch,built_scale,scale", [
    ("mftn", 8, 4), ("mftn", 8, 8), ("mftn", 32, 32),
    ("hyfusion", 8, 4), ("hyfusion", 8, 8), ("hyfusion", 32, 32),
    ("mulsr", 8, 4), ("mulsr", 8, 8), ("mulsr", 32, 16), ("mulsr", 32, 32),
    ("refine", 8, 8), ("refine", 32, 32), ("refine", 3, 3),
])
def test_forward_shapes(arch, built_scale, scale, bands, msi_bands):
    torch.manual_seed(0)
    net = build_network(arch, {"bands": bands, "msi_bands": msi_bands, "scale": built_scale})  # default widths
    h, w = LR_SIZE[scale]
    lr, msi = torch.rand(1, bands, h, w), torch.rand(1, msi_bands, h * scale, w * scale)
    with torch.no_grad():
        out = _run(net, lr, msi)
    assert out.shape == (1, bands, h * scale, w * scale)
    assert torch.isfinite(out).all()
    # zero-initialised head: an untrained network returns its bicubic base
    up = F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False)
    assert torch.allclose(out, up, atol=1e-5)


@pytest.mark.parametrize("arch", list(TINY))
def test_prior_path_starts_at_prior(arch):
    torch.manual_seed(0)
    net = build_network(arch, {"bands": 31, "msi_bands": 3, "scale": 8, "prior": True, **TINY[arch]})
    lr, msi, prior = torch.rand(2, 31, 2, 2), torch.rand(2, 3, 16, 16), torch.rand(2, 31, 16, 16)
    with torch.no_grad():
        assert torch.equal(_run(net, lr, msi, prior), prior)
    with pytest.raises(ValueError, match="prior=True"):
        _run(net, lr, msi)


@pytest.mark.parametrize("arch", list(TINY))
def test_rejects_wrong_bands_and_grids(arch):
    net = build_network(arch, {"bands": 31, "msi_bands": 3, "scale": 8, **TINY[arch]})
    with pytest.raises(ValueError, match="bands"):
        _run(net, torch.rand(1, 30, 2, 2), torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="multiple"):
        _run(net, torch.rand(1, 31, 2, 2), torch.rand(1, 3, 16, 17))


@pytest.mark.parametrize("arch", list(TINY))
def test_deterministic_init(arch):
    kw = {"bands": 31, "msi_bands": 3, "scale": 8, **TINY[arch]}
    torch.manual_seed(3)
    a = build_network(arch, kw).state_dict()
    torch.manual_seed(3)
    b = build_network(arch, kw).state_dict()
    torch.manual_seed(4)
    c = build_network(arch, kw).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_config_rebuilds_same_architecture():
    for arch in TINY:
        net = build_network(arch, {"bands": 48, "msi_bands": 4, "scale": 8, **TINY[arch]})
        again = build_network(net.architecture, net.config)
        assert again.config == net.config
        assert [t.shape for t in again.state_dict().values()] == [t.shape for t in net.state_dict().values()]


# --------------------------------------------------------------------- MulSR specifics


def test_mulsr_two_outputs_and_selection():
    torch.manual_seed(0)
    net = MulSR(31, 3, scale=8, **TINY["mulsr"])
    assert net.scales == (4, 8)
    msi = torch.rand(1, 3, 32, 32)
    for s in (4, 8):
        lr = torch.rand(1, 31, 32 // s, 32 // s)
        with torch.no_grad():
            out = net(lr, msi)
            assert out.small.shape == out.large.shape == (1, 31, 32, 32)
            sel = net.predict(lr, msi)
            assert torch.equal(sel, out.large if s == 8 else out.small)
            assert torch.equal(SelectOutput(net)(lr, msi), sel)
    # training-time small-factor input of its own
    with torch.no_grad():
        out = net(torch.rand(1, 31, 4, 4), msi, lr_small=torch.rand(1, 31, 8, 8))
    assert out.small.shape == (1, 31, 32, 32)
    with pytest.raises(ValueError, match="x4 and x8"):
        net(torch.rand(1, 31, 16, 16), msi)
    with pytest.raises(ValueError, match="small_scale"):
        MulSR(31, 3, scale=8, small_scale=3)


# --------------------------------------------------------------------- deformable convolution


def test_mulsr_sam_term_is_the_spectral_angle_of_the_large_output():
    from hsfuse.models.networks.mulsr import MulSROutput

    gt = torch.rand(2, 31, 8, 8) + 0.1
    scaled = MulSROutput(gt * 0.5, gt * 3.0)  # same spectra, other brightness: zero angle, nonzero L1
    t = mulsr_loss(scaled, gt, w_sam=1.0)
    assert float(t["sam"]) < 1e-2 and float(t["large"]) > 0.1
    assert "sam" not in mulsr_loss(scaled, gt)  # off by default (the paper's loss)
    flipped = MulSROutput(gt, gt.flip(1))  # spectra reversed: a real angle, checked against numpy
    a, b = gt.flip(1).permute(0, 2, 3, 1).reshape(-1, 31).numpy(), gt.permute(0, 2, 3, 1).reshape(-1, 31).numpy()
    ang = np.arccos(np.clip((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1), -1, 1)).mean()
    t = mulsr_loss(flipped, gt, w_sam=2.0)
    assert abs(float(t["sam"]) - 2.0 * ang) < 1e-3
    assert abs(float(t["total"]) - float(t["small"] + t["large"] + t["sam"])) < 1e-6


def test_modulated_deform_conv_matches_conv_and_shift():
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 5, 7, 9), torch.randn(4, 5, 3, 3), torch.randn(4)
    ones = torch.ones(2, 9, 7, 9)
    ref = F.conv2d(x, w, b, padding=1)
    assert torch.allclose(modulated_deform_conv2d(x, torch.zeros(2, 18, 7, 9), ones, w, b), ref, atol=1e-4)
    off = torch.zeros(2, 18, 7, 9)
    off[:, 1::2] = 1.0  # every kernel point one pixel to the right: conv of the image shifted left
    y = modulated_deform_conv2d(x, off, ones, w, b)
    shifted = F.conv2d(F.pad(x[..., 1:], (0, 1)), w, b, padding=1)
    assert torch.allclose(y[..., 1:], shifted[..., 1:], atol=1e-4)  # column 0 differs by the zero padding only
    half = modulated_deform_conv2d(x, torch.zeros(2, 18, 7, 9), 0.5 * ones, w, None)
    assert torch.allclose(half, 0.5 * F.conv2d(x, w, padding=1), atol=1e-4)


# --------------------------------------------------------------------- training smoke tests


def _batch(bands=31, msi_bands=3, s=4, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(2, 4, size // 4, size // 4, generator=g)
    spectra = torch.rand(4, bands, generator=g)
    gt = torch.einsum("bkhw,kc->bchw", F.interpolate(base, size=(size, size), mode="bicubic", align_corners=False), spectra) / 4
    gt = gt.clamp(0.01, 1)
    lr = F.avg_pool2d(gt, s)
    srf = torch.rand(msi_bands, bands, generator=g)
    msi = torch.einsum("bchw,mc->bmhw", gt, srf / srf.sum(1, keepdim=True))
    return lr, msi, gt


def _loss(arch, net, lr, msi, gt):
    if arch == "mftn":
        out, aux = net(lr, msi, return_aux=True)
        return mftn_loss(out, gt, net=net, aux=aux)
    if arch == "hyfusion":
        return hyfusion_loss(net(lr, msi), gt)
    if arch == "refine":
        return {"total": F.l1_loss(net(lr, msi), gt)}
    return mulsr_loss(net(lr, msi), gt)


@pytest.mark.parametrize("arch", list(TINY))
def test_training_smoke_loss_decreases(arch):
    torch.manual_seed(0)
    net = build_network(arch, {"bands": 31, "msi_bands": 3, "scale": 4, **TINY[arch]})
    lr, msi, gt = _batch()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.9, 0.99))  # MulSR's recipe betas
    hist = []
    for _ in range(10):
        terms = _loss(arch, net, lr, msi, gt)
        opt.zero_grad()
        terms["total"].backward()
        opt.step()
        hist.append(float(terms["total"].detach()))
    assert np.isfinite(hist).all()
    assert hist[-1] < 0.97 * hist[0] and np.mean(hist[-3:]) < np.mean(hist[:3])  # measured: -10 to -18 %
    if arch == "mftn":
        assert set(terms) == {"l1", "grad", "sam", "transfer", "total"}


# --------------------------------------------------------------------- the Fuser wrapper


def _save(tmp_path, arch, kw, scales, bands=31, msi_bands=3):
    from hsfuse.weights import save_weights

    torch.manual_seed(0)
    net = build_network(arch, kw)
    rec = {"architecture": arch, "kwargs": net.config, "bands": bands, "msi_bands": msi_bands, "scales": scales,
           "protocol": "test", "training_data": "none (untrained test weights)", "steps": 0, "validation_metrics": {}}
    save_weights(tmp_path / f"{arch}-test", net.state_dict(), rec)
    return tmp_path / f"{arch}-test"


@pytest.mark.parametrize("arch", list(TINY))
def test_network_fuser_runs_and_checks(tmp_path, arch):
    kw = {"bands": 31, "msi_bands": 3, "scale": 8, **TINY[arch]}
    stem = _save(tmp_path, arch, kw, [4, 8] if arch == "mulsr" else [8])
    f = NetworkFuser(FusionProblem(8, 31, 3, options={"weights": str(stem)}))
    assert f.halo_lr == f.halo_bound >= 1 and f.describe()["architecture"] == arch
    rng = np.random.default_rng(0)
    lr, msi = rng.random((31, 3, 4), dtype=np.float32), rng.random((3, 24, 32), dtype=np.float32)
    f.fit(lr, lr[:3])
    out = f.fuse_tile(lr, msi)
    assert out.shape == (31, 24, 32) and out.dtype == np.float32 and np.isfinite(out).all()
    with pytest.raises(ModelError, match="hyperspectral bands"):
        NetworkFuser(FusionProblem(8, 30, 3, options={"weights": str(stem)}))
    with pytest.raises(ModelError, match="scale"):
        NetworkFuser(FusionProblem(2, 31, 3, options={"weights": str(stem)}))


def test_network_fuser_prior_refines_gsa(tmp_path):
    from hsfuse.models.classical import DetailInjection
    from hsfuse.models.classical import fuse_arrays as fuse_untiled

    stem = _save(tmp_path, "hyfusion", {"bands": 8, "msi_bands": 3, "scale": 4, "prior": True, **TINY["hyfusion"]},
                 [4], bands=8)
    rng = np.random.default_rng(1)
    z = rng.random((8, 16, 16), dtype=np.float32)
    lr = F.avg_pool2d(torch.from_numpy(z)[None], 4)[0].numpy()
    msi = np.stack([z[:3].mean(0), z[3:6].mean(0), z[6:].mean(0)])
    prob = FusionProblem(4, 8, 3, options={"weights": str(stem)})
    f = NetworkFuser(prob)
    assert f.prior_fuser is not None and f.halo_bound > f.prior_fuser.halo_lr
    out = fuse_untiled(f, lr, msi, prob)
    gsa = fuse_untiled(DetailInjection, lr, msi, FusionProblem(4, 8, 3))
    np.testing.assert_allclose(out, gsa, atol=1e-5)  # untrained residual head: the prior exactly


def _mulsr_x2_x4_weights(tmp_path):
    """Untrained 5-band MulSR weights serving x2 and x4, with non-zero decoders."""
    from hsfuse.weights import save_weights

    torch.manual_seed(0)
    net = build_network("mulsr", {"bands": 5, "msi_bands": 3, "scale": 4, **TINY["mulsr"]})
    for m in net.modules():  # zero-initialised decoders would hide the large branch
        if isinstance(m, torch.nn.Conv2d) and not m.weight.any():
            torch.nn.init.normal_(m.weight, std=0.1)
    stem = tmp_path / "mulsr-small"
    save_weights(stem, net.state_dict(), {"architecture": "mulsr", "kwargs": net.config, "bands": 5, "msi_bands": 3,
                                          "scales": [2, 4], "protocol": "test", "steps": 0,
                                          "training_data": "none (untrained test weights)", "validation_metrics": {}})
    return stem


def test_mulsr_at_its_small_scale_tiles_exactly_on_any_tile_grid(tmp_path):
    """At ×small_scale the large branch averages LR pixels in blocks: the fuser aligns every tile to the
    scene's block grid, so tiles starting on odd LR pixels still equal the untiled result."""
    from hsfuse.fusion.engine import FuseConfig, fuse_arrays

    stem = _mulsr_x2_x4_weights(tmp_path)
    rng = np.random.default_rng(0)
    lr, msi = rng.random((5, 30, 34), dtype=np.float32), rng.random((3, 60, 68), dtype=np.float32)
    opts = {"weights": str(stem)}
    whole = fuse_arrays(lr, msi, FuseConfig(model="mulsr", tile=4096, overlap=0, options=opts, estimate="off"))
    tiled = fuse_arrays(lr, msi, FuseConfig(model="mulsr", tile=22, overlap=0, options=opts, estimate="off"))  # 11-LR-pixel tiles
    assert whole.shape == (5, 60, 68)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    f = NetworkFuser(FusionProblem(2, 5, 3, options=opts))
    assert f.align == 2 and NetworkFuser(FusionProblem(4, 5, 3, options=opts)).align == 1


def test_refine_tiles_exactly_at_an_odd_scale_and_odd_sizes(tmp_path):
    """refine's body runs on a 2x2 pixel-unshuffle grid: at x3 the fuser starts every tile on an even LR
    pixel (an even HR pixel), so tiles of odd LR width and an odd-sized scene still equal the untiled run."""
    from hsfuse.fusion.engine import FuseConfig, fuse_arrays
    from hsfuse.weights import save_weights

    torch.manual_seed(0)
    net = build_network("refine", {"bands": 5, "msi_bands": 3, "scale": 3, "prior": True, **TINY["refine"]})
    torch.nn.init.normal_(net.tail.weight, std=0.1)  # the zero-initialised tail would hide the network
    stem = tmp_path / "refine-x3"
    save_weights(stem, net.state_dict(), {"architecture": "refine", "kwargs": net.config, "bands": 5, "msi_bands": 3,
                                          "scales": [3], "protocol": "test", "steps": 0,
                                          "training_data": "none (untrained test weights)", "validation_metrics": {}})
    rng = np.random.default_rng(0)
    lr, msi = rng.random((5, 21, 17), dtype=np.float32), rng.random((3, 63, 51), dtype=np.float32)
    opts = {"weights": str(stem)}
    whole = fuse_arrays(lr, msi, FuseConfig(model="refine", tile=4096, overlap=0, options=opts, estimate="off"))
    tiled = fuse_arrays(lr, msi, FuseConfig(model="refine", tile=15, overlap=0, options=opts, estimate="off"))  # 5-LR-pixel tiles
    assert whole.shape == (5, 63, 51) and np.isfinite(whole).all()
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    assert NetworkFuser(FusionProblem(3, 5, 3, options=opts)).align == 2


@pytest.mark.parametrize("scale,tile", [(4, 12), (3, 15)])
def test_refine_with_coarse_levels_tiles_exactly_and_grows_without_change(tmp_path, scale, tile):
    """levels=3 runs its coarsest body on an 8x8-block grid: tiles still equal the untiled run at x4 and x3,
    and a trained one-level network given two more levels (zero up-projections) returns the same output."""
    from hsfuse.fusion.engine import FuseConfig, fuse_arrays
    from hsfuse.weights import save_weights

    torch.manual_seed(0)
    kw = {"bands": 5, "msi_bands": 3, "scale": scale, "prior": True, **TINY["refine"]}
    one = build_network("refine", kw)
    torch.nn.init.normal_(one.tail.weight, std=0.1)
    three = build_network("refine", {**kw, "levels": 3})
    missing, unexpected = three.load_state_dict(one.state_dict(), strict=False)
    assert not unexpected and all(k.split(".")[0] in ("down_k", "body_k", "up_k") for k in missing)
    # sizes on the 8-pixel grid: elsewhere the padding to it differs between one and three levels
    lr, msi, prior = torch.rand(1, 5, 8, 8), torch.rand(1, 3, 8 * scale, 8 * scale), torch.rand(1, 5, 8 * scale, 8 * scale)
    with torch.no_grad():
        torch.testing.assert_close(three(lr, msi, prior), one(lr, msi, prior))
        for m in three.up_k:  # now let the coarse levels act
            torch.nn.init.normal_(m.weight, std=0.1)
        assert not torch.allclose(three(lr, msi, prior), one(lr, msi, prior))
    stem = tmp_path / "refine-l3"
    save_weights(stem, three.state_dict(), {"architecture": "refine", "kwargs": three.config, "bands": 5, "msi_bands": 3,
                                            "scales": [scale], "protocol": "test", "steps": 0,
                                            "training_data": "none (untrained test weights)", "validation_metrics": {}})
    rng = np.random.default_rng(1)
    lr, msi = rng.random((5, 13, 11), dtype=np.float32), rng.random((3, 13 * scale, 11 * scale), dtype=np.float32)
    opts = {"weights": str(stem)}
    whole = fuse_arrays(lr, msi, FuseConfig(model="refine", tile=4096, overlap=0, options=opts, estimate="off"))
    tiled = fuse_arrays(lr, msi, FuseConfig(model="refine", tile=tile, overlap=0, options=opts, estimate="off"))
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    assert NetworkFuser(FusionProblem(scale, 5, 3, options=opts)).align == 8 // np.gcd(scale, 8)


def test_dihedral_inverts_and_covers_the_eight_transforms():
    from hsfuse.models.zoo_fuser import dihedral

    a = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(1, 2, 3, 5)
    outs = {tuple(dihedral(a, k).flatten().tolist()) for k in range(8)}
    assert len(outs) == 8
    for k in range(8):
        assert torch.equal(dihedral(dihedral(a, k), k, inverse=True), a)


def test_tta_is_the_mean_of_transformed_passes_and_tiles_exactly(tmp_path):
    """tta=8 averages the network over flipped/transposed inputs (as trained); tiles still match the whole scene."""
    from hsfuse.fusion.engine import FuseConfig, fuse_arrays
    stem = _mulsr_x2_x4_weights(tmp_path)
    rng = np.random.default_rng(3)
    lr, msi = rng.random((5, 12, 14), dtype=np.float32), rng.random((3, 24, 28), dtype=np.float32)
    one = fuse_arrays(lr, msi, FuseConfig(model="mulsr", tile=4096, options={"weights": str(stem)}, estimate="off"))
    ens = fuse_arrays(lr, msi, FuseConfig(model="mulsr", tile=4096, options={"weights": str(stem), "tta": 8}, estimate="off"))
    assert np.abs(ens - one).max() > 1e-4  # the passes differ: the mean is not the plain output
    # by hand: the plain output of each transformed scene, transformed back, averaged
    manual = np.zeros_like(one)
    for k in range(8):
        t = lambda a: np.ascontiguousarray(np.flip(a, [d for b, d in ((1, 2), (2, 1)) if k & b]) if k & 3 else a)  # noqa: E731
        tl, tm = t(lr), t(msi)
        if k & 4:
            tl, tm = np.ascontiguousarray(tl.transpose(0, 2, 1)), np.ascontiguousarray(tm.transpose(0, 2, 1))
        y = fuse_arrays(tl, tm, FuseConfig(model="mulsr", tile=4096, options={"weights": str(stem)}, estimate="off"))
        y = y.transpose(0, 2, 1) if k & 4 else y
        manual += t(y) / 8
    np.testing.assert_allclose(ens, manual, atol=1e-5)
    tiled = fuse_arrays(lr, msi, FuseConfig(model="mulsr", tile=10, overlap=0, options={"weights": str(stem), "tta": 8},
                                                estimate="off"))
    np.testing.assert_allclose(tiled, ens, atol=1e-5)
    with pytest.raises(ModelError, match="tta"):
        NetworkFuser(FusionProblem(2, 5, 3, options={"weights": str(stem), "tta": 3}))


def _refine_weights(tmp_path, **record):
    from hsfuse.weights import save_weights

    torch.manual_seed(0)
    net = build_network("refine", {"bands": 5, "msi_bands": 3, "scale": 4, "prior": True, "nf": 8, "hr_nf": 4, "blocks": 1})
    torch.nn.init.normal_(net.tail.weight, std=0.1)
    stem = tmp_path / "refine-tiny"
    save_weights(stem, net.state_dict(), {"architecture": "refine", "kwargs": net.config, "bands": 5, "msi_bands": 3,
                                          "scales": [4], "protocol": "test", "steps": 0, **record,
                                          "training_data": "none (untrained test weights)", "validation_metrics": {}})
    return stem


def test_record_sets_the_tta_default_two_passes_are_the_input_and_its_half_turn(tmp_path):
    """A record's "tta" is the default number of passes (an option overrides it); 2 passes average the plain output
    and the output for the scene turned by 180°, turned back; tiles still equal the whole scene."""
    from hsfuse.fusion.engine import FuseConfig, fuse_arrays

    stem = _refine_weights(tmp_path, tta=2)
    assert NetworkFuser(FusionProblem(4, 5, 3, options={"weights": str(stem)})).tta == 2
    assert NetworkFuser(FusionProblem(4, 5, 3, options={"weights": str(stem), "tta": 1})).tta == 1
    rng = np.random.default_rng(4)
    lr, msi = rng.random((5, 10, 12), dtype=np.float32), rng.random((3, 40, 48), dtype=np.float32)
    run = lambda a, b, tile=4096, **o: fuse_arrays(a, b, FuseConfig(model="refine", tile=tile, overlap=0,  # noqa: E731
                                                                     options={"weights": str(stem), **o}, estimate="off"))
    ens, one = run(lr, msi), run(lr, msi, tta=1)
    assert np.abs(ens - one).max() > 1e-4
    turn = lambda a: np.ascontiguousarray(a[:, ::-1, ::-1])  # noqa: E731
    half = turn(run(turn(lr), turn(msi), tta=1))
    both = (one > 0) & (half > 0)  # the fused cube is clipped at 0 after the mean, not before
    assert both.mean() > 0.9
    np.testing.assert_allclose(ens[both], ((one + half) / 2)[both], atol=1e-5)
    np.testing.assert_allclose(run(lr, msi, tile=16), ens, atol=1e-5)


def test_refine_runs_channels_last_on_a_cpu_with_the_same_output(tmp_path, monkeypatch):
    """The channels-last layout (faster on a CPU) changes the order of sums only."""
    from hsfuse.fusion.engine import FuseConfig, fuse_arrays
    from hsfuse.models.networks.refine import RefineNet

    stem = _refine_weights(tmp_path)
    assert NetworkFuser(FusionProblem(4, 5, 3, options={"weights": str(stem)})).channels_last
    rng = np.random.default_rng(5)
    lr, msi = rng.random((5, 9, 11), dtype=np.float32), rng.random((3, 36, 44), dtype=np.float32)
    cfg = FuseConfig(model="refine", options={"weights": str(stem), "tta": 2}, estimate="off")
    fast = fuse_arrays(lr, msi, cfg)
    monkeypatch.setattr(RefineNet, "channels_last_cpu", False)
    assert not NetworkFuser(FusionProblem(4, 5, 3, options={"weights": str(stem)})).channels_last
    np.testing.assert_allclose(fast, fuse_arrays(lr, msi, cfg), atol=1e-5)


def test_network_fuser_without_weights_says_so():
    with pytest.raises(ModelError, match="weights"):
        NetworkFuser(FusionProblem(8, 31, 3))


# --------------------------------------------------------------------- receptive field (the tiling halo)


@pytest.mark.parametrize("arch,scale,extra", [("mftn", 4, {}), ("hyfusion", 4, {}), ("mulsr", 8, {}), ("refine", 8, {}),
                                              ("refine", 3, {}), ("refine", 4, {"levels": 3})])
def test_receptive_radius_bounds_the_dependence(arch, scale, extra):
    """No input pixel farther than ``receptive_radius_hr`` from an output pixel changes it (gradient support)."""
    torch.manual_seed(0)
    net = build_network(arch, {"bands": 4, "msi_bands": 3, "scale": scale, **TINY[arch], **extra})
    for m in net.modules():  # zero-initialised heads/predictors would hide the dependence
        if isinstance(m, torch.nn.Conv2d) and not m.weight.any():
            torch.nn.init.normal_(m.weight, std=0.1)
    r = net.receptive_radius_hr(scale)
    n = (2 * r + 2 * scale) // scale + 2  # LR side: the image reaches past the radius on every side
    H = n * scale
    lr = torch.rand(1, 4, n, n, requires_grad=True)
    msi = torch.rand(1, 3, H, H, requires_grad=True)
    c = H // 2
    _run(net, lr, msi)[0, :, c, c].sum().backward()
    ys, xs = torch.nonzero(msi.grad[0].abs().sum(0), as_tuple=True)
    assert max((ys - c).abs().max(), (xs - c).abs().max()) <= r
    ys, xs = torch.nonzero(lr.grad[0].abs().sum(0), as_tuple=True)
    centres = lambda i: i * scale + (scale - 1) / 2  # noqa: E731
    assert max((centres(ys) - c).abs().max(), (centres(xs) - c).abs().max()) <= r + scale / 2


@pytest.mark.parametrize("arch,scale", [("mftn", 4), ("hyfusion", 4), ("mulsr", 8), ("refine", 4)])
def test_tiled_equals_untiled_with_receptive_halo(arch, scale):
    """With the receptive-radius halo, tiles cut on the window/stride grid reproduce the untiled result."""
    from hsfuse.forward.psf import make_psf
    from hsfuse.fusion.base import FusionProblem
    from hsfuse.fusion.engine import fuse_with
    from hsfuse.models.networks.mulsr import SelectOutput
    from hsfuse.models.zoo_fuser import NetworkFuser

    torch.manual_seed(0)
    net = build_network(arch, {"bands": 5, "msi_bands": 3, "scale": scale, **TINY[arch]})
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d) and not m.weight.any():
            torch.nn.init.normal_(m.weight, std=0.1)
    net = SelectOutput(net) if arch == "mulsr" else net
    rng = np.random.default_rng(0)
    lr, msi = rng.random((5, 8, 4), dtype=np.float32), rng.random((3, 8 * scale, 4 * scale), dtype=np.float32)
    psf = make_psf("gaussian", scale)
    problem = FusionProblem(scale=scale, lr_bands=5, msi_bands=3, psf=psf, options={"lr_consistency": "off"})
    fuser = NetworkFuser(problem, network=net)
    assert fuser.halo_lr == -(-net.receptive_radius_hr(scale) // scale) + fuser.align - 1  # no prior: the network's
    full = fuse_with(fuser, lr, msi, psf, 10 ** 6)
    tiled = fuse_with(fuser, lr, msi, psf, 4 * scale)  # two tiles of 4x4 LR pixels, through the engine's tiler
    np.testing.assert_allclose(tiled, full, atol=1e-5)


# --------------------------------------------------------------------- LR consistency (models/consistency.py)


def test_match_lr_undoes_a_gain_error_and_keeps_a_consistent_estimate():
    from hsfuse.forward.psf import Psf
    from hsfuse.forward.degrade import spatial_degrade
    from hsfuse.models.consistency import match_lr

    rng = np.random.default_rng(0)
    z = rng.uniform(0.2, 1.0, (4, 32, 32)).astype(np.float32)
    psf = Psf.gaussian(4, sigma=1.5)
    lr = torch.from_numpy(spatial_degrade(z, psf))[None]
    gains = torch.tensor([1.3, 0.8, 1.0, 1.1]).view(1, 4, 1, 1)
    fixed = match_lr(torch.from_numpy(z)[None] * gains, lr, psf)
    np.testing.assert_allclose(fixed[0].numpy(), z, rtol=1e-5)  # a per-band gain is a constant ratio: undone exactly
    same = match_lr(torch.from_numpy(z)[None], lr, psf)
    np.testing.assert_allclose(same[0].numpy(), z, rtol=1e-5)  # consistent already: unchanged
    dark = torch.from_numpy(z)[None].clone()
    dark[:, :, :8, :8] = 0.0  # zero estimate: no ratio to take, stays zero instead of dividing by 0
    assert torch.isfinite(match_lr(dark, lr, psf)).all() and (match_lr(dark, lr, psf)[:, :, :4, :4] == 0).all()


def test_lr_consistency_is_on_with_the_exact_psf_and_tiles_exactly(tmp_path):
    from hsfuse.forward.psf import Psf
    from hsfuse.forward.degrade import spatial_degrade
    from hsfuse.fusion.engine import FuseConfig, fuse_arrays

    stem = _mulsr_x2_x4_weights(tmp_path)
    psf = Psf.gaussian(4, sigma=1.2)  # conv form: the PSF itself reaches past the LR pixel (halo_lr > 0)
    rng = np.random.default_rng(4)
    lr, msi = rng.uniform(0.1, 1, (5, 14, 12)).astype(np.float32), rng.uniform(0.1, 1, (3, 56, 48)).astype(np.float32)
    run = lambda tile, **o: fuse_arrays(lr, msi, FuseConfig(model="mulsr", psf=psf, tile=tile, overlap=0,  # noqa: E731
                                                              options={"weights": str(stem), **o}, estimate="off",
                                                              denoise="off"))
    auto, on, off = run(4096), run(4096, lr_consistency="on"), run(4096, lr_consistency="off")
    np.testing.assert_array_equal(auto, on)  # a Psf object is the exact forward model: on by default
    err = lambda y: np.abs(spatial_degrade(y, psf) - lr).mean()  # noqa: E731
    assert err(on) < 0.5 * err(off)  # the estimate now explains the measured LR-HSI
    np.testing.assert_allclose(run(20, lr_consistency="on"), on, atol=1e-5)  # 5-LR-pixel tiles: the halo covers it
    f = NetworkFuser(FusionProblem(4, 5, 3, psf=psf, options={"weights": str(stem)}))  # a guessed PSF: off
    g = NetworkFuser(FusionProblem(4, 5, 3, psf=psf, psf_exact=True, options={"weights": str(stem)}))
    assert not f.lr_consistency and g.lr_consistency and g.halo_lr == f.halo_lr + 2 * (1 + psf.halo_lr)
    with pytest.raises(ModelError, match="lr_consistency"):
        NetworkFuser(FusionProblem(4, 5, 3, psf=psf, options={"weights": str(stem), "lr_consistency": "maybe"}))


def test_the_engine_calls_a_given_psf_exact_and_an_assumed_one_not():
    from hsfuse.forward.psf import Psf
    from hsfuse.fusion.engine import FuseConfig, build_fuser, make_plan
    from hsfuse.io.memory import ArraySource

    lr, msi = ArraySource(np.ones((31, 4, 4), np.float32)), ArraySource(np.ones((3, 32, 32), np.float32))
    # constant images: nothing to estimate, so the estimate is off (an estimated preset is exact: test_forward.py)
    for cfg, exact in ((FuseConfig(model="gsa", estimate="off"), False),
                       (FuseConfig(model="gsa", psf="gaussian", estimate="off"), False),
                       (FuseConfig(model="gsa", psf=Psf.gaussian(8), estimate="off"), True)):
        plan = make_plan(lr, msi, cfg)
        assert build_fuser(plan, cfg, lr, msi).problem.psf_exact is exact, plan.psf_source


def test_cli_reports_lr_consistency_and_rejects_a_bad_value(tmp_path):
    import tifffile
    from typer.testing import CliRunner

    from hsfuse.cli import app

    stem = _mulsr_x2_x4_weights(tmp_path)
    rng = np.random.default_rng(5)
    tifffile.imwrite(tmp_path / "lr.tif", rng.uniform(0.1, 1, (5, 8, 8)).astype(np.float32))
    tifffile.imwrite(tmp_path / "msi.tif", rng.uniform(0.1, 1, (3, 32, 32)).astype(np.float32), photometric="minisblack")
    args = ["fuse", str(tmp_path / "lr.tif"), str(tmp_path / "msi.tif"), "--model", "mulsr", "-O", f"weights={stem}",
            "--estimate", "off"]  # random pixels: nothing to estimate
    runner = CliRunner()
    assumed = runner.invoke(app, args + ["-o", str(tmp_path / "a.tif"), "--json"])  # no PSF given: assumed, off
    assert assumed.exit_code == 0, assumed.output
    assert json.loads(assumed.stdout)["model_info"]["lr_consistency"] is False
    forced = runner.invoke(app, args + ["-o", str(tmp_path / "b.tif"), "--psf", "box", "-O", "lr_consistency=on"])
    assert forced.exit_code == 0 and "LR consistency on" in forced.output
    bad = runner.invoke(app, args + ["-o", str(tmp_path / "c.tif"), "-O", "lr_consistency=maybe"])
    assert bad.exit_code != 0 and "lr_consistency must be auto, on, off, ratio or project" in bad.output
    assert not (tmp_path / "c.tif").exists()
