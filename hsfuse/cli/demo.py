"""`hsfuse demo` (placeholder until its issue lands)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import err


def demo() -> None:
    """Not yet available."""
    err.print("hsfuse demo: not yet available")
    raise typer.Exit(1)
