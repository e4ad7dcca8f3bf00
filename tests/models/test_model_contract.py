"""One contract over every registry entry: whatever `hsfuse models` lists builds, fuses a small pair
through the engine users run to the right shape with finite values, gives the same result tiled and
untiled, and (weight-backed entries, with tiny random weights) checks its record against the inputs.

A new entry in the registry table is covered here without writing a test for it; an entry this file
does not know how to give weights to fails, so that it cannot slip through untested.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hsfuse.forward.psf import Psf, gaussian_kernel  # noqa: E402
from hsfuse.forward.degrade import spatial_degrade  # noqa: E402
from hsfuse.errors import ModelError  # noqa: E402
from hsfuse.fusion.base import FusionProblem  # noqa: E402
from hsfuse.fusion.engine import FuseConfig, fuse_arrays  # noqa: E402
from hsfuse.models.registry import list_models  # noqa: E402
from hsfuse.weights import save_weights  # noqa: E402

BANDS, MSI_BANDS, SCALE, LR_SIDE = 8, 3, 4, 12
PSF = Psf.block(gaussian_kernel(SCALE, 1.0))

#: options that keep each entry small and fast here (widths, iterations, steps)
OPTIONS = {
    "umsft": {"iters": 2, "features": 8, "heads": 2, "levels": 2, "window": 1, "seed": 0, "min_train_lr": 2},
    "hsr-diff": {"steps": 1},
}
#: entries whose tiles are blended, not exact (window attention is equivariant only to whole-window shifts)
NOT_TILE_EXACT = {"hyfusion": "shifted-window attention: tile seams are blended with an overlap (default_overlap)"}


def _tiny_network(name: str):
    """(architecture name for the record, untrained tiny network, extra record fields) for a weight-backed entry."""
    if name == "csakd-s":
        from hsfuse.models.networks.csakd import build_csakd

        return "csakd-student", build_csakd("student", BANDS, MSI_BANDS, prior=True, nf=8, heads=2), {}
    if name == "hsr-diff":
        from hsfuse.models import diffusion as D
        from hsfuse.models.networks.cdformer import CDFormer

        net = CDFormer(bands=BANDS, msi_bands=MSI_BANDS, width=8, depth=2, heads=2, window=3, ffn_expansion=1.5,
                       emb_dim=16)
        return "hsrdiff-cdformer", net, {"diffusion": D.NoiseSchedule(timesteps=50).to_dict()}
    from hsfuse.models.architectures import ARCHITECTURES, build_network

    tiny = {"mftn": {"nf": 8, "heads": 8}, "hyfusion": {"nf": 8, "heads": 2, "window": 4, "blocks": 1},
            "mulsr": {"nf": 8, "blocks": 1, "small_scale": 2}, "refine": {"nf": 8, "hr_nf": 4, "blocks": 1}}
    if name not in ARCHITECTURES or name not in tiny:
        raise AssertionError(f"registry entry {name!r} has weights but this contract test cannot build them: add it")
    net = build_network(name, {"bands": BANDS, "msi_bands": MSI_BANDS, "scale": SCALE, "prior": True, **tiny[name]})
    return name, net, {}


def _weights(name: str, tmp_path) -> dict:
    torch.manual_seed(0)
    arch, net, extra = _tiny_network(name)
    for m in net.modules():  # zero-initialised output layers would make every network return its prior
        if isinstance(m, torch.nn.Conv2d) and not m.weight.any():
            torch.nn.init.normal_(m.weight, std=0.05)
    scales = sorted({SCALE, *getattr(net, "scales", ())})
    rec = {"architecture": arch, "kwargs": net.config, "bands": BANDS, "msi_bands": MSI_BANDS, "scales": scales,
           "protocol": "test", "training_data": "none (untrained contract-test weights)", "steps": 0,
           "validation_metrics": {}, **extra}
    save_weights(tmp_path / f"{name}-contract", net.state_dict(), rec)
    return {"weights": str(tmp_path / f"{name}-contract")}


def _pair():
    rng = np.random.default_rng(0)
    side = LR_SIDE * SCALE
    yy, xx = np.mgrid[0:side, 0:side] / side
    base = np.stack([np.sin(2 * np.pi * (k + 1) * xx + k) * np.cos(2 * np.pi * (k % 3 + 1) * yy) for k in range(4)])
    spectra = rng.random((BANDS, 4))
    hr = (0.5 + 0.1 * np.einsum("ck,khw->chw", spectra, base) + 0.01 * rng.random((BANDS, side, side))).astype(np.float32)
    srf = rng.random((MSI_BANDS, BANDS))
    msi = np.einsum("mc,chw->mhw", srf / srf.sum(1, keepdims=True), hr).astype(np.float32)
    return spatial_degrade(hr, PSF).astype(np.float32), msi


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("entry", list_models(), ids=lambda e: e.name)
def test_every_registry_entry_fuses_and_tiles(entry, tmp_path):
    options = dict(OPTIONS.get(entry.name, {}))
    if entry.needs_weights:
        options.update(_weights(entry.name, tmp_path))
    lr, msi = _pair()
    cfg = dict(model=entry.name, psf=PSF, options=options, estimate="off", overlap=0)
    whole = fuse_arrays(lr, msi, FuseConfig(tile=10 ** 6, **cfg))
    assert whole.shape == (BANDS, *msi.shape[1:]) and whole.dtype == np.float32
    assert np.isfinite(whole).all()
    if entry.name in NOT_TILE_EXACT:
        return
    tiled = fuse_arrays(lr, msi, FuseConfig(tile=LR_SIDE // 2 * SCALE, **cfg))  # 2x2 tiles
    np.testing.assert_allclose(tiled, whole, atol=2e-5, err_msg=f"{entry.name}: tiled differs from untiled")


@pytest.mark.parametrize("entry", [e for e in list_models() if e.needs_weights], ids=lambda e: e.name)
def test_every_weight_backed_entry_checks_its_record(entry, tmp_path):
    opts = _weights(entry.name, tmp_path)
    fuser_cls = entry.load_class()
    with pytest.raises(ModelError, match="bands"):
        fuser_cls(FusionProblem(SCALE, BANDS + 1, MSI_BANDS, options=opts))
    with pytest.raises(ModelError, match="scale"):
        fuser_cls(FusionProblem(SCALE * 8, BANDS, MSI_BANDS, options=opts))
