"""Library errors speak of parameters; the CLI boundary turns them into its flags."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hsfuse.cli import app
from hsfuse.errors import UsageError
from hsfuse.forward.psf import make_psf
from hsfuse.forward.simulate import DegradeSpec, simulate_pair
from hsfuse.io import write_cube

PACKAGE = Path(__file__).resolve().parents[1] / "hsfuse"


def test_library_text_names_the_parameter_and_the_cli_the_flag(tmp_path):
    with pytest.raises(UsageError) as e:
        make_psf("gaussian", 4, form="bogus")
    assert "option 'form' must be one of" in str(e.value) and "--" not in str(e.value)
    assert e.value.oneline(flags=True).startswith("--form must be one of")

    hr = tmp_path / "hr.tif"
    write_cube(hr, np.random.default_rng(0).random((4, 16, 16), dtype=np.float32))
    r = CliRunner().invoke(app, ["degrade", str(hr), "-o", str(tmp_path / "lr.tif"), "-s", "4", "--form", "bogus"])
    assert r.exit_code == 2 and "--form must be one of" in r.output


def test_simulate_pair_refuses_what_a_preset_fixes_without_flags(tmp_path):
    with pytest.raises(UsageError, match="protocol cave-gauss-x8 fixes scale") as e:
        simulate_pair(tmp_path / "hr.tif", tmp_path / "lr.tif", None, DegradeSpec(protocol="cave-gauss-x8", scale=4))
    assert "--" not in str(e.value)


def test_no_library_error_message_spells_a_cli_flag():
    """A raise outside hsfuse/cli whose literal text has '--name' talks about a command line it may not have."""
    flag = re.compile(r"""["'][^"'\n]*\s--[a-z][a-z-]*""")
    bad = []
    for p in PACKAGE.rglob("*.py"):
        if "cli" in p.relative_to(PACKAGE).parts:
            continue
        text = p.read_text()
        for m in re.finditer(r"raise \w+Error\((.*?)\)\s*(?:from \w+)?\n", text, re.S):
            if flag.search(m.group(1)):
                bad.append(f"{p.relative_to(PACKAGE)}: {m.group(1)[:80]}")
    assert not bad, bad
