"""`hsfuse degrade` (placeholder until its issue lands)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import err


def degrade() -> None:
    """Not yet available."""
    err.print("hsfuse degrade: not yet available")
    raise typer.Exit(1)
