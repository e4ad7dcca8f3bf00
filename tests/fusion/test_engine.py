"""The streaming engine: tile invariance, blending, scale inference, nodata, memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import smooth_cube
from hsfuse.forward.degrade import spatial_degrade
from hsfuse.cube import CubeMeta
from hsfuse.forward.psf import Psf, gaussian_kernel
from hsfuse.errors import InputError, ModelError, UsageError
from hsfuse.fusion import engine
from hsfuse.fusion.base import Fuser
from hsfuse.fusion.engine import FuseConfig, fuse_arrays, infer_scale
from hsfuse.fusion.tiling import mirror_index, ramp, spans
from hsfuse.io.memory import ArraySource
from hsfuse.models import registry
from hsfuse.weights import WeightsRecord


class WideContext(Fuser):
    """A deliberately non-local toy method: bicubic LR + a blurred MSI term (receptive field ~ halo)."""

    name = "wide"
    halo_lr = 3

    def fit(self, lr, msi_lr):
        self.gain = float(np.nanmean(lr) / np.nanmean(msi_lr))

    def fuse_tile(self, lr, msi):
        s = self.problem.scale
        up = torch.nn.functional.interpolate(torch.from_numpy(lr)[None], scale_factor=s, mode="bicubic",
                                             align_corners=False)[0].numpy()
        blur = torch.nn.functional.avg_pool2d(torch.from_numpy(msi)[None], 5, 1, 2, count_include_pad=False)[0].numpy()
        return up + 0.1 * self.gain * blur.mean(0, keepdims=True)


@pytest.fixture
def wide_model(monkeypatch):
    entry = registry.ModelEntry("wide", "classical", "toy", "test_engine:WideContext", "any")
    monkeypatch.setitem(registry.REGISTRY, "wide", entry)
    monkeypatch.setattr(entry.__class__, "load_class", lambda self: WideContext)
    return "wide"


def _pair(bands=6, size=96, scale=4, seed=0):
    z = smooth_cube(bands, size, size - 16, seed)
    psf = Psf.gaussian(scale)
    return z, spatial_degrade(z, psf), z[:3] * 0.5 + z[3:6] * 0.5, psf


@pytest.mark.parametrize("tile,overlap", [(16, 0), (16, 8), (20, 16), (32, 32), (12, 64), (24, 1000)])
def test_tiled_equals_untiled(wide_model, tile, overlap):
    _, lr, msi, psf = _pair()
    ref = fuse_arrays(lr, msi, FuseConfig(model=wide_model, tile=10**6, psf=psf))
    out = fuse_arrays(lr, msi, FuseConfig(model=wide_model, tile=tile, overlap=overlap, psf=psf))
    assert out.shape == ref.shape and np.isfinite(out).all()
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_blend_weights_are_a_partition_of_unity():
    sp = spans(37, 8, 2)
    total = np.zeros(37 * 3)
    for s in sp:
        total[s.e0 * 3: s.e1 * 3] += ramp(s, 2, 3)
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    # cores partition the axis and extents only grow interior sides
    assert sp[0].c0 == 0 and sp[-1].c1 == 37 and all(a.c1 == b.c0 for a, b in zip(sp, sp[1:]))
    assert sp[0].e0 == 0 and sp[-1].e1 == 37


def test_mirror_index_matches_numpy_symmetric_pad():
    x = np.arange(5)
    np.testing.assert_array_equal(x[mirror_index(np.arange(-7, 12), 5)], np.pad(x, (7, 7), mode="symmetric"))


@pytest.mark.parametrize("lr_hw,msi_hw,msg", [
    ((10, 10), (25, 25), "integer ratio"),
    ((10, 10), (20, 30), "differs between axes"),
    ((10, 10), (5, 5), "smaller"),
    ((10, 10), (10, 10), "same size"),
])
def test_scale_inference_errors(lr_hw, msi_hw, msg):
    lr = ArraySource(np.zeros((4, *lr_hw), np.float32), name="lr.tif")
    msi = ArraySource(np.zeros((3, *msi_hw), np.float32), name="msi.tif")
    with pytest.raises(InputError, match=msg):
        infer_scale(lr, msi)


def test_unknown_model_lists_valid_names():
    with pytest.raises(UsageError, match="valid: .*gsa"):
        registry.get_model("no-such-model")


def test_nodata_propagates_and_nodata_only_tiles_are_fine(wide_model):
    _, lr, msi, psf = _pair()
    msi = msi.copy()
    msi[:, :40, :40] = np.nan  # covers whole tiles at tile=16
    lr = lr.copy()
    lr[:, -2:, -2:] = np.nan
    out = fuse_arrays(lr, msi, FuseConfig(model=wide_model, tile=16, overlap=8, psf=psf))
    assert np.isnan(out[:, :40, :40]).all()
    assert np.isnan(out[:, -8:, -8:]).all()
    valid = np.ones(out.shape[1:], bool)
    valid[:40, :40] = False
    valid[-8:, -8:] = False
    assert np.isfinite(out[:, valid]).all()


def test_all_nodata_scene_is_an_error(wide_model):
    _, lr, msi, psf = _pair()
    with pytest.raises(InputError, match="no valid pixels"):
        fuse_arrays(np.full_like(lr, np.nan), msi, FuseConfig(model=wide_model, psf=psf))


def test_output_meta_takes_grid_from_msi_and_spectra_from_lr():
    from hsfuse.cube import GeoRef

    wl = np.linspace(400, 700, 6)
    lr = ArraySource(np.zeros((6, 8, 8), np.float32), CubeMeta(wavelengths=wl, georef=GeoRef("LR", (40, 0, 0, 0, -40, 0))))
    msi = ArraySource(np.zeros((3, 32, 32), np.float32), CubeMeta(georef=GeoRef("MSI", (10, 0, 5, 0, -10, 7))))
    # zeros: nothing to estimate; the placeholder CRS names differ, which the grid check would refuse
    plan = engine.make_plan(lr, msi, FuseConfig(model="bicubic", estimate="off", force=True))
    meta = engine.output_meta(lr, msi, plan)
    assert meta.georef.crs_wkt == "MSI" and meta.georef.transform == (10, 0, 5, 0, -10, 7)
    np.testing.assert_array_equal(meta.wavelengths, wl)


def test_dry_run_plan_reports_tiles_and_choice():
    lr = ArraySource(np.zeros((31, 64, 64), np.float32))
    msi = ArraySource(np.zeros((3, 512, 512), np.float32))
    plan = engine.make_plan(lr, msi, FuseConfig(tile=256, estimate="off")).to_dict()
    assert plan["scale"] == 8 and plan["tiles"] == 4 and plan["tile_hr"] == 256
    assert plan["model"] in registry.REGISTRY and plan["model_reason"]


@pytest.mark.parametrize("name", [e.name for e in registry.list_models()])
def test_every_registered_model_fuses_a_tiny_pair(name):
    entry = registry.get_model(name)
    if entry.needs_weights and not entry.available:
        pytest.skip(f"{name}: no weights installed")
    if entry.needs_weights:
        pytest.skip("weights-backed models are tested in their own files at their trained configuration")
    zero_shot = entry.kind == "zero-shot"  # optimised per scene: needs a larger LR, run briefly
    z, lr, msi, psf = _pair(bands=7, size=96 if zero_shot else 64, scale=4 if zero_shot else 8)
    options = {"iters": 10} if zero_shot else {}
    out = fuse_arrays(lr, msi, FuseConfig(model=name, psf=psf, tile=32, options=options))
    assert out.shape == z.shape and out.dtype == np.float32 and np.isfinite(out).all()


def test_streamed_fuse_stays_under_a_memory_budget(tmp_path):
    """Output 31×2048×2048 float32 (520 MB) within a quarter of its size in traced numpy allocations: nothing
    output-sized is allocated.

    What is held: the LR-sized scene state (the LR cube and the MSI on the LR grid, 1/s² of the output each, by
    design: docs/fusion.md), the numpy gsa's per-tile working set (about four arrays the size of a 128-pixel tile
    with its halo) and the forward-model estimate on its bounded window: measured 91 MB."""
    import tracemalloc

    from hsfuse.cube import Window
    from hsfuse.fusion.engine import fuse_files
    from hsfuse.io import create_writer, open_cube

    scale, size, bands = 8, 2048, 31
    base = smooth_cube(bands, 128, 128, seed=5)
    psf = Psf.block(np.full((scale, scale), 1 / scale**2))
    with create_writer(tmp_path / "lr.hdr", (bands, size // scale, size // scale), CubeMeta()) as lw, \
            create_writer(tmp_path / "msi.hdr", (3, size, size), CubeMeta()) as mw:
        for r in range(0, size, 128):
            for c in range(0, size, 128):
                lw.write(spatial_degrade(base, psf), Window(r // scale, c // scale, 128 // scale, 128 // scale))
                mw.write(base[[5, 15, 25]], Window(r, c, 128, 128))
    out = tmp_path / "fused.hdr"
    tracemalloc.start()
    fuse_files(tmp_path / "lr.hdr", tmp_path / "msi.hdr", out, FuseConfig(model="gsa", tile=128, psf=psf))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    out_bytes = bands * size * size * 4
    print(f"peak traced allocation {peak / 1e6:.1f} MB for a {out_bytes / 1e6:.0f} MB output")
    assert peak < out_bytes / 4, f"peak traced allocation {peak / 1e6:.1f} MB"
    with open_cube(out) as src:
        assert src.shape == (bands, size, size)
        corner = src.read(Window(size - 64, size - 64, 64, 64))
    assert np.isfinite(corner).all()


#: the cave-gauss-x8 PSF (what the shipped x8 weights were trained under), buildable without ../shared
TRAIN_PSF = Psf.block(gaussian_kernel(8, 2.0))


def registry_record(path):
    from hsfuse.weights import read_record

    return read_record(path.with_suffix(""))


def _cave_like_pair():
    wl = np.arange(400.0, 701.0, 10.0)
    lr = ArraySource(np.random.default_rng(0).random((31, 8, 8), dtype=np.float32), CubeMeta(wavelengths=wl))
    msi = ArraySource(np.random.default_rng(1).random((3, 64, 64), dtype=np.float32))
    return lr, msi, wl


@pytest.mark.skipif(not registry.get_model("csakd-s").available, reason="no csakd-s weights installed")
def test_default_model_is_classical_unless_the_srf_is_the_training_one():
    from hsfuse.forward.srf import load_srf

    lr, msi, wl = _cave_like_pair()
    # random pixels: nothing to estimate from, so the estimate is off and the PSF given
    plan = engine.make_plan(lr, msi, FuseConfig(psf=TRAIN_PSF, estimate="off"))
    assert plan.model.name == "gsa" and "SRF is unknown" in plan.model_reason
    other = load_srf("sigma-sdmerrill", wl, 31).matrix  # Foveon RGB: farther than any shipped tolerance
    plan = engine.make_plan(lr, msi, FuseConfig(srf=other, psf=TRAIN_PSF))
    assert plan.model.name == "gsa" and "differs from the training SRF" in plan.model_reason
    assert engine.make_plan(lr, msi, FuseConfig(model="csakd-s", srf=other, psf=TRAIN_PSF)).model.name == "csakd-s"
    any_rgb = registry.weights_dir() / "csakd-s-cave-gauss-x8-anyrgb.json"
    if any_rgb.exists():  # the SRF-augmented weights take a nearby camera (Nikon 5100, within 40 nm)
        nikon = load_srf("nikon-5100", wl, 31).matrix
        entry, weights, _ = engine.choose_model(lr, msi, 8, nikon, None, TRAIN_PSF, device=None)  # cost not counted
        assert entry.name == "csakd-s" and weights.name == "csakd-s-cave-gauss-x8-anyrgb.safetensors"
        plan = engine.make_plan(lr, msi, FuseConfig(srf=nikon, psf=TRAIN_PSF, device="cpu"))
        cost = WeightsRecord.of(registry_record(any_rgb)).cpu_cost_vs_gsa(8)
        if cost is not None and cost > engine.MAX_CPU_COST_VS_GSA:  # on a CPU it is too slow to be the default
            assert plan.model.name == "gsa" and "costs" in plan.model_reason and "csakd-s" in plan.model_reason
        else:
            assert plan.model.name == "csakd-s"


@pytest.mark.shared
@pytest.mark.skipif(not registry.get_model("csakd-s").available, reason="no csakd-s weights installed")
def test_default_model_is_the_pretrained_one_under_its_protocol(shared_data):
    from hsfuse.weights import read_record

    lr, msi, _ = _cave_like_pair()
    plan = engine.make_plan(lr, msi, FuseConfig(protocol="cave-gauss-x8"))
    assert plan.model.name != "gsa" and "fit the inputs" in plan.model_reason
    assert plan.device == "cpu"  # this machine; on a GPU the cost limit does not apply
    chosen = WeightsRecord.of(read_record(plan.weights)).validation_gain(8)
    assert WeightsRecord.of(read_record(plan.weights)).cpu_cost_vs_gsa(8) <= engine.MAX_CPU_COST_VS_GSA
    for entry in registry.list_models():  # no other affordable fitting weights recorded a larger gain over gsa at x8
        if entry.kind == "supervised" and entry.available:
            for path in engine.fitting_weights(entry, lr, msi, 8)[0]:
                rec = read_record(path)
                gain = WeightsRecord.of(rec).validation_gain(8)
                if WeightsRecord.of(rec).cpu_cost_vs_gsa(8) is None or WeightsRecord.of(rec).cpu_cost_vs_gsa(8) <= engine.MAX_CPU_COST_VS_GSA:
                    assert gain is None or gain <= chosen
    if (registry.weights_dir() / "refine-cave-gauss-x8.json").exists():  # the CPU default of the shipped set
        assert plan.model.name == "refine"
        mulsr = WeightsRecord.of(read_record(registry.weights_dir() / "mulsr-cave-gauss-x8.json")).validation_gain(8)
        # a better but slower network is named in the reason; one that gains less is not
        assert ("'mulsr' would gain" in plan.model_reason) == (mulsr is not None and mulsr > chosen), plan.model_reason
        assert engine.make_plan(lr, msi, FuseConfig(protocol="cave-gauss-x8", model="mulsr")).model.name == "mulsr"


@pytest.mark.skipif(not (registry.get_model("csakd-s").available and registry.get_model("mftn").available),
                    reason="needs csakd-s and mftn weights")
def test_default_choice_follows_the_recorded_validation_gain(tmp_path, monkeypatch):
    """Among fitting weights, the one whose record shows the larger gain over gsa wins; none recorded: last."""
    import json
    import shutil

    stems = {"csakd-s": "csakd-s-cave-gauss-x8", "mftn": "mftn-cave-gauss-x8"}
    shipped = registry.weights_dir()
    for stem in stems.values():
        for ext in (".json", ".safetensors"):
            shutil.copy(shipped / f"{stem}{ext}", tmp_path / f"{stem}{ext}")
    monkeypatch.setenv("HSFUSE_WEIGHTS", str(tmp_path))

    def set_gain(stem, gain):
        rec = json.loads((tmp_path / f"{stem}.json").read_text())
        rec["srf_tolerance_nm"] = 40.0  # so that a built-in camera (Nikon 5100) fits without ../shared
        rec.pop("cpu_cost_vs_gsa", None)  # the ranking by gain first; the cost limit is checked below
        if gain is None:
            rec["validation_metrics"] = {}
        else:
            rec["validation_metrics"]["model"]["mean"]["psnr"] = rec["validation_metrics"]["gsa"]["mean"]["psnr"] + gain
        (tmp_path / f"{stem}.json").write_text(json.dumps(rec))

    from hsfuse.forward.srf import load_srf

    lr, msi, wl = _cave_like_pair()
    cfg = FuseConfig(srf=load_srf("nikon-5100", wl, 31).matrix, psf=TRAIN_PSF)
    set_gain(stems["csakd-s"], 0.5)
    set_gain(stems["mftn"], 0.9)
    plan = engine.make_plan(lr, msi, cfg)
    assert plan.model.name == "mftn" and "+0.90 dB" in plan.model_reason and "of 2 fitting weights" in plan.model_reason
    set_gain(stems["csakd-s"], 1.2)
    assert engine.make_plan(lr, msi, cfg).model.name == "csakd-s"
    set_gain(stems["csakd-s"], None)  # a record without validation ranks after any with one
    assert engine.make_plan(lr, msi, cfg).model.name == "mftn"
    for bad in ("garbage", {"model": "x"}, {"joint_scale": {"scale": "x8"}}):  # malformed: "not recorded", no crash
        assert WeightsRecord.of({"validation_metrics": bad}).validation_gain(8) is None
    # on a CPU, weights recorded as costing more than MAX_CPU_COST_VS_GSA times gsa are not the default
    shutil.copy(shipped / f"{stems['csakd-s']}.json", tmp_path / f"{stems['csakd-s']}.json")
    set_gain(stems["csakd-s"], 1.2)
    rec = json.loads((tmp_path / f"{stems['csakd-s']}.json").read_text())
    rec["cpu_cost_vs_gsa"] = {"ratio": {"8": engine.MAX_CPU_COST_VS_GSA + 2}}
    (tmp_path / f"{stems['csakd-s']}.json").write_text(json.dumps(rec))
    plan = engine.make_plan(lr, msi, FuseConfig(srf=cfg.srf, psf=TRAIN_PSF, device="cpu"))
    assert plan.model.name == "mftn" and f"costs {engine.MAX_CPU_COST_VS_GSA + 2:.1f}x gsa" in plan.model_reason
    entry, _, _ = engine.choose_model(lr, msi, 8, cfg.srf, None, TRAIN_PSF, device="cuda")
    assert entry.name == "csakd-s"  # on a GPU the cost does not rule it out
    assert engine.make_plan(lr, msi, FuseConfig(srf=cfg.srf, psf=TRAIN_PSF, model="csakd-s")).model.name == "csakd-s"
    assert WeightsRecord.of({"cpu_cost_vs_gsa": {"ratio": {"8": 2.0, "32": 4.0}}}).cpu_cost_vs_gsa(4) == 4.0  # unmeasured: the worst
    assert WeightsRecord.of({"cpu_cost_vs_gsa": "garbage"}).cpu_cost_vs_gsa(8) is None


@pytest.mark.skipif(not registry.get_model("refine").available, reason="no refine weights installed")
def test_weights_measured_under_another_preset_are_chosen_only_where_they_gained(tmp_path, monkeypatch):
    """Under a preset they were not trained on, weights are the default only when a measurement under that
    preset (bench_process --record: validation_protocols) shows a mean gain over gsa on the held-out scenes
    with no scene more than engine.MAX_SCENE_LOSS_DB below it; for a preset that leaves the SRF open, the
    measurement counts for its PSF and the SRF is still checked."""
    import json
    import shutil

    stem = "refine-cave-gauss-x8"
    for ext in (".json", ".safetensors"):
        shutil.copy(registry.weights_dir() / f"{stem}{ext}", tmp_path / f"{stem}{ext}")
    monkeypatch.setenv("HSFUSE_WEIGHTS", str(tmp_path))
    lr, msi, wl = _cave_like_pair()
    first_pixel = Psf(gaussian_kernel(7, 3.0), 8, pad=0)  # the Dian-group kernel: far from the training PSF

    def measured(scenes, preset="dian-gauss-x8", **extra):
        rec = json.loads((tmp_path / f"{stem}.json").read_text())
        rec["validation_protocols"] = {preset: {"scenes": scenes, "measured": "test", **extra}}
        (tmp_path / f"{stem}.json").write_text(json.dumps(rec))

    entry, _, why = engine.choose_model(lr, msi, 8, None, "dian-gauss-x8", first_pixel)
    assert entry.name == "gsa" and "PSF differs" in why
    measured({"a": {"model": 51.0, "gsa": 50.0}, "b": {"model": 47.5, "gsa": 46.5}})
    entry, weights, why = engine.choose_model(lr, msi, 8, None, "dian-gauss-x8", first_pixel)
    assert entry.name == "refine" and weights.name == f"{stem}.safetensors"
    assert "measured under dian-gauss-x8: +1.00 dB over gsa" in why
    entry, _, why = engine.choose_model(lr, msi, 8, None, "imresize-bicubic", first_pixel)  # not measured there
    assert entry.name == "gsa"
    measured({"a": {"model": 51.0, "gsa": 50.0}, "b": {"model": 46.4, "gsa": 46.5}})  # one scene a little below
    entry, _, why = engine.choose_model(lr, msi, 8, None, "dian-gauss-x8", first_pixel)
    assert entry.name == "refine" and "+0.45 dB over gsa on the held-out scenes (-0.10 on the worst)" in why
    measured({"a": {"model": 52.0, "gsa": 50.0}, "b": {"model": 45.9, "gsa": 46.5}})  # one scene broken
    entry, _, why = engine.choose_model(lr, msi, 8, None, "dian-gauss-x8", first_pixel)
    assert entry.name == "gsa" and "+0.70 dB over gsa on the held-out scenes, -0.60 on the worst" in why
    measured({"a": {"model": 49.0, "gsa": 50.0}, "b": {"model": 46.6, "gsa": 46.5}})  # no gain on the mean
    assert engine.choose_model(lr, msi, 8, None, "dian-gauss-x8", first_pixel)[0].name == "gsa"
    # a preset whose SRF is open (wald-gauss): the measurement is for its PSF, the pair's SRF must still fit
    from hsfuse.forward.srf import load_srf

    measured({"a": {"model": 51.0, "gsa": 50.0}}, "wald-gauss", srf="MHF-Net R (Nikon D700)")
    entry, _, why = engine.choose_model(lr, msi, 8, None, None, first_pixel, psf_preset="wald-gauss")
    assert entry.name == "gsa" and "SRF is unknown" in why  # the SRF is checked still
    foveon, nikon = (load_srf(n, wl, 31).matrix for n in ("sigma-sdmerrill", "nikon-5100"))
    rec = json.loads((tmp_path / f"{stem}.json").read_text())
    rec["srf_tolerance_nm"] = 40.0  # as an SRF-augmented record would say: takes the Nikon 5100, not the Foveon
    (tmp_path / f"{stem}.json").write_text(json.dumps(rec))
    entry, _, why = engine.choose_model(lr, msi, 8, foveon, None, first_pixel, psf_preset="wald-gauss")
    assert entry.name == "gsa" and "differs from the training SRF" in why
    entry, _, why = engine.choose_model(lr, msi, 8, nikon, None, first_pixel, psf_preset="wald-gauss")
    assert entry.name == "refine" and "measured under wald-gauss with the MHF-Net R (Nikon D700) SRF" in why
    assert engine.choose_model(lr, msi, 8, nikon, None, first_pixel)[0].name == "gsa"  # no preset: kernel distance
    # a PSF the estimate did not name but within 15% of a measured preset's (a wide kernel fitted as a Gaussian)
    from hsfuse.forward.protocols import get_protocol
    from hsfuse.forward.psf import make_psf, psf_distance

    like = make_psf("gaussian", 8, sigma=3.5)  # wald-gauss x8 is sigma 3.40
    assert psf_distance(like, get_protocol("wald-gauss").build_psf(8)) < 0.15
    entry, _, why = engine.choose_model(lr, msi, 8, nikon, None, like)
    assert entry.name == "refine" and "within 15% of that preset's" in why
    measured({"a": {"model": 51.0, "gsa": 50.0}}, "wald-gauss", srf="MHF-Net R (Nikon D700)", scale=4)
    assert engine.choose_model(lr, msi, 8, nikon, None, first_pixel, psf_preset="wald-gauss")[0].name == "gsa"
    assert engine.choose_model(lr, msi, 8, nikon, None, like)[0].name == "gsa"  # measured at x4 only
    for bad in ("garbage", {"dian-gauss-x8": {"scenes": {"a": {"model": "x"}}}}, {"dian-gauss-x8": {"scenes": {}}}):
        assert WeightsRecord.of({"validation_protocols": bad}).protocol_validation("dian-gauss-x8") is None
    assert WeightsRecord.of({}).protocol_validation(None) is None


@pytest.mark.skipif(not registry.get_model("csakd-s").available, reason="no csakd-s weights installed")
def test_record_srf_tolerance_widens_the_default_choice(tmp_path, monkeypatch):
    """A model trained with SRF augmentation records a wider tolerance; fuse honours it, and only it."""
    import json
    import shutil

    from hsfuse.forward.srf import load_srf

    stem = "csakd-s-cave-gauss-x8"
    for ext in (".json", ".safetensors"):
        shutil.copy(registry.weights_dir() / f"{stem}{ext}", tmp_path / f"{stem}{ext}")
    rec = json.loads((tmp_path / f"{stem}.json").read_text())
    rec["srf_tolerance_nm"] = 40.0
    rec.pop("cpu_cost_vs_gsa", None)  # the SRF rule alone (the cost limit has its own test)
    (tmp_path / f"{stem}.json").write_text(json.dumps(rec))
    monkeypatch.setenv("HSFUSE_WEIGHTS", str(tmp_path))
    lr, msi, wl = _cave_like_pair()
    near = load_srf("nikon-5100", wl, 31).matrix  # band centroids within ~36 nm of the D700's
    plan = engine.make_plan(lr, msi, FuseConfig(srf=near, psf=TRAIN_PSF))
    assert plan.model.name == "csakd-s" and "within 40 nm" in plan.model_reason
    far = load_srf("sigma-sdmerrill", wl, 31).matrix  # Foveon: blue centroid ~60 nm off
    plan = engine.make_plan(lr, msi, FuseConfig(srf=far, psf=TRAIN_PSF))
    assert plan.model.name == "gsa" and "differs from the training SRF" in plan.model_reason


@pytest.mark.skipif(not registry.get_model("csakd-s").available, reason="no csakd-s weights installed")
def test_given_weights_option_is_used_not_the_installed_ones(tmp_path):
    import shutil

    lr, msi, wl = _cave_like_pair()
    stem = "csakd-s-cave-gauss-x8"
    for ext in (".json", ".safetensors"):
        shutil.copy(registry.weights_dir() / f"{stem}{ext}", tmp_path / f"mine{ext}")
    plan = engine.make_plan(lr, msi, FuseConfig(model="csakd-s", options={"weights": str(tmp_path / "mine")},
                                                estimate="off"))
    assert plan.weights == tmp_path / "mine" and "-O weights=" in plan.model_reason
    with pytest.raises(ModelError, match="weights record not found"):
        engine.make_plan(lr, msi, FuseConfig(model="csakd-s", options={"weights": str(tmp_path / "nothing")},
                                             estimate="off"))


def _first_pixel_pair():
    """A textured 8-band ×8 pair whose 7×7 PSF starts at the first pixel of each block (the Dian-group phase)."""
    from hsfuse.forward.degrade import spatial_degrade

    z = smooth_cube(8, 128, 96, 5).astype(np.float64)
    z = z * (1 + 0.05 * np.random.default_rng(5).standard_normal((1, 128, 96)))
    psf = Psf(gaussian_kernel(7, 3.0), 8, pad=3)
    srf = np.random.default_rng(1).random((3, 8))
    srf /= srf.sum(1, keepdims=True)
    lr, msi = spatial_degrade(z, psf).astype(np.float32), np.einsum("mc,chw->mhw", srf, z).astype(np.float32)
    return lr, msi, psf, srf


def test_first_pixel_psf_network_tiles_equal_the_network_on_the_whole_scene(tmp_path):
    """A gsa-refining network under a first-pixel PSF: tiles that stop at the scene border have less context on
    that side, and the network must not cut the prior's ring where there is none (it did: 20 dB instead of 48
    on a CAVE scene). Tiled = the network run once on the whole unpadded scene with its whole-scene prior."""
    from hsfuse.forward.degrade import spatial_degrade
    from hsfuse.fusion.base import FusionProblem
    from hsfuse.models.architectures import build_network
    from hsfuse.models.classical import DetailInjection
    from hsfuse.weights import save_weights

    lr, msi, psf, srf = _first_pixel_pair()
    torch.manual_seed(0)
    net = build_network("refine", {"bands": 8, "msi_bands": 3, "scale": 8, "prior": True, "nf": 8, "hr_nf": 4,
                                   "blocks": 1})
    for m in net.modules():  # the zero-initialised tail would make the network return its prior
        if isinstance(m, torch.nn.Conv2d) and not m.weight.any():
            torch.nn.init.normal_(m.weight, std=0.05)
    stem = tmp_path / "refine-tiny"
    save_weights(stem, net.state_dict(), {"architecture": "refine", "kwargs": net.config, "bands": 8, "msi_bands": 3,
                                          "scales": [8], "protocol": "test", "training_data": "none", "steps": 0,
                                          "validation_metrics": {}})
    cfg = dict(model="refine", psf=psf, srf=srf, estimate="off", clip="off",
               options={"weights": str(stem), "lr_consistency": "off"})
    gsa = DetailInjection(FusionProblem(8, 8, 3, psf=psf, srf=srf))
    gsa.fit(lr, spatial_degrade(msi, psf))
    prior = gsa.fuse_tile(lr, msi)
    with torch.no_grad():
        ref = net.eval()(torch.from_numpy(lr)[None], torch.from_numpy(msi)[None],
                         torch.from_numpy(np.asarray(prior, np.float32))[None])[0].numpy()
    assert np.abs(ref - prior).max() > 1e-3  # the network does change its prior
    for tile, overlap in [(1024, 0), (32, 0), (48, 16)]:
        np.testing.assert_allclose(fuse_arrays(lr, msi, FuseConfig(**cfg, tile=tile, overlap=overlap)), ref,
                                   atol=5e-5, rtol=0)


def test_first_pixel_psf_tiles_stop_at_the_scene_border():
    """LR samples off the block centres: tiles do not mirror the LR (it would pair it with the wrong MSI).

    The streamed result equals one untiled call of the method on the unpadded scene (so the border
    follows the method's own rule, not a mirrored LR that disagrees with the mirrored MSI by 3.5 HR
    pixels), whatever the tiling.
    """
    from hsfuse.models.classical import DetailInjection
    from hsfuse.fusion.base import FusionProblem
    from hsfuse.forward.degrade import spatial_degrade

    lr, msi, psf, srf = _first_pixel_pair()
    cfg = dict(model="gsa", psf=psf, srf=srf, estimate="off", clip="off")
    whole = fuse_arrays(lr, msi, FuseConfig(**cfg, tile=1024))
    for tile, overlap in [(32, 0), (48, 16)]:
        np.testing.assert_allclose(fuse_arrays(lr, msi, FuseConfig(**cfg, tile=tile, overlap=overlap)), whole,
                                   atol=2e-5, rtol=0)
    m = DetailInjection(FusionProblem(8, 8, 3, psf=psf, srf=srf))
    m.fit(lr, spatial_degrade(msi, psf))
    np.testing.assert_allclose(whole, m.fuse_tile(lr, msi), atol=2e-5, rtol=0)
