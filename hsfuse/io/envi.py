"""ENVI raster (``.hdr`` header + raw data file): memory-mapped, windowed reads and writes.

SPy's ``read_envi_header`` parses the header; pixels are read through our own
``np.memmap`` because SPy's ``open`` insists on its own data-file search and
mandatory fields, and its ``open_memmap`` ignores the scale factor anyway.
What SPy leaves raw is interpreted here:

- ``data ignore value`` -> ``meta.nodata``; ``reflectance scale factor`` F ->
  ``meta.scale = 1/F``; ``hsfuse offset`` (our own field, ignored by ENVI and
  GDAL) -> ``meta.offset``.
- ``coordinate system string`` (SPy splits it on commas: rejoined) + ``map
  info`` -> ``GeoRef``, with GDAL's rules for the reference pixel and rotation.
  Without a CSS, the CRS comes from map info for UTM/WGS-84 and Geographic
  Lat/Lon/WGS-84 only.
- wavelengths/fwhm -> nm (rule in ``to_nm``).

Writes are atomic (temp data + temp header, data renamed first), native byte
order, interleave taken from ``meta.source`` (BSQ by default), with a header
GDAL reads back (ESRI-dialect CSS like GDAL writes).

$ hsfuse info scene.hdr
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..cube import CubeMeta, GeoRef, Window
from ..errors import FormatError, InputError, OutputError, UsageError
from .base import CubeSource, CubeWriter, temp_path_for

#: ENVI ``data type`` code -> numpy dtype (complex types 6 and 9 are not supported).
DTYPES: dict[int, np.dtype] = {
    1: np.dtype("uint8"), 2: np.dtype("int16"), 3: np.dtype("int32"), 4: np.dtype("float32"),
    5: np.dtype("float64"), 12: np.dtype("uint16"), 13: np.dtype("uint32"), 14: np.dtype("int64"),
    15: np.dtype("uint64"),
}
CODES = {v: k for k, v in DTYPES.items()}

#: data file extensions tried next to a header, in this order ("" = no extension)
DATA_EXTS = (".img", ".dat", ".raw", "", ".bsq", ".bil", ".bip")

_MICRO = {"micrometers", "micrometer", "microns", "micron", "um", "µm", "μm"}
_NANO = {"nanometers", "nanometer", "nm"}

# Header fields interpreted here (or derived from the cube): never copied back verbatim.
_MANAGED = {
    "samples", "lines", "bands", "header offset", "file type", "data type", "interleave", "byte order",
    "reflectance scale factor", "data ignore value", "map info", "coordinate system string",
    "projection info", "wavelength", "wavelength units", "fwhm", "bbl", "band names", "description",
    "hsfuse offset",
}


def to_nm(values: Any, units: str | None) -> np.ndarray | None:
    """Wavelengths in nm. Rule: µm/micrometers/microns -> x1000; nm/nanometers as is; no (or
    unknown-to-us "Unknown") units -> µm if every value is < 100 (no sensor band centre is
    below 100 nm, none in µm is above 100), else nm. Other units (wavenumber, GHz, index)
    -> None: they are not wavelengths."""
    if values is None:
        return None
    arr = np.asarray([float(v) for v in np.atleast_1d(values)], dtype=np.float64)
    u = (units or "").strip().lower()
    if u in _MICRO:
        return arr * 1000.0
    if u in _NANO:
        return arr
    if u in ("", "unknown"):
        return arr * 1000.0 if arr.size and np.nanmax(arr) < 100 else arr
    return None


def _header_for(path: Path) -> Path:
    """The header of ``path`` (which may be the header itself or its data file)."""
    if path.suffix.lower() == ".hdr":
        return path
    for cand in (path.with_suffix(".hdr"), path.with_suffix(".HDR"), Path(f"{path}.hdr"), Path(f"{path}.HDR")):
        if cand.is_file():
            return cand
    raise InputError(f"no ENVI header found for data file (looked for {path.with_suffix('.hdr').name}, {path.name}.hdr)", path)


def _data_for(hdr: Path) -> Path:
    """The data file beside ``hdr``: same name without ``.hdr`` plus a known extension (or none)."""
    base = str(hdr)[:-4]
    cands = [Path(base + e) for ext in DATA_EXTS for e in dict.fromkeys((ext, ext.upper()))]
    for cand in cands:
        if cand.is_file():
            return cand
    names = ", ".join(c.name for c in cands)
    raise InputError(f"header has no data file (looked for {names})", hdr)


def _read_header(hdr: Path) -> dict[str, Any]:
    from spectral.io import envi as spy_envi

    with warnings.catch_warnings():  # SPy warns when it lower-cases keys, which is what we want
        warnings.simplefilter("ignore")
        try:
            return spy_envi.read_envi_header(str(hdr))
        except spy_envi.FileNotAnEnviHeader:
            raise FormatError("not an ENVI header (first line is not 'ENVI')", hdr) from None
        except spy_envi.EnviHeaderParsingError:
            raise FormatError("cannot parse ENVI header (unbalanced braces?)", hdr) from None


def _field_list(h: dict, key: str, n: int, hdr: Path, cast=float) -> list | None:
    if key not in h:
        return None
    vals = h[key] if isinstance(h[key], list) else [h[key]]
    vals = [v for v in vals if v != ""]
    if len(vals) != n:
        raise FormatError(f"header field '{key}' has {len(vals)} values for {n} bands", hdr)
    try:
        return [cast(v) for v in vals]
    except ValueError:
        raise FormatError(f"header field '{key}' is not numeric", hdr) from None


def _crs_wkt_from_map_info(mi: list[str]) -> str | None:
    """CRS for headers without a coordinate system string (UTM/Geographic on WGS-84 only)."""
    from rasterio.crs import CRS

    name = mi[0].strip().lower()
    rest = [v.strip().lower() for v in mi[7:]]
    if name == "utm" and len(rest) >= 3 and rest[2] == "wgs-84" and rest[1] in ("north", "south"):
        return CRS.from_epsg((32600 if rest[1] == "north" else 32700) + int(float(rest[0]))).to_wkt()
    if name.startswith("geographic") and rest and rest[0] == "wgs-84":
        return CRS.from_epsg(4326).to_wkt()
    return None


def parse_georef(h: dict) -> GeoRef | None:
    """``map info`` + ``coordinate system string`` -> GeoRef (GDAL's interpretation)."""
    css = h.get("coordinate system string")
    wkt = (",".join(css) if isinstance(css, list) else css) or None
    mi = h.get("map info")
    transform = None
    if isinstance(mi, list) and len(mi) >= 7:
        px, py, east, north, xs, ys = (float(v) for v in mi[1:7])
        rot = 0.0
        for v in mi[7:]:
            key, _, val = v.partition("=")
            if key.strip().lower() == "rotation":
                rot = math.radians(float(val))
        cs, sn = math.cos(rot), math.sin(rot)
        a, b, d, e = cs * xs, sn * ys, sn * xs, -cs * ys
        # reference pixel is 1-based and names the pixel's upper-left corner
        c = east - (px - 1) * a - (py - 1) * b
        f = north - (px - 1) * d - (py - 1) * e
        transform = (a, b, c, d, e, f)
        if wkt is None:
            wkt = _crs_wkt_from_map_info(mi)
    if wkt is None and transform is None:
        return None
    return GeoRef(wkt, transform)


class EnviSource(CubeSource):
    format = "envi"

    def __init__(self, path: Path):
        hdr = _header_for(path)
        data = path if path != hdr else _data_for(hdr)
        h = _read_header(hdr)
        for key in ("samples", "lines", "bands", "data type"):
            if key not in h:
                raise FormatError(f"header lacks mandatory field '{key}'", hdr)
        try:
            width, height, nb, code = (int(h[k]) for k in ("samples", "lines", "bands", "data type"))
            offset = int(h.get("header offset", 0))
            byte_order = int(h.get("byte order", 0))
        except (TypeError, ValueError):
            raise FormatError("header fields samples/lines/bands/data type/header offset/byte order must be integers", hdr) from None
        if min(width, height, nb) < 1:
            raise FormatError(f"header gives an empty cube (samples={width}, lines={height}, bands={nb})", hdr)
        if code not in DTYPES:
            kind = " (complex: not supported)" if code in (6, 9) else ""
            raise FormatError(f"unknown ENVI data type {code}{kind} (supported: {', '.join(map(str, DTYPES))})", hdr)
        interleave = str(h.get("interleave", "bsq")).strip().lower()
        if interleave not in ("bsq", "bil", "bip"):
            raise FormatError(f"unknown interleave '{interleave}' (bsq, bil or bip)", hdr)
        if byte_order not in (0, 1):
            raise FormatError(f"byte order must be 0 or 1, not {byte_order}", hdr)
        dtype = DTYPES[code]
        need = offset + nb * height * width * dtype.itemsize
        size = data.stat().st_size
        if size < need:
            raise FormatError(f"data file {data} is {size} bytes, header needs {need}", data)

        units = h.get("wavelength units")
        wl = _field_list(h, "wavelength", nb, hdr)
        fw = _field_list(h, "fwhm", nb, hdr)
        bbl = _field_list(h, "bbl", nb, hdr, cast=lambda v: int(float(v)))
        names = _field_list(h, "band names", nb, hdr, cast=str)
        nodata = h.get("data ignore value")
        rsf = h.get("reflectance scale factor")
        try:
            nodata = None if nodata is None else float(nodata)
            scale = 1.0 if rsf is None or float(rsf) == 0 else 1.0 / float(rsf)
            offset_phys = float(h.get("hsfuse offset", 0.0))
            georef = parse_georef(h)
        except (TypeError, ValueError) as e:
            raise FormatError(f"cannot parse header value: {e}", hdr) from None
        meta = CubeMeta(
            wavelengths=to_nm(wl, units), fwhm=to_nm(fw, units), band_names=names, nodata=nodata,
            scale=scale, offset=offset_phys, georef=georef,
            bad_bands=None if bbl is None else np.asarray(bbl, dtype=np.uint8),
            description=h.get("description") or None,
            source={
                "format": "envi", "interleave": interleave, "byte_order": byte_order, "dtype": dtype.name,
                "header_offset": offset, "data_file": data.name, "wavelength_units": units, "bands": nb,
                "header": {k: v for k, v in h.items() if k not in _MANAGED},
            },
        )
        if meta.wavelengths is None and wl is not None:  # units we cannot convert: keep them verbatim
            meta.source["header"].update({"wavelength": h["wavelength"], "wavelength units": units})
        layout = {"bsq": (nb, height, width), "bil": (height, nb, width), "bip": (height, width, nb)}[interleave]
        file_dtype = dtype.newbyteorder(">" if byte_order else "<")
        self._mm = np.memmap(data, dtype=file_dtype, mode="r", offset=offset, shape=layout)
        self._interleave = interleave
        self.files = [hdr, data]
        super().__init__(hdr, (nb, height, width), dtype, meta)

    def _read_raw(self, window: Window, bands: np.ndarray | None) -> np.ndarray:
        rs, cs = window.slices
        sel = slice(None) if bands is None else bands
        # slice the memmap first (a view, nothing read), then copy only the window
        if self._interleave == "bsq":
            block = self._mm[:, rs, cs][sel]
        elif self._interleave == "bil":
            block = self._mm[rs, :, cs][:, sel].transpose(1, 0, 2)
        else:
            block = self._mm[rs, cs, :][:, :, sel].transpose(2, 0, 1)
        # always a copy: a view would outlive close() of the mapping; native byte order, same values
        return np.array(block, dtype=self.dtype, order="C")

    def close(self) -> None:
        mm, self._mm = getattr(self, "_mm", None), None
        if mm is not None and getattr(mm, "_mmap", None) is not None:
            mm._mmap.close()


def open_source(path: Path, **opts: Any) -> EnviSource:
    if opts:
        raise UsageError(f"options {', '.join(opts)} do not apply to ENVI files", path)
    return EnviSource(Path(path))


def output_files(path: Path) -> list[Path]:
    """[header, data file]: ``x.hdr`` pairs with ``x.img``; a data path ``x.dat`` with ``x.hdr``."""
    path = Path(path)
    if path.suffix.lower() == ".hdr":
        return [path, path.with_suffix(".img")]
    if not path.suffix:
        return [Path(f"{path}.hdr"), path]
    return [path.with_suffix(".hdr"), path]


def _fmt(v: Any) -> str:
    v = float(v)
    return str(int(v)) if v.is_integer() and abs(v) < 2**53 else repr(v)


def parse_crs(text: str, path: Path):
    """A rasterio CRS from WKT (or anything rasterio accepts, e.g. 'EPSG:32613')."""
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        return CRS.from_user_input(text)
    except CRSError as e:
        raise OutputError(f"cannot understand the CRS: {e}", path) from None


def _map_info(georef: GeoRef, path: Path) -> tuple[str | None, str | None]:
    """(map info, coordinate system string) for a GeoRef, as GDAL writes and reads them."""
    from rasterio.enums import WktVersion

    crs = parse_crs(georef.crs_wkt, path) if georef.crs_wkt else None
    css = crs.to_wkt(version=WktVersion.WKT1_ESRI) if crs else None
    if georef.transform is None:
        return None, css
    a, b, c, d, e, f = georef.transform
    xs, ys = math.hypot(a, d), math.hypot(b, e)
    rot = math.atan2(d, a)
    if not (math.isclose(b, math.sin(rot) * ys, abs_tol=1e-9 * ys) and math.isclose(e, -math.cos(rot) * ys, abs_tol=1e-9 * ys)):
        raise OutputError("the transform has shear or a flipped axis, which ENVI map info cannot express", path)
    epsg = crs.to_epsg() if crs else None
    if epsg and (32601 <= epsg <= 32660 or 32701 <= epsg <= 32760):
        tail = [str(epsg % 100), "North" if epsg < 32700 else "South", "WGS-84", "units=Meters"]
        name = "UTM"
    elif epsg == 4326:
        name, tail = "Geographic Lat/Lon", ["WGS-84"]  # GDAL loses the EPSG code with units=Degrees
    else:  # the CSS carries the real definition; GDAL and ENVI read it first
        name, tail = "Arbitrary", ["units=Meters"]
    if abs(rot) > 1e-12:
        tail.append(f"rotation={float(f'{math.degrees(rot):.12g}'):g}")
    vals = [name, "1", "1", _fmt(c), _fmt(f), _fmt(xs), _fmt(ys)] + tail
    return "{" + ", ".join(vals) + "}", css


def _list(vals: Any) -> str:
    return "{" + ", ".join(str(v) for v in vals) + "}"


class EnviWriter(CubeWriter):
    format = "envi"

    def __init__(self, path: Path, shape: tuple[int, int, int], meta: CubeMeta, dtype: np.dtype, interleave: str | None = None):
        super().__init__(path, shape, meta, dtype)
        if self.dtype not in CODES:
            raise OutputError(f"dtype {self.dtype.name} cannot be stored in ENVI (supported: {', '.join(d.name for d in CODES)})", path)
        src_il = str(meta.source.get("interleave", "")).lower()
        self.interleave = (interleave or (src_il if src_il in ("bsq", "bil", "bip") else "bsq")).lower()
        if self.interleave not in ("bsq", "bil", "bip"):
            raise OutputError(f"unknown interleave '{interleave}' (bsq, bil or bip)", path)
        self._header_text = self._header()  # fail on unwritable metadata before creating files
        hdr, data = output_files(path)
        self._tmp_data, self._tmp_hdr = temp_path_for(data), temp_path_for(hdr)
        self._pending = [(self._tmp_data, data), (self._tmp_hdr, hdr)]
        nb, height, width = self.shape
        with open(self._tmp_data, "wb") as fh:
            fh.truncate(nb * height * width * self.dtype.itemsize)
        # positional writes, not a memmap: written pages of a mapping count in the process's
        # RSS until unmapped, so a memmap would grow to the size of the output
        self._fd: int | None = os.open(self._tmp_data, os.O_RDWR)

    def _header(self) -> str:
        nb, height, width = self.shape
        m = self.meta
        lines = ["ENVI"]
        if m.description:
            lines.append("description = {" + m.description.replace("}", ")") + "}")
        lines += [f"samples = {width}", f"lines = {height}", f"bands = {nb}", "header offset = 0",
                  "file type = ENVI Standard", f"data type = {CODES[self.dtype]}", f"interleave = {self.interleave}",
                  f"byte order = {0 if np.little_endian else 1}"]
        if m.scale != 1.0:
            lines.append(f"reflectance scale factor = {_fmt(1.0 / m.scale)}")
        if m.offset != 0.0:
            lines.append(f"hsfuse offset = {_fmt(m.offset)}")
        if m.nodata is not None and math.isfinite(m.nodata):
            lines.append(f"data ignore value = {_fmt(m.nodata)}")
        elif m.nodata is not None and math.isnan(m.nodata) and self.dtype.kind == "f":
            lines.append("data ignore value = NaN")  # declared, as GDAL and ENVI read it
        if m.georef is not None:
            mi, css = _map_info(m.georef, self.path)
            if mi:
                lines.append(f"map info = {mi}")
            if css:
                lines.append(f"coordinate system string = {{{css}}}")
        for key, vals in (("wavelength", m.wavelengths), ("fwhm", m.fwhm)):
            if vals is not None:
                if len(vals) != nb:
                    raise OutputError(f"{len(vals)} {key} values for {nb} bands", self.path)
                lines.append(f"{key} = {_list(_fmt(v) for v in vals)}")
        if m.wavelengths is not None or m.fwhm is not None:
            lines.append("wavelength units = Nanometers")
        if m.bad_bands is not None:
            lines.append(f"bbl = {_list(int(v) for v in m.bad_bands)}")
        if m.band_names is not None:  # SPy and ENVI split lists on commas
            lines.append("band names = " + _list(str(n).replace(",", ";").replace("}", ")") for n in m.band_names))
        if m.source.get("format") == "envi":
            src_bands = m.source.get("bands")
            for key, val in m.source.get("header", {}).items():
                if key in ("wavelength", "wavelength units") and m.wavelengths is not None:
                    continue  # unconvertible source wavelengths, since replaced
                if isinstance(val, list):
                    if nb != src_bands and len(val) == src_bands:
                        continue  # a per-band field of a different band set
                    val = _list(val)
                lines.append(f"{key} = {val}")
        return "\n".join(lines) + "\n"

    def _write_raw(self, window: Window, raw: np.ndarray) -> None:
        nb, height, width = self.shape
        r0, c0, h, w = window.row, window.col, window.height, window.width
        item, fd = self.dtype.itemsize, self._fd
        raw = raw.astype(self.dtype, copy=False)
        full = c0 == 0 and w == width  # whole rows: each band (BSQ) or the block (BIL/BIP) is contiguous
        if self.interleave == "bsq":
            for b in range(nb):
                if full:
                    os.pwrite(fd, np.ascontiguousarray(raw[b]).tobytes(), (b * height + r0) * width * item)
                    continue
                for i in range(h):
                    os.pwrite(fd, np.ascontiguousarray(raw[b, i]).tobytes(), ((b * height + r0 + i) * width + c0) * item)
            return
        rows = raw.transpose(1, 0, 2) if self.interleave == "bil" else raw.transpose(1, 2, 0)  # (h, nb, w) | (h, w, nb)
        if full:
            os.pwrite(fd, np.ascontiguousarray(rows).tobytes(), r0 * width * nb * item)
            return
        for i in range(h):
            if self.interleave == "bil":
                for b in range(nb):
                    os.pwrite(fd, np.ascontiguousarray(rows[i, b]).tobytes(), (((r0 + i) * nb + b) * width + c0) * item)
            else:
                os.pwrite(fd, np.ascontiguousarray(rows[i]).tobytes(), ((r0 + i) * width + c0) * nb * item)

    def _finish(self) -> None:
        os.fsync(self._fd)
        self._tmp_hdr.write_text(self._header_text)

    def _close_handles(self) -> None:
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            os.close(fd)


def create_writer(path: Path, shape: tuple[int, int, int], meta: CubeMeta, dtype: np.dtype, **opts: Any) -> EnviWriter:
    """Options: ``interleave`` ('bsq', 'bil', 'bip'; default: the source's, else BSQ)."""
    return EnviWriter(Path(path), shape, meta, dtype, **opts)
