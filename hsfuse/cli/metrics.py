"""`hsfuse metrics` (placeholder until its issue lands)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import err


def metrics() -> None:
    """Not yet available."""
    err.print("hsfuse metrics: not yet available")
    raise typer.Exit(1)
