"""CSAKD network: shapes at x4/x8/x32 for 31+3 and 48+4 bands, the prior path, tiling invariance."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hsfuse.models.architectures import build_network as build_from_record  # noqa: E402
from hsfuse.models.networks.csakd import CSAKDNet, S3RNet, build_csakd, default_widths  # noqa: E402
from hsfuse.fusion.base import FusionProblem  # noqa: E402
from hsfuse.fusion.engine import fuse_with  # noqa: E402
from hsfuse.forward.psf import make_psf  # noqa: E402
from hsfuse.models.zoo_fuser import NetworkFuser  # noqa: E402


def run_tiled(net, lr, msi, tile_hr, **options):
    """The network through the engine's tiler (the path training validation takes)."""
    s = msi.shape[-1] // lr.shape[-1]
    psf = make_psf("gaussian", s)
    problem = FusionProblem(scale=s, lr_bands=lr.shape[0], msi_bands=msi.shape[0], psf=psf,
                            options={"lr_consistency": "off", **options})
    return fuse_with(NetworkFuser(problem, network=net), lr, msi, psf, tile_hr)


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # 1 thread: far faster than 2 on a shared, oversubscribed CPU
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("kind", ["student", "teacher"])
@pytest.mark.parametrize("bands,msi_bands", [(31, 3), (48, 4)])
@pytest.mark.parametrize("scale", [4, 8, 32])
def test_forward_shapes(kind, bands, msi_bands, scale):
    torch.manual_seed(0)
    # tiny LR grids (x32: a 1x1 LR tile) but the real default widths
    h = {4: 6, 8: 3, 32: 1}[scale]
    net = build_csakd(kind, bands, msi_bands, prior=False)
    lr = torch.rand(1, bands, h, h + 1)
    msi = torch.rand(1, msi_bands, h * scale, (h + 1) * scale)
    with torch.no_grad():
        out = net(lr, msi)
    assert out.shape == (1, bands, h * scale, (h + 1) * scale)
    assert torch.isfinite(out).all()


def test_widths_scale_with_bands():
    assert default_widths("teacher", 31)["nf"] == 64 and default_widths("teacher", 48)["nf"] == 96
    assert default_widths("student", 31)["nf"] == 32 and default_widths("student", 48)["nf"] == 48
    t, s = build_csakd("teacher", 31, 3), build_csakd("student", 31, 3)
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert n(s) * 5 < n(t)  # the student is much smaller (grouped convs, one block per stream)
    assert S3RNet is CSAKDNet


@pytest.mark.parametrize("kind", ["student", "teacher"])
def test_prior_starts_exactly_at_prior(kind):
    torch.manual_seed(1)
    net = build_csakd(kind, 31, 3, prior=True)
    lr, msi, prior = torch.rand(1, 31, 4, 4), torch.rand(1, 3, 16, 16), torch.rand(1, 31, 16, 16)
    with torch.no_grad():
        out = net(lr, msi, prior)
    assert torch.equal(out, prior)
    with pytest.raises(ValueError, match="prior"):
        net(lr, msi)


def test_bad_inputs_are_explained():
    net = build_csakd("student", 8, 3, nf=8, heads=2)
    with pytest.raises(ValueError, match="8\\+3"):
        net(torch.rand(1, 7, 4, 4), torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="multiple"):
        net(torch.rand(1, 8, 4, 4), torch.rand(1, 3, 17, 16))


def test_rebuild_from_record_kwargs():
    net = build_csakd("student", 8, 3, prior=True, nf=8, heads=2)
    kw = {k: v for k, v in net.config.items() if k != "kind"}
    again = build_from_record("csakd-student", kw)
    again.load_state_dict(net.state_dict(), strict=True)
    with pytest.raises(ValueError, match="unknown architecture"):
        build_from_record("unet", kw)


def _random_head(net):
    with torch.no_grad():  # the zero-initialised head would make every output equal the base
        net.head[-1].weight.normal_(0, 0.05)
        net.head[-1].bias.normal_(0, 0.01)
    return net


@pytest.mark.parametrize("prior", [False, True])
def test_tiled_equals_untiled_with_receptive_halo(prior):
    torch.manual_seed(2)
    bands = 4  # at x2: LR 10x10, MSI 20x20
    net = _random_head(CSAKDNet(bands, 3, nf=4, gc=4, groups=1, heads=1, attn_window=3, prior=prior)).eval()
    rng = np.random.default_rng(0)
    lr = rng.uniform(0, 1, (bands, 10, 10)).astype(np.float32)
    msi = rng.uniform(0, 1, (3, 20, 20)).astype(np.float32)
    whole = run_tiled(net, lr, msi, tile_hr=20)
    tiled = run_tiled(net, lr, msi, tile_hr=12)  # uneven tiles, exact halo = receptive radius (+ the prior's)
    assert np.abs(whole - tiled).max() < 1e-5
    short = run_tiled(net, lr, msi, tile_hr=12, halo_lr=1)
    assert np.abs(whole - short).max() > np.abs(whole - tiled).max()  # the halo is needed
