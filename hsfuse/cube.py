"""The one in-memory cube convention of hsfuse.

Pixels are band-first ``(C, H, W)``; readers convert from the file's own axis
order (BIP/BIL, MATLAB HWC, reversed HDF5 axes) and nothing else ever does.
``CubeSource.read()`` returns float32 *physical* values (``raw*scale+offset``)
with nodata pixels as NaN, so every algorithm sees one representation;
``read(raw=True)`` returns the stored numbers untouched (bit-exact tests,
re-encoding). ``CubeMeta.source`` keeps what a writer needs to write the file
back in its own style (interleave, byte order, dtype, extra header fields).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np


@dataclass(frozen=True)
class Window:
    """A rectangle of pixels: rows [row, row+height), cols [col, col+width)."""

    row: int
    col: int
    height: int
    width: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.row, self.row + self.height), slice(self.col, self.col + self.width)

    def clip(self, height: int, width: int) -> "Window":
        r0, c0 = max(self.row, 0), max(self.col, 0)
        r1, c1 = min(self.row + self.height, height), min(self.col + self.width, width)
        return Window(r0, c0, max(r1 - r0, 0), max(c1 - c0, 0))


@dataclass
class GeoRef:
    """Georeferencing: CRS as WKT and a GDAL/rasterio affine transform.

    ``transform = (a, b, c, d, e, f)`` maps pixel corner (col, row) to
    ``x = a*col + b*row + c``, ``y = d*col + e*row + f`` (rasterio/affine order,
    *not* GDAL's geotransform order).
    """

    crs_wkt: str | None = None
    transform: tuple[float, float, float, float, float, float] | None = None

    def scaled(self, factor: float) -> "GeoRef":
        """Georeferencing of a grid whose pixels are ``factor`` times larger."""
        if self.transform is None:
            return GeoRef(self.crs_wkt, None)
        a, b, c, d, e, f = self.transform
        return GeoRef(self.crs_wkt, (a * factor, b * factor, c, d * factor, e * factor, f))

    def shifted(self, row: int, col: int) -> "GeoRef":
        """Georeferencing of a window starting at (row, col)."""
        if self.transform is None:
            return GeoRef(self.crs_wkt, None)
        a, b, c, d, e, f = self.transform
        return GeoRef(self.crs_wkt, (a, b, c + a * col + b * row, d, e, f + d * col + e * row))


@dataclass
class CubeMeta:
    """Everything about a cube that is not its pixels."""

    wavelengths: np.ndarray | None = None  # nm, shape (C,)
    fwhm: np.ndarray | None = None  # nm, shape (C,)
    band_names: list[str] | None = None
    nodata: float | None = None  # in stored (raw) units
    scale: float = 1.0  # physical = raw * scale + offset
    offset: float = 0.0
    georef: GeoRef | None = None
    bad_bands: np.ndarray | None = None  # ENVI bbl: 1 good, 0 bad
    description: str | None = None
    # Format-specific details needed to write back in the file's own style,
    # e.g. {"format": "envi", "interleave": "bil", "byte_order": 1,
    # "dtype": "uint16", "header": {...unparsed ENVI fields...}}.
    source: dict[str, Any] = field(default_factory=dict)

    def copy(self, **changes: Any) -> "CubeMeta":
        new = dataclasses.replace(self, **changes)
        for name in ("wavelengths", "fwhm", "bad_bands"):
            v = getattr(new, name)
            if v is not None:
                setattr(new, name, np.array(v, dtype=np.float64 if name != "bad_bands" else v.dtype, copy=True))
        if new.band_names is not None:
            new.band_names = list(new.band_names)
        new.source = dict(new.source)
        return new

    def subset_bands(self, bands: Sequence[int]) -> "CubeMeta":
        idx = np.asarray(bands)
        new = self.copy()
        for name in ("wavelengths", "fwhm", "bad_bands"):
            v = getattr(new, name)
            if v is not None:
                setattr(new, name, v[idx])
        if new.band_names is not None:
            new.band_names = [new.band_names[i] for i in idx]
        return new


@dataclass
class Cube:
    """A cube held in memory (or as a memmap): float32 (C, H, W) plus metadata."""

    data: np.ndarray
    meta: CubeMeta = field(default_factory=CubeMeta)
    path: Path | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)  # type: ignore[return-value]

    @property
    def bands(self) -> int:
        return self.data.shape[0]

    @property
    def valid_mask(self) -> np.ndarray:
        """(H, W) bool: pixels valid (finite) in every band."""
        return np.isfinite(self.data).all(axis=0)


def to_physical(raw: np.ndarray, meta: CubeMeta) -> np.ndarray:
    """Stored numbers -> float32 physical values, nodata (and NaN) -> NaN."""
    out = raw.astype(np.float32, copy=True)
    if meta.nodata is not None and np.isfinite(meta.nodata):
        out[raw == meta.nodata] = np.nan
    if meta.scale != 1.0:
        out *= np.float32(meta.scale)
    if meta.offset != 0.0:
        out += np.float32(meta.offset)
    return out


def to_raw(phys: np.ndarray, meta: CubeMeta, dtype: np.dtype | str) -> np.ndarray:
    """float physical values -> stored numbers of ``dtype`` (inverse of to_physical).

    NaN becomes ``meta.nodata`` (or stays NaN for float dtypes without nodata);
    integer dtypes are rounded and clipped to their range.
    """
    dtype = np.dtype(dtype)
    x = np.asarray(phys, dtype=np.float64)
    if meta.offset != 0.0:
        x = x - meta.offset
    if meta.scale != 1.0:
        x = x / meta.scale
    nan = ~np.isfinite(x)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        x = np.clip(np.rint(np.where(nan, 0, x)), info.min, info.max)
        out = x.astype(dtype)
        if nan.any():
            if meta.nodata is None:
                raise ValueError("NaN pixels cannot be stored in an integer file without a nodata value")
            out[nan] = np.asarray(meta.nodata).astype(dtype)
        return out
    out = x.astype(dtype)
    if nan.any() and meta.nodata is not None and np.isfinite(meta.nodata):
        out[nan] = meta.nodata
    return out
