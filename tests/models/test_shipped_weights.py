"""The weights we ship: complete records, intact files, and better than the classical method they refine."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hsfuse.models.registry import list_models, weights_dir
from hsfuse.weights import REQUIRED_FIELDS, load_weights, sha256_file

SHIPPED = sorted(weights_dir().glob("*.json"))


def test_every_shipped_file_has_a_record_and_a_registry_entry():
    registered = {w for e in list_models() for w in e.weights}
    for rec_path in SHIPPED:
        assert rec_path.with_suffix(".safetensors").exists()
        assert rec_path.stem in registered, f"{rec_path.name} is not named by any registry entry"


@pytest.mark.parametrize("rec_path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_record_is_complete_and_matches_the_file(rec_path):
    rec = json.loads(rec_path.read_text())
    for field in REQUIRED_FIELDS + ("wavelengths", "msi_bands", "validation_scenes", "git_commit", "sha256"):
        assert rec.get(field) is not None, f"{rec_path.name} lacks {field}"
    assert rec["sha256"] == sha256_file(rec_path.with_suffix(".safetensors"))
    assert not set(rec["validation_scenes"]) & set(rec["training_data"]["scenes"])
    assert rec.get("cpu_seconds") or rec.get("gpu_seconds"), "the training budget must be recorded"
    state, _ = load_weights(rec_path)
    assert all(np.isfinite(t.numpy()).all() for t in state.values())


CAVE_SHIPPED = [p for p in SHIPPED if str(json.loads(p.read_text()).get("protocol", "")).startswith("cave-")]


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.parametrize("rec_path", CAVE_SHIPPED, ids=[p.stem for p in CAVE_SHIPPED])
def test_shipped_model_beats_detail_injection_on_a_validation_scene(shared_data, rec_path):
    """Every shipped CAVE model (they all refine the GSA estimate) beats it on a held-out scene."""
    from hsfuse.forward.degrade import degrade_cube
    from hsfuse.fusion.engine import FuseConfig, fuse_arrays
    from hsfuse.io import open_cube
    from hsfuse.metrics import compute_metrics
    from hsfuse.forward.protocols import get_protocol, read_protocol_input

    rec = json.loads(rec_path.read_text())
    scene = "oil_painting"
    assert scene in rec["validation_scenes"]
    model = rec.get("registry_model") or "csakd-s"
    proto = get_protocol(rec["protocol"])
    with open_cube(shared_data / "cave" / f"{scene}_ms") as src:
        z, _ = read_protocol_input(src, proto.input_scaling)
    psf, srf = proto.build()
    lr, msi = degrade_cube(z, psf, srf)
    psnr = {}
    for name, opts in ((model, {"weights": str(rec_path.with_suffix(""))}), ("gsa", {})):
        est = fuse_arrays(lr, msi, FuseConfig(model=name, psf=psf, srf=srf, device="cpu", options=opts))
        psnr[name] = compute_metrics(z, est, scale=psf.scale, ssim=False, uiqi=False, maps=False).summary["psnr"]
    margin = 0.5 if rec["protocol"] == "cave-gauss-x8" and model == "csakd-s" else 0.05
    assert psnr[model] > psnr["gsa"] + margin, psnr
