"""`hsfuse info`: what a cube file holds (shape, wavelengths, values, nodata, georeferencing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from . import options
from .common import emit_json, guard, out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _rows(d: dict[str, Any]) -> list[tuple[str, str]]:
    shape = d["shape"]
    rows = [
        ("path", d["path"]),
        ("format", d["format"] + (f" (variable {d['variable']})" if d.get("variable") else "")),
        ("files", f"{len(d['files'])} file(s), {d['size_bytes'] / 2**20:.2f} MiB on disk"),
        ("shape", f"{shape['bands']} bands x {shape['height']} rows x {shape['width']} cols"),
        ("dtype", d["dtype"] + (f", {d['interleave']} interleave" if d.get("interleave") else "")),
    ]
    wl = d["wavelengths"]
    rows.append(("wavelengths", "none" if wl is None else
                 f"{wl['count']} bands, {_fmt(wl['min_nm'])}-{_fmt(wl['max_nm'])} nm"
                 + (f" (step {_fmt(wl['step_nm'])} nm)" if wl.get("step_nm") else "")
                 + (", fwhm" if d["fwhm"] else "")))
    rows.append(("scale/offset", f"physical = raw x {_fmt(d['scale'])} + {_fmt(d['offset'])}"))
    rows.append(("nodata", "none" if d["nodata"] is None else _fmt(d["nodata"])))
    s = d["stats"]
    rows.append(("values" + (" (sampled)" if s["sampled"] else ""),
                 "no valid values" if s["min"] is None else
                 f"min {_fmt(s['min'])}, max {_fmt(s['max'])}, mean {_fmt(s['mean'])} (raw {_fmt(s['raw_min'])}..{_fmt(s['raw_max'])})"))
    rows.append(("NaN / nodata", f"{s['nan_values']} NaN, {s['nodata_values']} nodata of {s['values']} values"))
    g = d["georef"]
    if g is None:
        rows.append(("georef", "none"))
    else:
        crs = g["crs"] or "unknown CRS"
        rows.append(("CRS", crs + (f" (EPSG:{g['epsg']})" if g["epsg"] else "")))
        if g["pixel_size"]:
            t = g["transform"]
            rows.append(("pixel size", f"{_fmt(g['pixel_size'][0])} x {_fmt(g['pixel_size'][1])}"
                         + (" (rotated)" if g.get("rotated") else "")))
            rows.append(("origin", f"x {t[2]:.10g}, y {t[5]:.10g}"))
    if d["bad_bands"]:
        rows.append(("bad bands", str(d["bad_bands"])))
    if d["band_names_total"]:
        more = d["band_names_total"] - len(d["band_names"])
        rows.append(("band names", ", ".join(d["band_names"]) + (f", ... ({more} more)" if more > 0 else "")))
    if d.get("description"):
        rows.append(("description", d["description"]))
    return rows


def info(
    path: Path = typer.Argument(..., help="Cube file (.hdr/.img, .tif, .mat) or folder of band images.", show_default=False),
    fmt: Optional[str] = typer.Option(None, "--format", help="Format (envi, tiff, mat, bands) instead of guessing from the extension."),
    var: Optional[str] = typer.Option(None, "--var", help="MAT files: the variable holding the cube."),
    json_out: bool = options.json_flag(help="Print one JSON object instead of a table."),
) -> None:
    """Describe a cube: shape, dtype, wavelengths, value range, NaN/nodata, georeferencing.

    Reads only what it needs (value statistics use a sample of rows on large images).

    $ hsfuse info scene.hdr

    $ hsfuse info houston_dataset.mat --var hyprImg --json
    """
    with guard():
        from ..info import describe

        d = describe(path, fmt, var)
    if json_out:
        emit_json(d)
        return
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in _rows(d):
        table.add_row(key, value)
    out.print(table)
