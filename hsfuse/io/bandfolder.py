"""A folder of single-band images (PNG or TIFF, one file per band) as one cube. Read-only.

This is the CAVE layout: ``<scene>_ms/<scene>_ms_XX.png``, 31 16-bit PNGs.

- Band files are the ``.png``/``.tif``/``.tiff`` files, in natural name order
  (``_2`` before ``_10``); anything else (``.db``, ``.bmp`` previews, hidden
  files) is ignored. A folder with no band files but exactly one subfolder that
  has some is read through that subfolder (some CAVE archives nest
  ``<scene>_ms/<scene>_ms/``).
- All bands must share size and bit depth. 8-bit bands have ``meta.scale =
  1/255``, 16-bit ``1/65535``, so physical values lie in [0, 1] (the CAVE
  reflectance convention); ``read(raw=True)`` gives the stored integers.
  RGB(A)/LA images contribute their first channel.
- Wavelengths are known only for the CAVE naming: 31 files ending in
  ``_ms_01`` .. ``_ms_31`` are 400 + 10*(XX-1) nm. Otherwise none.
- Lazy: a band file is decoded only when a read needs that band (PNG cannot be
  decoded in part, so a window costs its bands' full decode); decoded bands are
  kept in a small cache (``CACHE_BYTES``) so tiled reads do not decode each
  band once per tile.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from ..cube import CubeMeta, Window
from ..errors import FormatError, InputError, UsageError
from .base import CubeSource

BAND_EXTS = {".png", ".tif", ".tiff"}
CACHE_BYTES = 256 * 2**20
#: Pillow mode -> (dtype of the stored numbers, full-scale value)
MODES = {"L": ("uint8", 255), "LA": ("uint8", 255), "RGB": ("uint8", 255), "RGBA": ("uint8", 255),
         "I;16": ("uint16", 65535), "I;16L": ("uint16", 65535), "I;16B": ("uint16", 65535),
         "I": ("uint16", 65535)}  # 'I': 16-bit PNGs as older Pillow versions open them
_CAVE = re.compile(r"_ms_(\d+)$")


def natural_key(name: str) -> list:
    """Sort key that orders embedded numbers by value: band_2 < band_10."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def band_files(folder: Path) -> list[Path]:
    """The band images of ``folder`` in natural order, descending into a lone subfolder if needed."""
    def images(d: Path) -> list[Path]:
        return sorted((p for p in d.iterdir() if p.is_file() and p.suffix.lower() in BAND_EXTS and not p.name.startswith(".")),
                      key=lambda p: natural_key(p.name))

    files = images(folder)
    if not files:
        subdirs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
        if len(subdirs) == 1:
            files = images(subdirs[0])
    if not files:
        raise FormatError("folder holds no band images (.png/.tif files, one per band)", folder)
    return files


def cave_wavelengths(files: list[Path]) -> np.ndarray | None:
    """400..700 nm for the 31 CAVE bands ``*_ms_01`` .. ``*_ms_31``; None for any other naming."""
    nums = [_CAVE.search(p.stem) for p in files]
    if len(files) != 31 or not all(nums) or [int(m.group(1)) for m in nums] != list(range(1, 32)):
        return None
    return 400.0 + 10.0 * np.arange(31)


class BandFolderSource(CubeSource):
    format = "bands"

    def __init__(self, folder: Path):
        from PIL import Image

        self.files = band_files(folder)
        kinds = []
        for f in self.files:
            with Image.open(f) as im:  # reads the header only
                kinds.append((im.size, im.mode))
        size, mode = kinds[0]
        for f, (s, m) in zip(self.files, kinds):
            if s != size:
                raise FormatError(f"band {f.name} is {s[0]}x{s[1]}, {self.files[0].name} is {size[0]}x{size[1]}", folder)
            if MODES.get(m, (None,))[0] != MODES.get(mode, (None,))[0]:
                raise FormatError(f"band {f.name} is mode {m}, {self.files[0].name} is mode {mode} (bit depths differ)", folder)
        if mode not in MODES:
            raise FormatError(f"unsupported image mode {mode} in {self.files[0].name} (8/16-bit grey or RGB(A))", folder)
        dtype, full = MODES[mode]
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        meta = CubeMeta(
            wavelengths=cave_wavelengths(self.files), band_names=[f.stem for f in self.files], scale=1.0 / full,
            source={"format": "bands", "dtype": dtype, "folder": str(self.files[0].parent)},
        )
        super().__init__(folder, (len(self.files), size[1], size[0]), np.dtype(dtype), meta)

    def _band(self, i: int) -> np.ndarray:
        """Band ``i`` decoded, (H, W) in the stored dtype."""
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        from PIL import Image

        with Image.open(self.files[i]) as im:
            arr = np.asarray(im)
        if arr.ndim == 3:
            arr = arr[..., 0]
        if arr.dtype != self.dtype:
            if arr.min() < 0 or arr.max() > np.iinfo(self.dtype).max:
                raise FormatError(f"values of {self.files[i].name} exceed {self.dtype.name}", self.path)
            arr = arr.astype(self.dtype)  # big-endian or 32-bit container of 16-bit values
        self._cache[i] = arr
        while sum(a.nbytes for a in self._cache.values()) > CACHE_BYTES and len(self._cache) > 1:
            self._cache.popitem(last=False)
        return arr

    def _read_raw(self, window: Window, bands: np.ndarray | None) -> np.ndarray:
        rs, cs = window.slices
        idx = range(self.bands) if bands is None else bands
        out = np.empty((len(idx), window.height, window.width), dtype=self.dtype)
        for k, b in enumerate(idx):
            out[k] = self._band(int(b))[rs, cs]
        return out

    def close(self) -> None:
        self._cache.clear()


def open_source(path: Path, **opts: Any) -> BandFolderSource:
    if opts:
        raise UsageError(f"options {', '.join(opts)} do not apply to band folders", path)
    path = Path(path)
    if not path.is_dir():
        raise InputError("not a folder of band images", path)
    return BandFolderSource(path)


def output_files(path: Path) -> list[Path]:
    return [Path(path)]
