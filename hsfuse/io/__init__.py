"""Cube file I/O: one explicit format table, no sniffing.

>>> from hsfuse.io import open_cube, read_cube, write_cube
>>> with open_cube("scene.hdr") as src:          # lazy, windowed reads
...     tile = src.read(Window(0, 0, 256, 256))   # float32 (C, 256, 256)
>>> cube = read_cube("scene.tif")                # whole cube in memory
>>> write_cube("out.hdr", cube.data, cube.meta)  # atomic, refuses to overwrite

Each format module provides ``open_source(path, **opts) -> CubeSource``,
``create_writer(path, shape, meta, dtype, **opts) -> CubeWriter`` (absent for
read-only formats) and ``output_files(path) -> list[Path]`` (every file a write
produces, for overwrite checks).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..cube import Cube, CubeMeta, Window
from ..errors import FormatError, HsfuseError, InputError, OutputError
from .base import CubeSource, CubeWriter

#: extension -> format name. ENVI data files are accepted in place of the header.
EXTENSIONS: dict[str, str] = {
    ".hdr": "envi",
    ".img": "envi",
    ".dat": "envi",
    ".raw": "envi",
    ".bsq": "envi",
    ".bil": "envi",
    ".bip": "envi",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".gtif": "tiff",
    ".mat": "mat",
}

#: format name -> module implementing it (imported lazily so `hsfuse --help` stays fast)
FORMATS: dict[str, str] = {
    "envi": "hsfuse.io.envi",
    "tiff": "hsfuse.io.tiff",
    "mat": "hsfuse.io.mat",
    "bands": "hsfuse.io.bandfolder",  # a directory of single-band images, read-only
}


def format_for(path: str | Path, fmt: str | None = None, *, for_writing: bool = False) -> str:
    """The format name for ``path``: ``fmt`` if given, else by extension (directories are band folders)."""
    path = Path(path)
    if fmt is not None:
        fmt = fmt.lower()
        if fmt not in FORMATS:
            from ..errors import UsageError

            raise UsageError(f"unknown format '{fmt}' (known: {', '.join(FORMATS)})", path)
        return fmt
    if not for_writing and path.is_dir():
        return "bands"
    name = EXTENSIONS.get(path.suffix.lower())
    if name is None:
        known = ", ".join(sorted(EXTENSIONS))
        raise FormatError(f"unknown file extension '{path.suffix}' (known: {known}, or a folder of band images; use {{format}} "
                          "to override)", path, options=("format",))
    return name


def _module(fmt: str):
    return importlib.import_module(FORMATS[fmt])


def open_cube(path: str | Path, fmt: str | None = None, **opts: Any) -> CubeSource:
    """Open a cube lazily. ``opts`` are format options (e.g. ``var=`` for MAT)."""
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path)
    name = format_for(path, fmt)
    mod = _module(name)
    import inspect

    params = inspect.signature(mod.open_source).parameters
    extra = [k for k in opts if k not in params and not any(p.kind == p.VAR_KEYWORD for p in params.values())]
    if extra:
        from ..errors import UsageError

        raise UsageError(f"option(s) {', '.join(extra)} do not apply to {name} files (a variable name is for .mat)", path)
    try:
        return mod.open_source(path, **opts)
    except HsfuseError:  # already explained (UsageError included): do not wrap it again
        raise
    except MemoryError:
        raise
    except Exception as e:  # a library choked on the file: report it as a format problem
        raise FormatError(f"cannot read as {name}: {type(e).__name__}: {e}", path) from e


def read_cube(path: str | Path, fmt: str | None = None, **opts: Any) -> Cube:
    with open_cube(path, fmt, **opts) as src:
        return src.to_cube()


def output_files(path: str | Path, fmt: str | None = None) -> list[Path]:
    path = Path(path)
    return list(_module(format_for(path, fmt, for_writing=True)).output_files(path))


_ENVI_DATA_SUFFIXES = ("", ".img", ".dat", ".raw", ".bsq", ".bil", ".bip")


def _file_family(path: Path) -> list[Path]:
    """A file and the files that belong to it (an ENVI header and its data file, either way round)."""
    out = [path]
    if path.suffix.lower() == ".hdr":
        out += [path.with_suffix(sfx) for sfx in _ENVI_DATA_SUFFIXES]
    elif path.suffix.lower() in _ENVI_DATA_SUFFIXES:
        out += [path.with_suffix(".hdr"), Path(str(path) + ".hdr")]
    return out


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)  # symlinks and hard links too
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_not_input(path: str | Path, inputs, outputs: list[Path] | None = None) -> None:
    """Refuse an output that is, or shares a file with, an input (with or without --overwrite)."""
    outs = outputs if outputs is not None else _file_family(Path(path))
    for inp in inputs or ():
        if inp is None:
            continue
        for a in _file_family(Path(inp)):
            if any(_same_file(a, b) for b in outs if a.exists() or b.exists()):
                raise OutputError(f"the output would replace the input {inp}: choose another output name", path)


def check_writable(path: str | Path, fmt: str | None = None, overwrite: bool = False, inputs=()) -> str:
    """Fail early (before any computation) if ``path`` cannot be written or would replace one of ``inputs``.

    Returns the format.
    """
    path = Path(path)
    name = format_for(path, fmt, for_writing=True)
    mod = _module(name)
    if inputs:
        check_not_input(path, inputs, list(mod.output_files(path)) + [path])
    if not hasattr(mod, "create_writer"):
        raise OutputError(f"format '{name}' is read-only", path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"output directory {parent} does not exist", path)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output directory {parent} is not writable", path)
    if not overwrite:
        for f in mod.output_files(path):
            if f.exists():
                raise OutputError(f"output {f} exists (use {{overwrite}} to replace it)", path, options=("overwrite",))
    return name


def check_free_space(path: str | Path, nbytes: int) -> None:
    """Refuse before writing when the output's filesystem cannot hold ``nbytes`` (plus 1 MB of headers).

    Why: a memory-mapped temporary file on a full disk dies with SIGBUS, not an error we can catch.
    """
    import shutil

    parent = Path(path).parent if str(Path(path).parent) else Path(".")
    try:
        free = shutil.disk_usage(parent).free
    except OSError:
        return
    need = int(nbytes) + (1 << 20)
    if free < need:
        raise OutputError(f"no space left on {parent}: needs {need / 1e6:.1f} MB, {free / 1e6:.1f} MB free", path)


def create_writer(path: str | Path, shape: tuple[int, int, int], meta: CubeMeta, dtype: str | np.dtype = "float32",
                  fmt: str | None = None, overwrite: bool = False, **opts: Any) -> CubeWriter:
    """Open an atomic writer; data appear at ``path`` only on ``commit()`` / clean ``with`` exit."""
    path = Path(path)
    name = check_writable(path, fmt, overwrite)
    check_free_space(path, int(np.prod(shape)) * np.dtype(dtype).itemsize)
    mod = _module(name)
    if opts:
        import inspect

        writer_cls = getattr(mod, {"envi": "EnviWriter", "tiff": "TiffWriter", "mat": "MatWriter"}.get(name, ""), None)
        known = [p for p in inspect.signature(writer_cls.__init__).parameters
                 if p not in ("self", "path", "shape", "meta", "dtype")] if writer_cls else []
        bad = [k for k in opts if k not in known]
        if bad:
            from ..errors import UsageError

            raise UsageError(f"writer option(s) {', '.join(bad)} unknown for {name} (known: {', '.join(known) or 'none'})",
                             path)
    try:
        return mod.create_writer(path, tuple(shape), meta, np.dtype(dtype), **opts)
    except OSError as e:
        raise OutputError(f"cannot write: {e.strerror or e}", path) from e


def write_cube(path: str | Path, data: np.ndarray, meta: CubeMeta | None = None, dtype: str | np.dtype | None = None,
               fmt: str | None = None, overwrite: bool = False, **opts: Any) -> Path:
    """Write a whole (C, H, W) float cube atomically. ``dtype`` defaults to float32."""
    meta = meta or CubeMeta()
    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"expected a (C, H, W) array, got shape {data.shape}")
    with create_writer(path, data.shape, meta, dtype or "float32", fmt, overwrite, **opts) as w:
        w.write(data)
    return Path(path)


__all__ = [
    "Cube", "CubeMeta", "CubeSource", "CubeWriter", "Window", "EXTENSIONS", "FORMATS",
    "check_writable", "create_writer", "format_for", "open_cube", "output_files", "read_cube", "write_cube",
]
