"""The exact LR projection (models/consistency.project_lr) and the degradation's adjoint it is built on."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hsfuse.forward.degrade import lr_supports_disjoint, spatial_adjoint_t, spatial_degrade_t  # noqa: E402
from hsfuse.forward.protocols import get_protocol  # noqa: E402
from hsfuse.forward.psf import Psf, gaussian_kernel  # noqa: E402
from hsfuse.models.consistency import project_lr  # noqa: E402

BORDERS = ("reflect", "edge", "wrap", "zero")


def _psfs():
    yield Psf.block(gaussian_kernel(8, 2.0))                         # our CAVE x8 block form
    yield Psf(gaussian_kernel(7, 3.0, center=0.0), 8, pad=3)         # Dian-group: first-pixel 7x7 (pad 3)
    yield Psf.gaussian(4, sigma=1.2)                                  # conv form, overlapping
    yield Psf(gaussian_kernel(5, 1.0), 3, pad=1)                     # odd scale, reaching one pixel past the block


def _matrix(psf: Psf, h: int, w: int) -> np.ndarray:
    """The degradation as an explicit matrix (LR pixels x HR pixels), by degrading every unit image."""
    eye = torch.eye(h * w, dtype=torch.float64).reshape(h * w, 1, h, w)
    return spatial_degrade_t(eye, psf).reshape(h * w, -1).T.numpy()


@pytest.mark.parametrize("border", BORDERS)
@pytest.mark.parametrize("i", range(4))
def test_adjoint_is_the_transpose_of_the_degradation(border, i):
    base = list(_psfs())[i]
    psf = Psf(base.kernel, base.scale, base.pad, border)
    s = psf.scale
    h, w = 4 * s + (s - 1), 3 * s  # a trailing partial block is ignored by both
    a = _matrix(psf, h, w)
    v = np.random.default_rng(i).standard_normal(a.shape[0])
    at_v = spatial_adjoint_t(torch.tensor(v).reshape(1, 1, h // s, w // s), psf, h, w).reshape(-1).numpy()
    np.testing.assert_allclose(at_v, a.T @ v, atol=1e-12)
    # disjoint supports <=> A A^T is diagonal
    gram = a @ a.T
    assert lr_supports_disjoint(psf) == bool(np.allclose(gram, np.diag(np.diag(gram)))), (i, border)


def test_disjoint_for_the_block_presets_and_not_for_wald():
    for name in ("cave-gauss-x8", "dian-gauss-x8", "cave-mhf-x32", "cave-gauss-x4"):
        assert lr_supports_disjoint(get_protocol(name).build_psf(None)), name
    assert not lr_supports_disjoint(get_protocol("wald-gauss").build_psf(8))


@pytest.mark.parametrize("i", range(4))
def test_projection_explains_the_lr_and_never_moves_away_from_the_truth(i):
    psf = list(_psfs())[i]
    s = psf.scale
    rng = np.random.default_rng(i)
    truth = torch.tensor(rng.uniform(0.2, 1.0, (2, 3, 8 * s, 6 * s)))
    lr = spatial_degrade_t(truth, psf)
    guess = truth + 0.03 * torch.tensor(rng.standard_normal(truth.shape))  # stays positive: the clamp is idle
    if lr_supports_disjoint(psf):
        y = project_lr(guess, lr, psf)
        assert float((spatial_degrade_t(y, psf) - lr).abs().max()) < 1e-12  # one step is exact
        assert (y - truth).norm() < (guess - truth).norm()
        # idempotent: a projection
        torch.testing.assert_close(project_lr(y, lr, psf), y, atol=1e-12, rtol=0)
    else:  # SIRT steps: the LR residual falls with each
        res = [float((spatial_degrade_t(project_lr(guess, lr, psf, k), psf) - lr).norm()) if k else
               float((spatial_degrade_t(guess, psf) - lr).norm()) for k in range(4)]
        assert all(b < a for a, b in zip(res, res[1:])), res


def test_projection_is_differentiable_and_leaves_dark_lr_pixels_alone():
    psf = Psf.block(gaussian_kernel(4, 1.0))
    y = torch.rand(1, 2, 16, 16, dtype=torch.float64, requires_grad=True)
    lr = torch.rand(1, 2, 4, 4, dtype=torch.float64)
    lr[..., 0, 0] = 0.0  # dark / nodata
    out = project_lr(y, lr, psf)
    out.sum().backward()
    assert y.grad is not None and torch.isfinite(y.grad).all()
    torch.testing.assert_close(out[..., :4, :4], y.detach()[..., :4, :4])


def test_fuser_applies_the_projection_for_weights_trained_through_it_and_tiles_exactly(tmp_path):
    from hsfuse.fusion.base import FusionProblem
    from hsfuse.fusion.engine import FuseConfig, fuse_arrays
    from hsfuse.models.architectures import build_network
    from hsfuse.models.zoo_fuser import NetworkFuser
    from hsfuse.weights import save_weights

    torch.manual_seed(0)
    net = build_network("refine", {"bands": 5, "msi_bands": 3, "scale": 4, "prior": True, "nf": 8, "hr_nf": 4, "blocks": 1})
    torch.nn.init.normal_(net.tail.weight, std=0.1)
    rec = {"architecture": "refine", "kwargs": net.config, "bands": 5, "msi_bands": 3, "scales": [4], "protocol": "test",
           "steps": 0, "training_data": "none (untrained test weights)", "validation_metrics": {}}
    plain, trained = tmp_path / "refine-plain", tmp_path / "refine-proj"
    save_weights(plain, net.state_dict(), rec)
    save_weights(trained, net.state_dict(), {**rec, "lr_consistency": "project"})
    psf = Psf.block(gaussian_kernel(4, 1.0))
    # a guessed (not exact) PSF: the ratio stays off, the projection a network was trained through stays on
    assert not NetworkFuser(FusionProblem(4, 5, 3, psf=psf, options={"weights": str(plain)})).lr_consistency
    f = NetworkFuser(FusionProblem(4, 5, 3, psf=psf, options={"weights": str(trained)}))
    assert f.lr_consistency and f.consistency_method == "project" and f.projection_steps == 1
    assert f.describe()["lr_consistency"] == "project"
    g = NetworkFuser(FusionProblem(4, 5, 3, psf=Psf.gaussian(4, sigma=1.2), options={"weights": str(trained)}))
    assert g.projection_steps > 1  # overlapping kernel: SIRT steps
    rng = np.random.default_rng(1)
    truth = rng.uniform(0.1, 1, (5, 48, 40)).astype(np.float32)
    lr = spatial_degrade_t(torch.tensor(truth), psf).numpy()
    msi = rng.uniform(0.1, 1, (3, 48, 40)).astype(np.float32)
    run = lambda tile, **o: fuse_arrays(lr, msi, FuseConfig(model="refine", psf=psf, tile=tile, overlap=0,  # noqa: E731
                                                              options={"weights": str(trained), **o}, estimate="off",
                                                              denoise="off"))
    whole = run(4096)
    # every LR pixel explained, except where the clamp at 0 that follows the projection cut into its block
    # (random weights make a few negative values)
    clamped = (whole == 0).any(0).reshape(12, 4, 10, 4).any((1, 3))
    assert clamped.sum() <= 3
    assert float(np.abs(spatial_degrade_t(torch.tensor(whole), psf).numpy() - lr)[:, ~clamped].max()) < 1e-5
    np.testing.assert_allclose(run(16), whole, atol=1e-5)  # 4-LR-pixel tiles
    off = run(4096, lr_consistency="off")
    assert float(np.abs(spatial_degrade_t(torch.tensor(off), psf).numpy() - lr).max()) > 1e-3


def test_bias_free_refine_with_gsa_and_the_projection_is_exactly_brightness_equivariant(tmp_path):
    """refine(bias=False): leaky-ReLU and bias-free convolutions are positively homogeneous, as are the GSA prior
    and the projection, so scaling both inputs (another exposure, other units) scales the fused cube alike."""
    from hsfuse.fusion.engine import FuseConfig, fuse_arrays
    from hsfuse.models.architectures import build_network
    from hsfuse.weights import save_weights

    torch.manual_seed(0)
    net = build_network("refine", {"bands": 5, "msi_bands": 3, "scale": 4, "prior": True, "nf": 8, "hr_nf": 4,
                                   "blocks": 1, "bias": False})
    assert not any(k.endswith(".bias") for k in net.state_dict()) and net.config["bias"] is False
    torch.nn.init.normal_(net.tail.weight, std=0.1)
    stem = tmp_path / "refine-nobias"
    save_weights(stem, net.state_dict(), {"architecture": "refine", "kwargs": net.config, "bands": 5, "msi_bands": 3,
                                          "scales": [4], "protocol": "test", "steps": 0, "lr_consistency": "project",
                                          "training_data": "none (untrained test weights)", "validation_metrics": {}})
    psf = Psf.block(gaussian_kernel(4, 1.0))
    rng = np.random.default_rng(2)
    truth = rng.uniform(0.1, 1, (5, 32, 32)).astype(np.float32)
    lr = spatial_degrade_t(torch.tensor(truth), psf).numpy()
    msi = np.einsum("mc,chw->mhw", rng.uniform(0, 1, (3, 5)), truth).astype(np.float32)
    cfg = FuseConfig(model="refine", psf=psf, options={"weights": str(stem)}, estimate="off", denoise="off")
    one = fuse_arrays(lr, msi, cfg)
    np.testing.assert_allclose(fuse_arrays(lr * 7.5, msi * 7.5, cfg), 7.5 * one, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fuse_arrays(lr * 0.01, msi * 0.01, cfg), 0.01 * one, rtol=1e-4, atol=1e-7)
