"""What is in a cube file, without loading it: the library side of ``hsfuse info``.

>>> from hsfuse.info import describe
>>> d = describe("scene.hdr")
>>> d["shape"], d["wavelengths"], d["stats"]["max"]

Value statistics stream over row blocks (bounded memory); for images larger
than ``sample_pixels`` they cover evenly spaced row blocks of about that many
pixels, and say ``"sampled": true``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from .cube import Window, to_physical

BLOCK_BYTES = 32 * 2**20  # float32 bytes per streamed block
MAX_SAMPLE_BLOCKS = 16


def _sample_rows(height: int, width: int, sample_pixels: int) -> tuple[list[tuple[int, int]], bool]:
    """Row blocks ``(start, rows)`` covering about ``sample_pixels`` pixels, and whether that is a sample."""
    need = math.ceil(sample_pixels / max(width, 1))
    if need >= height:
        return [(0, height)], False
    n = min(need, MAX_SAMPLE_BLOCKS)
    rows = math.ceil(need / n)
    starts = sorted({int(s) for s in np.linspace(0, height - rows, n)})
    return [(s, rows) for s in starts], True


def value_stats(src, sample_pixels: int = 1_000_000) -> dict[str, Any]:
    """min/max/mean of the physical values, raw range, NaN and nodata counts, over (a sample of) the image."""
    nb, height, width = src.shape
    blocks, sampled = _sample_rows(height, width, sample_pixels)
    step = max(1, BLOCK_BYTES // max(nb * width * 4, 1))
    nodata = src.meta.nodata
    lo = hi = raw_lo = raw_hi = None
    total = 0.0
    n_valid = n_values = n_nan = n_nodata = pixels = 0
    for start, rows in blocks:
        for r in range(start, start + rows, step):
            raw = src.read(Window(r, 0, min(step, start + rows - r), width), raw=True)
            pixels += raw.shape[1] * raw.shape[2]
            n_values += raw.size
            nan = np.isnan(raw) if raw.dtype.kind == "f" else np.zeros(raw.shape, bool)
            n_nan += int(nan.sum())
            if nodata is not None and math.isfinite(nodata):
                n_nodata += int((raw == nodata).sum())
            phys = to_physical(raw, src.meta)
            good = np.isfinite(phys)
            if not good.any():
                continue
            vals, rvals = phys[good], raw[good]
            n_valid += vals.size
            total += float(vals.sum(dtype=np.float64))
            lo = float(vals.min()) if lo is None else min(lo, float(vals.min()))
            hi = float(vals.max()) if hi is None else max(hi, float(vals.max()))
            raw_lo = rvals.min().item() if raw_lo is None else min(raw_lo, rvals.min().item())
            raw_hi = rvals.max().item() if raw_hi is None else max(raw_hi, rvals.max().item())
    return {
        "sampled": sampled, "pixels": pixels, "values": n_values, "valid_values": n_valid,
        "min": lo, "max": hi, "mean": total / n_valid if n_valid else None, "raw_min": raw_lo, "raw_max": raw_hi,
        "nan_values": n_nan, "nodata_values": n_nodata,
    }


def georef_summary(georef) -> dict[str, Any] | None:
    """CRS name/EPSG (as GDAL identifies it), transform and pixel size."""
    if georef is None:
        return None
    out: dict[str, Any] = {"crs": None, "epsg": None, "crs_wkt": georef.crs_wkt, "transform": None, "pixel_size": None}
    if georef.crs_wkt:
        from rasterio.crs import CRS
        from rasterio.errors import CRSError

        name = re.match(r'^\s*\w+\["([^"]*)"', georef.crs_wkt)
        out["crs"] = name.group(1) if name else None
        try:
            out["epsg"] = CRS.from_user_input(georef.crs_wkt).to_epsg()
        except CRSError:
            pass  # shown by name only
        if out["epsg"] and not out["crs"]:
            out["crs"] = f"EPSG:{out['epsg']}"
    if georef.transform is not None:
        a, b, c, d, e, f = georef.transform
        out["transform"] = list(georef.transform)
        out["pixel_size"] = [math.hypot(a, d), math.hypot(b, e)]
        out["rotated"] = bool(b or d)
    return out


def describe(path: str | Path, fmt: str | None = None, var: str | None = None, sample_pixels: int = 1_000_000) -> dict[str, Any]:
    """Everything ``hsfuse info`` shows about a cube, as a JSON-ready dict."""
    from .io import open_cube

    path = Path(path)
    opts = {"var": var} if var is not None else {}
    with open_cube(path, fmt, **opts) as src:
        m = src.meta
        files = [Path(f) for f in getattr(src, "files", [path])]
        wl = m.wavelengths
        names = m.band_names or []
        return {
            "path": str(path),
            "format": src.format,
            "files": [str(f) for f in files],
            "size_bytes": sum(f.stat().st_size for f in files),
            "shape": {"bands": src.bands, "height": src.height, "width": src.width},
            "dtype": src.dtype.name,
            "interleave": m.source.get("interleave"),
            "variable": m.source.get("var"),
            "wavelengths": None if wl is None else {
                "count": int(len(wl)), "min_nm": float(np.min(wl)), "max_nm": float(np.max(wl)),
                # a step only for increasing, evenly spread bands (an RGB file lists R, G, B: no step)
                "step_nm": (float(np.median(np.diff(wl))) if len(wl) > 2 and np.all(np.diff(wl) > 0)
                            and np.ptp(np.diff(wl)) <= 0.25 * np.median(np.diff(wl)) else None)},
            "fwhm": m.fwhm is not None,
            "nodata": m.nodata,
            "scale": m.scale,
            "offset": m.offset,
            "bad_bands": None if m.bad_bands is None else int(np.sum(np.asarray(m.bad_bands) == 0)),
            "band_names": names[:5],
            "band_names_total": len(names),
            "description": m.description,
            "georef": georef_summary(m.georef),
            "stats": value_stats(src, sample_pixels),
        }
