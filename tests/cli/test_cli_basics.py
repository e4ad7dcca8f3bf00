"""The CLI spine: help, version, models listing, the demo end to end."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from hsfuse import __version__
from hsfuse.cli import app

runner = CliRunner()


def test_help_lists_every_subcommand():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("fuse", "degrade", "metrics", "train", "info", "models", "demo"):
        assert cmd in res.stdout


def test_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and __version__ in res.stdout


def test_models_json_lists_registry_and_never_claims_missing_weights():
    res = runner.invoke(app, ["models", "--json"])
    assert res.exit_code == 0
    models = {m["name"]: m for m in json.loads(res.stdout)["models"]}
    assert {"bicubic", "gsa", "glp-hs", "cnmf"} <= set(models)
    for m in models.values():
        if m["needs_weights"]:
            assert m["available"] == bool(m["installed"])
        else:
            assert m["available"] and m["kind"] != "supervised"


def test_demo_end_to_end(tmp_path):
    res = runner.invoke(app, ["demo", "--out-dir", str(tmp_path), "--size", "64", "--scale", "4", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    scores = {m["method"].split()[0]: m["psnr"] for m in out["metrics"]}
    assert scores[out["model"]] > scores["bicubic"] + 5
    for f in ("hr.tif", "lr.hdr", "msi.tif", "fused.hdr"):
        assert (tmp_path / f).exists()
    # a second run refuses to overwrite without --overwrite
    again = runner.invoke(app, ["demo", "--out-dir", str(tmp_path), "--size", "64", "--scale", "4"])
    assert again.exit_code == 1 and "--overwrite" in again.stderr
