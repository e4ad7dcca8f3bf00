"""`hsfuse fuse` (placeholder until its issue lands)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import err


def fuse() -> None:
    """Not yet available."""
    err.print("hsfuse fuse: not yet available")
    raise typer.Exit(1)
