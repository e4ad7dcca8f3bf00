"""TIFF / GeoTIFF cubes.

Two layouts are read:

- one image holding all bands (planar separate ``(C, H, W)`` or contiguous
  ``(H, W, C)`` samples): GDAL via rasterio, windowed, with CRS, transform,
  nodata, band descriptions, scale/offset and the band tags ``wavelength``,
  ``fwhm``, ``wavelength_units`` (or GDAL's IMAGERY ``CENTRAL_WAVELENGTH_UM`` /
  ``FWHM_UM``, or a dataset tag ``wavelength`` holding the list).
- a stack of single-band pages of one size (``tifffile.imwrite(path, cube)``
  without ``planarconfig``; GDAL would see one band): tifffile, one page per band,
  memory-mapped when the page is stored uncompressed. Georeferencing, if any,
  is taken from the first page.

Files GDAL cannot open fall back to tifffile (the image is then read whole).
Reduced-resolution pages (overviews) and mask pages are ignored.

Writes make ONE N-band GeoTIFF (GDAL sees ``count == C``): tiled 256x256
(strips when the image is smaller than a tile), band-interleaved, ``BIGTIFF=IF_SAFER``, optional ``compress``; wavelengths go
in per-band tags and in a dataset tag listing them all.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..cube import CubeMeta, GeoRef, Window
from ..errors import FormatError, OutputError, UsageError
from .base import CubeSource, CubeWriter, temp_path_for
from .envi import parse_crs, to_nm

# GDAL's block cache defaults to 5% of RAM and fills with written blocks before it
# flushes them; cap it so streaming a large output keeps memory bounded (the user's
# own GDAL_CACHEMAX, if set, wins).
os.environ.setdefault("GDAL_CACHEMAX", "256")

#: dtypes GDAL's GTiff driver stores as they are
WRITABLE = {np.dtype(t) for t in ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64")}


def _floats(text: str | None) -> list[float] | None:
    if text is None:
        return None
    return [float(v) for v in str(text).strip("{}[] ").replace(";", ",").split(",") if v.strip()]


def _ci(tags: dict[str, str], key: str) -> str | None:
    """Case-insensitive tag lookup."""
    key = key.lower()
    return next((v for k, v in tags.items() if k.lower() == key), None)


def _spectral(ds, path: Path) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(wavelengths, fwhm) in nm from band tags, GDAL IMAGERY tags, or the dataset tag list."""
    n = ds.count
    out = []
    dtags = ds.tags()
    for key in ("wavelength", "fwhm"):
        per_band = [_ci(ds.tags(i + 1), key) for i in range(n)]
        units = _ci(ds.tags(1), "wavelength_units") or _ci(dtags, "wavelength_units")
        if all(v is not None for v in per_band):
            vals = [float(v) for v in per_band]
        else:
            imagery = [_ci(ds.tags(i + 1, ns="IMAGERY"), "central_wavelength_um" if key == "wavelength" else "fwhm_um")
                       for i in range(n)]
            if all(v is not None for v in imagery):
                vals, units = [float(v) for v in imagery], "micrometers"
            else:
                vals = _floats(_ci(dtags, key))
        if vals is not None and len(vals) != n:
            raise FormatError(f"{len(vals)} {key} values for {n} bands", path)
        out.append(to_nm(vals, units))
    return out[0], out[1]


class RasterioSource(CubeSource):
    """A single-image (Geo)TIFF read through GDAL, window by window."""

    format = "tiff"

    def __init__(self, path: Path):
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = rasterio.open(path)
        self._ds = ds
        self.files = [path]
        try:
            dtype = np.dtype(ds.dtypes[0])
            if dtype.kind == "c":
                raise FormatError(f"complex data ({dtype.name}) is not supported", path)
            scales, offsets = set(ds.scales), set(ds.offsets)
            if len(scales) > 1 or len(offsets) > 1:
                raise FormatError("bands have different scale/offset values, which hsfuse cannot represent", path)
            wl, fw = _spectral(ds, path)
        except BaseException:
            ds.close()
            raise
        has_geo = ds.crs is not None or not ds.transform.is_identity
        names = list(ds.descriptions)
        desc = ds.tags().get("TIFFTAG_IMAGEDESCRIPTION")
        meta = CubeMeta(
            wavelengths=wl, fwhm=fw,
            band_names=None if all(d is None for d in names) else [d or f"Band {i + 1}" for i, d in enumerate(names)],
            nodata=ds.nodata, scale=float(scales.pop()), offset=float(offsets.pop()),
            georef=GeoRef(ds.crs.to_wkt() if ds.crs else None, tuple(ds.transform)[:6]) if has_geo else None,
            description=None if desc is None or desc.startswith("{") else desc,  # tifffile's JSON shape note is not one
            source={"format": "tiff", "interleave": ds.interleaving.name.lower() if ds.interleaving else None,
                    "compress": ds.compression.name.lower() if ds.compression else None, "dtype": dtype.name,
                    "layout": "image"},
        )
        super().__init__(path, (ds.count, ds.height, ds.width), dtype, meta)

    def _read_raw(self, window: Window, bands: np.ndarray | None) -> np.ndarray:
        from rasterio.windows import Window as RWindow

        idx = list(range(1, self.bands + 1)) if bands is None else [int(b) + 1 for b in bands]
        return self._ds.read(idx, window=RWindow(window.col, window.row, window.width, window.height))

    def close(self) -> None:
        self._ds.close()


def _page_array(path: Path, page) -> np.ndarray:
    """A page's pixels: a read-only memmap when stored uncompressed and contiguous, else decoded."""
    if page.is_memmappable:
        return np.memmap(path, dtype=page.dtype.newbyteorder(page.parent.byteorder), mode="r",
                         offset=page.dataoffsets[0], shape=page.shape)
    return page.asarray()


class TifffileSource(CubeSource):
    """A stack of single-band pages (one per band), or a single image GDAL could not open."""

    format = "tiff"

    def __init__(self, path: Path, tif, pages: list, meta: CubeMeta):
        self._tif, self._pages, self.files = tif, pages, [path]
        p0 = pages[0]
        if len(pages) > 1:
            shape = (len(pages), *p0.shape)
            self._whole = None
        else:  # one page: (H, W), (H, W, S) contiguous or (S, H, W) planar
            arr = p0.asarray()
            if arr.ndim == 2:
                arr = arr[None]
            elif p0.axes.endswith("S"):
                arr = arr.transpose(2, 0, 1)
            self._whole = arr
            shape = arr.shape
        meta.source.update({"format": "tiff", "dtype": p0.dtype.name, "layout": "pages" if len(pages) > 1 else "image"})
        super().__init__(path, shape, p0.dtype, meta)

    def _read_raw(self, window: Window, bands: np.ndarray | None) -> np.ndarray:
        rs, cs = window.slices
        idx = range(self.bands) if bands is None else bands
        if self._whole is not None:
            return np.ascontiguousarray(self._whole[:, rs, cs][list(idx)], dtype=self.dtype)
        out = np.empty((len(idx), window.height, window.width), dtype=self.dtype)
        for k, b in enumerate(idx):  # one page in memory at a time
            out[k] = _page_array(self.path, self._pages[int(b)])[rs, cs]
        return out

    def close(self) -> None:
        self._tif.close()


def _stack_meta(path: Path, pages: list) -> CubeMeta:
    """Metadata of a page stack: GDAL's view of page 0 (georef, nodata) plus page names."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    meta = CubeMeta()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                if ds.crs is not None or not ds.transform.is_identity:
                    meta.georef = GeoRef(ds.crs.to_wkt() if ds.crs else None, tuple(ds.transform)[:6])
                meta.nodata = ds.nodata
    except RasterioIOError:
        pass  # GDAL cannot read it: no georeferencing to take
    names = [p.tags.get("PageName") for p in pages]
    if all(n is not None for n in names):
        meta.band_names = [str(n.value) for n in names]
    return meta


def open_source(path: Path, **opts: Any) -> CubeSource:
    if opts:
        raise UsageError(f"options {', '.join(opts)} do not apply to TIFF files", path)
    import tifffile
    from rasterio.errors import RasterioIOError

    path = Path(path)
    tif = tifffile.TiffFile(path)
    try:
        pages = [p for p in tif.pages if not (getattr(p, "subfiletype", 0) & 0b101)]  # skip overviews, masks
        if not pages:
            raise FormatError("TIFF has no image pages", path)
        if len(pages) > 1:
            sizes = [p.shape for p in pages]
            if len(set(sizes)) > 1:
                listing = ", ".join(f"page {i}: {'x'.join(map(str, s))}" for i, s in enumerate(sizes[:8]))
                raise FormatError(f"TIFF pages have different sizes: {listing}{', ...' if len(sizes) > 8 else ''}", path)
            if pages[0].samplesperpixel > 1 or len(pages[0].shape) != 2:
                raise FormatError(f"TIFF has {len(pages)} pages of {pages[0].samplesperpixel} samples each; "
                                  "only single-band pages can be stacked into a cube", path)
            if len({p.dtype for p in pages}) > 1:
                raise FormatError("TIFF pages have different data types", path)
            return TifffileSource(path, tif, pages, _stack_meta(path, pages))
        try:
            src = RasterioSource(path)
        except RasterioIOError:  # GDAL cannot decode it: tifffile can, whole
            return TifffileSource(path, tif, pages, CubeMeta())
    except BaseException:
        tif.close()
        raise
    tif.close()  # GDAL reads the pixels
    return src


def output_files(path: Path) -> list[Path]:
    return [Path(path)]


class TiffWriter(CubeWriter):
    format = "tiff"

    def __init__(self, path: Path, shape: tuple[int, int, int], meta: CubeMeta, dtype: np.dtype, compress: str | None = None):
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning
        from rasterio.transform import Affine

        super().__init__(path, shape, meta, dtype)
        if self.dtype not in WRITABLE:
            raise OutputError(f"dtype {self.dtype.name} cannot be stored in GeoTIFF (supported: "
                              f"{', '.join(sorted(d.name for d in WRITABLE))})", path)
        nb, height, width = self.shape
        for key, vals in (("wavelengths", meta.wavelengths), ("fwhm", meta.fwhm), ("band names", meta.band_names)):
            if vals is not None and len(vals) != nb:
                raise OutputError(f"{len(vals)} {key} for {nb} bands", path)
        profile: dict[str, Any] = dict(driver="GTiff", width=width, height=height, count=nb, dtype=self.dtype.name,
                                       interleave="band", BIGTIFF="IF_SAFER")
        if height >= 256 and width >= 256:  # smaller images would be mostly tile padding: GDAL's strips instead
            profile.update(tiled=True, blockxsize=256, blockysize=256)
        if compress and compress.lower() != "none":
            profile["compress"] = compress
        if meta.nodata is not None:
            profile["nodata"] = meta.nodata
        if meta.georef is not None:
            if meta.georef.crs_wkt:
                profile["crs"] = parse_crs(meta.georef.crs_wkt, path)
            if meta.georef.transform is not None:
                profile["transform"] = Affine(*meta.georef.transform)
        self._tmp = temp_path_for(self.path)
        self._pending = [(self._tmp, self.path)]
        with warnings.catch_warnings():  # a cube without georeferencing is fine
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            self._ds = rasterio.open(self._tmp, "w", **profile)
        try:
            self._tag(meta)
        except BaseException:
            self.abort()
            raise

    def _tag(self, meta: CubeMeta) -> None:
        ds, nb = self._ds, self.shape[0]
        dataset_tags: dict[str, str] = {}
        if meta.wavelengths is not None:
            dataset_tags["wavelength"] = ",".join(repr(float(v)) for v in meta.wavelengths)
            dataset_tags["wavelength_units"] = "Nanometers"
        if meta.fwhm is not None:
            dataset_tags["fwhm"] = ",".join(repr(float(v)) for v in meta.fwhm)
        if meta.description:
            dataset_tags["TIFFTAG_IMAGEDESCRIPTION"] = meta.description
        if dataset_tags:
            ds.update_tags(**dataset_tags)
        for i in range(nb):
            band_tags = {}
            if meta.wavelengths is not None:
                band_tags.update(wavelength=repr(float(meta.wavelengths[i])), wavelength_units="Nanometers")
            if meta.fwhm is not None:
                band_tags["fwhm"] = repr(float(meta.fwhm[i]))
            if band_tags:
                ds.update_tags(i + 1, **band_tags)
            if meta.band_names is not None:
                ds.set_band_description(i + 1, str(meta.band_names[i]))
        if meta.scale != 1.0 or meta.offset != 0.0:
            ds.scales = (meta.scale,) * nb
            ds.offsets = (meta.offset,) * nb

    def _write_raw(self, window: Window, raw: np.ndarray) -> None:
        from rasterio.windows import Window as RWindow

        self._ds.write(raw, window=RWindow(window.col, window.row, window.width, window.height))

    def _close_handles(self) -> None:
        ds = getattr(self, "_ds", None)
        if ds is not None and not ds.closed:
            ds.close()


def create_writer(path: Path, shape: tuple[int, int, int], meta: CubeMeta, dtype: np.dtype, **opts: Any) -> TiffWriter:
    """Options: ``compress`` (e.g. 'deflate', 'lzw', 'zstd'; default none)."""
    return TiffWriter(Path(path), shape, meta, dtype, **opts)
