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


@pytest.mark.shared
@pytest.mark.slow
def test_shipped_x8_student_beats_detail_injection_on_a_validation_scene(shared_data):
    from hsfuse.degrade import degrade_cube
    from hsfuse.fusion.engine import FuseConfig, fuse_arrays
    from hsfuse.io import open_cube
    from hsfuse.metrics import compute_metrics
    from hsfuse.protocols import get_protocol, read_protocol_input

    rec = json.loads((weights_dir() / "csakd-s-cave-gauss-x8.json").read_text())
    scene = "oil_painting"
    assert scene in rec["validation_scenes"]
    proto = get_protocol("cave-gauss-x8")
    with open_cube(shared_data / "cave" / f"{scene}_ms") as src:
        z, _ = read_protocol_input(src, proto.input_scaling)
    psf, srf = proto.build()
    lr, msi = degrade_cube(z, psf, srf)
    psnr = {}
    for model in ("csakd-s", "gsa"):
        est = fuse_arrays(lr, msi, FuseConfig(model=model, psf=psf, srf=srf, device="cpu"))
        psnr[model] = compute_metrics(z, est, scale=8, ssim=False, uiqi=False, maps=False).summary["psnr"]
    assert psnr["csakd-s"] > psnr["gsa"] + 0.5, psnr
