"""Shared CLI plumbing: consoles, the one error boundary, JSON output.

Every subcommand module defines plain functions with Typer annotations and
wraps its body in ``with guard():`` so that an ``HsfuseError`` becomes one line
on stderr plus its exit code, never a traceback. Progress and logs go to
stderr (``err``); ``--json`` output is exactly one object on stdout (``emit_json``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterator

import typer
from rich.console import Console

from ..errors import EXIT_INTERRUPTED, HsfuseError

# piped output is read by programs and people with wide terminals: do not wrap it at 80 columns
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """Turn library errors into one-line messages and exit codes."""
    try:
        yield
    except HsfuseError as e:
        err.print(f"[bold red]hsfuse: error:[/] {e.oneline(flags=True)}", markup=True, soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        err.print("hsfuse: interrupted", soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except MemoryError:
        err.print("hsfuse: error: out of memory (try a smaller --tile where the command has one)", soft_wrap=True)
        raise typer.Exit(1) from None
    except (OSError, ValueError) as e:  # bad paths, a full disk, a library's complaint: one line, never a traceback
        if os.environ.get("HSFUSE_DEBUG"):
            raise
        err.print(f"hsfuse: error: {_os_error_line(e)}", soft_wrap=True, markup=False)
        raise typer.Exit(1) from None


def _os_error_line(e: BaseException) -> str:
    import errno

    if isinstance(e, OSError):
        where = e.filename if e.filename is not None else ""
        if e.errno == errno.ENOSPC:
            target = Path(str(where)).parent if where else "the output device"
            return f"no space left on {target}"
        text = e.strerror or str(e)
        return f"{where}: {text}" if where else text
    return " ".join(str(e).split()) or type(e).__name__


def _jsonable(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # strict JSON has no NaN/inf
    if isinstance(obj, Path):
        return str(obj)
    return obj


def emit_json(obj: Any, compact: bool = False) -> None:
    """Print exactly one strict-JSON object on stdout (``compact``: on one line, for JSON Lines)."""
    text = json.dumps(_jsonable(obj), separators=(",", ":")) if compact else json.dumps(_jsonable(obj), indent=2)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def show_progress(quiet: bool = False, json_mode: bool = False) -> bool:
    """Progress bars only for a person watching: not with --quiet, and only on a TTY."""
    return not quiet and err.is_terminal
